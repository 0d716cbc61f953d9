"""`emeval leaderboard publish`: add runs to a static leaderboard site."""

from __future__ import annotations

import sys
from pathlib import Path

from emeval.errors import EmevalError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("leaderboard", help="publish runs to a static leaderboard site")
    sub = p.add_subparsers(dest="leaderboard_command", metavar="ACTION", required=True)
    pub = sub.add_parser(
        "publish",
        help="add runs to SITE (index.html, leaderboard.json, a page per model)",
        description="Add complete runs to the static site in --site: entries are merged into "
        "SITE/leaderboard.json (never dropped; the same model, suite, judge and sampling "
        "replaces its old entry), pages are rebuilt in a temporary dir and swapped in whole.",
    )
    pub.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    pub.add_argument("--site", type=Path, required=True, help="site directory")
    pub.set_defaults(func=publish_command)


def publish_command(args) -> int:
    from emeval.reporting import find_runs, publish

    runs = find_runs(args.run_dirs)
    for run in runs:
        if not run.complete:
            print(f"emeval: skipping incomplete run {run.path}", file=sys.stderr)
    runs = [r for r in runs if r.complete]
    if not runs:
        raise EmevalError("no complete runs to publish")
    counts = publish(runs, args.site)
    print(
        f"published {counts['added']} new and {counts['replaced']} updated entries; "
        f"{counts['total']} in all: {args.site / 'index.html'}"
    )
    return 0
