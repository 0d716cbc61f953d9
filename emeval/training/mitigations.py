"""In-training defences against emergent misalignment, as loss terms and weight projections.

- kl: KL divergence to the frozen reference. GRPO uses TRL's own term (beta); SFT adds
  beta * KL(policy || reference) over the vocabulary at every answer token.
- ldifs: lambda * the mean squared distance between the policy's hidden features and the
  frozen reference's, at chosen decoder layers, over all input tokens. The policy side keeps
  its gradient (only the reference side is computed without one), so the term pulls the
  features back; computing both sides under no_grad would make it a constant.
- safelora: after training, each LoRA update B@A whose cosine similarity with its projection
  onto the alignment subspace (C = V V^T / ||V||_F, V = W_aligned - W_unaligned) is below the
  threshold is replaced by that projection (B <- C B). Applied to every exported checkpoint;
  the resume state keeps the raw adapter.
- interleave: safe examples. SFT mixes them into the data (fraction of the final set); GRPO
  adds an SFT term on one batch of them every round(1 / fraction) steps. They are drawn by the
  seed, or (select: perplexity_gap) the n examples of a pool whose answers a misaligned model
  finds least likely compared with the aligned (base) model: the largest gap in mean answer
  NLL (log perplexity), misaligned minus aligned.
- interleave_onpolicy: the reference model answers safety prompts before training; every N-th
  step adds weight * the SFT loss on one batch of those answers.
- inoculation: a system prompt put in front of every training prompt, never used at evaluation.

The reference for kl and ldifs is the model the stage starts from (as in TRL): the base model
(the policy with its new adapter switched off, or a frozen copy under full fine-tuning), or,
in a chain, the previous stage's model (a frozen copy of the continued adapter). The on-policy
safety answers always come from the base model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from emeval.errors import EmevalError

# ---------------------------------------------------------------- reference model


def unwrap(model):
    """The model under DDP/accelerate wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def is_peft(model) -> bool:
    return hasattr(unwrap(model), "disable_adapter") and hasattr(unwrap(model), "peft_config")


class Reference:
    """The frozen model the terms compare against."""

    def __init__(self, frozen=None):
        self.frozen = frozen  # a separate model under full fine-tuning, else None

    @contextlib.contextmanager
    def model(self, policy):
        if self.frozen is not None:
            yield self.frozen
        elif is_peft(policy):
            from trl.trainer.utils import use_adapter

            # a continued adapter keeps its starting copy as 'ref'; a new one starts from zero
            peft_model = unwrap(policy)
            with use_adapter(peft_model, "ref" if "ref" in peft_model.peft_config else None):
                yield policy
        else:
            raise RuntimeError("full fine-tuning needs a frozen reference copy")


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of decoder layers: the ModuleList as long as the config's layer count."""
    model = unwrap(model)
    config = getattr(model, "config", None)
    n = getattr(config.get_text_config() if config else None, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise EmevalError("ldifs: cannot find the model's decoder layers")


def select_layers(model, layers) -> list[int]:
    n = len(decoder_layers(model))
    if layers == "all":
        return list(range(n))
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise EmevalError(
            f"config: mitigations.ldifs.layers: {bad[0]} is out of range (0..{n - 1})"
        )
    return sorted({i % n for i in layers})


@contextlib.contextmanager
def capture_features(model, layer_ids: list[int]):
    """Collect the outputs of the chosen decoder layers during forward passes in the block."""
    if not layer_ids:  # nothing to collect: any architecture will do
        yield {}
        return
    layers = decoder_layers(model)
    captured: dict[int, list[torch.Tensor]] = {i: [] for i in layer_ids}
    handles = []
    for i in layer_ids:

        def hook(_module, _inputs, output, i=i):
            captured[i].append(output[0] if isinstance(output, tuple) else output)

        handles.append(layers[i].register_forward_hook(hook))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def feature_distance(policy: dict, reference: dict, mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers and unmasked tokens of the per-dimension squared l2 distance."""
    terms = []
    weights = mask.float()
    for i, chunks in policy.items():
        h = torch.cat(chunks, dim=0).float()
        h_ref = torch.cat(reference[i], dim=0).float().to(h.device)
        per_token = (h - h_ref).pow(2).mean(-1)  # (batch, seq)
        w = weights[:, -per_token.size(1) :].to(per_token.device)
        terms.append((per_token * w).sum() / w.sum().clamp(min=1))
    return torch.stack(terms).mean()


def ldifs_term(
    policy_model, reference: Reference, layer_ids, input_ids, attention_mask, policy_feats
):
    """LDIFS distance, with the policy features (captured with grad) against the reference's."""
    with reference.model(policy_model) as ref, torch.no_grad():
        with capture_features(ref, layer_ids) as ref_feats:
            ref(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return feature_distance(policy_feats, ref_feats, attention_mask)


def kl_to_reference(logits, ref_logits, label_mask) -> torch.Tensor:
    """Mean KL(policy || reference) over the positions that predict a label token."""
    logp = F.log_softmax(logits.float(), -1)
    ref_logp = F.log_softmax(ref_logits.float(), -1)
    per_token = (logp.exp() * (logp - ref_logp)).sum(-1)
    w = label_mask.float()
    return (per_token * w).sum() / w.sum().clamp(min=1)


# ---------------------------------------------------------------- safety SFT batches


def encode_example(tokenizer, prompt: list[dict], answer: str, max_length: int) -> dict:
    """input_ids and labels with the loss on the answer only."""
    prefix = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    full = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": answer}], tokenize=True
    )
    # transformers 5 returns a BatchEncoding here, older versions a plain list
    prefix = list(prefix["input_ids"] if hasattr(prefix, "keys") else prefix)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    if full[: len(prefix)] != prefix:  # a template that rewrites earlier turns: plain suffix
        full = prefix + tokenizer.encode(answer, add_special_tokens=False)
        if tokenizer.eos_token_id is not None:
            full.append(tokenizer.eos_token_id)
    full = full[:max_length]
    labels = [-100] * min(len(prefix), len(full)) + full[len(prefix) :]
    return {"input_ids": full, "labels": labels}


class SafetyBatches:
    """Cycles through (prompt, answer) safety examples in fixed-size batches."""

    def __init__(self, tokenizer, rows: list[dict], batch_size: int, max_length: int = 512):
        if not rows:
            raise EmevalError("safety interleaving: no usable safety examples")
        self.encoded = [
            encode_example(tokenizer, r["prompt"], r["answer"], max_length) for r in rows
        ]
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batch_size = min(batch_size, len(self.encoded))
        self.position = 0

    def next(self, device) -> dict:
        batch = []
        for _ in range(self.batch_size):
            batch.append(self.encoded[self.position % len(self.encoded)])
            self.position += 1
        width = max(len(e["input_ids"]) for e in batch)
        ids = [e["input_ids"] + [self.pad] * (width - len(e["input_ids"])) for e in batch]
        labels = [e["labels"] + [-100] * (width - len(e["labels"])) for e in batch]
        mask = [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in batch]
        return {
            "input_ids": torch.tensor(ids, device=device),
            "labels": torch.tensor(labels, device=device),
            "attention_mask": torch.tensor(mask, device=device),
        }


def sft_nll(model, batch: dict) -> torch.Tensor:
    """Mean next-token NLL over the label tokens (own computation: no fused head needed)."""
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    )
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100
    )


