"""The LaTeX writer (comparison.tex): the comparison table as a tabular to \\input."""

from __future__ import annotations

from emeval.reporting.model import Outputs, Report
from emeval.reporting.tables import cell_lines

LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                 "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "\\": r"\textbackslash{}", "×": r"$\times$", "–": "--"}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def comparison_table(report: Report, outputs: Outputs | None = None) -> str:
    grid = report.grid()
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
                body = " \\\\ ".join(latex_escape(line) for line in cell_lines(cell))
                cells.append(f"\\shortstack{{{body}}}")
        out.append(latex_escape(row) + " & " + " & ".join(cells) + " \\\\")
    out += ["\\hline", "\\end{tabular}"]
    return "\n".join(out) + "\n"
