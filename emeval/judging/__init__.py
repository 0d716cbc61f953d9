"""Judges turn (question, answer, rubric) into 0-100 scores or a recorded non-score outcome.

The public face: the protocol and request (base), turning a --judge SPEC into a judge
(kinds), and the verdict type (scoring). Judge implementations live in offline.py (the
default, no network), local.py (exact logprobs of a local model) and llm.py (any Inspect
model, served or API)."""

from emeval.judging.base import Judge, JudgeRequest
from emeval.judging.kinds import DEFAULT_JUDGE, JUDGE_KINDS, judge_from_spec, validation_of
from emeval.judging.scoring import Verdict

__all__ = [
    "DEFAULT_JUDGE",
    "JUDGE_KINDS",
    "Judge",
    "JudgeRequest",
    "Verdict",
    "judge_from_spec",
    "validation_of",
]
