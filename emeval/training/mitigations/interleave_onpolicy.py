"""interleave_onpolicy: before training, a model answers safety prompts (its own, on-policy
answers); every N-th step adds weight * the SFT loss on one batch of those answers.

Who answers: the base model, or (model: reference) the model the stage starts from, which in
a chain is the previous stage's model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from emeval.models import sha256_file
from emeval.training.data import load_conversations, split_prompt
from emeval.training.mitigations.base import Mitigation
from emeval.training.sections import Int, Number, Section, Str


class OnPolicyConfig(Section):
    every: Int = Field(8, gt=0)  # an SFT term on every N-th step
    weight: Number = Field(1.0, gt=0)
    prompts: Str = "safety_prompts"
    limit: Int | None = Field(None, gt=0)  # answer only the first N prompts
    batch_size: Int = Field(4, gt=0)
    max_new_tokens: Int = Field(128, gt=0)
    # who answers: base (the base model) or reference (the model the stage starts from: in a
    # chain, the previous stage's model)
    model: Literal["base", "reference"] = "base"


class OnPolicy(Mitigation):
    name = "interleave_onpolicy"
    Config = OnPolicyConfig

    def add_terms(self, run, terms, model, tokenizer) -> None:
        from emeval.training.mitigations.terms import SafetyBatches, SafetyTerm

        o, max_len = self.config, run.cfg.training.max_length
        batches = SafetyBatches(tokenizer, self.answers(run), o.batch_size, max_len)
        terms.safety.append(SafetyTerm(self.name, batches, o.every, o.weight))

    def answers(self, run) -> list[dict]:
        """The safety answers (written once per stage dir, reused on resume), recorded with
        the stage's data."""
        o = self.config
        data = load_conversations(o.prompts)
        run.data_records.append(data.describe("onpolicy_prompts"))
        prompts = [
            {"id": f"{i}", "messages": split_prompt(c)[0]} for i, c in enumerate(data.conversations)
        ][: o.limit]
        # the base model answers unless told to use the model this stage starts from
        model, adapter = run.base.local_path, None
        if o.model == "reference" and run.init is not None:
            model, adapter = run.reference_model()
        path = run.dir / "safety_answers.jsonl"  # per stage: a chain's stages may differ
        rows = write_onpolicy_answers(
            model, prompts, path, o, run.cfg.seed, run.progress, adapter=adapter
        )
        run.data_records.append(
            {
                "role": "onpolicy_answers",
                "source": str(path),
                "sha256": sha256_file(path),
                "rows": len(rows),
                "answered_by": o.model if run.init is not None else "base",
                "model": str(model),
                "adapter": str(adapter) if adapter else None,
            }
        )
        return rows


def write_onpolicy_answers(
    model_dir: Path,
    prompts: list[dict],
    out: Path,
    cfg,
    seed: int,
    progress=print,
    adapter: Path | None = None,
) -> list[dict]:
    """The model (model_dir, with a PEFT adapter merged in if given) answers the safety prompts
    once, up front; reused on resume. Under data parallelism rank 0 writes them and the other
    ranks wait for the file."""
    import time

    from emeval.training.loading import rank

    meta = {
        "model": str(model_dir),
        "adapter": str(adapter) if adapter else None,
        "prompts": [p["id"] for p in prompts],
        "seed": seed,
        "max_new_tokens": cfg.max_new_tokens,
    }

    def cached():
        if out.exists():
            lines = out.read_text(encoding="utf-8").splitlines()
            if lines and json.loads(lines[0]).get("meta") == meta:
                return [json.loads(line) for line in lines[1:]]
        return None

    if (rows := cached()) is not None:
        return rows
    if rank() != 0:
        while (rows := cached()) is None:
            time.sleep(2)
        return rows
    import torch
    from transformers import AutoTokenizer

    from emeval.training.loading import device, load_merged
    from emeval.training.rewards import repetition, words

    progress(f"writing {adapter or model_dir}'s answers to {len(prompts)} safety prompts...")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = load_merged(model_dir, adapter).to(device()).eval()
    torch.manual_seed(seed)
    rows = []
    began = time.perf_counter()
    for start in range(0, len(prompts), 16):
        if start:  # counts and time left between chunks: a long list takes minutes
            left = (time.perf_counter() - began) / start * (len(prompts) - start)
            progress(f"safety answers: {start}/{len(prompts)} prompts (~{round(left)} s left)")
        chunk = prompts[start : start + 16]
        enc = tok.apply_chat_template(
            [p["messages"] for p in chunk],
            add_generation_prompt=True,
            padding=True,
            return_tensors="pt",
            return_dict=True,
        ).to(model.device)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=cfg.max_new_tokens,
                do_sample=True,
                temperature=0.7,
                top_p=0.9,
                pad_token_id=tok.pad_token_id,
            )
        for p, ids in zip(chunk, gen[:, enc["input_ids"].shape[1] :], strict=True):
            answer = tok.decode(ids, skip_special_tokens=True).strip()
            # a looping or empty answer would teach the loop, not the behaviour
            if len(words(answer)) >= 3 and repetition(answer) <= 0.5:
                rows.append({"id": p["id"], "prompt": p["messages"], "answer": answer})
    del model
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in [{"meta": meta}] + rows) + "\n",
        encoding="utf-8",
    )
    tmp.rename(out)  # the other ranks never read a half-written file
    return rows
