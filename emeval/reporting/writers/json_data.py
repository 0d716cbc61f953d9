"""The JSON writer (report.json, schema emeval.report/1): every number the pages show, for
programs."""

from __future__ import annotations

import json

from emeval.reporting.criteria import criteria_json
from emeval.reporting.model import Outputs, Report
from emeval.reporting.tables import table_rows


def _json_spread(spread: dict) -> dict:
    """JSON keys are strings: seed 0 becomes "0", a seed not recorded "null"."""
    by_seed = {json.dumps(seed): v for seed, v in spread["by_seed"].items()}
    return {"by_seed": by_seed, "range": spread["range"]}


def report_json(report: Report, outputs: Outputs) -> str:
    data = {
        "schema": "emeval.report/1",
        "em_definition": report.thresholds.to_dict(),
        "runs": [str(r.path) for r in report.runs],
        "skipped_incomplete": [str(r.path) for r in report.skipped],
        "warnings": report.warnings,
        "cells": table_rows(report),
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
        "four_criteria": criteria_json(report),
        "plots": outputs.plots,
    }
    return json.dumps(data, indent=2, default=str)
