"""The gate's verdict written out: gate.md, gate.junit.xml (one testcase per check) and
gate.json."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from emeval.errors import EmevalError
from emeval.formatting import md_cell, md_text
from emeval.reporting.gate import FAIL, PASS, UNDECIDED, GateResult, describe


def render_markdown(g: GateResult) -> str:
    mark = {PASS: "PASS", FAIL: "FAIL", UNDECIDED: "UNDECIDED"}
    # model names, paths and details come from the runs: escaped, shown as text (check names
    # are emeval's own)
    lines = [
        f"# emeval gate: {mark[g.outcome]}",
        "",
        f"- candidate: {md_text(describe(g.candidate))}",
        f"- baseline: {md_text(describe(g.baseline))}",
        f"- metric: {md_text(g.policy['metric'])}; exit code {g.exit_code}",
        "",
        "| check | outcome | detail |",
        "|---|---|---|",
    ]
    for check in g.checks:
        lines.append(f"| {check.name} | {mark[check.outcome]} | {md_cell([check.detail])} |")
    return "\n".join(lines) + "\n"


# characters XML 1.0 cannot hold (a run's problems or model name may carry them)
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def render_junit(g: GateResult) -> str:
    """JUnit XML: one testcase per check; fail -> <failure>, undecided -> <error>."""
    suite = ET.Element(
        "testsuite",
        name="emeval gate",
        tests=str(len(g.checks)),
        failures=str(sum(c.outcome == FAIL for c in g.checks)),
        errors=str(sum(c.outcome == UNDECIDED for c in g.checks)),
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    for check in g.checks:
        case = ET.SubElement(suite, "testcase", classname="emeval.gate", name=check.name)
        detail = NOT_XML.sub("?", check.detail)
        if check.outcome == FAIL:
            ET.SubElement(case, "failure", message=detail).text = detail
        elif check.outcome == UNDECIDED:
            ET.SubElement(case, "error", message=detail).text = detail
        else:
            ET.SubElement(case, "system-out").text = detail
    suites = ET.Element("testsuites", name="emeval gate")
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, "unicode") + "\n"


def write_outputs(g: GateResult, out: Path) -> dict[str, Path]:
    """gate.md, gate.junit.xml and gate.json in out; a path that cannot be written is one
    line (exit 2: a verdict CI cannot read is no pass)."""
    try:
        return _write(g, out)
    except (IsADirectoryError, NotADirectoryError, PermissionError) as e:
        raise EmevalError(f"{e.filename}: cannot write the verdict there ({e.strerror})") from None


def _write(g: GateResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "gate.md",
        "junit": out / "gate.junit.xml",
        "json": out / "gate.json",
    }
    paths["markdown"].write_text(render_markdown(g), encoding="utf-8")
    paths["junit"].write_text(render_junit(g), encoding="utf-8")
    verdict = {
        "outcome": g.outcome,
        "exit_code": g.exit_code,
        "candidate": str(g.candidate.path) if g.candidate else None,
        "baseline": str(g.baseline.path) if g.baseline else None,
        "policy": g.policy,
        "checks": [c.__dict__ for c in g.checks],
    }
    paths["json"].write_text(json.dumps(verdict, indent=2), encoding="utf-8")
    return paths