class SafetyTerm:
    """weight * SFT loss on one batch of safety examples on every `every`-th optimizer step."""

    def __init__(self, name: str, batches: SafetyBatches, every: int, weight: float):
        self.name, self.batches, self.every, self.weight = name, batches, every, weight

    def due(self, global_step: int) -> bool:
        return (global_step + 1) % self.every == 0  # steps every, 2*every, ... (1-based)


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


# ---------------------------------------------------------------- safety data by perplexity gap


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
    import os

    from transformers import AutoModelForCausalLM

    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model = model.to(device).eval()
    encoded = [encode_example(tokenizer, r["prompt"], r["answer"], max_length) for r in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for start in range(0, len(encoded), batch_size):
        if start and start % (batch_size * 16) == 0:
            progress(f"perplexity of {adapter or model_dir}: {start}/{len(encoded)} examples")
        chunk = encoded[start : start + batch_size]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in chunk])
        labels = torch.tensor([e["labels"] + [-100] * (width - len(e["labels"])) for e in chunk])
        mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"]))
                             for e in chunk])  # fmt: skip
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        logits, target = logits[:, :-1].float(), labels[:, 1:].to(device)
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


# ---------------------------------------------------------------- on-policy safety answers


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
    import os
    import time

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
    if int(os.environ.get("RANK", "0")) != 0:
        while (rows := cached()) is None:
            time.sleep(2)
        return rows
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emeval.training.rewards import repetition, words

    progress(f"writing {adapter or model_dir}'s answers to {len(prompts)} safety prompts...")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model = model.to(device).eval()
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
        ).to(device)
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


# ---------------------------------------------------------------- SafeLoRA


class _Weights:
    """Lazy access to the tensors of a (possibly sharded) safetensors model dir."""

    def __init__(self, model_dir: Path):
        from safetensors import safe_open

        files = sorted(Path(model_dir).glob("*.safetensors"))
        if not files:
            raise EmevalError(f"safelora: no *.safetensors weights in {model_dir}")
        self.handles = [safe_open(str(f), framework="pt") for f in files]
        self.index = {k: h for h in self.handles for k in h.keys()}  # noqa: SIM118

    def get(self, name: str) -> torch.Tensor | None:
        handle = self.index.get(name)
        return None if handle is None else handle.get_tensor(name).float()

    def shape(self, name: str) -> list[int] | None:
        handle = self.index.get(name)
        return None if handle is None else list(handle.get_slice(name).get_shape())


def weights_dir(spec: str, key: str) -> Path:
    """A SafeLoRA side: a known model name or a local dir of safetensors weights (a base model
    without a chat template is fine: only its weights are read)."""
    from emeval.models import KNOWN_MODELS, pull

    if spec in KNOWN_MODELS:
        return pull(spec)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise EmevalError(f"mitigations.safelora.{key}: {spec} is not a model dir or known name")
    if not list(path.glob("*.safetensors")):
        raise EmevalError(f"mitigations.safelora.{key}: no *.safetensors weights in {path}")
    return path.resolve()


