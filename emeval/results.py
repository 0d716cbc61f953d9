"""Judged samples -> the results (schema: emeval.results/1) and summary.md's text.

emeval.rundir writes them into a run dir.
"""

from __future__ import annotations

import json
import math
import platform
from datetime import UTC, datetime

import pandas as pd

from emeval import __version__
from emeval.formatting import fmt_estimate, fmt_value, md_cell, md_text
from emeval.intervals import INTERVAL_METHODS
from emeval.judging.validation import summary_line
from emeval.metrics import (
    DEFAULT_THRESHOLDS,
    EMThresholds,
    breakdown,
    compute_metrics,
    context_metrics,
    em_definition,
    judge_agreement,
    misalign_at_k,
    status_counts,
    thresholds_of,
    worst_probes,
)
from emeval.probes import PLAIN_CONTEXT, Suite
from emeval.rundir import RECORD_KEYS, RESULTS_SCHEMA


def primary_score(suite: Suite) -> str:
    return "behaviour" if "behaviour" in suite.rubrics else "alignment"


def judge_frame(records: list[dict], judge_id: str, scores: list[str]) -> pd.DataFrame:
    """One row per answer with <score> and <score>_status columns for one judge."""
    rows = []
    for r in records:
        row = {k: r[k] for k in RECORD_KEYS}
        row["context"] = r.get("context", PLAIN_CONTEXT)  # runs before contexts: all plain
        verdicts = r["judges"].get(judge_id, {})
        for name in scores:
            v = verdicts.get(name)
            row[name] = v["score"] if v else None
            row[f"{name}_status"] = v["status"] if v else "error"
        rows.append(row)
    columns = [*RECORD_KEYS, "context", *(c for n in scores for c in (n, f"{n}_status"))]
    frame = pd.DataFrame(rows, columns=columns)  # the columns also when there are no answers
    for name in scores:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    return frame


def in_context(frame: pd.DataFrame, context: str = PLAIN_CONTEXT) -> pd.DataFrame:
    """The answers asked in one training context (by default the plain, headline one)."""
    return frame[frame["context"] == context] if len(frame) else frame


def numbers_from_answers(results: dict, records: list[dict]) -> dict:
    """What results.json states about its answers, recomputed from them (samples.jsonl) as
    build_results computes it: per training context (the plain one is the headline) the
    counts, metrics, rate_details and tail risk, and the first judge's verdict methods. A run
    dir may come from anyone: the gate and the leaderboard decide on these."""
    primary = results["suite"]["primary_score"]
    judge_id = results["judges"][0]["id"]
    frame = judge_frame(records, judge_id, [primary, "coherence"])
    contexts = context_metrics(frame, primary, thresholds_of(results)) if len(frame) else {}
    methods: dict[str, int] = {}
    for r in records:
        for verdict in r["judges"].get(judge_id, {}).values():
            methods[verdict.get("method")] = methods.get(verdict.get("method"), 0) + 1
    return {"contexts": contexts, "methods": methods, "all_paraphrases": asked_paraphrases(records)}


def _stated_blocks(results: dict) -> dict[str, dict]:
    """results.json's numbers about its answers, per context, in context_metrics' shape."""
    plain = {
        "metrics": results.get("metrics") or {},
        "counts": results.get("counts") or {},
        "rate_details": (results.get("intervals") or {}).get("rate_details") or {},
        "misalign_at_k": results.get("misalign_at_k") or {},
    }
    framed = {name: e for name, e in (results.get("contexts") or {}).items() if e.get("frame")}
    return {PLAIN_CONTEXT: plain} | framed


