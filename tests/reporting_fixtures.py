"""Run dirs for the gate, report and leaderboard tests, written by emeval's own results code
(build_results + write_run) from answers whose judge verdicts are set by the test."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from emeval.metrics import DEFAULT_THRESHOLDS, EMThresholds
from emeval.probes import load_suite
from emeval.results import build_results, render_summary
from emeval.rundir import write_run

JUDGE_ID = "offline:fixture"


def verdict(score: float | None, status: str = "ok", method: str = "encoder") -> dict:
    return {"score": score, "status": status, "method": method, "number_mass": None,
            "distribution": {}, "error": None}  # fmt: skip


def write_checkpoint(path: Path, manifest: dict | None) -> Path:
    """A checkpoint dir as `emeval train` leaves it, reduced to what reports read."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    if manifest is not None:
        (path / "emeval-manifest.json").write_text(json.dumps(manifest))
    return path


def make_run(
    out: Path,
    *,
    misaligned: int = 0,
    incoherent: int = 0,
    failed: int = 0,
    aligned: int = 40,
    suite: str = "general",
    checkpoint: Path | None = None,
    model_spec: str = "smollm2-135m-instruct",
    judge_id: str = JUDGE_ID,
    seed: int = 0,
    max_tokens: int = 64,
    complete: bool = True,
    answer_text: str | None = None,
    refused: int = 0,
    coherence_failed: int = 0,
    method: str = "encoder",
    misaligned_probes: int | None = None,
    thresholds: EMThresholds = DEFAULT_THRESHOLDS,
    validations: dict | None = None,
    edit_answers=None,
    all_paraphrases: bool | None = None,
) -> Path:
    """A run dir with the given numbers of misaligned-and-coherent, incoherent, unjudged
    (no_score), refused (alignment REFUSAL, coherent) and aligned answers, and misaligned
    answers whose coherence call failed (coherence_failed), one per (prompt, sample) slot,
    cycling over the suite's prompts: runs with as many answers cover the same slots.
    misaligned_probes: put the misaligned answers on that many probes' slots (round robin,
    each probe's prompts and then further samples in turn).
    edit_answers: a function of the answer records that changes them before the results are
    built, as someone editing a run and recomputing its numbers with emeval would.
    all_paraphrases: ask every paraphrase and record so (True), record that only the first
    were asked (False), or record nothing, as emeval did before it recorded it (None)."""
    s = load_suite(suite)
    primary = "behaviour" if "behaviour" in s.rubrics else "alignment"
    prompts = s.select(all_paraphrases=bool(all_paraphrases))
    by_probe: dict[str, list] = {}
    for prompt in prompts:
        by_probe.setdefault(prompt.probe_id, []).append(prompt)
    probe_prompts = list(by_probe.values())
    kinds = ["misaligned"] * misaligned + ["incoherent"] * incoherent
    kinds += ["failed"] * failed + ["refused"] * refused
    kinds += ["coherence_failed"] * coherence_failed + ["aligned"] * aligned
    scores = {"misaligned": (8.0, 80.0), "incoherent": (60.0, 15.0), "aligned": (92.0, 88.0)}
    if primary == "behaviour":  # in-domain suites: high score = the trained behaviour shows
        scores = {"misaligned": (85.0, 80.0), "incoherent": (40.0, 15.0), "aligned": (5.0, 88.0)}
    # one answer per (prompt, sample) slot, the suite's prompts in turn as a run gives them
    slots = [(prompts[i % len(prompts)], i // len(prompts) + 1) for i in range(len(kinds))]
    if misaligned_probes:  # the misaligned answers take those probes' slots first
        keys = [(p.sample_id, e) for p, e in slots]
        chosen = []
        for i in range(misaligned):
            group = probe_prompts[i % misaligned_probes]
            turn = i // misaligned_probes
            chosen.append((group[turn % len(group)], turn // len(group) + 1))
        taken = {keys.index((p.sample_id, e)) for p, e in chosen}  # ValueError: no such slot
        slots = chosen + [s for j, s in enumerate(slots) if j not in taken]
    records = []
    for i, kind in enumerate(kinds):
        prompt, epoch = slots[i]
        if kind == "failed":
            judged = {primary: verdict(None, "no_score"), "coherence": verdict(None, "no_score")}
        elif kind == "refused":
            judged = {primary: verdict(None, "refusal"), "coherence": verdict(85.0)}
        elif kind == "coherence_failed":  # misaligned, but the coherence call failed
            judged = {
                primary: verdict(scores["misaligned"][0]),
                "coherence": verdict(None, "error"),
            }
        else:
            main, coherence = scores[kind]
            judged = {primary: verdict(main + i % 3), "coherence": verdict(coherence)}
        judged = {k: v | {"method": method} for k, v in judged.items()}
        text = answer_text if (answer_text and kind == "misaligned") else f"{kind} answer {i}"
        records.append(
            {
                "sample_id": prompt.sample_id,
                "probe_id": prompt.probe_id,
                "category": prompt.category,
                "format": prompt.format,
                "paraphrase": prompt.paraphrase,
                "epoch": epoch,
                "question": prompt.user,
                "answer": text,
                "judges": {judge_id: judged},
                "error": None,
            }
        )
    if edit_answers:
        records = edit_answers(records)
    spec = str(checkpoint) if checkpoint else model_spec
    model = {
        "spec": spec,
        "inspect_model": f"hf/{spec}",
        "local_path": str(checkpoint) if checkpoint else None,
        "weights_sha256": hashlib.sha256(spec.encode()).hexdigest(),
        "base": None,
    }
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_tokens": max_tokens, "seed": seed,
                "samples_per_prompt": 1, "limit": None, "held_out": False}  # fmt: skip
    if all_paraphrases is not None:
        sampling["all_paraphrases"] = all_paraphrases
    problems = [] if complete else ["3 of 40 samples present"]
    results = build_results(
        records,
        s,
        [judge_id],
        model,
        sampling,
        complete,
        problems,
        thresholds=thresholds,
        validations=validations,
    )
    return write_run(out, results, records, render_summary(results)).parent
