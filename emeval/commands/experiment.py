"""`emeval experiment GRID.yaml`: train, evaluate and report a grid of conditions."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="train a grid of base x method x reward x mitigation x seed, evaluate, report",
        description="Run the grid in GRID.yaml (see experiments/): each cell trains, then every "
        "saved checkpoint is evaluated with the grid's suite and judge, then a report is "
        "written to OUT/report. Each cell runs in a process of its own, so memory does not "
        "grow from cell to cell. Re-running skips finished cells and checkpoints; a failed cell "
        "is reported and the rest go on (exit 1 if any failed).",
    )
    p.add_argument("grid", type=Path, metavar="GRID.yaml")
    p.add_argument("--out", type=Path, help="output dir (default: reports/experiments/<name>)")
    p.add_argument("--list", action="store_true", help="list the cells and exit")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a grid key, e.g. --set evaluation.judge=offline:DIR (repeatable)",
    )
    p.add_argument(
        "--capability-task",
        metavar="NAME",
        help="measure benign capability with this Inspect task (e.g. inspect_evals/"
        "mmlu_0_shot) instead of emeval's own check; same as --set evaluation.capability=NAME",
    )
    p.set_defaults(func=experiment_command)


def experiment_command(args) -> int:
    from emeval.experiment import Experiment, default_out
    from emeval.grid import load_grid
    from emeval.rundir import ExperimentDir

    overrides = list(args.overrides)
    if args.capability_task:
        overrides.append(f"evaluation.capability={args.capability_task}")
    grid = load_grid(args.grid, overrides)
    out = args.out or default_out(grid)
    if args.list:
        for cell in grid.cells:
            note = f"  (invalid: {cell.error})" if cell.error else ""
            print(f"{cell.name}{note}")
        print(f"{len(grid.cells)} cells; output: {out}")
        return 0
    experiment = Experiment(grid, out)
    status = experiment.run()
    report = experiment.report()
    print(f"\n{'cell':<60} state")
    for name, entry in status.items():
        error = f"  {entry['error']}" if entry.get("state") == "failed" else ""
        print(f"{name:<60} {entry.get('state')}{error}")
    print(f"\nstatus: {ExperimentDir(out).status}")
    if report:
        print(f"report: {report}")
    failed = [n for n, e in status.items() if e.get("state") == "failed"]
    return 1 if failed else 0
