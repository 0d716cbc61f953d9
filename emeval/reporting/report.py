"""`emeval report`: write a gathered report (reporting/gather.py builds the model in
reporting/model.py) in every format.

A format is a writer module under reporting/writers/ with a function (report, outputs) -> text
and one line in WRITERS; the plots are drawn first (writers/plots.py), so the pages can show
them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emeval.reporting.model import Outputs, Report
from emeval.reporting.writers import csv_table, html_page, json_data, latex, markdown
from emeval.reporting.writers.plots import draw_plots


@dataclass(frozen=True)
class Writer:
    file: str  # its name in the report dir
    render: Callable[[Report, Outputs], str]


WRITERS: dict[str, Writer] = {
    "markdown": Writer("report.md", markdown.report_page),
    "html": Writer("report.html", html_page.report_page),
    "csv": Writer("comparison.csv", csv_table.comparison_csv),
    "latex": Writer("comparison.tex", latex.comparison_table),
    "table": Writer("comparison.md", markdown.comparison_table),
    "json": Writer("report.json", json_data.report_json),
}


def write_report(report: Report, out: Path, n_examples: int = 3) -> dict[str, Path]:
    """Every format and plot under out; writer name (and plot file name) -> the file."""
    out.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(report, out / "plots")
    outputs = Outputs(plots=plots, n_examples=n_examples)
    paths = {}
    for name, writer in WRITERS.items():
        paths[name] = out / writer.file
        # newline="": the text as rendered (CSV's own \r\n line ends included)
        paths[name].write_text(writer.render(report, outputs), encoding="utf-8", newline="")
    return paths | {name: out / "plots" / name for name in plots}
