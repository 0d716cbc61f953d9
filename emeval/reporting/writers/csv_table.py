"""The CSV writer (comparison.csv): every number of every cell, one line per cell."""

from __future__ import annotations

import csv
import io

from emeval.reporting.model import Outputs, Report
from emeval.reporting.tables import table_rows


def comparison_csv(report: Report, outputs: Outputs | None = None) -> str:
    rows = table_rows(report)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["row"])
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
