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

from emeval.backend.compute import TORCH_LOCK
from emeval.judging.base import JudgeRequest
from emeval.judging.scoring import Verdict, aggregate_number_probs
from emeval.models import weights_sha256

WORDS = ("REFUSAL", "CODE")
# Requests scored in one forward pass (prompts left-padded to the longest). On a CPU the
# prompt pass is compute-bound: 8 judge prompts of ~350 tokens took the same CPU time one by
# one as 4 or 8 at a time (benchmarks/README.md), so batching only pays on faster hardware.
BATCH_REQUESTS = 1
BATCH_TOKENS = 4096


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
            verdicts: list[Verdict | None] = [None] * len(requests)
            prompts = {}
            for i, r in enumerate(requests):
                try:
                    prompts[i] = self._prompt_ids(r.rubric.render(r.question, r.answer))
                except Exception as e:  # noqa: BLE001 - recorded as an invalid verdict
                    verdicts[i] = Verdict(None, "error", "logprob_exact", error=str(e)[:300])
            for group in self._groups(prompts):
                try:
                    with TORCH_LOCK:  # take turns with generation running in this process
                        dists = self.batched_logprobs([prompts[i] for i in group])
                    for i, d in zip(group, dists, strict=True):
                        verdicts[i] = self._verdict(d)
                except Exception as e:  # noqa: BLE001 - recorded as invalid verdicts
                    for i in group:
                        verdicts[i] = Verdict(None, "error", "logprob_exact", error=str(e)[:300])
            return verdicts

    def _groups(self, prompts: dict[int, list[int]]) -> list[list[int]]:
        """Requests in length order, cut into batches of bounded padded size."""
        order = sorted(prompts, key=lambda i: len(prompts[i]))
        groups: list[list[int]] = []
        for i in order:
            if groups and len(groups[-1]) < BATCH_REQUESTS:
                if (len(groups[-1]) + 1) * len(prompts[i]) <= BATCH_TOKENS:
                    groups[-1].append(i)
                    continue
            groups.append([i])
        return groups

    def _prompt_ids(self, prompt: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}]
        ids = self._tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def batched_logprobs(self, prompts: list[list[int]]) -> list[dict[tuple[int, ...], object]]:
        """next_token_logprobs for several tokenized prompts at once: one forward over the
        left-padded prompts, then one over every number prefix, all appended to each prompt
        as a flat row in which each prefix token sees the prompt and its own earlier tokens
        (instead of one cache copy per prefix)."""
        import torch

        model = self._model
        n, width = len(prompts), max(len(p) for p in prompts)
        pad = self._tok.pad_token_id if self._tok.pad_token_id is not None else 0
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros(n, width, dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        with torch.inference_mode():
            out = model(
                ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                use_cache=True,
                logits_to_keep=1,
            )
            first = torch.log_softmax(out.logits[:, -1].float(), -1)
            dists = [{(): first[row]} for row in range(n)]
            if not self._leaves:
                return dists
            flat = [t for leaf in self._leaves for t in leaf]
            depth = torch.tensor([j for leaf in self._leaves for j in range(len(leaf))])
            owner = torch.tensor([a for a, leaf in enumerate(self._leaves) for _ in leaf])
            sees = (owner[:, None] == owner[None, :]) & (depth[None, :] <= depth[:, None])
            allowed = torch.cat(
                [
                    mask.bool()[:, None, :].expand(n, len(flat), width),
                    sees.expand(n, len(flat), len(flat)),
                ],
                dim=-1,
            )[:, None]
            dtype = model.dtype
            additive = torch.zeros(allowed.shape, dtype=dtype)
            additive.masked_fill_(~allowed, torch.finfo(dtype).min)
            logits = model(
                torch.tensor([flat] * n),
                attention_mask=additive,
                position_ids=mask.sum(-1, keepdim=True) + depth[None, :],
                past_key_values=out.past_key_values,
                use_cache=True,
            ).logits
            logp = torch.log_softmax(logits.float(), -1)
        for row in range(n):
            column = 0
            for leaf in self._leaves:
                for j in range(len(leaf)):
                    dists[row][leaf[: j + 1]] = logp[row, column]
                    column += 1
        return dists

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
        return self._verdict(self.next_token_logprobs(prompt))

    def _verdict(self, dists: dict[tuple[int, ...], object]) -> Verdict:
        import torch

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
