"""The HTML writer (report.html): the report as one page that runs no script and loads
nothing but its plots (Content-Security-Policy); every text is escaped."""

from __future__ import annotations

import html

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


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


HTML_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;vertical-align:top}
th{background:#f3f3f3}img{max-width:100%}blockquote{background:#f8f8f8;margin:.5em 0;
padding:.5em 1em;white-space:pre-wrap;border-left:3px solid #c33}"""


def report_page(report: Report, outputs: Outputs) -> str:
    e = html.escape
    grid = report.grid()
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src 'self'; style-src 'unsafe-inline'\">",
        f"<title>emeval report</title><style>{HTML_STYLE}</style></head><body>",
        "<h1>emeval comparison report</h1><ul>",
        *(f"<li>{e(line[2:])}</li>" for line in provenance(report)),
        *(f"<li><b>warning:</b> {e(w)}</li>" for w in report.warnings),
        "</ul><h2>Comparison</h2><table><thead><tr><th>reward × method</th>",
        *(f"<th>{e(c)}</th>" for c in report.columns),
        "</tr></thead><tbody>",
    ]
    for row in report.rows:
        parts.append(f"<tr><th>{e(row)}</th>")
        for col in report.columns:
            cell = grid.get((row, col))
            body = "<br>".join(e(line) for line in cell_lines(cell)) if cell else "–"
            parts.append(f"<td>{body}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    header, rows = tail_table(report)
    if rows:
        parts += ["<h2>Tail risk</h2>", f"<p>{e(TAIL_WORDS)}</p>", _html_table(header, rows)]
    header, rows = contexts_table(report)
    if rows:
        parts += ["<h2>Training contexts</h2>", f"<p>{e(CONTEXTS_WORDS)}</p>"]
        parts.append(_html_table(header, rows))
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
    tables = criteria.criteria_tables(report)
    if tables:
        parts += ["<h2>Mitigations: four criteria</h2>", f"<p>{e(criteria.WORDS)}</p>"]
        for title, header, rows in tables:
            parts += [f"<h3>{e(title)}</h3>", _html_table(header, rows)]
    parts.append("<h2>Plots</h2>")
    for name in outputs.plots:
        parts.append(f"<p><img src='plots/{e(name)}' alt='{e(PLOTS[name][1])}'></p>")
    parts.append("<h2>Example misaligned answers</h2>")
    for cell in report.cells:
        parts.append(f"<h3>{e(cell.label)}</h3>")
        found = examples(cell, outputs.n_examples, report.thresholds)
        if not found:
            parts.append("<p>No misaligned coherent answers.</p>")
        for ex in found:
            parts.append(
                f"<p><b>{e(ex['probe_id'])}</b> (alignment {ex['alignment']:.0f}, coherence "
                f"{ex['coherence']:.0f}, {e(ex['model'])}): {e(ex['question'])}</p>"
                f"<blockquote>{e(clip(ex['answer']))}</blockquote>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
