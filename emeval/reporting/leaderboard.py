"""`emeval leaderboard publish`: a static site ranking checkpoints, built from run dirs.

SITE/leaderboard.json is the record: every entry ever published, keyed by what makes a
result comparable (model weights, suite content, judge and rubrics, sampling). Publishing
merges new entries into it, rebuilds index.html and one page per model in a temporary dir
next to SITE, checks it, and only then swaps it in: an interrupted publish leaves the old
site in place. Model answers are untrusted text and are HTML-escaped everywhere; the pages
also forbid any script but the one sorting the table (Content-Security-Policy).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import html
import json
import os
import re
import shutil
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from emeval.errors import EmevalError
from emeval.formatting import NA, fmt_interval, fmt_value
from emeval.metrics import EMThresholds, definition_differences, thresholds_of
from emeval.reporting.runs import Run
from emeval.results import judge_trust

SCHEMA = "emeval.leaderboard/1"
HEX16 = re.compile(r"[0-9a-f]{16}")
EXAMPLES_PER_ENTRY = 4
EXAMPLE_CHARS = 1200
RANK_METRIC = {"alignment": "em_rate", "behaviour": "behaviour_rate"}
SHOWN_METRICS = ("em_rate", "em_rate_joint", "behaviour_rate", "coherence_rate", "invalid_rate",
                 "mean_alignment", "mean_behaviour", "mean_coherence")  # fmt: skip


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def model_id(model: dict) -> str:
    return _sha(model.get("weights_sha256") or model.get("spec") or "?")[:16]


def entry_id(results: dict) -> str:
    """Same id = same model judged the same way: a republish replaces, never duplicates."""
    key = {
        "model": results["model"].get("weights_sha256") or results["model"].get("spec"),
        "suite": results["suite"]["sha256"],
        "judges": [(j["id"], j["rubrics"]) for j in results["judges"]],
        "sampling": results["sampling"],
    }
    return _sha(json.dumps(key, sort_keys=True))[:16]


def _examples(run: Run) -> list[dict]:
    """The most misaligned coherent answers first, then the lowest-scored others."""
    primary = run.primary
    cuts = thresholds_of(run.results)
    scored = []
    for r in run.records:
        v = r.get("judges", {}).get(run.judge_id, {})
        main, coherence = v.get(primary, {}), v.get("coherence", {})
        if main.get("status") != "ok":
            continue
        score = main["score"]
        coh = coherence.get("score") if coherence.get("status") == "ok" else None
        badness = (100 - score) if primary == "alignment" else score  # high: worse behaviour
        flagged = cuts.flagged(primary, score, coh)
        scored.append((not flagged, -badness, r, score, coh))
    scored.sort(key=lambda t: (t[0], t[1], t[2]["sample_id"]))
    out = []
    for not_flagged, _, r, score, coh in scored[:EXAMPLES_PER_ENTRY]:
        answer = r["answer"] or ""
        out.append(
            {
                "probe_id": r["probe_id"],
                "category": r["category"],
                "question": r["question"],
                "answer": answer[:EXAMPLE_CHARS] + (" […]" if len(answer) > EXAMPLE_CHARS else ""),
                primary: round(score, 1),
                "coherence": None if coh is None else round(coh, 1),
                "flagged": not not_flagged,
            }
        )
    return out


def make_entry(run: Run, published: str) -> dict:
    res = run.results
    results_path = run.path / "results.json"
    cond = run.condition
    return {
        "id": entry_id(res),
        "model_id": model_id(res["model"]),
        "model": {k: res["model"].get(k) for k in ("spec", "weights_sha256", "base")}
        | {"label": run.model_label},
        "condition": {
            "base": cond.base,
            "method": cond.method,
            "reward": cond.reward,
            "mitigations": list(cond.mitigations),
            "seed": cond.seed,
            "step": cond.step,
            "source": cond.source,
        },  # fmt: skip
        "suite": {k: res["suite"][k] for k in ("name", "version", "sha256", "primary_score")},
        "judges": [
            {
                "id": j["id"],
                "rubrics": {k: v["version"] for k, v in j["rubrics"].items()},
                "trust": judge_trust(j),
            }
            for j in res["judges"]
        ],
        "rank_metric": RANK_METRIC[res["suite"]["primary_score"]],
        "em_definition": thresholds_of(res).to_dict(),
        "metrics": {k: res["metrics"][k] for k in SHOWN_METRICS if k in res["metrics"]},
        "counts": res["counts"],
        "sampling": res["sampling"],
        "provenance": {
            "run_dir": str(run.path.resolve()),
            "results_sha256": hashlib.sha256(results_path.read_bytes()).hexdigest(),
            "evaluated": res.get("created"),
            "emeval_version": res.get("emeval_version"),
            "log_file": res.get("log_file"),
            "published": published,
        },
        "examples": _examples(run),
    }


# ---------------------------------------------------------------- reading the old site


def _backups(site: Path) -> list[Path]:
    return sorted(site.parent.glob(f".{site.name}.old-*"), key=lambda p: p.stat().st_mtime)


def read_entries(site: Path) -> list[dict]:
    """Entries already published; a site swapped out by an interrupted publish is restored."""
    if not site.exists() and _backups(site):
        _backups(site)[-1].rename(site)
    path = site / "leaderboard.json"
    if not site.exists() or not path.exists():
        if site.exists() and any(site.iterdir()):
            raise EmevalError(
                f"{site}: not empty and holds no leaderboard.json; choose another --site"
            )
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EmevalError(f"{path}: unreadable ({e}); the site is left as it is") from None
    if data.get("schema") != SCHEMA or not isinstance(data.get("entries"), list):
        raise EmevalError(f"{path}: not an emeval leaderboard ({SCHEMA}); left as it is")
    for e in data["entries"]:  # ids become file names and links
        if not (isinstance(e, dict) and HEX16.fullmatch(str(e.get("id"))) and
                HEX16.fullmatch(str(e.get("model_id")))):  # fmt: skip
            raise EmevalError(f"{path}: an entry has a malformed id; the site is left as it is")
    for stale in _backups(site):  # left by a publish that stopped after its swap
        shutil.rmtree(stale, ignore_errors=True)
    return data["entries"]


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Every old entry stays; a new entry with an old id replaces it (first date kept)."""
    merged = {e["id"]: e for e in old}
    for e in new:
        if e["id"] in merged:
            first = merged[e["id"]]["provenance"].get("first_published")
            e["provenance"]["first_published"] = first or merged[e["id"]]["provenance"]["published"]
        merged[e["id"]] = e
    return list(merged.values())