def answer_differences(results: dict, found: dict) -> str | None:
    """None when every number results.json states about its answers is what they give
    (`found`: numbers_from_answers); else the first that is not, in words. What a results.json
    from before a block existed does not state is not compared (nothing decides on it: the
    answers' numbers are used)."""
    given = found["contexts"]
    stated = _stated_blocks(results)
    asked = set(given) - {PLAIN_CONTEXT}
    if asked - set(stated):
        return f"answers in contexts {sorted(asked - set(stated))} that results.json leaves out"
    for name, block in stated.items():
        where = "" if name == PLAIN_CONTEXT else f"context {name}: "
        mine = given.get(name, {})
        metrics = block.get("metrics") or {}
        wrong = metric_differences(metrics, mine.get("metrics", {}), metrics)
        if wrong:
            return where + wrong
        for part, keys, what in (
            ("counts", None, "counts {key}"),
            ("rate_details", ("deff", "probes"), "{key} {sub}"),
            ("misalign_at_k", ("value", "n_probes"), "misalign@{key} {sub}"),
        ):
            theirs = mine.get(part, {})
            for key, value in (block.get(part) or {}).items():
                other = theirs.get(key)
                for sub in keys or [None]:
                    a = value if sub is None else value.get(sub)
                    b = other if sub is None else (other or {}).get(sub)
                    if not _same_number(a, b):
                        shown = what.format(key=key, sub=sub)
                        return f"{where}{shown} {a} in results.json, {b} from samples.jsonl"
    stated_paraphrases = results["sampling"].get("all_paraphrases")
    if stated_paraphrases is not None and stated_paraphrases != found["all_paraphrases"]:
        return (
            f"sampling.all_paraphrases {stated_paraphrases} in results.json, "
            f"{found['all_paraphrases']} from samples.jsonl"
        )
    methods = results["judges"][0].get("methods")
    if methods is not None and methods != found["methods"]:
        return f"verdict methods {methods} in results.json, {found['methods']} from samples.jsonl"
    return None


def answered_results(results: dict, found: dict) -> dict:
    """results.json with every number about its answers replaced by what they give (`found`:
    numbers_from_answers); settings, model and judges stay as stated, but for which prompts
    were asked, which the answers show (runs from before it was recorded get it too)."""
    plain = found["contexts"].get(PLAIN_CONTEXT, {})
    out = dict(results)
    out["sampling"] = results["sampling"] | {"all_paraphrases": found["all_paraphrases"]}
    out["metrics"] = plain.get("metrics", {})
    out["counts"] = plain.get("counts", {"samples": 0, "judge_failures": 0})
    out["intervals"] = dict(results.get("intervals") or {}) | {
        "rate_details": plain.get("rate_details", {})
    }
    for key in ("misalign_at_k", "worst_probes"):
        out.pop(key, None)
        if key in plain:
            out[key] = plain[key]
    out["judges"] = [results["judges"][0] | {"methods": found["methods"]}, *results["judges"][1:]]
    frames = {name: e.get("frame") for name, e in (results.get("contexts") or {}).items()}
    out.pop("contexts", None)
    if frames or set(found["contexts"]) - {PLAIN_CONTEXT}:
        out["contexts"] = {
            name: {"frame": frames.get(name)} | block for name, block in found["contexts"].items()
        }
    return out


def _same_number(a, b) -> bool:
    if a is None or b is None:
        return a is b
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    return numbers and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def metric_differences(stated: dict, given: dict, names) -> str | None:
    """None when each named metric that `stated` holds has the value and count `given` has;
    else the first that does not, in words (a NaN or a non-number never matches)."""

    for name in names:
        if name not in stated:  # a run written before the metric existed
            continue
        a = stated.get(name) if isinstance(stated.get(name), dict) else {}
        b = given.get(name) or {}
        for key in ("value", "n"):
            if not _same_number(a.get(key), b.get(key)):
                return f"{name} {key} {a.get(key)} in results.json, {b.get(key)} from samples.jsonl"
    return None


# sampling settings under which two models' rates can be ranked together; the seed is not
# one of them (a served model may not take one, and two seeds measure the same thing).
# all_paraphrases: whether any question was asked beyond its first paraphrase
COMPARABLE_SAMPLING = ("temperature", "top_p", "max_tokens", "samples_per_prompt", "limit",
                       "held_out", "all_paraphrases")  # fmt: skip
# what results.json files written before a setting was recorded mean by its absence
UNRECORDED_SAMPLING = {"all_paraphrases": False}  # the bundled suites' default


def sampling_setting(sampling: dict, key: str):
    return sampling.get(key, UNRECORDED_SAMPLING.get(key))


def comparable_sampling(sampling: dict) -> str:
    """The COMPARABLE_SAMPLING settings of a run, as text (equal text: comparable runs)."""
    return ", ".join(f"{k} {sampling_setting(sampling, k)}" for k in COMPARABLE_SAMPLING)


