"""The report model: what `emeval report` gathered (reporting/gather.py) and every writer
(reporting/writers/) shows. Rows are reward x method, columns mitigations; each Cell pools the
final checkpoints of a condition, all seeds, and keeps each seed's own metrics beside them.

To show something new, derive it from these dataclasses in reporting/tables.py (text tables
every page shares) or in the writer that alone shows it; a number that must be computed from
the answers belongs on Cell, filled in by gather.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from emeval.metrics import DEFAULT_THRESHOLDS, EMThresholds
from emeval.reporting.runs import UNKNOWN, Run


@dataclass
class Checkpoint:
    """One evaluated model and its runs, one per suite."""

    key: str
    runs: list[Run]

    @property
    def condition(self):
        return self.runs[0].condition

    @property
    def label(self) -> str:
        return self.runs[0].model_label

    @property
    def known(self) -> bool:
        return self.condition.source != "none"

    def suite_runs(self, primary: str) -> list[Run]:
        return [r for r in self.runs if r.primary == primary]


@dataclass
class Cell:
    row: str
    column: str
    checkpoints: list[Checkpoint] = field(default_factory=list)
    em: dict = field(default_factory=dict)  # metrics of the pooled EM-suite answers
    behaviour: dict = field(default_factory=dict)  # suite name -> metrics (in-domain)
    per_category: list[dict] = field(default_factory=list)
    frame: pd.DataFrame | None = None
    tail: dict = field(default_factory=dict)  # misalign_at_k of the pooled EM-suite answers
    worst: list[dict] = field(default_factory=list)  # worst probes of the pooled answers
    by_seed: dict = field(default_factory=dict)  # training seed -> flat metrics (trained cells)
    capability: dict | None = None  # pooled capability-check accuracy (emeval/capability.py)
    contexts: dict = field(default_factory=dict)  # context -> {frame, metrics} (--context-from)

    @property
    def label(self) -> str:
        return self.row if self.column in ("none", UNKNOWN) else f"{self.row} | {self.column}"

    @property
    def seeds(self) -> list:
        return sorted({c.condition.seed for c in self.checkpoints}, key=str)

    @property
    def trained(self) -> bool:
        """A grid cell: a trained condition (not the untrained base, not an unknown model),
        whose seeds can differ."""
        cond = self.checkpoints[0].condition
        return cond.source != "none" and cond.method != "base"

    def metrics(self) -> dict[str, dict]:
        """Every pooled number of the cell, flat (see flat_metrics)."""
        return flat_metrics(self.em, self.tail, self.behaviour)

    def spread(self) -> dict[str, dict]:
        """name -> {"by_seed": {seed: value}, "range": [min, max]} over the seeds' own values
        (trained cells only; a metric no seed could measure has range [None, None])."""
        out = {}
        for name in self.metrics():
            values = {seed: m.get(name, {}).get("value") for seed, m in self.by_seed.items()}
            measured = [v for v in values.values() if v is not None]
            span = [min(measured), max(measured)] if measured else [None, None]
            out[name] = {"by_seed": values, "range": span}
        return out


@dataclass
class Report:
    runs: list[Run]
    skipped: list[Run]
    em_suite: tuple[str, str] | None
    cells: list[Cell]
    rows: list[str]
    columns: list[str]
    steps: dict[str, list[tuple[int, dict]]]  # cell label -> [(step, em metric)]
    warnings: list[str]
    thresholds: EMThresholds = DEFAULT_THRESHOLDS  # the one EM definition of every run

    def grid(self) -> dict[tuple[str, str], Cell]:
        """(row, column) -> cell, for the comparison table."""
        return {(c.row, c.column): c for c in self.cells}

    def ks(self) -> list[str]:
        """Every k of misalign@k that some cell reports, in order."""
        return sorted({k for c in self.cells for k in c.tail}, key=int)

    def metric_names(self) -> list[str]:
        """Every flat metric name some cell reports, in one order (CSV columns, spread)."""
        suites = sorted({name for c in self.cells for name in c.behaviour})
        names = [*EM_METRICS, *(f"misalign_at_{k}" for k in self.ks())]
        names += [f"{suite}_{name}" for suite in suites for name in BEHAVIOUR_METRICS]
        present = {name for c in self.cells for name in c.metrics()}
        return [name for name in names if name in present]


EM_METRICS = ("em_rate", "em_rate_joint", "misaligned_rate", "coherence_rate", "invalid_rate",
              "mean_alignment", "mean_coherence")  # fmt: skip
BEHAVIOUR_METRICS = ("behaviour_rate", "mean_behaviour")


def flat_metrics(em: dict, tail: dict, behaviour: dict) -> dict[str, dict]:
    """One name per number a cell reports: the EM-suite metrics, misalign_at_<k> and
    <suite>_behaviour_rate / <suite>_mean_behaviour, each {value, ci, ...}."""
    out = {name: em[name] for name in EM_METRICS if name in em}
    out |= {f"misalign_at_{k}": entry for k, entry in tail.items()}
    for suite, metrics in behaviour.items():
        out |= {f"{suite}_{name}": metrics[name] for name in BEHAVIOUR_METRICS if name in metrics}
    return out


@dataclass(frozen=True)
class Outputs:
    """What every writer is given beside the report: the plots drawn (file names under
    plots/, which the pages show) and how many example answers per condition to quote."""

    plots: list[str]
    n_examples: int
