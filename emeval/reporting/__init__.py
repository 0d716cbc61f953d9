"""Turning finished runs into products: gate verdicts, comparison reports, leaderboards.

The public face: finding and loading runs (runs.py), the gate's policy and verdict (gate.py),
gathering a report (gather.py) and writing it (report.py), and publishing a leaderboard
(leaderboard.py)."""

from emeval.reporting.gate import evaluate
from emeval.reporting.gate_policy import load_policy
from emeval.reporting.gather import gather
from emeval.reporting.leaderboard import publish
from emeval.reporting.report import write_report
from emeval.reporting.runs import Run, find_runs, load_run

__all__ = [
    "Run",
    "evaluate",
    "find_runs",
    "gather",
    "load_policy",
    "load_run",
    "publish",
    "write_report",
]
