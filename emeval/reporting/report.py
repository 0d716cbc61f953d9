"""`emeval report`: compare conditions across many runs.

Rows are reward x method, columns mitigations; each cell pools the final checkpoints of a
condition (all seeds) and recomputes its metrics from the answers with emeval.metrics, the
same code that wrote each run's results.json. Intermediate checkpoints give EM over steps.
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
from emeval.metrics import (
    DEFAULT_THRESHOLDS,
    EMThresholds,
    breakdown,
    compute_metrics,
    definition_differences,
    thresholds_of,
)
from emeval.reporting.runs import UNKNOWN, Run

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

    @property
    def label(self) -> str:
        return self.row if self.column in ("none", UNKNOWN) else f"{self.row} | {self.column}"

    @property
    def seeds(self) -> list:
        return sorted({c.condition.seed for c in self.checkpoints}, key=str)


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
        em_runs = [r for c in cell.checkpoints for r in c.runs if r.suite_key == em_suite]
        cell.frame, cell.em = _pool(em_runs, "alignment", thresholds)
        if cell.em:
            cell.per_category = breakdown(cell.frame, "category", "alignment", thresholds)
        in_domain: dict[str, list[Run]] = defaultdict(list)
        for c in cell.checkpoints:
            for r in c.suite_runs("behaviour"):
                in_domain[r.suite_key[0]].append(r)
        cell.behaviour = {
            name: _pool(rs, "behaviour", thresholds)[1] for name, rs in sorted(in_domain.items())
        }

    steps = _steps(checkpoints, em_suite, several_bases, thresholds)
    rows = _order([k[0] for k in cells], first=())
    base_rows = [r for r in rows if r.endswith("none × base")]
    rows = base_rows + [r for r in rows if r not in base_rows]
    ordered = [cells[(r, c)] for r in rows for c in _order(k[1] for k in cells) if (r, c) in cells]
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


def _pct(metric: dict | None, ci: bool = True) -> str:
    if not metric or metric.get("value") is None:
        return "n/a"
    text = f"{100 * metric['value']:.1f}%"
    if ci and metric["ci"][0] is not None:
        text += f" [{100 * metric['ci'][0]:.1f}, {100 * metric['ci'][1]:.1f}]"
    return text


def _cell_lines(cell: Cell) -> list[str]:
    em = cell.em.get("em_rate")
    lines = [f"EM {_pct(em)} (n={em['n'] if em else 0})"]
    lines.append(f"coherent {_pct(cell.em.get('coherence_rate'), ci=False)}")
    for name, m in cell.behaviour.items():
        lines.append(f"{name} behaviour {_pct(m.get('behaviour_rate'), ci=False)}")
    if len(cell.seeds) > 1:
        lines.append(f"{len(cell.seeds)} seeds")
    return lines


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
        for suite in suites:
            m = cell.behaviour.get(suite, {}).get("behaviour_rate")
            for key in ("value", "lo", "hi", "n"):
                row[f"{suite}_behaviour_rate" + ("" if key == "value" else f"_{key}")] = _num(
                    m, key
                )
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
                if thresholds.misaligned.holds(a["score"]) and thresholds.coherent.holds(
                    c["score"]
                ):
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
            judges[(j["id"], rubrics)] = f"{j['id']} (rubrics: {rubrics})"
    lines.append(f"- runs: {len(report.runs)} complete" + (
        f", {len(report.skipped)} incomplete left out" if report.skipped else ""))  # fmt: skip
    lines.append(f"- EM suite: {suites.get(report.em_suite, 'none')}")
    lines.append(f"- EM thresholds: {report.thresholds.describe()}")
    lines.append("- suites: " + "; ".join(sorted(suites.values())))
    lines.append("- judges: " + "; ".join(sorted(judges.values())))
    return lines


def render_markdown(report: Report, plots: list[str], n_examples: int) -> str:
    out = [
        "# emeval comparison report",
        "",
        f"Generated {datetime.now(UTC).isoformat(timespec='seconds')} from {len(report.runs)} "
        "runs. Cells pool the final checkpoint of every seed of a condition. EM: "
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
    parts.append("</tbody></table><h2>Plots</h2>")
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
        "plots": plots,
    }
    paths["json"].write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    for name in plots:
        paths[name] = out / "plots" / name
    return paths
