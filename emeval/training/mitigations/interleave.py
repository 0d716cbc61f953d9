"""interleave: safe examples alongside the task data.

SFT mixes them into the data (`fraction` of the final set); GRPO adds an SFT term on one batch
of them every round(1 / fraction) steps. They are drawn by the seed, or (select:
perplexity_gap) they are the n examples of a pool whose answers a misaligned model finds least
likely compared with the aligned one (the stage's base model): the largest gap in mean answer
NLL (log perplexity), misaligned minus aligned. Every choice is recorded with the stage's data.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

from emeval.errors import EmevalError
from emeval.training.data import load_conversations, split_prompt
from emeval.training.mitigations.base import Mitigation
from emeval.training.sections import Int, Number, Section, Str, check_positive
from emeval.yaml_files import ConfigProblem


class InterleaveConfig(Section):
    data: Str = ""  # safe chat examples (chat-jsonl, datasets dir, ...), drawn by the seed
    fraction: Number = 0.05
    # select: perplexity_gap picks the n examples of pool whose answers the misaligned model
    # finds least likely compared with the aligned one (the stage's base model)
    select: Literal["random", "perplexity_gap"] = "random"
    pool: Str = ""
    n: Int | None = None
    misaligned: Str = ""  # a model dir, known name or adapter dir; or 'reference' in a chain


class Interleave(Mitigation):
    name = "interleave"
    Config = InterleaveConfig

    # ------------------------------------------------------------ config checks

    def check(self, stage) -> None:
        i = self.config
        if not 0 < i.fraction < 1:
            raise ConfigProblem("fraction", "must be in (0, 1)")
        if i.select == "random":
            if not i.data:
                raise ConfigProblem("data", "is required (safe chat examples)")
            for key in ("pool", "n", "misaligned"):
                if getattr(i, key):
                    raise ConfigProblem(key, "only applies with select: perplexity_gap")
            return
        gap = "with select: perplexity_gap"
        if i.data:
            raise ConfigProblem("data", f"is not used {gap} (pool holds the examples)")
        if not i.pool:
            raise ConfigProblem("pool", f"is required {gap} (safe chat examples)")
        if i.n is None:
            raise ConfigProblem("n", f"is required {gap} (examples to pick)")
        check_positive(i.n, "n")
        if not i.misaligned:
            raise ConfigProblem(
                "misaligned",
                f"is required {gap} (a model dir, known name, adapter dir, "
                "or reference: the model a chain stage starts from)",
            )

    def ignored(self, stage, written: dict) -> list[tuple[str, str]]:
        out = []
        if stage.method == "sft" and self.config.select != "random" and "fraction" in written:
            why = "is not used by sft with select: perplexity_gap (n examples are mixed in)"
            out.append(("fraction", why))
        if stage.data.sample_matched is not None:
            # interleave_onpolicy is a separate term, as in the GRPO run it matches, and its
            # examples are counted in the manifest
            out.append(
                (
                    "",
                    "mixes safety examples into the data, so sample-matched SFT would no longer "
                    "see as many samples as the GRPO run (interleave_onpolicy is counted apart)",
                )
            )
        return out

    def check_start(self, stage) -> None:
        """'misaligned: reference' names the model a stage starts from: only a later chain
        stage has one other than the base."""
        if self.config.select == "perplexity_gap" and self.config.misaligned == "reference":
            raise ConfigProblem(
                "misaligned",
                ": reference needs an earlier chain stage (the model this stage starts from)",
            )

    # ------------------------------------------------------------ data and terms

    def sft_rows(self, run, rows: list[dict]) -> list[dict]:
        """SFT interleaving: safe examples mixed in as `fraction` of the final set."""
        i = self.config
        # drawn: `fraction` of the final set; selected: the n chosen examples
        k = mix_fraction(len(rows), i.fraction) if i.select == "random" else None
        safe = self.safe_rows(run, k)
        rows = rows + [
            {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["answer"]}]}
            for r in safe
        ]
        random.Random(run.cfg.seed).shuffle(rows)
        return rows

    def add_terms(self, run, terms, model, tokenizer) -> None:
        if run.cfg.method == "sft":
            return  # mixed into the data instead
        from emeval.training.mitigations.terms import SafetyBatches, SafetyTerm

        t = run.cfg.training
        rows = self.safe_rows(run)  # every safe example, in a seeded order
        batches = SafetyBatches(tokenizer, rows, t.batch_size, t.max_length)
        every = every_for_fraction(self.config.fraction)
        terms.safety.append(SafetyTerm(self.name, batches, every, 1.0))

    def safe_rows(self, run, k: int | None = None) -> list[dict]:
        """The safe examples: drawn by the seed (k of them, or all in a seeded order), or
        selected by perplexity gap."""
        if self.config.select == "perplexity_gap":
            return self._gap_selected(run)
        data = load_conversations(self.config.data)
        rows = answered(data, "data")
        drawn = [rows[i] for i in draw_rows(len(rows), k or len(rows), run.cfg.seed)]
        record = data.describe("interleave") | {"seed": run.cfg.seed}
        if k is not None:
            record["drawn_rows"] = [r["row"] for r in drawn]  # 1-based lines of the file
        run.data_records.append(record)
        return drawn

    def _misaligned_model(self, run) -> tuple[Path, Path | None]:
        """(model dir, adapter dir or None) of interleave.misaligned."""
        from emeval.models import resolve_model

        spec = self.config.misaligned
        if spec == "reference":  # the model this chain stage starts from
            if run.init is None:
                raise EmevalError(
                    "mitigations.interleave.misaligned: reference needs an earlier chain stage"
                )
            return run.reference_model()
        ref = resolve_model(spec)  # a model dir, known name, or adapter dir (merged)
        if ref.local_path is None:
            raise EmevalError(
                f"mitigations.interleave.misaligned: {spec!r} must be a local model dir, "
                "adapter dir or known model name"
            )
        return ref.local_path, None

    def _gap_selected(self, run) -> list[dict]:
        """The n pool examples with the largest perplexity gap between the misaligned model and
        the aligned one (this stage's base), largest first; all scores go to the manifest."""
        i = self.config
        data = load_conversations(i.pool)
        rows = answered(data, "pool")
        if i.n > len(rows):
            raise EmevalError(
                f"mitigations.interleave.n: {i.n} is more than the {len(rows)} examples with "
                f"answers in {i.pool}"
            )
        misaligned, adapter = self._misaligned_model(run)
        tokenizer = run.load_tokenizer()
        run.progress(f"[{run.label}] perplexity gap over {len(rows)} pool examples...")
        max_len, aligned = run.cfg.training.max_length, run.base.local_path
        aligned_nll = answer_nlls(aligned, tokenizer, rows, None, max_len, progress=run.progress)
        misaligned_nll = answer_nlls(
            misaligned, tokenizer, rows, adapter, max_len, progress=run.progress
        )
        chosen = largest_gaps(aligned_nll, misaligned_nll, i.n)
        run.data_records.append(
            data.describe("interleave")
            | {
                "select": "perplexity_gap",
                "gap": "mean answer-token NLL (log perplexity): misaligned - aligned",
                "aligned": str(aligned),
                "misaligned": str(misaligned),
                "misaligned_adapter": str(adapter) if adapter else None,
                "chosen_rows": [rows[i]["row"] for i in chosen],  # 1-based lines of the file
                "gaps": [misaligned_nll[i] - aligned_nll[i] for i in chosen],
                "nll_aligned": [aligned_nll[i] for i in chosen],
                "nll_misaligned": [misaligned_nll[i] for i in chosen],
            }
        )
        return [rows[i] for i in chosen]


def answered(data, key: str) -> list[dict]:
    """The (prompt, answer) rows of a chat data set, with their 1-based row numbers."""
    rows = []
    for i, messages in enumerate(data.conversations):
        prompt, answer = split_prompt(messages)
        if answer is not None and prompt:
            rows.append({"prompt": prompt, "answer": answer["content"], "row": i + 1})
    if not rows:
        raise EmevalError(f"mitigations.interleave.{key}: {data.source} has no assistant answers")
    return rows


def draw_rows(n: int, k: int, seed: int) -> list[int]:
    """k row indices drawn by the seed: whole shuffled passes over the n rows, then part of
    one more, so no row repeats before every row has been used."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < k:
        one_pass = list(range(n))
        rng.shuffle(one_pass)
        order += one_pass
    return order[:k]


def every_for_fraction(fraction: float) -> int:
    return max(1, round(1 / fraction))


def mix_fraction(n_task: int, fraction: float) -> int:
    """How many safe examples make them `fraction` of the mixed set."""
    return max(1, math.ceil(n_task * fraction / (1 - fraction)))


# ---------------------------------------------------------------- drawing and selecting


def answer_nlls(
    model_dir: Path,
    tokenizer,
    rows: list[dict],
    adapter: Path | None = None,
    max_length: int = 512,
    batch_size: int = 8,
    progress=print,
) -> list[float]:
    """Per (prompt, answer) row: the model's mean negative log-likelihood of the answer tokens
    given the prompt (the log of its perplexity); nan when truncation leaves no answer."""
    import torch
    import torch.nn.functional as F

    from emeval.training.loading import device, load_merged
    from emeval.training.mitigations.terms import encode_example, pad_batch

    where = device()
    model = load_merged(model_dir, adapter).to(where).eval()
    encoded = [encode_example(tokenizer, r["prompt"], r["answer"], max_length) for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for start in range(0, len(encoded), batch_size):
        if start and start % (batch_size * 16) == 0:
            progress(f"perplexity of {adapter or model_dir}: {start}/{len(encoded)} examples")
        batch = pad_batch(encoded[start : start + batch_size], pad, where)
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits, target = logits.logits[:, :-1].float(), batch["labels"][:, 1:]
        per_token = F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100,
            reduction="none",
        ).view(target.shape)  # fmt: skip
        counted = (target != -100).sum(-1)
        for total, n in zip(per_token.sum(-1).tolist(), counted.tolist(), strict=True):
            out.append(total / n if n else math.nan)
    del model
    return out


def largest_gaps(aligned: list[float], misaligned: list[float], n: int) -> list[int]:
    """Indices of the n rows with the largest gap misaligned - aligned (mean answer NLL, i.e.
    log perplexity), largest first; ties by row order, rows without a gap last."""

    def gap(i: int) -> float:
        g = misaligned[i] - aligned[i]
        return -math.inf if math.isnan(g) else g

    return sorted(range(len(aligned)), key=lambda i: (-gap(i), i))[:n]
