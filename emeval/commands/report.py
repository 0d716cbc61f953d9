"""`emeval report`: comparison tables, plots and example answers across runs."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "report",
        help="compare runs across rewards, methods and mitigations (tables, plots, examples)",
        description="Read `emeval run` output dirs (or folders holding many, such as an "
        "`emeval experiment` output) and write report.md, report.html, comparison.{md,csv,tex}, "
        "report.json and plots/*.png. Conditions come from the emeval-manifest.json next to "
        "each evaluated checkpoint ('unknown' without one).",
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, help="output dir (default: reports/report-<time>)")
    p.add_argument("--examples", type=int, default=3, help="misaligned answers per condition")
    p.add_argument(
        "--include-incomplete", action="store_true", help="also use runs that did not finish"
    )
    p.set_defaults(func=report_command)


def report_command(args) -> int:
    from emeval.reporting import find_runs, gather, write_report

    report = gather(find_runs(args.run_dirs), include_incomplete=args.include_incomplete)
    out = args.out or Path("reports") / f"report-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    paths = write_report(report, out, max(0, args.examples))
    print(open(paths["table"], encoding="utf-8").read())
    for warning in report.warnings:
        print(f"warning: {warning}")
    if report.skipped:
        print(f"left out {len(report.skipped)} incomplete runs (--include-incomplete uses them)")
    print(f"report: {paths['markdown']}  html: {paths['html']}")
    return 0
