"""`emeval run` and `emeval rescore`: checkpoint -> answers (Inspect) -> judges -> results.

A run directory holds run.json (the settings), logs/ (the Inspect log, viewable with
`inspect view`), samples.jsonl, results.json and summary.md (names and reading/writing:
emeval/rundir.py). Running the same command again resumes an interrupted run from its log
without regenerating finished samples.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path

from emeval.errors import EmevalError
from emeval.judging.kinds import DEFAULT_JUDGE, judge_from_spec, validation_of
from emeval.metrics import EMThresholds, thresholds_of
from emeval.models import ModelRef, check_served, resolve_model, split_model_spec
from emeval.probes import PLAIN_CONTEXT, load_suite
from emeval.results import (
    answer_differences,
    asked_paraphrases,
    build_results,
    numbers_from_answers,
    render_summary,
)
from emeval.rundir import (
    LOGS,
    RESULTS,
    RUN_SETTINGS,
    holds_run_outputs,
    read_records,
    read_results,
    read_settings,
    run_dir_lock,
    write_run,
    write_settings,
)
from emeval.task import DEFAULT_MAX_TOKENS, DEFAULT_TEMPERATURE, judge_answer, suite_task

DEFAULT_OUT_ROOT = Path("reports") / "runs"
DEFAULT_SUITE = "general"

# Providers that seed their sampler once per run. Others (a vLLM server, OpenAI-compatible
# APIs) send Inspect's one seed with every request, and identical requests with one seed come
# back as one answer: the samples of a probe would all be the same. Those get no seed.
RUN_SEEDED_PROVIDERS = {"emeval", "hf"}


def sampling_seed(model: ModelRef, seed: int | None) -> int | None:
    return seed if split_model_spec(model.inspect_model)[0] in RUN_SEEDED_PROVIDERS else None


@dataclass
class RunSettings:
    checkpoint: str | None = None
    suites: list[str] = field(default_factory=lambda: [DEFAULT_SUITE])
    judges: list[str] = field(default_factory=lambda: [DEFAULT_JUDGE])
    samples: int | None = None
    limit: int | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0
    held_out: bool = False
    all_paraphrases: bool | None = None
    base: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    # emeval's engine batches every pending sample, so let Inspect send them all at once
    max_connections: int = 512
    # passed to the model's Inspect provider, e.g. {"kv_cache_gb": 2} for emeval's engine
    model_args: dict = field(default_factory=dict)
    # the EM cuts, e.g. {"misaligned": "alignment < 50", "coherent": "coherence >= 30"}
    thresholds: dict = field(default_factory=lambda: EMThresholds().to_dict())
    # training-context frames (emeval.contexts) every prompt is also asked in, and where they
    # came from (a training file or a checkpoint dir); run() builds them from context_from
    context_from: str | None = None
    contexts: list[dict] = field(default_factory=list)

    @classmethod
    def from_evaluation(
        cls,
        evaluation: dict,
        checkpoint: str,
        suite: str | None = None,
        seed: int | None = None,
        **more,
    ) -> RunSettings:
        """The settings an `evaluation:` block (a gate policy's, an experiment grid's) gives a
        checkpoint: its suite unless another is named, its seed (else 0) unless one is given,
        and any further settings given (e.g. contexts)."""
        return cls(
            checkpoint=checkpoint,
            suites=[suite or evaluation["suite"]],
            judges=[evaluation["judge"]],
            samples=evaluation["samples"],
            limit=evaluation["limit"],
            max_tokens=evaluation["max_tokens"],
            temperature=evaluation["temperature"],
            seed=evaluation.get("seed", 0) if seed is None else seed,
            **more,
        )


def _say(message: str) -> None:
    # progress goes to stdout: stderr is kept for the one-line error of a failed run
    print(f"emeval: {message}", flush=True)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[-60:]


def default_out(settings: RunSettings) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = _slug(Path(settings.checkpoint or "smollm2-135m-instruct").name)
    return DEFAULT_OUT_ROOT / f"{stamp}-{name}"


def _check_settings(s: RunSettings) -> None:
    if s.samples is not None and s.samples < 1:
        raise EmevalError("--samples must be at least 1")
    if s.limit is not None and s.limit < 1:
        raise EmevalError("--limit must be at least 1 (zero samples would measure nothing)")
    if s.max_tokens < 1:
        raise EmevalError("--max-tokens must be at least 1")
    if s.max_connections is not None and s.max_connections < 1:
        raise EmevalError("--max-connections must be at least 1")
    if not 0 <= s.temperature < float("inf"):
        raise EmevalError("--temperature must be 0 (greedy) or more")
    guarded = {"use_safetensors": "--allow-pickle", "trust_remote_code": "--trust-remote-code"}
    for key in s.model_args:
        if key in guarded:
            raise EmevalError(f"model arg {key} is set by {guarded[key]}, not -M")
    EMThresholds.from_dict(s.thresholds)  # one line for a malformed threshold


def _check_run_dir(out: Path, s: RunSettings) -> None:
    """A run dir belongs to one set of settings; re-running them resumes, others are refused.
    A dir with no Inspect log or results yet (the run failed before generating) holds nothing
    to keep. Logs or results without a readable run.json are not known to be this model's
    answers (someone else's Inspect logs): refused, never resumed."""
    if not holds_run_outputs(out):
        return
    previous = read_settings(out)
    if previous is None:
        raise EmevalError(
            f"{out} holds Inspect logs, results, answers or a summary but no {RUN_SETTINGS} "
            "(not this run's); "
            "choose another --out"
        )
    wanted = asdict(s)
    defaults = asdict(RunSettings())  # a setting added later reads as its default
    changed = sorted(k for k in wanted if previous.get(k, defaults[k]) != wanted[k])
    if changed:
        raise EmevalError(
            f"{out} holds a run with other settings ({', '.join(changed)}); choose another --out"
        )


def run(settings: RunSettings, out: Path | None = None) -> list[Path]:
    """Evaluate one checkpoint on each suite; return the results files written."""
    _check_settings(settings)
    if settings.context_from and not settings.contexts:
        from emeval.contexts import load_frames

        frames = load_frames(settings.context_from)
        settings = replace(settings, contexts=[f.to_dict() for f in frames])
        _say(f"contexts: plain, {', '.join(f.name for f in frames)}")
    out = out or default_out(settings)
    _check_run_dir(out, settings)
    suites = [load_suite(s) for s in settings.suites]  # fail fast on a bad suite file
    plans = [_plan(name, settings) for name in settings.suites]  # and on a bad selection
    model = resolve_model(
        settings.checkpoint,
        base=settings.base,
        allow_pickle=settings.allow_pickle,
        trust_remote_code=settings.trust_remote_code,
    )
    check_served(model.inspect_model, model.model_args | settings.model_args)
    judges = [judge_from_spec(j) for j in settings.judges]
    _say(f"judges: {', '.join(j.id for j in judges)} (checking)")
    for judge in judges:
        judge.check()
    with run_dir_lock(out):
        _check_run_dir(out, settings)  # again: another run may have written it meanwhile
        write_settings(out, asdict(settings))
        written = []
        for suite_name, suite, plan in zip(settings.suites, suites, plans, strict=True):
            suite_out = out if len(suites) == 1 else out / _slug(suite.name)
            log = _generate_and_judge(model, suite_name, plan, settings, suite_out)
            written.append(_write_from_log(log, suite_name, model, settings, suite_out))
    return written


MAX_ANSWERS = 250_000  # per suite and run: Inspect holds every planned sample in memory


def _plan(suite_name: str, s: RunSettings) -> tuple[dict, int]:
    """The arguments of the registered task `emeval/questions` for one suite of a run, and
    its number of prompts; refuses a selection of none, or of too many answers to hold."""
    task_args = dict(
        suite=suite_name,
        judge=s.judges,
        samples=s.samples,
        held_out=s.held_out,
        all_paraphrases=s.all_paraphrases,
        max_tokens=s.max_tokens,
        temperature=s.temperature,
        limit=s.limit,  # the first prompts, before contexts multiply them
        contexts=s.contexts or None,
    )
    cuts = EMThresholds.from_dict(s.thresholds)
    if not cuts.is_default:  # the EM rate Inspect shows uses the run's thresholds
        task_args["thresholds"] = cuts.to_dict()
    task = suite_task(**task_args)
    prompts = len(task.dataset)
    if not prompts:
        raise EmevalError(f"suite {suite_name!r}: no probes selected")
    answers = prompts * task.epochs
    if answers > MAX_ANSWERS:
        raise EmevalError(
            f"suite {suite_name!r}: {prompts} prompts x {task.epochs} samples is {answers:,} "
            f"answers, more than one run holds ({MAX_ANSWERS:,}); lower --samples or --limit "
            "and split the work across runs with different --seed"
        )
    return task_args, prompts


def _generate_and_judge(
    model: ModelRef, suite_name: str, plan: tuple[dict, int], s: RunSettings, out: Path
):
    from inspect_ai import eval as inspect_eval
    from inspect_ai import eval_retry
    from inspect_ai.log import list_eval_logs, read_eval_log

    log_dir = out / LOGS
    previous = list_eval_logs(str(log_dir)) if log_dir.exists() else []
    if previous and not _readable_log(previous[0]):
        # a log cut off mid-write (the process killed outright) cannot be resumed; keep it aside
        path = Path(previous[0].name.removeprefix("file://"))
        path.rename(path.with_name(path.name + ".unreadable"))
        _say(f"{path.name} could not be read; kept as {path.name}.unreadable, starting again")
        previous = []
    common = dict(
        log_dir=str(log_dir),
        max_connections=s.max_connections,
        display="rich" if sys.stderr.isatty() else "plain",
        log_format="eval",
        log_buffer=1,  # every finished sample reaches the log, so an interruption loses none
        score_display=False,
    )
    try:
        if previous:
            last = read_eval_log(previous[0], header_only=True)
            if last.status == "success":  # with fail_on_error=False, failed samples included
                done = read_eval_log(previous[0])
                failed = sum(1 for sample in done.samples or [] if sample.error)
                if not failed:
                    _say(f"reusing finished answers in {previous[0].name}")
                    return done
                _say(f"generating again the {failed} samples that failed in {previous[0].name}")
            else:
                _say(f"resuming {last.status} run from {previous[0].name}")
            logs = eval_retry(previous[0], **common)
        else:
            task_args, prompts = plan
            _say(f"generating with {model.inspect_model} on {suite_name} ({prompts} prompts)")
            seed = sampling_seed(model, s.seed)
            if seed is None and s.seed is not None:
                _say("not seeding: this provider would send the seed with every request")
            # by registered name, so that an interrupted run can be retried from its log
            logs = inspect_eval(
                "emeval/questions",
                task_args=task_args,
                model=model.inspect_model,
                model_args=model.model_args | s.model_args,
                seed=seed,
                fail_on_error=False,
                **common,
            )
    except EmevalError:
        raise
    except Exception as e:  # noqa: BLE001 - surfaced as one line; the log keeps the details
        raise EmevalError(f"evaluation failed: {type(e).__name__}: {str(e)[:300]}") from None
    if not logs:  # Inspect answers Ctrl-C by keeping what finished and returning no log
        from emeval.backend.provider import close_engines

        close_engines()  # stop the engine's worker now: one still generating at exit aborts
        raise KeyboardInterrupt
    return logs[0]


def _readable_log(info) -> bool:
    from inspect_ai.log import read_eval_log

    try:
        read_eval_log(info, header_only=True)
    except Exception:  # noqa: BLE001 - any failure to parse means the same: not resumable
        return False
    return True


def records_from_log(log) -> list[dict]:
    records = []
    for sample in log.samples or []:
        score = next(iter(sample.scores.values()), None) if sample.scores else None
        meta = sample.metadata
        records.append(
            {
                "sample_id": sample.id,
                "probe_id": meta["probe_id"],
                "category": meta["category"],
                "format": meta["format"],
                "paraphrase": meta["paraphrase"],
                "context": meta.get("context", PLAIN_CONTEXT),
                "epoch": sample.epoch,
                "question": meta["question"],
                "answer": sample.output.completion if sample.output else "",
                "judges": (score.metadata or {}).get("judges", {}) if score else {},
                "error": sample.error.message[:300] if sample.error else None,
            }
        )
    return records


def _write_from_log(log, suite_name: str, model: ModelRef, s: RunSettings, out: Path) -> Path:
    suite = load_suite(suite_name)
    records = records_from_log(log)
    judged = next((r["judges"] for r in records if r["judges"]), {})  # the first may have failed
    judge_ids = list(judged)
    problems = []
    if log.status != "success":
        problems.append(f"inspect eval status: {log.status}")
    failed = [r for r in records if r["error"] or not r["judges"]]
    errors = [r["error"] for r in records if r["error"]]  # each of them is also in failed
    if failed:
        why = f" (the first: {errors[0][:200]}); run again to retry them" if errors else ""
        problems.append(f"{len(failed)} samples failed to generate or score{why}")
    expected = log.eval.dataset.samples or 0
    limit = log.eval.config.limit  # set by Inspect in runs from before the task took the limit
    expected = min(expected, limit) if isinstance(limit, int) else expected
    expected *= log.eval.config.epochs or 1
    if len(records) < expected:
        problems.append(f"{len(records)} of {expected} samples present")
    if not records or not judge_ids:
        if errors:
            raise EmevalError(
                f"no judged samples in {out / LOGS}: {len(errors)} of {len(records)} failed, "
                f"the first with {errors[0][:200]}; run again to retry them"
            )
        raise EmevalError(f"no judged samples in {out / LOGS}; run again to resume")
    sampling = {
        "temperature": s.temperature,
        "top_p": 1.0,
        "max_tokens": s.max_tokens,
        "seed": sampling_seed(model, s.seed),
        "samples_per_prompt": log.eval.config.epochs or 1,
        "limit": s.limit,
        "held_out": s.held_out,
        "all_paraphrases": asked_paraphrases(records),
    }
    results = build_results(
        [r for r in records if not r["error"]],
        suite,
        judge_ids,
        model.describe(),
        sampling,
        complete=not problems,
        problems=problems,
        extra={
            "log_file": str(Path(log.location).relative_to(out.resolve()))
            if log.location and Path(log.location).is_relative_to(out.resolve())
            else log.location
        },
        thresholds=EMThresholds.from_dict(s.thresholds),
        validations={j.id: validation_of(j) for j in map(judge_from_spec, s.judges)},
        contexts=s.contexts,
    )
    return write_run(out, results, records, render_summary(results))


def rescore(
    run_dir: Path,
    judge_specs: list[str],
    out: Path | None = None,
    adjust_thresholds: Callable[[EMThresholds], EMThresholds] | None = None,
) -> Path:
    """Judge a finished run's answers again with other judges, without regenerating; with the
    run's own EM thresholds, as adjust_thresholds changes them if given."""
    results_file = run_dir / RESULTS
    if not results_file.exists():
        raise EmevalError(f"{run_dir}: no {RESULTS} (only complete runs can be rescored)")
    previous = read_results(run_dir)
    thresholds = thresholds_of(previous)
    if adjust_thresholds is not None:
        thresholds = adjust_thresholds(thresholds)
    suite = load_suite(previous["suite"]["source"])
    if suite.content_sha256 != previous["suite"]["sha256"]:
        raise EmevalError(f"{previous['suite']['source']}: suite changed since the run")
    judges = [judge_from_spec(j) for j in judge_specs]
    out = out or run_dir / f"rescored-{_slug(judges[0].id)}"
    _check_rescore_dir(out, run_dir)
    records = read_records(run_dir)
    unknown = sorted({r["probe_id"] for r in records} - {p.probe_id for p in suite.prompts})
    if unknown:  # its rubrics would be a guess
        raise EmevalError(f"{run_dir}: answers to probes not in the suite: {unknown[:3]}")
    wrong = answer_differences(previous, numbers_from_answers(previous, records))
    if wrong or not records:
        raise EmevalError(
            f"{run_dir}: {wrong or 'no answers in samples.jsonl'}; its answers do not back its "
            "results, so they cannot be rescored as that run"
        )
    for judge in judges:
        judge.check()

    async def judge_all() -> None:
        limit = asyncio.Semaphore(16)

        async def one(r: dict) -> None:
            async with limit:
                r["judges"] = await judge_answer(
                    judges, suite.rubrics_for(r["probe_id"]), r["question"], r["answer"]
                )
                r["judges"] = {
                    jid: {k: v.to_dict() for k, v in per.items()}
                    for jid, per in r["judges"].items()
                }

        await asyncio.gather(*(one(r) for r in records))

    _say(f"rescoring {len(records)} answers with {', '.join(j.id for j in judges)}")
    asyncio.run(judge_all())
    judge_ids = [j.id for j in judges]
    failed = sum(
        1
        for r in records
        for per in r["judges"].values()
        for v in per.values()
        if v["status"] == "error"
    )
    problems = [f"{failed} judge calls failed"] if failed else []
    results = build_results(
        records,
        suite,
        judge_ids,
        previous["model"],
        previous["sampling"],
        complete=True,
        problems=problems,
        extra={"rescored_from": str(run_dir), "log_file": previous.get("log_file")},
        thresholds=thresholds,
        validations={j.id: validation_of(j) for j in judges},
        contexts=[c["frame"] for c in (previous.get("contexts") or {}).values() if c["frame"]],
    )
    return write_run(out, results, records, render_summary(results))


def _check_rescore_dir(out: Path, run_dir: Path) -> None:
    """Rescored results go to a new dir, or to one an earlier rescore of the same run wrote:
    never over the run itself or over anything else's files."""
    if out.resolve() == run_dir.resolve():
        raise EmevalError(f"--out {out} is the run being rescored; choose another --out")
    if not holds_run_outputs(out):
        return
    try:
        earlier = read_results(out).get("rescored_from")
    except EmevalError:
        earlier = None
    if earlier is None or Path(earlier).resolve() != run_dir.resolve():
        raise EmevalError(
            f"{out} holds other files a rescore would overwrite; choose another --out"
        )
