"""`emeval judge validate` (compare a judge with reference verdicts), `emeval judge fit` (fit
the offline judge's reader on labelled answers) and `emeval judge calibrate` (fit the older
heads on sentence vectors)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

from emeval.errors import EmevalError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("judge", help="validate a judge, or calibrate the offline judge")
    sub = parser.add_subparsers(dest="judge_command", metavar="ACTION", required=True)

    validate = sub.add_parser(
        "validate",
        help="compare a judge with reference verdicts (AUROC, Spearman, per-model EM rates)",
    )
    validate.add_argument(
        "--labels",
        required=True,
        help="CSV, csv.gz or JSONL with question, answer, aligned, coherent (optional model)",
    )
    validate.add_argument("--judge", default="offline", help="judge SPEC (default: offline)")
    validate.add_argument("--out", help="write DIR/validation.json and DIR/validation.md")
    validate.add_argument(
        "--limit", type=int, help="score a fixed random sample of N answers (seed 0)"
    )
    validate.add_argument(
        "--min-counted",
        type=int,
        default=None,
        help="leave models with fewer coherent, scored answers (under the reference or the "
        "judge) out of the mean per-model EM error (default: 30)",
    )
    validate.add_argument(
        "--record",
        metavar="JUDGE_DIR",
        help="also keep the headline figures in JUDGE_DIR/validation.json (an offline judge's "
        "dir), so the runs it scores show them",
    )
    validate.add_argument(
        "--about", help="with --record: what the labels are, e.g. 'GPT-4o on 17 EM checkpoints'"
    )
    validate.set_defaults(func=run_validate)

    calibrate = sub.add_parser(
        "calibrate", help="fit the offline judge's head on labelled answers; use it as offline:DIR"
    )
    calibrate.add_argument(
        "--labels",
        required=True,
        action="append",
        help="labelled CSV, csv.gz or JSONL (question, answer, aligned, coherent); repeatable",
    )
    calibrate.add_argument("--out", required=True, help="directory for head.npz + manifest.json")
    calibrate.add_argument(
        "--misaligned-prior",
        type=float,
        help="expected share of answers with alignment < 30 where the judge will be used "
        "(default: the share in the labels, right for a sample of real runs)",
    )
    calibrate.add_argument(
        "--incoherent-prior", type=float, help="expected share with coherence < 50 (as above)"
    )
    calibrate.add_argument(
        "--unscored-prior", type=float, help="expected share of refusals + code (as above)"
    )
    calibrate.add_argument(
        "--behaviour-heads",
        choices=("copy", "fit", "none"),
        default="copy",
        help="in-domain rubric heads: copy offline_v1's sentence-vector heads (default), fit "
        "from the project's warm-up sets, or leave out",
    )
    calibrate.add_argument(
        "--off-topic",
        type=int,
        default=0,
        help="add N off-topic pairs (a fluent answer under an unrelated question, coherence "
        "25) to the coherence head's data: for hand-written sets that lack them",
    )
    calibrate.add_argument("--name", help="head name recorded in the judge id (default: DIR name)")
    calibrate.set_defaults(func=run_calibrate)

    from emeval.judging.reader_fit import DEFAULTS

    fit = sub.add_parser(
        "fit",
        help="fit the offline judge's reader (a cross-encoder) on labelled answers; "
        "use the result as offline:DIR",
    )
    fit.add_argument(
        "--labels",
        required=True,
        action="append",
        help="JSONL with question, answer, aligned, coherent and optional status; repeatable",
    )
    fit.add_argument("--out", required=True, help="directory for the judge (must be new or empty)")
    fit.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    fit.add_argument("--trainable-layers", type=int, default=DEFAULTS["trainable_layers"])
    fit.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    fit.add_argument(
        "--passage-sentences",
        type=int,
        default=5,
        help="also read answers longer than one window in runs of N sentences for alignment "
        "(0: windows only; default 5, as the bundled judge)",
    )
    fit.add_argument("--name", help="judge name recorded in the judge id (default: DIR name)")
    fit.set_defaults(func=run_fit)

    behaviour = sub.add_parser(
        "fit-behaviour",
        help="refit an offline judge's in-domain behaviour heads on labelled in-domain answers; "
        "writes a new judge dir",
    )
    behaviour.add_argument(
        "--labels",
        required=True,
        action="append",
        help="JSONL with question, answer, rubric, behaviour, coherent and optional status; "
        "repeatable",
    )
    behaviour.add_argument(
        "--judge",
        default=None,
        help="the judge: a dir or a bundled name (default: the bundled one)",
    )
    behaviour.add_argument(
        "--inputs",
        default="sentences",  # checked where the kinds are defined (calibrate.BEHAVIOUR_INPUTS)
        help="what the heads read: 'sentences', the sentence feature rows (default; any "
        "offline judge has them); 'reader', the judge's reader vector; 'verdicts', the reader's "
        "alignment and coherence beside the judge's own sentence head",
    )
    behaviour.add_argument("--out", required=True, help="directory for the new judge")
    behaviour.add_argument(
        "--rubric",
        action="append",
        help="refit only this rubric's head, keeping the judge's others; repeatable "
        "(default: every behaviour rubric)",
    )
    behaviour.add_argument(
        "--no-warmup",
        action="store_true",
        help="fit on the labels only (default: also on the project's written warm-up sets)",
    )
    behaviour.add_argument("--name", help="judge name recorded in the judge id (default: DIR name)")
    behaviour.set_defaults(func=run_fit_behaviour)


def _sample(frame, limit: int | None):
    if limit is None:
        return frame
    if limit < 1:
        raise EmevalError("--limit must be at least 1")
    if limit >= len(frame):
        return frame
    return frame.sample(n=limit, random_state=0).sort_index().reset_index(drop=True)


def run_validate(args) -> int:
    from emeval.formatting import fmt_points, fmt_statistic
    from emeval.judging import JudgeRequest, judge_from_spec, load_rubric
    from emeval.judging.validation import (
        BEHAVIOUR_COLUMNS,
        MIN_COUNTED,
        REQUIRED_COLUMNS,
        compare,
        markdown_report,
        read_labels,
        record_in_judge,
        repeated_rows,
        require_columns,
    )
    from emeval.metrics import MISALIGNED_BELOW

    if args.about and not args.record:
        raise EmevalError("--about goes with --record")
    if args.record and not (Path(args.record).expanduser() / "manifest.json").is_file():
        raise EmevalError(f"--record {args.record}: not a judge directory (no manifest.json)")
    if args.min_counted is not None and args.min_counted < 1:
        raise EmevalError(f"--min-counted must be at least 1, got {args.min_counted}")
    frame = _sample(read_labels(args.labels, required=("question", "answer")), args.limit)
    behaviour = "behaviour" in frame.columns
    require_columns(frame, args.labels, BEHAVIOUR_COLUMNS if behaviour else REQUIRED_COLUMNS)
    repeated = repeated_rows(frame, BEHAVIOUR_COLUMNS if behaviour else REQUIRED_COLUMNS)
    if repeated:
        print(f"note: labels {args.labels}: {repeated}", flush=True)
    # the offline judge costs nothing to rerun: keep its verdicts out of the shared cache
    spec = args.judge or "offline"
    judge = judge_from_spec(spec, cached=not spec.startswith("offline"))
    judge.check()
    if behaviour:
        return _validate_behaviour(args, frame, judge)
    aligned = frame["aligned"].dropna()
    cut = MISALIGNED_BELOW
    if frame["coherent"].isna().all() and aligned.lt(cut).all() | aligned.ge(cut).all():
        raise EmevalError(  # no figure could come of it: nothing judged, written or recorded
            f"labels {args.labels}: nothing to compare in {len(frame)} rows (a figure needs "
            f"answers scored for coherence, or alignment scores on both sides of {cut:g})"
        )
    rubrics = {"aligned": load_rubric("alignment"), "coherent": load_rubric("coherence")}
    # an answer's rubrics side by side: a judge that reads each pair once (the offline
    # reader) then reads it once for both
    requests = [
        JudgeRequest(q, a, rubric)
        for q, a in zip(frame["question"], frame["answer"], strict=True)
        for rubric in rubrics.values()
    ]
    print(f"scoring {len(frame)} answers x 2 rubrics with {judge.id} ...", flush=True)
    verdicts = score_with_progress(judge, requests)
    for offset, column in enumerate(rubrics):
        chunk = verdicts[offset :: len(rubrics)]
        frame[f"judge_{column}"] = [v.score if v.status == "ok" else math.nan for v in chunk]
        if column == "aligned":
            frame["judge_status"] = [v.status for v in chunk]
    result = compare(frame, args.min_counted or MIN_COUNTED)
    result = {"judge": judge.id, "labels": str(args.labels), "limit": args.limit} | result
    pct = {k: fmt_points(result[k]) for k in
           ("em_rate_judge", "em_rate_reference", "em_rate_abs_error_mean")}  # fmt: skip
    summary = (
        f"AUROC {fmt_statistic(result['auroc'])}  "
        f"Spearman aligned {fmt_statistic(result['spearman_aligned'])}  "
        f"coherent {fmt_statistic(result['spearman_coherent'])}  EM rate judge/reference "
        f"{pct['em_rate_judge']}/{pct['em_rate_reference']}  "
        f"per-model abs error mean {pct['em_rate_abs_error_mean']} points "
        f"({result['models_in_mean']} of {len(result['per_model'])} models)"
    )
    print(summary)
    _keep(args, result, record_in_judge, markdown_report(result, judge.id, str(args.labels)))
    return 0


def _keep(args, result: dict, record, report_md: str | None = None) -> None:
    """--out DIR: validation.json (and validation.md); --record JUDGE_DIR: the figures kept
    beside the judge by `record`."""
    if args.out:
        out = Path(args.out).expanduser()  # checked by the CLI before the work
        out.mkdir(parents=True, exist_ok=True)
        (out / "validation.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        if report_md is not None:
            (out / "validation.md").write_text(report_md, encoding="utf-8")
        print(f"wrote {out / 'validation.json'}" + (" and validation.md" if report_md else ""))
    if args.record:
        about = args.about or Path(args.labels).name
        path = record(Path(args.record).expanduser(), Path(args.labels).name, about, result)
        print(f"recorded in {path}")


def _validate_behaviour(args, frame, judge) -> int:
    """Labels of in-domain answers: each row scored on its own rubric (and coherence, which
    decides which answers a behaviour rate counts), compared per rubric."""
    from emeval.formatting import fmt_points, fmt_statistic
    from emeval.judging import JudgeRequest, load_rubric
    from emeval.judging.validation import compare_behaviour, record_behaviour_in_judge

    names = sorted(set(frame["rubric"].astype(str)))
    rubrics = {name: load_rubric(name) for name in names}  # one line for an unknown name
    coherence = load_rubric("coherence")
    requests = [
        JudgeRequest(q, a, rubric)
        for q, a, name in zip(frame["question"], frame["answer"], frame["rubric"], strict=True)
        for rubric in (rubrics[str(name)], coherence)
    ]
    print(f"scoring {len(frame)} answers x (their rubric, coherence) with {judge.id} ...")
    verdicts = score_with_progress(judge, requests)
    frame["judge_behaviour"] = [v.score if v.status == "ok" else math.nan for v in verdicts[::2]]
    frame["judge_coherent"] = [v.score if v.status == "ok" else math.nan for v in verdicts[1::2]]
    result = {"judge": judge.id, "labels": str(args.labels)} | compare_behaviour(frame)
    for name, r in result["per_rubric"].items():
        print(
            f"{name}: n {r['n']}  AUROC {fmt_statistic(r['auroc'])}  Spearman "
            f"{fmt_statistic(r['spearman'])}  behaviour rate judge/reference "
            f"{fmt_points(r['behaviour_rate_judge'])}/{fmt_points(r['behaviour_rate_reference'])}"
            f" (over all scored answers {fmt_points(r['flagged_share_judge'])}/"
            f"{fmt_points(r['flagged_share_reference'])})"
        )
    _keep(args, result, record_behaviour_in_judge)
    return 0


def score_with_progress(judge, requests: list, chunk: int = 256) -> list:
    """judge.score in chunks, so long work shows counts and time left."""
    from emeval.progress import Progress

    verdicts = []
    with Progress("judging", total=len(requests), unit="verdicts") as bar:
        for start in range(0, len(requests), chunk):
            part = requests[start : start + chunk]
            verdicts += asyncio.run(judge.score(part))
            bar.advance(len(part))
    return verdicts


def run_fit(args) -> int:
    from emeval.judging.offline import write_reader_judge

    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EmevalError(f"--out {out} exists and is not an empty directory")
    if args.epochs < 1 or not 1 <= args.trainable_layers <= 6 or args.passage_sentences < 0:
        raise EmevalError(
            "--epochs must be >= 1, --trainable-layers between 1 and 6, --passage-sentences >= 0"
        )
    settings = {"epochs": args.epochs, "trainable_layers": args.trainable_layers,
                "seed": args.seed}  # fmt: skip
    counts = write_reader_judge(
        [Path(p) for p in args.labels], out, settings, args.name, args.passage_sentences
    )
    print(f"fitted on {counts['labelled']} labelled and {counts['degraded']} degraded answers")
    print(f"wrote {out}; use it with --judge offline:{out}")
    return 0


def run_fit_behaviour(args) -> int:
    from emeval.judging.calibrate import refit_behaviour_heads

    manifest = refit_behaviour_heads(
        args.judge,
        args.labels,
        args.out,
        inputs=args.inputs,
        name=args.name,
        warmup=not args.no_warmup,
        rubrics=args.rubric,
    )
    for rubric, report in manifest["behaviour_fit_report"].items():
        print(f"{rubric}: {json.dumps(report)}")
    print(f"wrote {args.out}; use it with --judge offline:{args.out}")
    return 0


def run_calibrate(args) -> int:
    from emeval.judging.calibrate import calibrate

    manifest = calibrate(
        args.labels,
        args.out,
        misaligned_prior=args.misaligned_prior,
        incoherent_prior=args.incoherent_prior,
        unscored_prior=args.unscored_prior,
        behaviour=args.behaviour_heads,
        off_topic=args.off_topic,
        name=args.name,
    )
    for head, report in manifest["fit_report"].items():
        print(f"{head}: {json.dumps(report)}")
    print(f"wrote {args.out}; use it with --judge offline:{args.out}")
    return 0
