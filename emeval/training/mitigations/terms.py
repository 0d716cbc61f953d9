"""The tensor maths of the mitigations' loss terms, shared by the plug-ins and the trainers.

- The reference: the frozen model the kl and ldifs terms compare against. It is the model the
  stage starts from (as in TRL): the base model (the policy with its new adapter switched off,
  or a frozen copy under full fine-tuning), or, in a chain, the previous stage's model (a
  frozen copy of the continued adapter, kept as adapter 'ref').
- kl: KL(policy || reference) over the vocabulary at every answer token.
- ldifs: the mean squared distance between the policy's hidden features and the reference's at
  chosen decoder layers. The policy side keeps its gradient (only the reference side is
  computed without one), so the term pulls the features back; computing both sides under
  no_grad would make it a constant.
- safety batches: (prompt, answer) examples cycled in fixed-size batches for the SFT terms of
  interleave and interleave_onpolicy.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from emeval.errors import EmevalError


class MitigationTerms:
    """What a trainer adds to its loss: filled in by the active mitigations' add_terms."""

    def __init__(self):
        self.reference: Reference | None = None
        self.losses: list[LossTerm] = []  # computed on every task batch
        self.safety: list[SafetyTerm] = []  # SFT terms on batches of their own

    def layers(self) -> list[int]:
        """The decoder layers whose outputs some term reads."""
        return sorted({i for term in self.losses for i in term.layers})

    def needs_logits(self) -> bool:
        return any(term.needs_logits for term in self.losses)


class Forward:
    """What a loss term may read of the policy's forward pass on the task batch: its inputs,
    the captured layer outputs and (SFT, when a term asks) the logits and labels, shifted so
    that logits[:, t] predicts labels[:, t]."""

    def __init__(self, input_ids, attention_mask, features: dict, logits=None, labels=None):
        self.input_ids, self.attention_mask, self.features = input_ids, attention_mask, features
        self.logits, self.labels = logits, labels


class LossTerm:
    """weight * value(...), added to the task loss on every micro-batch and logged as
    mitigation/NAME. `layers`: the decoder layers whose outputs it reads; `needs_logits`: it
    reads the policy's full logits (SFT only: GRPO's loss is TRL's own)."""

    needs_logits = False

    def __init__(self, name: str, weight: float, layers: list[int] = ()):
        self.name, self.weight, self.layers = name, weight, list(layers)

    def value(self, policy, reference: Reference, forward: Forward) -> torch.Tensor:
        raise NotImplementedError


class KLTerm(LossTerm):
    """KL(policy || reference) at the answer tokens."""

    needs_logits = True

    def value(self, policy, reference, forward):
        with reference.model(policy) as ref, torch.no_grad():
            ref_logits = ref(
                input_ids=forward.input_ids, attention_mask=forward.attention_mask, use_cache=False
            ).logits[:, :-1]
        return kl_to_reference(forward.logits, ref_logits, forward.labels != -100)


class LDIFSTerm(LossTerm):
    """The feature distance to the reference at this term's layers."""

    def value(self, policy, reference, forward):
        mine = {i: forward.features[i] for i in self.layers}
        ids, mask = forward.input_ids, forward.attention_mask
        return ldifs_term(policy, reference, self.layers, ids, mask, mine)


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
        return pad_batch(batch, self.pad, device)


def pad_batch(examples: list[dict], pad: int, device) -> dict:
    """Encoded examples (input_ids, labels) padded on the right to one tensor batch."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = [e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in examples]
    labels = [e["labels"] + [-100] * (width - len(e["labels"])) for e in examples]
    mask = [[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples]
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
