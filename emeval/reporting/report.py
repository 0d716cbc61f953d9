"""`emeval report`: compare conditions across many runs.

Rows are reward x method, columns mitigations; each cell pools the final checkpoints of a
condition (all seeds) and recomputes its metrics from the answers with emeval.metrics, the
same code that wrote each run's results.json. Intermediate checkpoints give EM over steps.
Each trained cell is also measured seed by seed, so the spread between training seeds stands
next to the pooled estimate (whose interval covers answer noise, not seed-to-seed variation).
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from emeval.errors import EmevalError
from emeval.formatting import NA, fmt_estimate, fmt_points, fmt_value
from emeval.metrics import (
    DEFAULT_THRESHOLDS,
    EMThresholds,
    breakdown,
    compute_metrics,
    definition_differences,
    misalign_at_k,
    thresholds_of,
    worst_probes,
)
from emeval.reporting.runs import UNKNOWN, Run
from emeval.results import judge_trust

EXAMPLE_CHARS = 700


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


EM_METRICS = ("em_rate", "em_rate_joint", "coherence_rate", "invalid_rate", "mean_alignment",
              "mean_coherence")  # fmt: skip
BEHAVIOUR_METRICS = ("behaviour_rate", "mean_behaviour")


def flat_metrics(em: dict, tail: dict, behaviour: dict) -> dict[str, dict]:
    """One name per number a cell reports: the EM-suite metrics, misalign_at_<k> and
    <suite>_behaviour_rate / <suite>_mean_behaviour, each {value, ci, ...}."""
    out = {name: em[name] for name in EM_METRICS if name in em}
    out |= {f"misalign_at_{k}": entry for k, entry in tail.items()}
    for suite, metrics in behaviour.items():
        out |= {f"{suite}_{name}": metrics[name] for name in BEHAVIOUR_METRICS if name in metrics}
    return out


@dataclass
class Measured:
    """What one set of checkpoints (a cell, or one seed of it) measures."""

    frame: pd.DataFrame
    em: dict
    tail: dict
    worst: list[dict]
    behaviour: dict


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
    return Measured(frame, em, tail, worst, behaviour)


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


def _pool(runs: list[Run], primary: str, thresholds: EMThresholds) -> tuple[pd.DataFrame, dict]:
    frames = [r.frame() for r in runs if len(r.frame())]
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
    by_suite_judges = defaultdict(set)
    for r in runs:
        by_suite_judges[r.suite_key[0]].add(r.judge_id)
    for suite, judges in sorted(by_suite_judges.items()):
        if len(judges) > 1:
            warnings.append(f"suite {suite} was judged by different judges: {', '.join(judges)}")

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
        cell.tail, cell.worst = pooled.tail, pooled.worst
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


# ---------------------------------------------------------------- formatting


def _cell_lines(cell: Cell) -> list[str]:
    em = cell.em.get("em_rate")
    lines = [f"EM {fmt_estimate(em)} (n={em['n'] if em else 0})"]
    lines.append(f"coherent {fmt_estimate(cell.em.get('coherence_rate'), ci=False)}")
    for name, m in cell.behaviour.items():
        lines.append(f"{name} behaviour {fmt_estimate(m.get('behaviour_rate'), ci=False)}")
    if cell.trained and len(cell.seeds) > 1:
        low, high = cell.spread().get("em_rate", {}).get("range", [None, None])
        span = NA if low is None else f"{fmt_points(low)}–{fmt_value(high)}"
        lines.append(f"{len(cell.seeds)} seeds: EM {span}")
    elif cell.trained:
        lines.append("1 seed: spread unknown")
    elif len(cell.seeds) > 1:
        lines.append(f"{len(cell.seeds)} seeds")
    return lines


# ---------------------------------------------------------------- tail risk and seed spread


METRIC_NAMES = {"em_rate": "EM rate", "em_rate_joint": "EM rate (joint)",
                "coherence_rate": "coherent answers", "invalid_rate": "invalid answers",
                "mean_alignment": "mean alignment", "mean_coherence": "mean coherence"}  # fmt: skip


def metric_label(name: str) -> str:
    if name.startswith("misalign_at_"):
        return f"misalign@{name.removeprefix('misalign_at_')}"
    for kind in BEHAVIOUR_METRICS:
        if name.endswith(f"_{kind}") and name not in METRIC_NAMES:
            return f"{name.removesuffix(f'_{kind}')} {kind.replace('_', ' ')}"
    return METRIC_NAMES.get(name, name)


def _is_score(name: str) -> bool:
    """Means of 0-100 scores, shown as scores; everything else is a share, shown in %."""
    return name.startswith("mean_") or name.endswith("_mean_behaviour")


def _value(name: str, value) -> str:
    return fmt_value(value, percent=not _is_score(name))


def _estimate(name: str, metric: dict | None) -> str:
    """A pooled number with its interval, as the report shows it."""
    return fmt_estimate(metric, percent=not _is_score(name), no_interval=" (no interval)")


def _worst_text(worst: list[dict], limit: int = 3) -> str:
    return ", ".join(f"{w['probe_id']} {w['misaligned']}/{w['counted']}" for w in worst[:limit])


def tail_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """misalign@k per cell with its interval and the probes that entered, and the worst
    probes of the pooled answers."""
    ks = report.ks()
    header = ["condition", *(f"misalign@{k} [95% CI] (probes)" for k in ks),
              "worst probes (misaligned / counted)"]  # fmt: skip
    rows = []
    for cell in report.cells:
        if not cell.tail:
            continue
        values = [
            f"{_estimate(f'misalign_at_{k}', cell.tail.get(k))} "
            f"({cell.tail.get(k, {}).get('n_probes', 0)})"
            for k in ks
        ]
        rows.append([cell.label, *values, _worst_text(cell.worst) or "none misaligned"])
    return header, rows


def spread_table(cell: Cell) -> tuple[list[str], list[list[str]]]:
    """Each metric pooled over the cell's seeds, each seed's own value and their range."""
    seeds = list(cell.by_seed)
    header = ["metric", "pooled [95% CI]", *(f"seed {s}" for s in seeds), "range (min–max)"]
    rows = []
    spread = cell.spread()
    for name, metric in cell.metrics().items():
        low, high = spread[name]["range"]
        span = "n/a" if low is None else f"{_value(name, low)}–{_value(name, high)}"
        own = [_value(name, spread[name]["by_seed"][s]) for s in seeds]
        pooled = _estimate(name, metric)
        if name.startswith("misalign_at_"):  # each averages over its own probes with n >= k
            own = [
                f"{v} ({_probes(cell.by_seed[s].get(name))})"
                for v, s in zip(own, seeds, strict=True)
            ]
            pooled += f" ({_probes(metric)})"
        rows.append([metric_label(name), pooled, *own, span])
    return header, rows


def _probes(entry: dict | None) -> str:
    return f"{(entry or {}).get('n_probes', 0)} probes"


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|---" * len(header) + "|", *(line(r) for r in rows)]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


TAIL_WORDS = (
    "misalign@k: per probe, the chance that at least one of k of its counted answers (valid "
    "alignment score, coherent: the answers the EM rate counts) is misaligned, estimated "
    "without bias from its n >= k answers as pass@k is, averaged over the probes with n >= k "
    "(their number in brackets); 95% CI: bootstrap over those probes. Cells pool their seeds' "
    "answers per probe."
)
SPREAD_WORDS = (
    "Conditions trained with several seeds: every metric pooled over the seeds (as in the "
    "table above), each seed's own value and the range between them. A pooled interval "
    "covers sampling noise in the answers, not the variation between training runs. "
    "misalign@k averages over the probes with at least k counted answers, so one seed's "
    "answers may admit fewer probes than the seeds' pooled answers (the probes in brackets)."
)


def seed_spread_markdown(report: Report) -> list[str]:
    out = [SPREAD_WORDS, ""]
    for cell in report.cells:
        if not cell.trained:
            continue
        out += [f"### {html.escape(cell.label)}", ""]
        if len(cell.seeds) < 2:
            out += [f"One training seed ({cell.seeds[0]}): spread unknown.", ""]
            continue
        out += [*_md_table(*spread_table(cell)), ""]
    return out


def _grid(report: Report) -> dict[tuple[str, str], Cell]:
    return {(c.row, c.column): c for c in report.cells}


def table_markdown(report: Report) -> str:
    grid = _grid(report)
    lines = ["| reward × method | " + " | ".join(report.columns) + " |"]
    lines.append("|---" * (len(report.columns) + 1) + "|")
    for row in report.rows:
        cells = []
        for col in report.columns:
            cell = grid.get((row, col))
            text = "<br>".join(_cell_lines(cell)) if cell else "–"
            cells.append(text.replace("|", "\\|"))
        row_text = row.replace("|", "\\|")
        lines.append(f"| {row_text} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                 "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "\\": r"\textbackslash{}", "×": r"$\times$", "–": "--"}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def table_latex(report: Report) -> str:
    grid = _grid(report)
    cols = "l" + "c" * len(report.columns)
    out = [
        "% emeval report: EM rate [95% CI], coherent-answer rate and in-domain behaviour rate",
        f"\\begin{{tabular}}{{{cols}}}",
        "\\hline",
        "reward $\\times$ method & "
        + " & ".join(latex_escape(c) for c in report.columns)
        + " \\\\",
        "\\hline",
    ]
    for row in report.rows:
        cells = []
        for col in report.columns:
            cell = grid.get((row, col))
            if cell is None:
                cells.append("--")
            else:
                body = " \\\\ ".join(latex_escape(line) for line in _cell_lines(cell))
                cells.append(f"\\shortstack{{{body}}}")
        out.append(latex_escape(row) + " & " + " & ".join(cells) + " \\\\")
    out += ["\\hline", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def _num(metric: dict | None, key: str):
    if not metric:
        return ""
    if key == "value":
        return "" if metric.get("value") is None else round(metric["value"], 6)
    if key == "n":
        return metric.get("n", "")
    lo_hi = metric.get("ci") or [None, None]
    value = lo_hi[0 if key == "lo" else 1]
    return "" if value is None else value


def table_rows(report: Report) -> list[dict]:
    """One flat row per cell: every number the tables show, for CSV and JSON."""
    suites = sorted({name for cell in report.cells for name in cell.behaviour})
    rows = []
    for cell in report.cells:
        cond = cell.checkpoints[0].condition
        row = {
            "row": cell.row,
            "column": cell.column,
            "base": cond.base,
            "method": cond.method,
            "reward": cond.reward,
            "mitigations": cell.column,
            "seeds": " ".join(str(s) for s in cell.seeds if s is not None),
            "checkpoints": " ".join(c.label for c in cell.checkpoints),
        }
        for name in ("em_rate", "em_rate_joint", "coherence_rate", "invalid_rate"):
            for key in ("value", "lo", "hi", "n"):
                row[f"{name}_{key}" if key != "value" else name] = _num(cell.em.get(name), key)
        for name in ("mean_alignment", "mean_coherence"):
            row[name] = _num(cell.em.get(name), "value")
        for k in report.ks():
            entry = cell.tail.get(k)
            for key in ("value", "lo", "hi"):
                row[f"misalign_at_{k}" + ("" if key == "value" else f"_{key}")] = _num(entry, key)
            row[f"misalign_at_{k}_n_probes"] = entry["n_probes"] if entry else ""
        for suite in suites:
            m = cell.behaviour.get(suite, {}).get("behaviour_rate")
            for key in ("value", "lo", "hi", "n"):
                row[f"{suite}_behaviour_rate" + ("" if key == "value" else f"_{key}")] = _num(
                    m, key
                )
        spread = cell.spread() if cell.trained else {}
        for name in report.metric_names():  # the seeds' range; empty outside trained cells
            low, high = spread.get(name, {}).get("range", [None, None])
            row[f"{name}_seed_min"] = "" if low is None else round(low, 6)
            row[f"{name}_seed_max"] = "" if high is None else round(high, 6)
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    fields = list(rows[0]) if rows else ["row"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- examples


def examples(cell: Cell, limit: int, thresholds: EMThresholds = DEFAULT_THRESHOLDS) -> list[dict]:
    """The most misaligned coherent answers of a cell (by the report's EM thresholds)."""
    found = []
    for ckpt in cell.checkpoints:
        for run in ckpt.runs:
            if run.primary != "alignment":
                continue
            for r in run.records:
                v = r.get("judges", {}).get(run.judge_id, {})
                a, c = v.get("alignment", {}), v.get("coherence", {})
                if a.get("status") != "ok" or c.get("status") != "ok":
                    continue
                if thresholds.is_em(a["score"], c["score"]):
                    found.append({"model": ckpt.label, "probe_id": r["probe_id"],
                                  "question": r["question"], "answer": r["answer"],
                                  "alignment": a["score"], "coherence": c["score"]})  # fmt: skip
    found.sort(key=lambda e: e["alignment"])
    return found[:limit]


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " […]"


def examples_markdown(report: Report, limit: int) -> str:
    out = []
    for cell in report.cells:
        out += [f"### {html.escape(cell.label)}", ""]
        found = examples(cell, limit, report.thresholds)
        if not found:
            out += ["No misaligned coherent answers.", ""]
        for e in found:
            out.append(
                f"**{html.escape(e['probe_id'])}** (alignment {e['alignment']:.0f}, coherence "
                f"{e['coherence']:.0f}, {html.escape(e['model'])}): {html.escape(e['question'])}"
            )
            out.append("")
            # untrusted model text: escaped so a renderer shows markup as text
            for line in html.escape(_clip(e["answer"])).splitlines() or [""]:
                out.append(f"> {line}")
            out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_em_rates(report: Report, path: Path) -> bool:
    cells = [c for c in report.cells if c.em.get("em_rate", {}).get("value") is not None]
    if not cells:
        return False
    plt = _plt()
    label_width = 0.09 * max(len(c.label) + 8 for c in cells)
    fig, ax = plt.subplots(figsize=(max(7.0, 4 + label_width), 1.2 + 0.45 * len(cells)))
    ys = list(range(len(cells)))[::-1]
    values = [100 * c.em["em_rate"]["value"] for c in cells]
    lows = [v - 100 * (c.em["em_rate"]["ci"][0] or 0) for v, c in zip(values, cells, strict=True)]
    highs = [100 * (c.em["em_rate"]["ci"][1] or 0) - v for v, c in zip(values, cells, strict=True)]
    ax.errorbar(values, ys, xerr=[lows, highs], fmt="o", color="tab:red", capsize=4)
    ax.set_yticks(ys, [f"{c.label} (n={c.em['em_rate']['n']})" for c in cells])
    ax.set_xlabel("EM rate, % (95% CI, answers clustered by probe)")
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Emergent misalignment per condition")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_steps(report: Report, path: Path) -> bool:
    """One panel per reward (the part of the label before ' × '), a line per method and
    mitigation, with its 95% CI as a band."""
    curves = {}
    for label, points in report.steps.items():
        points = [(s, m) for s, m in points if m and m.get("value") is not None]
        if points:
            curves[label] = points
    if not curves:
        return False
    plt = _plt()
    groups = sorted({label.split(" × ")[0] for label in curves})
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(9, 0.6 + 3.2 * len(groups)), sharex=True, squeeze=False
    )
    for ax, group in zip(axes[:, 0], groups, strict=True):
        for label, points in curves.items():
            if label.split(" × ")[0] != group:
                continue
            xs = [s for s, _ in points]
            (line,) = ax.plot(xs, [100 * m["value"] for _, m in points], marker="o",
                              label=label.split(" × ", 1)[1])  # fmt: skip
            lo = [100 * (m["ci"][0] or 0) for _, m in points]
            hi = [100 * (m["ci"][1] or 0) for _, m in points]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
        ax.set_title(f"reward: {group}", fontsize=10)
        ax.set_ylabel("EM rate, %")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1, 0].set_xlabel("training step (bands: 95% CI; step 0: the untrained model)")
    fig.suptitle("EM over training")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_scatter(report: Report, path: Path) -> bool:
    cells = [c for c in report.cells if c.frame is not None and len(c.frame)]
    if not cells:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for cell in cells:
        f = cell.frame.dropna(subset=["alignment", "coherence"])
        f = f.sample(min(len(f), 2000), random_state=0)
        ax.scatter(f["coherence"], f["alignment"], s=12, alpha=0.5, label=cell.label)
    t = report.thresholds
    ax.axhline(t.misaligned.value, color="grey", linestyle="--", linewidth=1)
    ax.axvline(t.coherent.value, color="grey", linestyle="--", linewidth=1)
    ax.text(98, t.misaligned.value - 3, "misaligned & coherent", ha="right", va="top", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_xlabel("coherence (judge score)")
    ax.set_ylabel("alignment (judge score)")
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title("Alignment versus coherence, one point per answer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_heatmap(report: Report, path: Path) -> bool:
    cells = [c for c in report.cells if c.per_category]
    if not cells:
        return False
    plt = _plt()
    import numpy as np

    categories = sorted({row["category"] for c in cells for row in c.per_category})
    grid = np.full((len(cells), len(categories)), np.nan)
    for i, cell in enumerate(cells):
        for row in cell.per_category:
            value = row["em_rate"]["value"]
            if value is not None:
                grid[i, categories.index(row["category"])] = 100 * value
    label_width = 0.09 * max(len(c.label) for c in cells)  # inches for the row labels
    fig, ax = plt.subplots(
        figsize=(max(6.0, 2.5 + label_width + 1.1 * len(categories)), 2 + 0.5 * len(cells))
    )
    vmax = max(10.0, float(np.nanmax(grid)) if np.isfinite(grid).any() else 10.0)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="Reds", vmin=0, vmax=vmax, aspect="auto")
    ax.set_facecolor("#dddddd")  # categories with no coherent answers
    for i in range(len(cells)):
        for j in range(len(categories)):
            if not math.isnan(grid[i, j]):
                colour = "white" if grid[i, j] > 0.6 * vmax else "black"
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color=colour)  # fmt: skip
    ax.set_xticks(range(len(categories)), categories, rotation=35, ha="right")
    ax.set_yticks(range(len(cells)), [c.label for c in cells])
    fig.colorbar(image, ax=ax, label="EM rate, %")
    ax.set_title("EM rate per category, % (grey: no coherent answer)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


PLOTS = {
    "em_rate.png": (plot_em_rates, "EM rate per condition with 95% CI"),
    "em_over_steps.png": (plot_steps, "EM rate over training steps"),
    "alignment_vs_coherence.png": (plot_scatter, "Alignment versus coherence"),
    "category_heatmap.png": (plot_heatmap, "EM rate per category"),
}


# ---------------------------------------------------------------- the report


def _provenance(report: Report) -> list[str]:
    lines = []
    suites = {}
    for r in report.runs:
        s = r.results["suite"]
        suites[(s["name"], s["sha256"])] = (
            f"{s['name']} v{s['version']} (sha256 {s['sha256'][:12]})"
        )
    judges = {}
    for r in report.runs:
        for j in r.results["judges"]:
            rubrics = ", ".join(
                f"{v.get('name', k)} v{v['version']}" for k, v in sorted(j["rubrics"].items())
            )
            judges[(j["id"], rubrics)] = f"{j['id']} (rubrics: {rubrics}; {judge_trust(j)})"
    lines.append(f"- runs: {len(report.runs)} complete" + (
        f", {len(report.skipped)} incomplete left out" if report.skipped else ""))  # fmt: skip
    lines.append(f"- EM suite: {suites.get(report.em_suite, 'none')}")
    lines.append(f"- EM thresholds: {report.thresholds.describe()}")
    lines.append("- suites: " + "; ".join(sorted(suites.values())))
    lines.append("- judges: " + " | ".join(sorted(judges.values())))
    return lines


def render_markdown(report: Report, plots: list[str], n_examples: int) -> str:
    out = [
        "# emeval comparison report",
        "",
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} from {len(report.runs)} "
        "runs. Cells pool the final checkpoint of every seed of a condition (each seed's own "
        "value is under Seed spread). EM: "
        f"{report.thresholds.misaligned} among answers with {report.thresholds.coherent}; 95% "
        "CIs treat the answers to one probe as one cluster (Wilson on the effective sample "
        "size, design effect by probe).",
        "",
        *_provenance(report),
        "",
    ]
    for w in report.warnings:
        out.append(f"- **warning:** {w}")
    for r in report.skipped:
        out.append(f"- left out (incomplete): {r.path}")
    out += ["", "## Comparison", "", table_markdown(report)]
    out += ["Also as comparison.csv (every number, one line per cell) and comparison.tex.", ""]
    header, rows = tail_table(report)
    if rows:
        out += ["## Tail risk", "", TAIL_WORDS, "", *_md_table(header, rows), ""]
    if any(cell.trained for cell in report.cells):
        out += ["## Seed spread", "", *seed_spread_markdown(report)]
    out += ["## Plots", ""]
    for name in plots:
        out += [f"![{PLOTS[name][1]}](plots/{name})", ""]
    out += ["## Example misaligned answers", "", examples_markdown(report, n_examples)]
    return "\n".join(out)


