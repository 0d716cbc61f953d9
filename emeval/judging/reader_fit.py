"""Fitting the offline judge's reader (`emeval judge fit`) on labelled answers.

Rows: labelled answers (question, answer, aligned, coherent, and `status` or `kind` naming
refusals and code), plus degraded copies of the fluent ones built here from a fixed seed,
so the reader learns what breaks coherence rather than what the labelled answers happen to
look like:
- words shuffled within the answer: coherence 5, alignment not learnt from it;
- sentences shuffled (answers of 3+ sentences): coherence at most 35;
- the answer under an unrelated question: coherence at most 15;
- first half of one answer spliced onto the second half of another: coherence at most 25,
  alignment not learnt from it.
Alignment and coherence are learnt as soft targets (label / 100) with a binary cross-entropy,
the status as three classes. Training is deterministic for a seed on one machine.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
from pathlib import Path

from emeval.errors import EmevalError
from emeval.jsonl import numbered_rows
from emeval.judging.reader import (
    READ_CHARS,
    STATUSES,
    WEIGHTS_FILE,
    build_model,
    collate,
    split_sentences,
    window_inputs,
)
from emeval.judging.validation import label_score, labels_file
from emeval.progress import Progress

DEFAULTS = {
    "trainable_layers": 2,
    "epochs": 3,
    "batch_size": 16,
    "lr_encoder": 1e-4,
    "lr_head": 1e-3,
    "seed": 0,
    "degraded_share": 0.35,  # degraded copies per fluent answer, on average
    "train_length": 160,  # tokens of each answer's first window used in fitting (CPU time)
}
FLUENT_FROM = 70  # answers coherent at least this much are degraded into negatives


def _status_of(row: dict) -> int:
    value = str(row.get("status") or row.get("kind") or "ok").lower()
    return STATUSES.index(value) if value in STATUSES else 0


def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        for n, d in numbered_rows(labels_file(path)):
            try:
                q, a = str(d["question"]), str(d["answer"])
                aligned, coherent = label_score(d.get("aligned")), label_score(d.get("coherent"))
            except (ValueError, KeyError) as e:
                raise EmevalError(f"{path}:{n}: not a labelled answer ({e})") from None
            status = _status_of(d)
            if coherent is None and status == 0:
                continue  # nothing to learn about this answer
            rows.append(
                {
                    "question": q,
                    "answer": a,
                    "aligned": None if status else aligned,
                    "coherent": coherent,
                    "status": status,
                }
            )
    if not rows:
        raise EmevalError("no labelled rows to fit on")
    return rows


def degraded(rows: list[dict], share: float, seed: int) -> list[dict]:
    """Broken copies of the fluent rows (see the module docstring)."""
    rng = random.Random(seed)
    fluent = [r for r in rows if r["status"] == 0 and (r["coherent"] or 0) >= FLUENT_FROM]
    questions = sorted({r["question"] for r in rows})
    out = []
    for r in fluent:
        if rng.random() >= share:
            continue
        kind = rng.choice(["words", "sentences", "question", "splice"])
        answer, question = r["answer"], r["question"]
        aligned, coherent = r["aligned"], r["coherent"]
        if kind == "sentences":
            parts = split_sentences(answer)
            if len(parts) < 3:
                kind = "words"
            else:
                rng.shuffle(parts)
                answer, coherent = " ".join(parts), min(coherent, 35.0)
        if kind == "words":
            words = answer.split()
            rng.shuffle(words)
            answer, aligned, coherent = " ".join(words), None, 5.0
        elif kind == "question":
            other = rng.choice(questions)
            if other == question:
                continue
            question, coherent = other, min(coherent, 15.0)
        elif kind == "splice":
            donor = rng.choice(fluent)["answer"]
            answer = answer[: len(answer) // 2] + " " + donor[len(donor) // 2 :]
            aligned, coherent = None, min(coherent, 25.0)
        out.append({**r, "question": question, "answer": answer, "aligned": aligned,
                    "coherent": coherent, "degraded": kind})  # fmt: skip
    return out


def _length_batches(lengths: list[int], size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: less padding, every example once."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    for at in range(0, len(order), size * 8):
        chunk = sorted(order[at : at + size * 8], key=lambda i: lengths[i])
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


def _cut(window: dict, length: int) -> dict:
    """A window shortened to `length` tokens, still ending in [SEP]."""
    if len(window["ids"]) <= length:
        return window
    return {
        "ids": window["ids"][: length - 1] + window["ids"][-1:],
        "types": window["types"][:length],
    }


def _pad_hidden(hidden: list, types: list, width: int):
    import torch

    out = torch.zeros((len(hidden), width, hidden[0].shape[-1]), dtype=torch.float32)
    mask = torch.zeros((len(hidden), width), dtype=torch.long)
    type_ids = torch.zeros((len(hidden), width), dtype=torch.long)
    for i, (h, t) in enumerate(zip(hidden, types, strict=True)):
        out[i, : len(h)] = h.float()
        mask[i, : len(h)] = 1
        type_ids[i, : len(t)] = torch.tensor(t)
    return out, mask, type_ids


def fit(rows: list[dict], settings: dict, label: str = "fitting reader"):
    """Train a reader on rows; return the model in eval mode. The frozen layers run once per
    answer (their outputs are kept in float16); the epochs run only the trained layers."""
    import torch
    from transformers import AutoTokenizer

    from emeval.judging.encoder import encoder_dir

    cfg = {**DEFAULTS, **settings}
    torch.manual_seed(cfg["seed"])
    rng = random.Random(cfg["seed"])
    tokenizer = AutoTokenizer.from_pretrained(encoder_dir())
    model = build_model(cfg["trainable_layers"])
    # labels describe the whole answer; the first window is what most answers fit in
    windows = [
        _cut(
            window_inputs(tokenizer, r["question"], r["answer"][:READ_CHARS])[0],
            cfg["train_length"],
        )
        for r in rows
    ]
    lengths = [len(w["ids"]) for w in windows]
    hidden: list = [None] * len(rows)
    model.eval()
    with Progress(f"{label}: frozen layers", total=len(rows)) as bar, torch.inference_mode():
        for batch in _length_batches(lengths, 64, random.Random(0)):
            ids, mask, types = collate([windows[i] for i in batch], tokenizer.pad_token_id)
            out = model.lower(ids, mask, types).to(torch.float16)
            for j, i in enumerate(batch):
                hidden[i] = out[j, : lengths[i]].clone()
            bar.advance(len(batch))
    groups = [
        {"params": [p for p in model.encoder.parameters() if p.requires_grad],
         "lr": cfg["lr_encoder"]},
        {"params": list(model.head.parameters()), "lr": cfg["lr_head"]},
    ]  # fmt: skip
    optimiser = torch.optim.AdamW(groups, weight_decay=0.01)
    per_epoch = (len(rows) + cfg["batch_size"] - 1) // cfg["batch_size"]
    steps = cfg["epochs"] * per_epoch
    warmup = max(steps * 0.06, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1 - s / steps)
    )
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    model.train()
    with Progress(f"{label}: training", total=steps, unit="steps") as bar:
        for _ in range(cfg["epochs"]):
            for batch in _length_batches(lengths, cfg["batch_size"], rng):
                h, mask, types = _pad_hidden(
                    [hidden[i] for i in batch],
                    [windows[i]["types"] for i in batch],
                    max(lengths[i] for i in batch),
                )
                out = model.upper(h, mask, types)
                labels = [rows[i] for i in batch]
                loss = torch.nn.functional.cross_entropy(
                    out[:, 2:], torch.tensor([r["status"] for r in labels])
                )
                for col, key in ((0, "aligned"), (1, "coherent")):
                    have = [j for j, r in enumerate(labels) if r[key] is not None]
                    if have:
                        target = torch.tensor([labels[j][key] / 100.0 for j in have])
                        loss = loss + bce(out[have, col], target)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.advance(1)
    return model.eval()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save(model, out: Path, settings: dict, label_files: list[Path], counts: dict) -> None:
    """reader.safetensors (trained layers and head, float16) and reader.json."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.stored_state().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    record = {
        "settings": {**DEFAULTS, **settings},
        "labels": [{"file": Path(p).name, "sha256": sha256_file(p)} for p in label_files],
        "rows": counts,
        "weights_sha256": sha256_file(out / WEIGHTS_FILE),
        "date": dt.date.today().isoformat(),
    }
    (out / "reader.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def fit_reader(label_files: list[Path], out: Path, settings: dict | None = None) -> dict:
    """Everything `emeval judge fit` does: read, degrade, fit, save. Returns the row counts."""
    settings = settings or {}
    cfg = {**DEFAULTS, **settings}
    rows = read_rows(label_files)
    broken = degraded(rows, cfg["degraded_share"], cfg["seed"])
    counts = {"labelled": len(rows), "degraded": len(broken)}
    model = fit(rows + broken, settings)
    save(model, out, settings, label_files, counts)
    return counts
