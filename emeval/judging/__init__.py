"""Judges turn (question, answer, rubric) into 0-100 scores or a recorded non-score outcome.

The public face: the protocol and request (base), turning a --judge SPEC into a judge
(kinds), the verdict type (scoring) and the rubrics (rubrics). Judge implementations live in
offline.py (the default, no network), local.py (exact logprobs of a local model) and llm.py
(any Inspect model, served or API)."""

from emeval.judging.base import Judge, JudgeRequest
from emeval.judging.kinds import DEFAULT_JUDGE, JUDGE_KINDS, judge_from_spec, validation_of
from emeval.judging.rubrics import Rubric, load_rubric
from emeval.judging.scoring import Verdict

__all__ = [
    "DEFAULT_JUDGE",
    "JUDGE_KINDS",
    "Judge",
    "JudgeRequest",
    "Rubric",
    "Verdict",
    "judge_from_spec",
    "load_rubric",
    "validation_of",
]