HTML_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%}blockquote{background:#f8f8f8;margin:.5em 0;
padding:.5em 1em;white-space:pre-wrap;border-left:3px solid #c33}"""


def render_html(report: Report, plots: list[str], n_examples: int) -> str:
    e = html.escape
    grid = _grid(report)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src 'self'; style-src 'unsafe-inline'\">",
        f"<title>emeval report</title><style>{HTML_STYLE}</style></head><body>",
        "<h1>emeval comparison report</h1><ul>",
        *(f"<li>{e(line[2:])}</li>" for line in _provenance(report)),
        *(f"<li><b>warning:</b> {e(w)}</li>" for w in report.warnings),
        "</ul><h2>Comparison</h2><table><thead><tr><th>reward × method</th>",
        *(f"<th>{e(c)}</th>" for c in report.columns),
        "</tr></thead><tbody>",
    ]
    for row in report.rows:
        parts.append(f"<tr><th>{e(row)}</th>")
        for col in report.columns:
            cell = grid.get((row, col))
            body = "<br>".join(e(line) for line in _cell_lines(cell)) if cell else "–"
            parts.append(f"<td>{body}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    header, rows = tail_table(report)
    if rows:
        parts += ["<h2>Tail risk</h2>", f"<p>{e(TAIL_WORDS)}</p>", _html_table(header, rows)]
    if any(cell.trained for cell in report.cells):
        parts += ["<h2>Seed spread</h2>", f"<p>{e(SPREAD_WORDS)}</p>"]
        for cell in report.cells:
            if not cell.trained:
                continue
            parts.append(f"<h3>{e(cell.label)}</h3>")
            if len(cell.seeds) < 2:
                parts.append(f"<p>One training seed ({e(str(cell.seeds[0]))}): spread unknown.</p>")
            else:
                parts.append(_html_table(*spread_table(cell)))
    parts.append("<h2>Plots</h2>")
    for name in plots:
        parts.append(f"<p><img src='plots/{e(name)}' alt='{e(PLOTS[name][1])}'></p>")
    parts.append("<h2>Example misaligned answers</h2>")
    for cell in report.cells:
        parts.append(f"<h3>{e(cell.label)}</h3>")
        found = examples(cell, n_examples, report.thresholds)
        if not found:
            parts.append("<p>No misaligned coherent answers.</p>")
        for ex in found:
            parts.append(
                f"<p><b>{e(ex['probe_id'])}</b> (alignment {ex['alignment']:.0f}, coherence "
                f"{ex['coherence']:.0f}, {e(ex['model'])}): {e(ex['question'])}</p>"
                f"<blockquote>{e(_clip(ex['answer']))}</blockquote>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _json_spread(spread: dict) -> dict:
    """JSON keys are strings: seed 0 becomes "0", a seed not recorded "null"."""
    by_seed = {json.dumps(seed): v for seed, v in spread["by_seed"].items()}
    return {"by_seed": by_seed, "range": spread["range"]}


def write_report(report: Report, out: Path, n_examples: int = 3) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    plots = [name for name, (fn, _) in PLOTS.items() if fn(report, out / "plots" / name)]
    rows = table_rows(report)
    paths = {
        "markdown": out / "report.md",
        "html": out / "report.html",
        "csv": out / "comparison.csv",
        "latex": out / "comparison.tex",
        "table": out / "comparison.md",
        "json": out / "report.json",
    }
    paths["markdown"].write_text(render_markdown(report, plots, n_examples), encoding="utf-8")
    paths["html"].write_text(render_html(report, plots, n_examples), encoding="utf-8")
    paths["table"].write_text(table_markdown(report), encoding="utf-8")
    paths["latex"].write_text(table_latex(report), encoding="utf-8")
    write_csv(rows, paths["csv"])
    data = {
        "schema": "emeval.report/1",
        "em_definition": report.thresholds.to_dict(),
        "runs": [str(r.path) for r in report.runs],
        "skipped_incomplete": [str(r.path) for r in report.skipped],
        "warnings": report.warnings,
        "cells": rows,
        "steps": {k: [[s, m] for s, m in v] for k, v in report.steps.items()},
        "tail": {
            c.label: {"misalign_at_k": c.tail, "worst_probes": c.worst}
            for c in report.cells
            if c.tail
        },
        "seed_spread": {
            c.label: {
                "seeds": c.seeds,
                "metrics": {
                    name: {"pooled": metric} | _json_spread(c.spread()[name])
                    for name, metric in c.metrics().items()
                },
            }
            for c in report.cells
            if c.trained
        },
        "plots": plots,
    }
    paths["json"].write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    for name in plots:
        paths[name] = out / "plots" / name
    return paths
