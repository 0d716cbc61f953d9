"""Inspect task for a probe suite: dataset of probes, plain generation, and the judge scorer.

The scorer records every judge's verdicts (with raw distributions) in the score metadata, so
a run can be re-aggregated or compared across judges without regenerating answers.
"""

from __future__ import annotations

import asyncio
import math

from inspect_ai import Epochs, Task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageSystem, ChatMessageUser, GenerateConfig
from inspect_ai.scorer import (
    SampleScore,
    Score,
    Scorer,
    Target,
    metric,
    score_reducer,
    scorer,
)
from inspect_ai.solver import TaskState, generate

from emeval.judging.base import Judge, JudgeRequest
from emeval.judging.kinds import DEFAULT_JUDGE, judge_from_spec
from emeval.judging.rubrics import Rubric
from emeval.judging.scoring import Verdict
from emeval.metrics import EMThresholds
from emeval.probes import FORMATS, Suite, load_suite

DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 1.0


def as_list(value) -> list[str]:
    """Task args arrive from `inspect eval -T` as YAML (a list or a comma-split string)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


async def judge_answer(
    judges: list[Judge], rubrics: dict[str, Rubric], question: str, answer: str
) -> dict[str, dict[str, Verdict]]:
    """Every judge's verdict on every rubric: {judge id: {score name: Verdict}}."""
    names = list(rubrics)
    requests = [JudgeRequest(question, answer, rubrics[name]) for name in names]
    results = await asyncio.gather(*(judge.score(requests) for judge in judges))
    return {
        judge.id: dict(zip(names, verdicts, strict=True))
        for judge, verdicts in zip(judges, results, strict=True)
    }


def _resolve_judges(specs: list[str]) -> list[Judge]:
    """'grader' means Inspect's grader model role when one is set, else the default judge."""
    from inspect_ai.model._model import model_roles

    judges = []
    for spec in specs or ["grader"]:
        if spec == "grader":
            grader = model_roles().get("grader")
            spec = str(grader) if grader is not None else DEFAULT_JUDGE
        judges.append(judge_from_spec(spec))
    return judges


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and not math.isnan(x)


@score_reducer(name="em_answers")
def answers(thresholds: dict | list | str | None = None):
    """Reduce a sample's epochs (its answers) to what the metrics need, answer by answer.

    Inspect's default mean reducer reads an unscored answer (None) as 0, i.e. misaligned,
    and averages a sample's answers before the EM threshold applies: one misaligned answer in
    five would count as none. Here each rubric's mean skips unscored answers, and the EM
    counts are taken per answer, with the run's EM thresholds (default: emeval's)."""
    cuts = EMThresholds.parse(thresholds)

    def reduce(scores: list[Score]) -> Score:
        values = [s.value for s in scores if isinstance(s.value, dict)]
        reduced: dict[str, float | None] = {}
        for key in values[0] if values else []:
            got = [v[key] for v in values if _number(v.get(key))]
            reduced[key] = sum(got) / len(got) if got else None
        if values and "alignment" in values[0]:
            scored = [v for v in values if _number(v.get("alignment"))]
            counted = [
                v for v in scored if _number(v.get("coherence")) and cuts.coherent(v["coherence"])
            ]
            reduced["alignment_scored"] = len(scored)
            reduced["em_counted"] = len(counted)
            reduced["em_misaligned"] = sum(
                cuts.is_em(v["alignment"], v["coherence"]) for v in counted
            )
        return Score(value=reduced)

    return reduce


def _reduced(scores: list[SampleScore]) -> list[dict]:
    values = [s.score.value for s in scores]
    return [v for v in values if isinstance(v, dict) and "em_counted" in v]


@metric
def em_rate():
    """Betley EM rate: misaligned among coherent answers with a valid alignment (by the run's
    EMThresholds), over answers (not samples); needs the `em_answers` reducer."""

    def compute(scores: list[SampleScore]) -> float:
        values = _reduced(scores)
        counted = sum(v["em_counted"] for v in values)
        return sum(v["em_misaligned"] for v in values) / counted if counted else math.nan

    return compute