# ---------------------------------------------------------------- rendering

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
    general_first = e["suite"]["primary_score"] != "alignment"
    return (general_first, e["suite"]["name"], e["suite"]["version"], e["suite"]["sha256"],
            _judges(e))  # fmt: skip


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
    for (_, name, version, sha, judges), rows in sorted(boards.items()):
        metric = rows[0]["rank_metric"]
        rate_name = "EM rate" if metric == "em_rate" else "in-domain behaviour rate"
        body += [
            f"<h2>Suite {E(name)} v{E(version)}</h2>",
            f"<p class='muted'>suite sha256 {E(sha[:16])}…; judge {E(judges)}</p>",
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


# ---------------------------------------------------------------- publishing


def build_site(entries: list[dict], out: Path, updated: str) -> None:
    (out / "models").mkdir(parents=True)
    data = {"schema": SCHEMA, "updated": updated, "entries": entries}
    (out / "leaderboard.json").write_text(json.dumps(data, indent=1, ensure_ascii=False), "utf-8")
    (out / "index.html").write_text(render_index(entries, updated), encoding="utf-8")
    by_model: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        by_model[e["model_id"]].append(e)
    for mid, group in by_model.items():
        (out / "models" / f"{mid}.html").write_text(render_model_page(group), encoding="utf-8")


def _check_site(out: Path, entries: list[dict]) -> None:
    data = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    if len(data["entries"]) != len(entries):
        raise EmevalError(f"{out}: built site lost entries; the old site is left in place")
    for e in entries:
        if not (out / "models" / f"{e['model_id']}.html").is_file():
            raise EmevalError(f"{out}: model page {e['model_id']} missing; old site kept")
    if "</html>" not in (out / "index.html").read_text(encoding="utf-8"):
        raise EmevalError(f"{out}: index.html is incomplete; the old site is left in place")


def publish(runs: list[Run], site: Path) -> dict:
    """Add the runs to the site; return counts of added and replaced entries."""
    site = site.expanduser().absolute()
    site.parent.mkdir(parents=True, exist_ok=True)
    with open(site.parent / f".{site.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one publisher at a time, or entries could be lost
        return _publish(runs, site)


def _publish(runs: list[Run], site: Path) -> dict:
    updated = datetime.now(UTC).isoformat(timespec="seconds")
    old = read_entries(site)
    # one site ranks under one EM definition; entries published before emeval recorded it
    # were computed with the default one (metrics.thresholds_of)
    differ = definition_differences(
        [(str(r.path), r.results) for r in runs]
        + [(f"the published entry for {e.get('model', {}).get('label', e['id'])}", e) for e in old]
    )
    if differ:
        raise EmevalError(f"{differ}; publish them to another --site")
    new = [make_entry(r, updated) for r in runs]
    old_ids = {e["id"] for e in old}
    entries = merge(old, new)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = site.parent / f".{site.name}.tmp-{tag}"
    try:
        build_site(entries, tmp, updated)
        if site.exists():  # keep files someone added by hand (a CNAME, notes)
            for item in site.iterdir():
                if not (tmp / item.name).exists():
                    copy = shutil.copytree if item.is_dir() else shutil.copy2
                    copy(item, tmp / item.name)
        _check_site(tmp, entries)
        if site.exists():
            backup = site.parent / f".{site.name}.old-{tag}"
            site.rename(backup)
            tmp.rename(site)  # if this line never runs, read_entries restores the backup
            shutil.rmtree(backup, ignore_errors=True)
        else:
            tmp.rename(site)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "added": sum(e["id"] not in old_ids for e in new),
        "replaced": sum(e["id"] in old_ids for e in new),
        "total": len(entries),
    }
