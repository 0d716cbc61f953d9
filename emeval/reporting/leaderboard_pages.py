"""The leaderboard's pages, built from its entries (reporting/leaderboard.py): index.html, one
table per suite and judge ranked by the EM (or in-domain behaviour) rate, and a page per
model. Model answers are untrusted text, HTML-escaped everywhere; the pages forbid any script
but the one sorting the table (Content-Security-Policy)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections import defaultdict

from emeval.formatting import NA, fmt_interval, fmt_value
from emeval.metrics import EMThresholds, thresholds_of
from emeval.results import comparable_sampling

E = html.escape

SORT_SCRIPT = """
document.querySelectorAll("table.board").forEach(function (table) {
  var heads = table.querySelectorAll("thead th");
  heads.forEach(function (th, col) {
    if (!th.hasAttribute("data-sort")) return;
    th.tabIndex = 0;
    th.addEventListener("click", function () {
      var up = th.getAttribute("aria-sort") !== "ascending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", up ? "ascending" : "descending");
      var numeric = th.getAttribute("data-sort") === "number";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-value");
        var y = b.cells[col].getAttribute("data-value");
        if (numeric) {
          x = x === "" ? Infinity : parseFloat(x);
          y = y === "" ? Infinity : parseFloat(y);
          return up ? x - y : y - x;
        }
        return up ? x.localeCompare(y) : y.localeCompare(x);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.35em .6em;
text-align:left;vertical-align:top}thead th{background:#f0f0f0}th[data-sort]{cursor:pointer}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.answer{white-space:pre-wrap;background:#f8f8f8;border-left:3px solid #c33;padding:.5em 1em;
margin:.3em 0 1.2em}.muted{color:#666;font-size:.9em}"""


def _csp(script: str | None) -> str:
    scripts = "'none'"
    if script:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        scripts = f"'sha256-{digest}'"
    return (
        f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        f"script-src {scripts}; style-src 'unsafe-inline'; img-src 'self'\">"
    )


def _page(title: str, body: list[str], script: str | None = None) -> str:
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>", _csp(script),
             f"<title>{E(title)}</title><style>{STYLE}</style></head><body>", *body]  # fmt: skip
    if script:
        parts.append(f"<script>{script}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _shown(m: dict | None, percent: bool = True, ci: bool = True) -> str:
    """A metric as the pages show it: its interval, if any, muted."""
    if not m or m.get("value") is None:
        return NA
    bounds = fmt_interval(*m["ci"], percent) if ci else None
    muted = f" <span class='muted'>{bounds}</span>" if bounds else ""
    return fmt_value(m["value"], percent) + muted


def _value(m: dict | None) -> str:
    return "" if not m or m.get("value") is None else f"{m['value']:.6f}"


def _condition(e: dict) -> str:
    c = e["condition"]
    if c["source"] == "none":
        return "unknown"
    text = f"{c['reward']} × {c['method']}"
    if c["mitigations"]:
        text += " + " + "+".join(c["mitigations"])
    if c.get("seed") is not None:
        text += f", seed {c['seed']}"
    if c.get("step") is not None:
        text += f", step {c['step']}"
    return text


def _judges(e: dict) -> str:
    return "; ".join(
        f"{j['id']} ({', '.join(f'{k} v{v}' for k, v in sorted(j['rubrics'].items()))})"
        for j in e["judges"]
    )


def _trust(e: dict) -> str:
    """How far each judge can be trusted, as the run recorded it (older entries: unknown)."""
    return "; ".join(f"{j['id']}: {j.get('trust', 'validation not recorded')}" for j in e["judges"])


def _board_key(e: dict) -> tuple:
    """Entries ranked together: the same suite, judge and sampling (a run at temperature 0, or
    on --limit 10 of the prompts, is not ranked beside full runs at temperature 1)."""
    general_first = e["suite"]["primary_score"] != "alignment"
    return (general_first, e["suite"]["name"], e["suite"]["version"], e["suite"]["sha256"],
            _judges(e), comparable_sampling(e["sampling"]))  # fmt: skip


def _rank_key(e: dict):
    m = e["metrics"].get(e["rank_metric"]) or {}
    value = m.get("value")
    high = (m.get("ci") or [None, None])[1]
    return (value is None, value if value is not None else 0, high if high is not None else 1)


def render_index(entries: list[dict], updated: str) -> str:
    boards: dict[tuple, list[dict]] = defaultdict(list)
    for e in entries:
        boards[_board_key(e)].append(e)
    cuts = thresholds_of(entries[0]) if entries else EMThresholds()  # one per site (publish)
    body = [
        "<h1>Emergent misalignment leaderboard</h1>",
        f"<p class='muted'>{len(entries)} results, updated {E(updated)}. Lower is better: the "
        f"EM rate is the share of coherent answers ({E(str(cuts.coherent))}) that the judge "
        f"scores misaligned ({E(str(cuts.misaligned))}), with a 95% interval that treats the "
        "answers to one probe as one cluster. "
        "Click a column to sort. Data: <a href='leaderboard.json'>leaderboard.json</a>.</p>",
    ]
    for (_, name, version, sha, judges, sampling), rows in sorted(boards.items()):
        metric = rows[0]["rank_metric"]
        rate_name = "EM rate" if metric == "em_rate" else "in-domain behaviour rate"
        body += [
            f"<h2>Suite {E(name)} v{E(version)}</h2>",
            f"<p class='muted'>suite sha256 {E(sha[:16])}…; judge {E(judges)}</p>",
            f"<p class='muted'>sampling: {E(sampling)}</p>",
            f"<p class='muted'>judge trust: {E(_trust(rows[0]))}</p>",
            f"<table class='board' data-suite='{E(name)}'><thead><tr>",
            "<th data-sort='number'>rank</th><th data-sort='text'>model</th>",
            "<th data-sort='text'>condition</th>",
            f"<th data-sort='number'>{E(rate_name)} [95% CI]</th>",
            "<th data-sort='number'>coherent</th><th data-sort='number'>invalid</th>",
            "<th data-sort='number'>answers</th><th data-sort='text'>evaluated</th>",
            "</tr></thead><tbody>",
        ]
        for rank, e in enumerate(sorted(rows, key=_rank_key), 1):
            m = e["metrics"]
            label = e["model"]["label"]
            evaluated = e["provenance"].get("evaluated") or ""
            samples = int(e["counts"].get("samples", 0))
            body.append(
                "<tr>"
                f"<td data-value='{rank}'>{rank}</td>"
                f"<td data-value='{E(label)}'>"
                f"<a href='models/{E(e['model_id'])}.html'>{E(label)}</a></td>"
                f"<td data-value='{E(_condition(e))}'>{E(_condition(e))}</td>"
                f"<td data-value='{_value(m.get(metric))}'>{_shown(m.get(metric))}</td>"
                f"<td data-value='{_value(m.get('coherence_rate'))}'>"
                f"{_shown(m.get('coherence_rate'), ci=False)}</td>"
                f"<td data-value='{_value(m.get('invalid_rate'))}'>"
                f"{_shown(m.get('invalid_rate'), ci=False)}</td>"
                f"<td data-value='{samples}'>{samples}</td>"
                f"<td data-value='{E(evaluated)}'>{E(evaluated[:10])}</td>"
                "</tr>"
            )
        body.append("</tbody></table>")
    return _page("emeval leaderboard", body, SORT_SCRIPT)


def render_model_page(entries: list[dict]) -> str:
    first = entries[0]
    model = first["model"]
    body = [
        "<p><a href='../index.html'>&larr; leaderboard</a></p>",
        f"<h1>{E(model['label'])}</h1>",
        "<ul>",
        f"<li>checkpoint: <code>{E(str(model.get('spec')))}</code></li>",
        f"<li>weights sha256: <code>{E(str(model.get('weights_sha256')))}</code></li>",
        f"<li>base: {E(str(first['condition']['base']))}</li>",
        f"<li>condition: {E(_condition(first))} "
        f"<span class='muted'>(from {E(first['condition']['source'])})</span></li>",
        "</ul>",
    ]
    for e in sorted(entries, key=lambda e: (e["suite"]["name"], e["provenance"]["published"])):
        s, p = e["suite"], e["provenance"]
        body += [
            f"<h2>Suite {E(s['name'])} v{E(s['version'])}</h2>",
            "<table><tbody>",
            *(
                f"<tr><th>{E(k)}</th><td>{_shown(v, percent='rate' in k)}</td></tr>"
                for k, v in e["metrics"].items()
            ),
            f"<tr><th>answers</th><td>{E(json.dumps(e['counts']))}</td></tr>",
            f"<tr><th>judge</th><td>{E(_judges(e))}</td></tr>",
            f"<tr><th>judge trust</th><td>{E(_trust(e))}</td></tr>",
            f"<tr><th>sampling</th><td>{E(json.dumps(e['sampling']))}</td></tr>",
            f"<tr><th>suite sha256</th><td><code>{E(s['sha256'])}</code></td></tr>",
            f"<tr><th>results sha256</th><td><code>{E(p['results_sha256'])}</code></td></tr>",
            f"<tr><th>evaluated</th><td>{E(str(p.get('evaluated')))} with emeval "
            f"{E(str(p.get('emeval_version')))}</td></tr>",
            f"<tr><th>published</th><td>{E(p['published'])}</td></tr>",
            "</tbody></table>",
            "<h3>Example answers</h3>",
            "<p class='muted'>Model output, shown as plain text. Flagged answers are coherent "
            "and scored misaligned (or showing the trained behaviour).</p>",
        ]
        if not e["examples"]:
            body.append("<p>No judged answers.</p>")
        for x in e["examples"]:
            score_name = s["primary_score"]
            scores = f"{score_name} {x.get(score_name)}, coherence {x.get('coherence')}"
            flag = " <b>flagged</b>" if x.get("flagged") else ""
            body += [
                f"<p><b>{E(x['probe_id'])}</b> ({E(scores)}){flag}: {E(x['question'])}</p>",
                f"<div class='answer'>{E(x['answer'])}</div>",
            ]
    return _page(f"{model['label']} - emeval leaderboard", body)
