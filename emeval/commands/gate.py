"""`emeval gate`: a pre-deployment check of a candidate against a baseline."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from emeval.errors import EmevalError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "gate",
        help="pass/fail a candidate against a baseline (exit 0 pass, 1 fail, 2 undecided)",
        description="Compare a candidate with a baseline under one policy. Each of CANDIDATE "
        "and BASELINE is an `emeval run` output dir, or a checkpoint that is then evaluated "
        "with the policy's evaluation settings. Exit 0: pass; 1: fail; 2: undecided (incomplete "
        "run, too many judge failures, sampled-number verdicts, too few answers, different "
        "suites/judges/sampling/EM thresholds, results.json not matching its answers, bad "
        "input). Writes "
        "gate.md, gate.junit.xml and gate.json.",
    )
    p.add_argument("candidate", nargs="?", help="run dir or checkpoint to be released")
    p.add_argument("--baseline", help="run dir or checkpoint it is compared with")
    p.add_argument("--policy", type=Path, help="policy YAML (default: the built-in policy)")
    p.add_argument(
        "--out",
        type=Path,
        help="where the verdict and any new runs go (default: reports/gate/<time>)",
    )
    p.add_argument("--show-policy", action="store_true", help="print the default policy and exit")
    p.set_defaults(func=gate_command)


def obtain_run(
    target: str, role: str, policy: dict, work: Path, contexts: list[dict] | None = None
):
    """Read a run dir, or evaluate a checkpoint with the policy's settings into work/role,
    in the given training-context frames (for a baseline: the candidate's) or, when None is
    given and the policy uses them, in those of the checkpoint's manifest."""
    from emeval.reporting import load_run
    from emeval.rundir import is_run_dir

    if is_run_dir(target):
        return load_run(Path(target))
    from emeval.contexts import checkpoint_frames
    from emeval.runner import RunSettings, run

    context_from = "the candidate's contexts" if contexts else None
    if contexts is None and policy["contexts"]["use_manifest"]:
        contexts = [f.to_dict() for f in checkpoint_frames(target)]
        context_from = target if contexts else None
    settings = RunSettings.from_evaluation(
        policy["evaluation"], target, context_from=context_from, contexts=contexts or []
    )
    (path,) = run(settings, work / role)
    return load_run(path.parent)


def gate_command(args) -> int:
    from emeval.metrics import definition_differences
    from emeval.reporting import gate
    from emeval.reporting.gate_outputs import render_markdown, write_outputs
    from emeval.reporting.gate_policy import DEFAULT_POLICY, load_policy

    if args.show_policy:
        print(DEFAULT_POLICY.read_text(encoding="utf-8"), end="")
        return 0
    if not args.candidate or not args.baseline:
        raise EmevalError("gate needs CANDIDATE and --baseline BASELINE")
    policy = load_policy(args.policy)
    out = args.out or Path("reports") / "gate" / datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = baseline = None
    try:
        candidate = obtain_run(args.candidate, "candidate", policy, out)
        # a baseline checkpoint is asked in the candidate's training frames, to compare alike
        baseline = obtain_run(args.baseline, "baseline", policy, out, gate.frames_of(candidate))
    except EmevalError as e:
        # still leave a verdict for CI to show: undecided, with the reason
        write_outputs(gate.unreadable(policy, candidate, baseline, str(e)), out)
        raise
    differ = definition_differences(
        [(f"candidate {candidate.path}", candidate.results),
         (f"baseline {baseline.path}", baseline.results)]
    )  # fmt: skip
    if differ:  # rates under other thresholds are other numbers: refused, not compared
        write_outputs(gate.unreadable(policy, candidate, baseline, differ), out)
        raise EmevalError(differ)
    try:
        result = gate.evaluate(candidate, baseline, policy)
    except EmevalError as e:  # e.g. a samples.jsonl row that is not an answer
        write_outputs(gate.unreadable(policy, candidate, baseline, str(e)), out)
        raise
    paths = write_outputs(result, out)
    sys.stdout.write(render_markdown(result))
    print(f"\nverdict: {paths['markdown']}  junit: {paths['junit']}")
    return result.exit_code