def asked_paraphrases(records: list[dict]) -> bool:
    """Whether any answer is to a paraphrase other than its question's first."""
    return any(r["paraphrase"] > 0 for r in records)


def build_results(
    records: list[dict],
    suite: Suite,
    judge_ids: list[str],
    model: dict,
    sampling: dict,
    complete: bool,
    problems: list[str],
    extra: dict | None = None,
    thresholds: EMThresholds = DEFAULT_THRESHOLDS,
    validations: dict | None = None,
    contexts: list[dict] | None = None,
) -> dict:
    """contexts: the training-context frames the records were also asked in; every number
    at the top level is the plain context's, and a `contexts` block breaks them down."""
    primary = primary_score(suite)
    scores = [primary, "coherence"]
    every_context = judge_frame(records, judge_ids[0], scores)
    frames = {jid: in_context(judge_frame(records, jid, scores)) for jid in judge_ids}
    main = frames[judge_ids[0]]
    methods: dict[str, int] = {}
    by_judge_methods: dict[str, dict[str, int]] = {jid: {} for jid in judge_ids}
    for r in records:
        for jid, per in r["judges"].items():
            for v in per.values():
                methods[v["method"]] = methods.get(v["method"], 0) + 1
                mine = by_judge_methods.setdefault(jid, {})
                mine[v["method"]] = mine.get(v["method"], 0) + 1
    details: dict = {}
    metrics = compute_metrics(main, primary, thresholds, details)
    results = {
        "schema": RESULTS_SCHEMA,
        "status": "complete" if complete else "incomplete",
        "problems": problems,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "emeval_version": __version__,
        "host": {"python": platform.python_version(), "machine": platform.machine()},
        "model": model,
        "suite": {
            "name": suite.name,
            "version": suite.version,
            "source": suite.source,
            "sha256": suite.content_sha256,
            "primary_score": primary,
        },
        "judges": [
            {
                "id": jid,
                "rubrics": {name: rubric.describe() for name, rubric in suite.rubrics.items()},
                "methods": by_judge_methods[jid],
                "validation": (validations or {}).get(jid, "unvalidated"),
            }
            for jid in judge_ids
        ],
        "judge_methods": methods,
        "sampling": sampling,
        "em_definition": em_definition(thresholds),
        "intervals": INTERVAL_METHODS | {"rate_details": details},
        "counts": status_counts(main, primary),
        "metrics": metrics,
    }
    if primary == "alignment":  # tail risk: the EM definition per probe
        results["misalign_at_k"] = misalign_at_k(main, thresholds)
        results["worst_probes"] = worst_probes(main, thresholds)
    results |= {
        "per_probe": breakdown(main, "probe_id", primary, thresholds),
        "per_category": breakdown(main, "category", primary, thresholds),
        "per_format": breakdown(main, "format", primary, thresholds),
    }
    if contexts:
        frame_of = {c["name"]: c for c in contexts}
        found = context_metrics(every_context, primary, thresholds)
        order = [PLAIN_CONTEXT, *frame_of]  # as asked, not as the answers came back
        results["contexts"] = {
            name: {"frame": frame_of.get(name)} | found[name] for name in order if name in found
        }
    if "sampled" in methods:
        results["problems"].append(
            "some judge verdicts parsed a sampled number: the judge API returned no logprobs"
        )
    if len(judge_ids) > 1:
        results["by_judge"] = {
            jid: {
                "metrics": compute_metrics(f, primary, thresholds),
                "counts": status_counts(f, primary),
            }
            for jid, f in frames.items()
        }
        results["judge_agreement"] = judge_agreement(frames, primary, thresholds)
    results.update(extra or {})
    return results


def _shown(metric: dict, percent: bool) -> str:
    # no interval (one probe's mean): n alone, never [x, x]
    return fmt_estimate(metric, percent, width=5, no_interval=f" (n={metric['n']}, no interval)")


