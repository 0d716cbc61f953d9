"""`emeval leaderboard publish`: a static site ranking checkpoints, built from run dirs.

SITE/leaderboard.json is the record: every entry ever published, keyed by what makes a
result comparable (model weights, suite content, judge and rubrics, sampling). Publishing
merges new entries into it, rebuilds index.html and one page per model (leaderboard_pages.py)
in a temporary dir next to SITE, checks it, and only then swaps it in: an interrupted publish
leaves the old site in place.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from emeval.errors import EmevalError
from emeval.metrics import definition_differences, thresholds_of
from emeval.reporting.leaderboard_pages import render_index, render_model_page
from emeval.reporting.runs import Run
from emeval.results import UNRECORDED_SAMPLING, judge_trust
from emeval.rundir import RESULTS, metric_problem

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
        # a setting at the value its absence meant before it was recorded keeps old ids
        "sampling": {
            k: v
            for k, v in results["sampling"].items()
            if k not in UNRECORDED_SAMPLING or v != UNRECORDED_SAMPLING[k]
        },
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
    """One run's entry, from results whose numbers are what its answers give (checked against
    its results.json), so every entry's intervals come from the same code."""
    res = run.results
    results_path = run.path / RESULTS
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
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise EmevalError(f"{path}: not an emeval leaderboard ({SCHEMA}); left as it is")
    if not isinstance(data.get("entries"), list):
        raise EmevalError(f"{path}: not an emeval leaderboard ({SCHEMA}); left as it is")
    for e in data["entries"]:
        wrong = _entry_problem(e)
        if wrong:
            raise EmevalError(f"{path}: an entry {wrong}; the site is left as it is")
    for stale in _backups(site):  # left by a publish that stopped after its swap
        shutil.rmtree(stale, ignore_errors=True)
    return data["entries"]


def _entry_problem(e) -> str | None:
    """What keeps a published entry from being one emeval wrote (the site's files may have
    been edited since), in words, or None."""
    if not isinstance(e, dict):
        return "is not an object"
    if not (HEX16.fullmatch(str(e.get("id"))) and HEX16.fullmatch(str(e.get("model_id")))):
        return "has a malformed id"  # ids become file names and links
    suite = e.get("suite")
    if not (isinstance(suite, dict) and all(isinstance(suite.get(k), str) for k in
                                            ("name", "sha256", "primary_score"))):  # fmt: skip
        return f"{e['id']} has no suite"
    for key in ("model", "condition", "counts", "sampling", "metrics"):
        if not isinstance(e.get(key), dict):
            return f"{e['id']} has no {key}"
    for name, metric in e["metrics"].items():
        wrong = metric_problem(name, metric)
        if wrong:
            return f"{e['id']}: {wrong}"
    return None


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Every old entry stays; a new entry with an old id replaces it (first date kept)."""
    merged = {e["id"]: e for e in old}
    for e in new:
        if e["id"] in merged:
            first = merged[e["id"]]["provenance"].get("first_published")
            e["provenance"]["first_published"] = first or merged[e["id"]]["provenance"]["published"]
        merged[e["id"]] = e
    return list(merged.values())


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
    new = []
    for r in runs:  # run dirs may come from anyone: publish only what their answers give
        answered, wrong = r.answered()
        if wrong:
            raise EmevalError(f"{r.path}: {wrong}; nothing was published")
        new.append(make_entry(answered, updated))
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
