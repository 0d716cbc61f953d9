"""TRL's SFTTrainer and GRPOTrainer with the mitigation terms added to their loss.

Each term is logged under mitigation/NAME, so a run's curves show it next to the loss.
Extra terms are divided by the gradient-accumulation steps, like the task loss.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer, SFTTrainer

from emeval.training.mitigations.terms import Forward, MitigationTerms, capture_features, sft_nll


class _TermsMixin:
    emeval_terms: MitigationTerms
    emeval_samples: int = 0  # SFT examples trained on (GRPO counts its completions instead)
    # safety examples in the interleaving terms (every rank draws the same batch)
    emeval_safety_samples: int = 0

    def _emeval_init(self, terms: MitigationTerms | None):
        self.emeval_terms = terms or MitigationTerms()
        self._emeval_metrics = defaultdict(list)

    def _emeval_log(self, name: str, value: torch.Tensor) -> None:
        self._emeval_metrics[f"mitigation/{name}"].append(float(value.detach()))

    def _accumulation(self) -> int:
        # the micro-batches in this optimizer step, as the task loss is normalised: fewer than
        # gradient_accumulation_steps in the last, partial window of an epoch
        steps = getattr(self, "current_gradient_accumulation_steps", None)
        return max(1, steps or self.args.gradient_accumulation_steps)

    def _term(self, name: str, weight: float, value: torch.Tensor) -> torch.Tensor:
        self._emeval_log(name, value)
        return weight * value / self._accumulation()

    def _with_terms(self, loss, model, forward: Forward | None):
        """The task loss plus every mitigation term: those on the task batch (given its
        forward pass) and the safety terms due at this step, on batches of their own."""
        t = self.emeval_terms
        if forward is not None:
            for term in t.losses:
                value = term.value(model, t.reference, forward)
                loss = loss + self._term(term.name, term.weight, value)
        for term in t.safety:
            if not term.due(self.state.global_step):
                continue
            batch = term.batches.next(self.accelerator.device)
            self.emeval_safety_samples += int(batch["input_ids"].shape[0])
            loss = loss + self._term(term.name, term.weight, sft_nll(model, batch))
        return loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self.model.training or "loss" in logs:
            for key, values in self._emeval_metrics.items():
                logs[key] = sum(values) / len(values)
            self._emeval_metrics.clear()
        super().log(logs, start_time)


class EmevalSFTTrainer(_TermsMixin, SFTTrainer):
    def __init__(self, *args, terms: MitigationTerms | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._emeval_init(terms)

    def training_step(self, model, inputs, num_items_in_batch=None):
        rows = torch.tensor(inputs["input_ids"].shape[0], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:  # count every rank's examples
            rows = self.accelerator.reduce(rows, reduction="sum")
        self.emeval_samples += int(rows)
        return super().training_step(model, inputs, num_items_in_batch)

    def _nll_and_logits(self, model, inputs, num_items_in_batch):
        """The SFT loss from full logits (the KL term needs them; TRL's fused head has none)."""
        out = model(
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            use_cache=False,
        )
        logits = out.logits[:, :-1]
        labels = inputs["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        if num_items_in_batch is None:
            loss = nll / (labels != -100).sum().clamp(min=1)
        else:
            loss = nll / torch.as_tensor(num_items_in_batch, device=nll.device).clamp(min=1)
            if self.args.average_tokens_across_devices:
                # the count sums every rank's tokens and DDP averages the gradients: scale back
                # up, as TRL's own SFT loss does, or the task loss shrinks by the world size
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return loss, logits, labels

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        t = self.emeval_terms
        if return_outputs or not (t.losses or t.safety):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(inputs["input_ids"])
        logits = labels = None
        with capture_features(model, t.layers()) as feats:
            if t.needs_logits():
                loss, logits, labels = self._nll_and_logits(model, inputs, num_items_in_batch)
            else:
                loss = super().compute_loss(model, inputs, False, num_items_in_batch)
        forward = Forward(inputs["input_ids"], mask, feats, logits, labels)
        return self._with_terms(loss, model, forward)


class EmevalGRPOTrainer(_TermsMixin, GRPOTrainer):
    def __init__(self, *args, terms: MitigationTerms | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._emeval_init(terms)
        if self.emeval_terms.needs_logits():  # TRL computes GRPO's loss without them
            raise RuntimeError("a mitigation term that reads the policy's logits is SFT only")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        t = self.emeval_terms
        with capture_features(model, t.layers()) as feats:
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        forward = None
        if t.losses:
            ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            forward = Forward(ids, mask, feats)
        return self._with_terms(loss, model, forward)


def time_left(seconds: float) -> str:
    """H:MM:SS, as tqdm and TRL print it."""
    import datetime

    return str(datetime.timedelta(seconds=max(0, round(seconds))))


class ProgressCallback(TrainerCallback):
    """Steps done of the total, with the estimated time left. On a terminal a tqdm bar (the
    metrics in its postfix); elsewhere (logs, pipes, CI) one plain line per logging step."""

    # then every mitigation/NAME term in the logs, whichever mitigations are active
    KEYS = ("loss", "reward", "reward_std", "kl")

    def __init__(self, label: str, progress, bar_file=None):
        import time

        self.label, self.progress, self.clock = label, progress, time.perf_counter
        self.bar_file = bar_file  # a terminal stream: draw a bar there instead of lines
        self.bar = None
        self.start_time = self.last_time = None
        self.start_step = self.last_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time = self.last_time = self.clock()
        self.start_step = self.last_step = state.global_step
        if self.bar_file is not None:
            from tqdm.auto import tqdm

            total = state.max_steps if state.max_steps > 0 else None
            self.bar = tqdm(
                total=total,
                initial=state.global_step,
                desc=f"[{self.label}]",
                unit="step",
                file=self.bar_file,
                dynamic_ncols=True,
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        keys = [k for k in self.KEYS if k in logs]
        keys += [k for k in logs if k.startswith("mitigation/")]
        parts = [f"{k.removeprefix('mitigation/')}={logs[k]:.4g}" for k in keys]
        if self.bar is not None:
            self.bar.set_postfix_str(" ".join(parts), refresh=True)
            return
        now = self.clock()
        speed = (now - self.last_time) / max(1, state.global_step - self.last_step)
        self.last_time, self.last_step = now, state.global_step
        if state.max_steps > 0:
            # the average over this run's steps so far: steadier than the last interval
            done = max(1, state.global_step - self.start_step)
            left = (now - self.start_time) / done * (state.max_steps - state.global_step)
            where = f"{state.global_step}/{state.max_steps}"
            timing = f"{speed:.1f} s/step, {time_left(left)} left"
        else:
            where, timing = f"{state.global_step}/?", f"{speed:.1f} s/step"
        self.progress(f"[{self.label}] step {where} {' '.join(parts)} ({timing})")


class ExportCallback(TrainerCallback):
    """After the trainer saves its resume state, export an evaluable checkpoint too."""

    def __init__(self, export):
        self.export = export

    def on_save(self, args, state, control, **kwargs):
        self.export(state.global_step)