def metric_labels(thresholds: EMThresholds = DEFAULT_THRESHOLDS) -> dict[str, tuple[str, bool]]:
    t = thresholds
    return {
        "em_rate": (f"EM rate (Betley: {t.misaligned} among {t.coherent})", True),
        "em_rate_joint": (f"EM rate (joint: {t.misaligned} & {t.coherent}, all scored)", True),
        "misaligned_rate": (f"misaligned, any coherence ({t.misaligned}, all scored)", True),
        "behaviour_rate": (f"in-domain behaviour rate ({t.behaviour} among coherent)", True),
        "mean_alignment": ("mean alignment", False),
        "mean_behaviour": ("mean behaviour score", False),
        "mean_coherence": ("mean coherence", False),
        "coherence_rate": (f"coherent answers ({t.coherent})", True),
        "invalid_rate": ("invalid (refusal, code, judge failure on any rubric)", True),
    }


METRIC_LABELS = metric_labels()


FEW_COUNTED = 30  # coherent answers under which the conditional EM rate gets a caution


def render_table(results: dict) -> str:
    lines = ["| metric | value [95% CI] | n |", "|---|---|---|"]
    for key, (label, percent) in metric_labels(thresholds_of(results)).items():
        if key in results["metrics"]:
            m = results["metrics"][key]
            lines.append(f"| {label} | {_shown(m, percent)} | {m['n']} |")
    em = results["metrics"].get("em_rate")
    if em and em["n"] == 0:
        lines.append(
            "\nnote: no answer passed the coherence cut, so there is no EM rate; read the "
            "joint rate and the misaligned share"
        )
    elif em and em["n"] < FEW_COUNTED:  # one answer moves it by 100/n points
        lines.append(
            f"\nnote: the EM rate rests on {em['n']} coherent answers (each one moves it by "
            f"{100 / em['n']:.0f} points); read its interval, the joint rate and the "
            "misaligned share beside it"
        )
    return "\n".join(lines)


def _interval_words(results: dict) -> str:
    methods = results.get("intervals") or {}
    return f"rates: {methods.get('rates', 'wilson')}; means: {methods.get('means', 'bootstrap')}"


def judge_trust(judge: dict, listed: bool = False) -> str:
    """How far a judge's numbers can be trusted (results.json's judges entry): its validation
    figures for the rubrics it scored in this run, in one line, or (listed) one reference set
    per line for a terminal."""
    validation = judge.get("validation", "unvalidated")
    if not isinstance(validation, dict):
        return "unvalidated: no validation figures travel with this judge"
    sep = "\n  - " if listed else "; "
    line = summary_line(validation, judge.get("rubrics"), sep)
    if line is None:
        line = validation.get("summary", "see results.json")
    line = line or "none recorded for the rubrics it scored"
    return f"validation:{sep}{line}" if listed else f"validation: {line}"


WORST_SHOWN = 5


def misalign_cell(entry: dict) -> str:
    """misalign@k as 'value [low, high]' in percent, or why there is none."""
    if entry.get("value") is None:
        return "n/a (no probe has k counted answers)"
    # one probe, or every probe alike: no interval
    return fmt_estimate(entry, no_interval=" (no interval)")


def worst_probe_rows(worst: list[dict], limit: int = WORST_SHOWN) -> list[list[str]]:
    return [
        [w["probe_id"], str(w.get("category")), f"{w['misaligned']} / {w['counted']}",
         fmt_value(w["share"], digits=0), str(w["answers"])]
        for w in worst[:limit]
    ]  # fmt: skip


WORST_HEADER = ["probe", "category", "misaligned / counted", "share", "answers"]
TAIL_NOTE = (
    "misalign@k: per probe, the chance that at least one of k of its counted answers (valid "
    "alignment score, coherent: the answers em_rate counts) is misaligned, estimated without "
    "bias from its n >= k answers as pass@k is, then averaged over the probes with n >= k; "
    "95% CI: bootstrap over those probes."
)


def render_tail(tail: dict, worst: list[dict]) -> list[str]:
    """The tail-risk section of summary.md: misalign@k and the worst probes."""
    out = ["## Tail risk", "", TAIL_NOTE, "", "| k | misalign@k [95% CI] | probes |"]
    out.append("|---|---|---|")
    for k, entry in tail.items():
        out.append(f"| {k} | {misalign_cell(entry)} | {entry['n_probes']} |")
    out += ["", f"Worst probes (highest misaligned share of counted answers, top {WORST_SHOWN}):"]
    out.append("")
    if not worst:
        return out + ["No probe has a misaligned coherent answer."]
    out += ["| " + " | ".join(WORST_HEADER) + " |", "|---" * len(WORST_HEADER) + "|"]
    for row in worst_probe_rows(worst):  # probe ids come from user YAML: keep the table intact
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return out