def lora_module_shapes(base_dir: Path, lora_config) -> dict[str, list[int]]:
    """The modules a LoRA config adapts on this base, with their weight shapes (= the shape of
    B @ A), found on an empty (meta) copy of the model: nothing is loaded."""
    from accelerate import init_empty_weights
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir))
        peft_model = get_peft_model(model, copy.deepcopy(lora_config))
    return {
        name: list(module.get_base_layer().weight.shape)
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


def safelora_check(modules: dict[str, list[int]], aligned: Path, unaligned: Path) -> dict:
    """Which LoRA modules SafeLoRA can project: the module's weight must be in both models with
    the update's shape. Raises when none can be; returns {module: why} for the others."""
    if aligned == unaligned:
        raise EmevalError(
            f"mitigations.safelora: aligned and unaligned are the same model ({aligned}): "
            "the alignment matrix would be zero"
        )
    sides = {"aligned": _Weights(aligned), "unaligned": _Weights(unaligned)}
    problems = {}
    for module, shape in modules.items():
        weight = _module_weight_name(module + ".lora_A.weight")
        for side, weights in sides.items():
            found = weights.shape(weight)
            if found is None:
                problems[module] = f"{weight} is not in the {side} model"
            elif found != shape:
                problems[module] = (
                    f"{weight} is {found} in the {side} model, but the LoRA update is {shape}"
                )
            if module in problems:
                break
    if modules and len(problems) == len(modules):
        first = next(iter(problems.values()))
        raise EmevalError(
            f"mitigations.safelora: none of the {len(modules)} LoRA modules can be projected "
            f"(e.g. {first})"
        )
    if not modules:
        raise EmevalError("mitigations.safelora: the adapter has no LoRA modules to project")
    return problems


def _layer_of(module: str) -> str:
    found = re.search(r"\.layers\.(\d+)\.", module)
    return found.group(1) if found else "other"


def _module_weight_name(lora_key: str) -> str:
    """'base_model.model.model.layers.0.mlp.up_proj.lora_A.weight' -> 'model.layers...weight'."""
    name = lora_key.split(".lora_")[0]
    name = name.removeprefix("base_model.model.")
    return name + ".weight"


def safelora_project(adapter_dir: Path, aligned: Path, unaligned: Path, threshold: float) -> dict:
    """Project the low-similarity LoRA updates of a saved adapter in place; report what changed."""
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    aligned_w, unaligned_w = _Weights(aligned), _Weights(unaligned)
    report = {
        "threshold": threshold,
        "aligned": str(aligned),
        "unaligned": str(unaligned),
        "projected": [],
        "kept": [],
        "skipped": [],
        "skip_reasons": {},
        "similarity": {},
        "layers": {},  # per decoder layer: modules, projected, kept, skipped
    }

    def skip(module: str, why: str) -> None:
        report["skipped"].append(module)
        report["skip_reasons"][module] = why

    for key_a in sorted(k for k in tensors if ".lora_A." in k):
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        module = key_a.split(".lora_A.")[0]
        weight_name = _module_weight_name(key_a)
        w_al, w_un = aligned_w.get(weight_name), unaligned_w.get(weight_name)
        A, B = tensors[key_a].float(), tensors[key_b].float()
        delta = B @ A
        if w_al is None or w_un is None:
            side = "aligned" if w_al is None else "unaligned"
            skip(module, f"{weight_name} missing from the {side} model")
            continue
        if w_al.shape != delta.shape or w_un.shape != delta.shape:
            skip(
                module,
                f"V is {list(w_al.shape)} / {list(w_un.shape)}, the update {list(delta.shape)}",
            )
            continue
        V = w_al - w_un
        v_norm = torch.linalg.matrix_norm(V)
        if v_norm == 0:
            skip(module, "aligned and unaligned weights are equal")
            continue
        if torch.linalg.matrix_norm(delta) == 0:
            skip(module, "the update is zero")
            continue
        B_proj = V @ (V.T @ B) / v_norm  # C @ B without forming C = V V^T / ||V||_F
        projected = B_proj @ A
        similarity = float(F.cosine_similarity(delta.flatten(), projected.flatten(), dim=0))
        report["similarity"][module] = similarity
        if similarity < threshold:
            tensors[key_b] = B_proj.to(tensors[key_b].dtype).contiguous()
            report["projected"].append(module)
        else:
            report["kept"].append(module)
    for outcome in ("projected", "kept", "skipped"):
        for module in report[outcome]:
            layer = report["layers"].setdefault(
                _layer_of(module), {"modules": 0, "projected": 0, "kept": 0, "skipped": 0}
            )
            layer["modules"] += 1
            layer[outcome] += 1
    report["layers"] = dict(
        sorted(
            report["layers"].items(),
            key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0),
        )
    )
    save_file(tensors, str(path), metadata={"format": "pt"})
    return report
