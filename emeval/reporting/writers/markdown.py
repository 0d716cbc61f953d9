"""Markdown writers: the whole report (report.md) and the comparison table alone
(comparison.md). Model answers, model names, paths and judge specs are untrusted text:
written with emeval.formatting.md_text, so a renderer shows their markup as text."""

from __future__ import annotations

from datetime import UTC, datetime

from emeval.formatting import md_cell, md_text
from emeval.reporting import criteria
from emeval.reporting.model import Outputs, Report
from emeval.reporting.tables import (
    CONTEXTS_WORDS,
    SPREAD_WORDS,
    TAIL_WORDS,
    cell_lines,
    clip,
    contexts_table,
    examples,
    provenance,
    spread_table,
    tail_table,
)
from emeval.reporting.writers.plots import PLOTS


def _md_table(header: list[str], rows: list[list]) -> list[str]:
    """A table whose cells are text, or lists of lines (shown one under another)."""

    def line(cells):
        return "| " + " | ".join(md_cell(c if isinstance(c, list) else [c]) for c in cells) + " |"

    return [line(header), "|---" * len(header) + "|", *(line(r) for r in rows)]


def seed_spread_markdown(report: Report) -> list[str]:
    out = [SPREAD_WORDS, ""]
    for cell in report.cells:
        if not cell.trained:
            continue
        out += [f"### {md_text(cell.label)}", ""]
        if len(cell.seeds) < 2:
            out += [f"One training seed ({cell.seeds[0]}): spread unknown.", ""]
            continue
        out += [*_md_table(*spread_table(cell)), ""]
    return out


def comparison_table(report: Report, outputs: Outputs | None = None) -> str:
    """comparison.md: reward x method rows, mitigation columns."""
    grid = report.grid()
    rows = []
    for row in report.rows:
        cells = [grid.get((row, col)) for col in report.columns]
        rows.append([row, *(cell_lines(c) if c else "–" for c in cells)])
    return "\n".join(_md_table(["reward × method", *report.columns], rows)) + "\n"


def examples_markdown(report: Report, limit: int) -> str:
    out = []
    for cell in report.cells:
        out += [f"### {md_text(cell.label)}", ""]
        found = examples(cell, limit, report.thresholds)
        if not found:
            out += ["No misaligned coherent answers.", ""]
        for e in found:
            out.append(
                f"**{md_text(e['probe_id'])}** (alignment {e['alignment']:.0f}, coherence "
                f"{e['coherence']:.0f}, {md_text(e['model'])}): {md_text(e['question'])}"
            )
            out.append("")
            # untrusted model text: escaped so a renderer shows markup as text
            for line in clip(e["answer"]).splitlines() or [""]:
                out.append(f"> {md_text(line)}")
            out.append("")
    return "\n".join(out)


def report_page(report: Report, outputs: Outputs) -> str:
    """report.md: provenance, warnings, every table, the plots and example answers."""
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
        *(md_text(line) for line in provenance(report)),
        "",
    ]
    for w in report.warnings:
        out.append(f"- **warning:** {md_text(w)}")
    for r in report.skipped:
        out.append(f"- left out (incomplete): {md_text(r.path)}")
    out += ["", "## Comparison", "", comparison_table(report)]
    out += ["Also as comparison.csv (every number, one line per cell) and comparison.tex.", ""]
    header, rows = tail_table(report)
    if rows:
        out += ["## Tail risk", "", TAIL_WORDS, "", *_md_table(header, rows), ""]
    header, rows = contexts_table(report)
    if rows:
        out += ["## Training contexts", "", CONTEXTS_WORDS, "", *_md_table(header, rows), ""]
    if any(cell.trained for cell in report.cells):
        out += ["## Seed spread", "", *seed_spread_markdown(report)]
    tables = criteria.criteria_tables(report)
    if tables:
        out += ["## Mitigations: four criteria", "", criteria.WORDS, ""]
        for title, header, rows in tables:
            out += [f"### {md_text(title)}", "", *_md_table(header, rows), ""]
    out += ["## Plots", ""]
    for name in outputs.plots:
        out += [f"![{PLOTS[name][1]}](plots/{name})", ""]
    out += ["## Example misaligned answers", "", examples_markdown(report, outputs.n_examples)]
    return "\n".join(out)
