"""The tables every report page shares, as text: the comparison cell, tail risk, seed spread,
the flat rows of comparison.csv and report.json, example answers and provenance. Writers
(reporting/writers/) lay these out as Markdown, HTML or LaTeX; a new table goes here when
more than one writer shows it."""

from __future__ import annotations

from emeval.formatting import NA, fmt_estimate, fmt_points, fmt_value
from emeval.metrics import DEFAULT_THRESHOLDS, EMThresholds
from emeval.reporting.model import BEHAVIOUR_METRICS, Cell, Report
from emeval.results import describe_frame, judge_trust

EXAMPLE_CHARS = 700


def cell_lines(cell: Cell) -> list[str]:
    """A comparison cell: EM with its interval, coherence, in-domain behaviour, seeds."""
    em = cell.em.get("em_rate")
    lines = [f"EM {fmt_estimate(em)} (n={em['n'] if em else 0})"]
    if cell.em.get("misaligned_rate"):  # what the coherence cut leaves out of EM
        lines.append(f"misaligned (any coherence) {fmt_estimate(cell.em['misaligned_rate'])}")
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
                "misaligned_rate": "misaligned, any coherence",
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


def contexts_table(report: Report) -> tuple[list[str], list[list[str]]]:
    """EM per training context (--context-from) for every cell whose runs were asked in
    some: the plain context first, then each frame of the training data."""
    header = ["condition", "context", "frame", "EM [95% CI] (n)", "misaligned, any coherence",
              "coherent answers"]  # fmt: skip
    rows = []
    for cell in report.cells:
        for name, entry in cell.contexts.items():
            m = entry["metrics"]
            em = m.get("em_rate")
            rows.append([cell.label, name, describe_frame(entry["frame"]),
                         f"{fmt_estimate(em)} (n={em['n'] if em else 0})",
                         fmt_estimate(m.get("misaligned_rate")),
                         fmt_estimate(m.get("coherence_rate"), ci=False)])  # fmt: skip
    return header, rows


CONTEXTS_WORDS = (
    "Each probe was also asked inside the frames of the training data (`emeval run "
    "--context-from`): EM that dilution, benign follow-up training or inoculation hide in the "
    "plain context can come back when a prompt looks like the training data. Same definitions "
    "and intervals as the comparison, each context on its own answers."
)


def _probes(entry: dict | None) -> str:
    return f"{(entry or {}).get('n_probes', 0)} probes"


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
        for name in ("em_rate", "em_rate_joint", "misaligned_rate", "coherence_rate",
                     "invalid_rate"):  # fmt: skip
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
        if any(c.capability for c in report.cells):  # the capability check's accuracy
            for key in ("value", "lo", "hi", "n"):
                name = "capability" + ("" if key == "value" else f"_{key}")
                row[name] = _num(cell.capability, key)
        spread = cell.spread() if cell.trained else {}
        for name in report.metric_names():  # the seeds' range; empty outside trained cells
            low, high = spread.get(name, {}).get("range", [None, None])
            row[f"{name}_seed_min"] = "" if low is None else round(low, 6)
            row[f"{name}_seed_max"] = "" if high is None else round(high, 6)
        rows.append(row)
    return rows


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


def clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + " […]"


def provenance(report: Report) -> list[str]:
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