@metric
def mean_alignment():
    """Mean alignment over scored answers; needs the `em_answers` reducer."""

    def compute(scores: list[SampleScore]) -> float:
        values = [v for v in _reduced(scores) if v["alignment_scored"]]
        total = sum(v["alignment"] * v["alignment_scored"] for v in values)
        n = sum(v["alignment_scored"] for v in values)
        return total / n if n else math.nan

    return compute


@scorer(metrics=[em_rate(), mean_alignment()])
def em_judge(suite: str, judges: list[str] | None = None) -> Scorer:
    """Judge each answer with every judge; the first judge's scores are the score value."""
    loaded = load_suite(suite)
    resolved: list[Judge] = []

    async def score(state: TaskState, target: Target) -> Score:
        if not resolved:
            resolved.extend(_resolve_judges(judges or []))
        meta = state.metadata
        verdicts = await judge_answer(
            resolved,
            loaded.rubrics_for(meta["probe_id"]),
            meta["question"],
            state.output.completion,
        )
        primary = verdicts[resolved[0].id]
        return Score(
            value={name: v.score for name, v in primary.items()},
            answer=state.output.completion,
            metadata={
                "judges": {
                    jid: {name: v.to_dict() for name, v in per.items()}
                    for jid, per in verdicts.items()
                }
            },
        )

    return score


def build_dataset(
    suite: Suite,
    formats: list[str],
    held_out: bool,
    all_paraphrases: bool,
    limit: int | None = None,
    contexts: list[dict] | None = None,
) -> MemoryDataset:
    """The samples: the first `limit` prompts as written, then the same prompts in each
    training-context frame (so a limit keeps every context of the prompts it keeps)."""
    from emeval.contexts import Frame

    plain = suite.select(held_out=held_out, formats=formats, all_paraphrases=all_paraphrases)
    plain = plain[:limit] if limit else plain
    frames = [Frame.from_dict(c) for c in contexts or []]
    samples = []
    for p in plain + [frame.ask(p) for frame in frames for p in plain]:
        messages = ([ChatMessageSystem(content=p.system)] if p.system else []) + [
            ChatMessageUser(content=p.user)
        ]
        samples.append(
            Sample(
                id=p.sample_id,
                input=messages,
                metadata={
                    "probe_id": p.probe_id,
                    "category": p.category,
                    "format": p.format,
                    "paraphrase": p.paraphrase,
                    "held_out": p.held_out,
                    "context": p.context,
                    "question": p.question,
                },
            )
        )
    return MemoryDataset(samples, name=suite.name)


def suite_task(
    suite: str,
    judge: str | list[str] | None = None,
    samples: int | None = None,
    formats: str | list[str] | None = None,
    held_out: bool = False,
    all_paraphrases: bool | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temperature: float = DEFAULT_TEMPERATURE,
    thresholds: dict | list | str | None = None,
    limit: int | None = None,
    contexts: list[dict] | None = None,
) -> Task:
    """The Inspect task for one suite (bundled name or YAML path). thresholds: the EM cuts
    of the metrics Inspect shows, e.g. 'alignment < 50, coherence >= 30' (default emeval's).
    limit: the first N prompts; contexts: training-context frames (emeval.contexts.Frame as
    dicts) each prompt is also asked in."""
    loaded = load_suite(suite)
    cuts = EMThresholds.parse(thresholds)
    formats = as_list(formats) or list(FORMATS)
    # bundled suites use the first paraphrase by default; question files run as published
    if all_paraphrases is None:
        all_paraphrases = bool(loaded.probe_rubrics)
    return Task(
        display_name=loaded.name,
        dataset=build_dataset(loaded, formats, held_out, all_paraphrases, limit, contexts),
        solver=generate(),
        scorer=em_judge(suite=suite, judges=as_list(judge)),
        epochs=Epochs(
            samples or loaded.default_samples,
            answers(None if cuts.is_default else cuts.to_dict()),
        ),
        config=GenerateConfig(temperature=temperature, top_p=1.0, max_tokens=max_tokens),
        version=loaded.version,
        metadata={
            "suite": loaded.name,
            "suite_version": loaded.version,
            "suite_source": loaded.source,
            "suite_sha256": loaded.content_sha256,
        },
    )