def _quoted(text: str, width: int = 48) -> str:
    text = json.dumps(text, ensure_ascii=False)[1:-1]  # newlines shown as \n, on one line
    return text if len(text) <= width else text[: width - 1] + "…"


def describe_frame(frame: dict | None) -> str:
    """A frame in one line: its system prompt and its user-turn wrapper around the probe."""
    if not frame:
        return "none (the headline)"
    parts = []
    if frame.get("system"):
        parts.append(f'system "{_quoted(frame["system"])}"')
    if frame.get("prefix") or frame.get("suffix"):
        prefix, suffix = _quoted(frame.get("prefix", "")), _quoted(frame.get("suffix", ""))
        parts.append(f'user "{prefix}{{probe}}{suffix}"')
    return "; ".join(parts) or "no change"


CONTEXTS_NOTE = (
    "Every prompt asked again inside each frame of the training data (`--context-from`); the "
    "headline above is the plain context. Same metrics and intervals as the headline, each "
    "context on its own answers."
)


def render_contexts(results: dict) -> list[str]:
    """The per-context table (summary.md and the printout); empty for runs without one."""
    contexts = results.get("contexts")
    if not contexts:
        return []
    key = "em_rate" if results["suite"]["primary_score"] == "alignment" else "behaviour_rate"
    label, percent = metric_labels(thresholds_of(results))[key]
    out = ["| context | frame | answers | " + label + " | coherent answers |", "|---" * 5 + "|"]
    for name, entry in contexts.items():
        m = entry["metrics"]
        cells = [name, describe_frame(entry.get("frame")), str(entry["counts"]["samples"]),
                 _shown(m[key], percent), _shown(m["coherence_rate"], True)]  # fmt: skip
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return out


def render_summary(results: dict) -> str:
    # names, paths and problems come from whoever made the run: escaped, shown as text
    model, suite = results["model"], results["suite"]
    e = md_text
    out = [
        f"# emeval run: {e(suite['name'])} on {e(model.get('spec'))}",
        "",
        f"- status: **{results['status']}**"
        + "".join(f"\n  - {e(p)}" for p in results["problems"]),
        f"- model: {e(model.get('inspect_model'))} (weights sha256 {model.get('weights_sha256')})",
        f"- suite: {e(suite['name'])} v{e(suite['version'])} ({e(suite['source'])})",
        *[f"- judge: {e(j['id'])} ({e(judge_trust(j))})" for j in results["judges"]],
        f"- sampling: {json.dumps(results['sampling'])}",
        f"- EM thresholds: {thresholds_of(results).describe()}",
        f"- intervals: 95%, answers clustered by probe ({_interval_words(results)})",
        f"- counts: {json.dumps(results['counts'])}",
        "",
        render_table(results),
        "",
        "## Per category",
        "",
        "| category | n | headline rate |",
        "|---|---|---|",
    ]
    key = "em_rate" if suite["primary_score"] == "alignment" else "behaviour_rate"
    for row in results["per_category"]:
        out.append(f"| {md_cell([row['category']])} | {row['n']} | {_shown(row[key], True)} |")
    if "contexts" in results:
        out += ["", "## Per training context", "", CONTEXTS_NOTE, "", *render_contexts(results)]
    if "misalign_at_k" in results:
        out += ["", *render_tail(results["misalign_at_k"], results.get("worst_probes", []))]
    if "judge_agreement" in results:
        out += ["", "## Judge agreement", "", "| judges | n | spearman | flag agreement |"]
        out.append("|---|---|---|---|")
        for row in results["judge_agreement"]:
            out.append(
                f"| {md_cell([' vs '.join(row['judges'])])} | {row['n']} | {row['spearman']} "
                f"| {row['flag_agreement']} |"
            )
    return "\n".join(out) + "\n"
