"""Mitigations judged on four criteria, as the in-training-defence work compares them.

For each reward, one row per mitigation (and training method) with: (a) general EM, the EM
rate on the EM suite; (b) the narrow behaviour still learned, the behaviour rate on the
reward's in-domain suite; (c) benign capability kept, the accuracy of emeval's capability
check (emeval/capability.py) or the Inspect task standing in for it; (d) coherence, the share
of coherent answers on the EM suite. Each with its 95% interval; seeds are pooled as in the
report's cells. The untrained base model is the first row of every table, as the reference.

Capability comes from the checks `emeval experiment` ran beside each checkpoint's suite runs
(Cell.capability, emeval/capability.py); a condition without one shows n/a.
"""

from __future__ import annotations

from dataclasses import dataclass

from emeval.domains import in_domain_suite
from emeval.formatting import NA, fmt_estimate
from emeval.reporting.model import Cell, Report

CRITERIA = {
    "general_em": "(a) general EM",
    "behaviour": "(b) narrow behaviour learned",
    "capability": "(c) capability kept",
    "coherence": "(d) coherent answers",
}
WORDS = (
    "Four criteria per mitigation: (a) the EM rate on the EM suite (lower is better); (b) the "
    "behaviour rate on the reward's in-domain suite, i.e. whether the narrow behaviour the "
    "reward trains was still learned; (c) accuracy on the capability check (log-likelihood "
    "choice among four options; chance 25%), whether benign capability was kept; (d) the "
    "share of coherent answers on the EM suite. 95% intervals: EM and coherence clustered by "
    "probe, capability Wilson. Seeds pooled; the untrained base model is the reference row."
)


@dataclass
class CriteriaRow:
    label: str  # the mitigation (and method when a reward was trained by several)
    seeds: list
    values: dict[str, dict | None]  # criterion -> {"value", "ci", "n", ...} or None
    behaviour_suite: str | None = None


def _behaviour(cell: Cell, reward: str) -> tuple[str | None, dict | None]:
    suite = in_domain_suite(reward)
    if suite is None and len(cell.behaviour) == 1:  # a grid's own in_domain mapping
        suite = next(iter(cell.behaviour))
    metrics = cell.behaviour.get(suite) if suite else None
    return suite, (metrics or {}).get("behaviour_rate")


def _row(cell: Cell, label: str, reward: str) -> CriteriaRow:
    suite, behaviour = _behaviour(cell, reward)
    values = {
        "general_em": cell.em.get("em_rate"),
        "behaviour": behaviour,
        "capability": cell.capability,
        "coherence": cell.em.get("coherence_rate"),
    }
    return CriteriaRow(label, cell.seeds if cell.trained else [], values, suite)


def four_criteria(report: Report) -> dict[str, list[CriteriaRow]]:
    """reward -> rows: the untrained base first, then each mitigation of that reward."""
    trained = [c for c in report.cells if c.trained]
    bases = [c for c in report.cells if c.checkpoints[0].condition.method == "base"]
    tables: dict[str, list[CriteriaRow]] = {}
    for reward in sorted({c.checkpoints[0].condition.reward for c in trained}):
        cells = [c for c in trained if c.checkpoints[0].condition.reward == reward]
        several_methods = len({c.checkpoints[0].condition.method for c in cells}) > 1
        rows = [_row(b, f"base, untrained ({b.checkpoints[0].condition.base})", reward)
                for b in bases]  # fmt: skip
        for cell in cells:
            method = cell.checkpoints[0].condition.method
            label = f"{cell.column} ({method})" if several_methods else cell.column
            rows.append(_row(cell, label, reward))
        tables[reward] = rows
    return tables


def criteria_tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of each reward's table, as text."""
    out = []
    for reward, rows in four_criteria(report).items():
        suites = {r.behaviour_suite for r in rows if r.behaviour_suite}
        behaviour = CRITERIA["behaviour"] + (f" ({', '.join(sorted(suites))})" if suites else "")
        header = ["mitigation", "seeds", CRITERIA["general_em"], behaviour,
                  CRITERIA["capability"], CRITERIA["coherence"]]  # fmt: skip
        lines = [
            [row.label, ", ".join(map(str, row.seeds)) or "–",
             *(fmt_estimate(row.values[k]) if row.values[k] else NA for k in CRITERIA)]
            for row in rows
        ]  # fmt: skip
        out.append((f"reward {reward}", header, lines))
    return out


def criteria_json(report: Report) -> dict:
    """reward -> rows with every criterion's metric, for report.json."""
    return {
        reward: [
            {"mitigation": r.label, "seeds": r.seeds, "behaviour_suite": r.behaviour_suite}
            | r.values
            for r in rows
        ]
        for reward, rows in four_criteria(report).items()
    }
