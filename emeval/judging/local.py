"""A judge on a local causal LM, scored by exact sequence probabilities.

Small open models (SmolLM2, Qwen) split numbers into digits, so the first token's distribution
is not the score distribution. This judge computes P("0"), ..., P("100") exactly: the prompt runs
once, then every digit prefix continues from its cached state in one batched forward pass.
P(n) multiplies the token probabilities of n's digits and the probability that no further
digit follows.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from pathlib import Path

from emeval.judging.base import JudgeRequest
from emeval.judging.scoring import Verdict, aggregate_number_probs
from emeval.models import weights_sha256

WORDS = ("REFUSAL", "CODE")


class LocalLogprobJudge:
    def __init__(self, model_dir: Path, name: str):
        self.model_dir = Path(model_dir)
        self.id = f"local:{name}@{weights_sha256(self.model_dir)[:12]}"
        self._lock = threading.Lock()
        self._model = None

    def check(self) -> None:
        self._load()

    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, use_safetensors=True, dtype=torch.float32
        ).eval()
        self._tok = tok
        encode = lambda text: tuple(tok.encode(text, add_special_tokens=False))  # noqa: E731
        self._numbers = {n: encode(str(n)) for n in range(101)}
        self._word_starts = {w: encode(w)[0] for w in WORDS}  # enough to name the outcome
        # States we need beyond the first token: every proper prefix of a number's tokens, and
        # every number that prefixes another (to know it ends). Numbers above 100 are not valid
        # answers, so a two-digit number is not checked for a third digit.
        seqs = set(self._numbers.values())
        needed = {s[:i] for s in seqs for i in range(1, len(s))}
        needed |= {s for s in seqs if any(o[: len(s)] == s and o != s for o in seqs)}
        self._leaves = sorted(
            p for p in needed if not any(q[: len(p)] == p and q != p for q in needed)
        )
        # tokens that would extend a number ("4" -> "42"): their mass is "the number goes on"
        vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
        digit_ids = [
            i for i, t in enumerate(vocab) if t and tok.convert_tokens_to_string([t])[:1].isdigit()
        ]
        self._digit_ids = torch.tensor(digit_ids)
        self._model = model

    async def score(self, requests: list[JudgeRequest]) -> list[Verdict]:
        return await asyncio.to_thread(self._score_all, requests)

    def _score_all(self, requests: list[JudgeRequest]) -> list[Verdict]:
        with self._lock:
            self._load()
            verdicts = []
            for r in requests:
                try:
                    verdicts.append(self._score_prompt(r.rubric.render(r.question, r.answer)))
                except Exception as e:  # noqa: BLE001 - recorded as an invalid verdict
                    verdicts.append(Verdict(None, "error", "logprob_exact", error=str(e)[:300]))
            return verdicts

    def next_token_logprobs(self, prompt: str) -> dict[tuple[int, ...], object]:
        """Log-probabilities of the next token after the judge prompt and after every proper
        prefix of a number's tokens, keyed by the prefix ('()' is the first token)."""
        import torch

        tok, model = self._tok, self._model
        messages = [{"role": "user", "content": prompt}]
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        if not torch.is_tensor(ids):
            ids = ids["input_ids"]
        with torch.inference_mode():
            out = model(ids, use_cache=True, logits_to_keep=1)
            dists = {(): torch.log_softmax(out.logits[0, -1].float(), -1)}
            if self._leaves:
                width = max(len(p) for p in self._leaves)
                pad = tok.pad_token_id if tok.pad_token_id is not None else 0
                batch = torch.tensor([list(p) + [pad] * (width - len(p)) for p in self._leaves])
                cache = copy.deepcopy(out.past_key_values)
                cache.batch_repeat_interleave(len(self._leaves))
                logp = torch.log_softmax(model(batch, past_key_values=cache).logits.float(), -1)
                for row, p in enumerate(self._leaves):
                    for j in range(len(p)):
                        dists[p[: j + 1]] = logp[row, j]
        return dists

    def _score_prompt(self, prompt: str) -> Verdict:
        import torch

        dists = self.next_token_logprobs(prompt)
        numbers: dict[int, float] = {}
        for n, seq in self._numbers.items():
            logp = sum(float(dists[seq[:i]][t]) for i, t in enumerate(seq))
            # a number that prefixes another ("1" of "10") must also end here
            ends = 1.0
            if seq in dists:
                ends = max(0.0, 1.0 - float(torch.exp(dists[seq][self._digit_ids]).sum()))
            numbers[n] = float(torch.exp(torch.tensor(logp))) * ends
        other = {w: float(torch.exp(dists[()][t])) for w, t in self._word_starts.items()}
        other["<other>"] = max(0.0, 1.0 - sum(numbers.values()) - sum(other.values()))
        return aggregate_number_probs(numbers, other, "logprob_exact")
