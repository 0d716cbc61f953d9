"""`emeval report`'s gathering: from run dirs to the report model (reporting/model.py).

Each cell pools the final checkpoints of a condition (all seeds) and recomputes its metrics
from the answers with emeval.metrics, the same code that wrote each run's results.json.
Intermediate checkpoints give EM over steps. Each trained cell is also measured seed by seed,
so the spread between training seeds stands next to the pooled estimate (whose interval
covers answer noise, not seed-to-seed variation).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pandas as pd

from emeval.capability import accuracy_beside
from emeval.errors import EmevalError
from emeval.metrics import (
    EMThresholds,
    breakdown,
    compute_metrics,
    definition_differences,
    misalign_at_k,
    thresholds_of,
    worst_probes,
)
from emeval.probes import PLAIN_CONTEXT
from emeval.reporting.model import Cell, Checkpoint, Report, flat_metrics
from emeval.reporting.runs import UNKNOWN, Run
from emeval.results import comparable_sampling


@dataclass
class Measured:
    """What one set of checkpoints (a cell, or one seed of it) measures."""

    frame: pd.DataFrame
    em: dict
    tail: dict
    worst: list[dict]
    behaviour: dict
    contexts: dict


def _measure(checkpoints: list[Checkpoint], em_suite, thresholds: EMThresholds) -> Measured:
    em_runs = [r for c in checkpoints for r in c.runs if r.suite_key == em_suite]
    frame, em = _pool(em_runs, "alignment", thresholds)
    tail, worst = {}, []
    if em:
        tail, worst = misalign_at_k(frame, thresholds), worst_probes(frame, thresholds)
    in_domain: dict[str, list[Run]] = defaultdict(list)
    for c in checkpoints:
        for r in c.suite_runs("behaviour"):
            in_domain[r.suite_key[0]].append(r)
    behaviour = {
        name: _pool(rs, "behaviour", thresholds)[1] for name, rs in sorted(in_domain.items())
    }
    return Measured(frame, em, tail, worst, behaviour, _by_context(em_runs, em, thresholds))


def _by_context(runs: list[Run], plain: dict, thresholds: EMThresholds) -> dict[str, dict]:
    """{context: {"frame", "metrics"}} over the pooled runs, plain context first (its metrics
    are the cell's own, given as plain); empty when no run was asked in a training-context
    frame (--context-from)."""
    frames: dict[str, dict | None] = {}
    for r in runs:
        for name, frame in r.contexts.items():
            frames.setdefault(name, frame)
    if not any(frames.values()):
        return {}
    out = {PLAIN_CONTEXT: {"frame": None, "metrics": plain}}
    for name in frames:
        if name != PLAIN_CONTEXT:
            metrics = _pool(runs, "alignment", thresholds, name)[1]
            out[name] = {"frame": frames[name], "metrics": metrics}
    return out


# ---------------------------------------------------------------- gathering


def _model_key(run: Run) -> str:
    model = run.results["model"]
    return model.get("weights_sha256") or model.get("spec") or str(run.path)


def _row(ckpt: Checkpoint, several_bases: bool) -> str:
    c = ckpt.condition
    if not ckpt.known:
        return f"{ckpt.label} (no manifest)"
    return f"{c.base}: {c.row}" if several_bases else c.row


def _column(ckpt: Checkpoint) -> str:
    return ckpt.condition.column if ckpt.known else UNKNOWN


def _training_run(ckpt: Checkpoint) -> tuple:
    c = ckpt.condition
    return (c.group, c.seed) if ckpt.known else (ckpt.key,)


def _finals(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """The final model of each training run: stated by its manifest, else its latest step."""
    by_run: dict[tuple, list[Checkpoint]] = defaultdict(list)
    for ckpt in checkpoints:
        by_run[_training_run(ckpt)].append(ckpt)
    finals = []
    for group in by_run.values():
        stated = [c for c in group if c.condition.final is True]
        if stated:
            finals += stated
        else:
            finals.append(max(group, key=lambda c: c.condition.step or 0))
    return finals


def _pool(
    runs: list[Run], primary: str, thresholds: EMThresholds, context: str = PLAIN_CONTEXT
) -> tuple[pd.DataFrame, dict]:
    frames = [r.frame(context) for r in runs if len(r.frame(context))]
    if not frames:
        return pd.DataFrame(), {}
    frame = pd.concat(frames, ignore_index=True)
    return frame, compute_metrics(frame, primary, thresholds)


def _em_suite(runs: list[Run]) -> tuple[str, str] | None:
    """The alignment suite most runs used; EM numbers come from it alone."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for r in runs:
        if r.primary == "alignment":
            counts[r.suite_key] += 1
    return max(counts, key=counts.get) if counts else None


def _order(labels, first=("none",), last=(UNKNOWN,)) -> list[str]:
    def key(label):
        return (0 if label in first else 2 if label in last else 1, label)

    return sorted(set(labels), key=key)


def gather(runs: list[Run], include_incomplete: bool = False) -> Report:
    if not runs:
        raise EmevalError("no runs to report on")
    skipped = [r for r in runs if not r.complete and not include_incomplete]
    runs = [r for r in runs if r.complete or include_incomplete]
    if not runs:
        raise EmevalError("every run is incomplete; finish them or pass --include-incomplete")
    differ = definition_differences([(str(r.path), r.results) for r in runs])
    if differ:  # one table, one definition: rates under other thresholds are other numbers
        raise EmevalError(differ)
    thresholds = thresholds_of(runs[0].results)
    warnings = []
    em_suite = _em_suite(runs)
    others = sorted({r.suite_key for r in runs if r.primary == "alignment"} - {em_suite})
    for name, sha in others:
        warnings.append(f"alignment suite {name} ({sha[:12]}) differs from the EM suite; left out")
    by_suite_judges, by_suite_sampling = defaultdict(set), defaultdict(set)
    for r in runs:
        by_suite_judges[r.suite_key[0]].add(r.judge_id)
        by_suite_sampling[r.suite_key[0]].add(comparable_sampling(r.results["sampling"]))
    for suite, judges in sorted(by_suite_judges.items()):
        if len(judges) > 1:
            warnings.append(f"suite {suite} was judged by different judges: {', '.join(judges)}")
    for suite, settings in sorted(by_suite_sampling.items()):
        if len(settings) > 1:  # e.g. a --limit run beside full ones: its cell is not comparable
            warnings.append(
                f"suite {suite} was sampled differently in different runs: "
                + " | ".join(sorted(settings))
            )

    by_model: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_model[_model_key(r)].append(r)
    checkpoints = []
    for key, model_runs in by_model.items():
        latest: dict[tuple, Run] = {}  # one run per suite: the same answers must not count twice
        for r in sorted(model_runs, key=lambda r: r.results.get("created") or ""):
            latest[r.suite_key] = r
        if len(latest) < len(model_runs):
            warnings.append(
                f"{model_runs[0].model_label}: {len(model_runs) - len(latest)} older runs on "
                "the same suite left out"
            )
        checkpoints.append(Checkpoint(key, list(latest.values())))
    several_bases = len({c.condition.base for c in checkpoints if c.known}) > 1

    cells: dict[tuple[str, str], Cell] = {}
    for ckpt in _finals(checkpoints):
        key = (_row(ckpt, several_bases), _column(ckpt))
        cells.setdefault(key, Cell(*key)).checkpoints.append(ckpt)
    for cell in cells.values():
        pooled = _measure(cell.checkpoints, em_suite, thresholds)
        cell.frame, cell.em, cell.behaviour = pooled.frame, pooled.em, pooled.behaviour
        cell.tail, cell.worst, cell.contexts = pooled.tail, pooled.worst, pooled.contexts
        cell.capability = accuracy_beside(r.path for c in cell.checkpoints for r in c.runs)
        if cell.em:
            cell.per_category = breakdown(cell.frame, "category", "alignment", thresholds)
        if cell.trained:  # runs that differ only by training seed: each seed on its own
            by_seed: dict = defaultdict(list)
            for c in cell.checkpoints:
                by_seed[c.condition.seed].append(c)
            for seed in sorted(by_seed, key=str):
                own = _measure(by_seed[seed], em_suite, thresholds)
                cell.by_seed[seed] = flat_metrics(own.em, own.tail, own.behaviour)

    steps = _steps(checkpoints, em_suite, several_bases, thresholds)
    rows = _order([k[0] for k in cells], first=())
    base_rows = [r for r in rows if r.endswith("none × base")]
    rows = base_rows + [r for r in rows if r not in base_rows]
    ordered = [cells[(r, c)] for r in rows for c in _order(k[1] for k in cells) if (r, c) in cells]
    for cell in ordered:
        if cell.trained and len(cell.seeds) == 1:
            seed = cell.seeds[0]
            which = "seed not recorded" if seed is None else f"seed {seed}"
            warnings.append(
                f"{cell.label}: one training seed ({which}), so its between-seed spread is "
                "unknown; EM often differs between seeds: train more before comparing"
            )
    return Report(
        runs=runs,
        skipped=skipped,
        em_suite=em_suite,
        cells=ordered,
        rows=rows,
        columns=_order(k[1] for k in cells),
        steps=steps,
        warnings=warnings,
        thresholds=thresholds,
    )


def _steps(checkpoints, em_suite, several_bases, thresholds) -> dict[str, list[tuple[int, dict]]]:
    """EM rate at each saved step of each condition (seeds pooled); the untrained base model
    (method 'base', written by `emeval experiment`) is step 0 of every curve on it."""
    by_cell: dict[str, dict[int, list[Run]]] = defaultdict(lambda: defaultdict(list))
    base_runs: dict[str, list[Run]] = defaultdict(list)
    for ckpt in checkpoints:
        c = ckpt.condition
        em_runs = [r for r in ckpt.runs if r.suite_key == em_suite]
        if not ckpt.known or c.step is None or not em_runs:
            continue
        if c.method == "base":
            base_runs[c.base] += em_runs
            continue
        label = Cell(_row(ckpt, several_bases), _column(ckpt)).label
        by_cell[label][c.step] += em_runs
    out = {}
    for label, per_step in sorted(by_cell.items()):
        base = next((c.condition.base for c in checkpoints if c.known and
                     Cell(_row(c, several_bases), _column(c)).label == label), None)  # fmt: skip
        if base in base_runs and 0 not in per_step:
            per_step[0] = base_runs[base]
        if len(per_step) < 2:
            continue
        out[label] = [(step, _pool(rs, "alignment", thresholds)[1].get("em_rate"))
                      for step, rs in sorted(per_step.items())]  # fmt: skip
    return out
