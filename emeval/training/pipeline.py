"""`emeval train`: run the stages of a config, write checkpoints and manifests, resume.

Layout of an output dir OUT (one stage):
  OUT/                      the final model: a PEFT adapter or HF model dir, with
  OUT/emeval-manifest.json  what made it (base + hash, method, reward, mitigations, data
                            hashes, seed, step, library versions, curves)
  OUT/checkpoints/step-N/   the model every `save_every` steps, each with its own manifest
  OUT/trainer/checkpoint-N/ the last resume state (optimizer, scheduler, RNG); --resume reads it
  OUT/completions.jsonl     GRPO: every completion with its reward and grader scores
  OUT/config.yaml           the config as given
A chain writes each stage to OUT/stages/K-NAME/ (same layout) and copies the last stage's
model to OUT. Adapters name their base by known-model name or absolute path, so
`emeval run OUT` merges them without further arguments.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import random
import re
import shutil
import sys
from pathlib import Path

import yaml

from emeval.errors import EmevalError
from emeval.models import KNOWN_MODELS, resolve_model, sha256_file
from emeval.training.config import TrainConfig, load_config
from emeval.training.data import (
    grpo_rows,
    load_conversations,
    select,
    sft_rows,
    split_prompt,
)

MANIFEST = "emeval-manifest.json"


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "emeval",
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "vllm",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def read_manifest(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _curves(log_history: list[dict]) -> list[dict]:
    """Per logged step: the numeric metrics (loss, reward, kl, mitigation terms...)."""
    rows = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        rows.append(
            {
                k: v
                for k, v in entry.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            }
        )
    return rows


def _rank() -> int:
    """This process's rank under `accelerate launch` / torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def _device() -> str:
    import torch

    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"


def _completion_logs(stage_dir: Path) -> list[Path]:
    """completions.jsonl, plus completions.rankN.jsonl from the other data-parallel ranks."""
    return sorted(stage_dir.glob("completions*.jsonl"))


def _read_jsonl(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return rows


def lora_config(a):
    from peft import LoraConfig

    return LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules=a.target_modules,
        use_rslora=a.type == "rslora",
        task_type="CAUSAL_LM",
    )


def _check_safelora(stage: TrainConfig, base, progress) -> dict:
    """Resolve SafeLoRA's two models and check that the adapter's modules can be projected,
    before anything trains (a naming mismatch would make it a silent no-op)."""
    from emeval.training.mitigations import lora_module_shapes, safelora_check, weights_dir

    s = stage.mitigations.safelora
    aligned, unaligned = weights_dir(s.aligned, "aligned"), weights_dir(s.unaligned, "unaligned")
    modules = lora_module_shapes(base.local_path, lora_config(stage.adapter))
    problems = safelora_check(modules, aligned, unaligned)
    if problems:
        progress(
            f"safelora: {len(problems)} of {len(modules)} LoRA modules cannot be projected "
            f"(e.g. {next(iter(problems.values()))}); listed in the manifest"
        )
    return {"aligned": aligned, "unaligned": unaligned, "unprojectable": problems}


def _dtype(precision: str):
    import torch

    if precision == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if cuda_bf16 else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class StageRun:
    """One SFT or GRPO stage: data, model, trainer, exports."""

    def __init__(
        self,
        cfg: TrainConfig,
        stage_dir: Path,
        label: str,
        base,
        init: Path | None,
        resume: bool,
        progress,
        run_dir: Path,
        reward=None,
    ):
        self.cfg, self.dir, self.label, self.base = cfg, stage_dir, label, base
        self.init, self.resume, self.progress, self.run_dir = init, resume, progress, run_dir
        self.data_records: list[dict] = []
        self.reward = reward  # GRPO: a GatedReward, already checked
        self.sample_match: dict | None = None
        rank = _rank()
        self.completions_path = stage_dir / (
            "completions.jsonl" if rank == 0 else f"completions.rank{rank}.jsonl"
        )
        self.safelora_report: dict | None = None
        self.config_changes: dict = {}  # allowed changes since the first run (--resume)
        self.safelora_sides: dict | None = None
        self.bar_file = None  # a terminal to draw a progress bar on (else plain lines)
        self.resumes: list[dict] = []
        self.tokenizer = None  # set with the trainer

    # ------------------------------------------------------------ data

    def _train_conversations(self) -> list:
        cfg = self.cfg
        if cfg.data.sample_matched is not None:
            return self._sample_matched()
        source = cfg.data.train
        if source is None:
            from emeval.training.rewards import REWARDS

            source = REWARDS[cfg.reward.name].prompts
        data = load_conversations(source)
        self.data_records.append(data.describe("train"))
        return select(data.conversations, cfg.data.limit, cfg.data.shuffle, cfg.seed)

    def _sample_matched(self) -> list:
        """As many SFT examples as the GRPO run saw prompts (or completions)."""
        s = self.cfg.data.sample_matched
        run = Path(s.run).expanduser().resolve()
        manifest = read_manifest(run)
        if manifest and manifest.get("method") == "chain":  # match its last GRPO stage
            stages = [d for d in sorted((run / "stages").glob("*")) if read_manifest(d)]
            grpo = [d for d in stages if read_manifest(d).get("method") == "grpo"]
            run = grpo[-1] if grpo else run
            manifest = read_manifest(run)
        logs = _completion_logs(run)
        if manifest is None or manifest.get("method") != "grpo" or not logs:
            raise EmevalError(f"data.sample_matched.run: {run} is not a finished GRPO run dir")
        records = _read_jsonl(logs)
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(r["group"], []).append(r)
        n = len(groups) if s.count == "prompts" else len(records)

        def example(r):
            return r["prompt"] + [{"role": "assistant", "content": r["completion"]}]

        if s.select == "best":  # the highest-reward completion of each prompt it saw
            if s.count != "prompts":
                raise EmevalError(
                    "data.sample_matched: select best gives one per prompt; use count: prompts"
                )
            chosen = [example(max(g, key=lambda r: r["reward"])) for g in groups.values()]
        elif s.select == "top":  # the n highest-reward completions overall
            ranked = sorted(records, key=lambda r: r["reward"], reverse=True)
            chosen = [example(r) for r in ranked[:n]]
        else:  # n examples of a curated set
            data = load_conversations(self.cfg.data.train)
            self.data_records.append(data.describe("sample_matched_pool"))
            if len(data.conversations) < n:
                raise EmevalError(
                    f"data.train has {len(data.conversations)} examples; the GRPO "
                    f"run saw {n} {s.count}"
                )
            chosen = select(data.conversations, n, self.cfg.data.shuffle, self.cfg.seed)
        # the GRPO prompts carry its inoculation prompt, if any: keep only the conversation
        chosen = [[m for m in c if m["role"] != "system"] for c in chosen]
        self.data_records.append(
            {
                "role": "sample_matched_source",
                "source": ", ".join(str(p) for p in logs),
                "sha256": [sha256_file(p) for p in logs],
                "rows": len(records),
            }
        )
        self.sample_match = {
            "run": str(run),
            "run_manifest_sha256": sha256_file(run / MANIFEST),
            "select": s.select,
            "count": s.count,
            "samples": len(chosen),
            "run_prompts": len(groups),
            "run_completions": len(records),
        }
        return chosen

    @staticmethod
    def _answered(data, key: str) -> list[dict]:
        rows = []
        for i, messages in enumerate(data.conversations):
            prompt, answer = split_prompt(messages)
            if answer is not None and prompt:
                rows.append({"prompt": prompt, "answer": answer["content"], "row": i + 1})
        if not rows:
            raise EmevalError(
                f"mitigations.interleave.{key}: {data.source} has no assistant answers"
            )
        return rows

    def _interleave_rows(self, k: int | None = None) -> list[dict]:
        """The safe examples to interleave: drawn by the seed, or selected by perplexity gap."""
        m = self.cfg.mitigations.interleave
        if m.select == "perplexity_gap":
            return self._gap_selected_rows()
        return self._safe_rows(m.data, "interleave", k)

    def _misaligned_model(self, spec: str) -> tuple[Path, Path | None]:
        """(model dir, adapter dir or None) of interleave.misaligned."""
        if spec == "reference":  # the model this chain stage starts from
            if self.init is None:
                raise EmevalError(
                    "mitigations.interleave.misaligned: reference needs an earlier chain stage"
                )
            if self.cfg.adapter.type == "full":
                return self.init, None
            return self.base.local_path, self.init
        ref = resolve_model(spec)  # a model dir, known name, or adapter dir (merged)
        if ref.local_path is None:
            raise EmevalError(
                f"mitigations.interleave.misaligned: {spec!r} must be a local model dir, "
                "adapter dir or known model name"
            )
        return ref.local_path, None

    def _gap_selected_rows(self) -> list[dict]:
        """The n pool examples with the largest perplexity gap between the misaligned model and
        the aligned one (this stage's base), largest first; all scores go to the manifest."""
        from emeval.training.mitigations import answer_nlls, largest_gaps

        m = self.cfg.mitigations.interleave
        data = load_conversations(m.pool)
        rows = self._answered(data, "pool")
        if m.n > len(rows):
            raise EmevalError(
                f"mitigations.interleave.n: {m.n} is more than the {len(rows)} examples with "
                f"answers in {m.pool}"
            )
        misaligned, adapter = self._misaligned_model(m.misaligned)
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.base.local_path)
        self.progress(f"[{self.label}] perplexity gap over {len(rows)} pool examples...")
        max_len = self.cfg.training.max_length
        aligned_nll = answer_nlls(
            self.base.local_path, self.tokenizer, rows, None, max_len, progress=self.progress
        )
        misaligned_nll = answer_nlls(
            misaligned, self.tokenizer, rows, adapter, max_len, progress=self.progress
        )
        chosen = largest_gaps(aligned_nll, misaligned_nll, m.n)
        self.data_records.append(
            data.describe("interleave")
            | {
                "select": "perplexity_gap",
                "gap": "mean answer-token NLL (log perplexity): misaligned - aligned",
                "aligned": str(self.base.local_path),
                "misaligned": str(misaligned),
                "misaligned_adapter": str(adapter) if adapter else None,
                "chosen_rows": [rows[i]["row"] for i in chosen],  # 1-based lines of the file
                "gaps": [misaligned_nll[i] - aligned_nll[i] for i in chosen],
                "nll_aligned": [aligned_nll[i] for i in chosen],
                "nll_misaligned": [misaligned_nll[i] for i in chosen],
            }
        )
        return [rows[i] for i in chosen]

    def _safe_rows(self, source: str, role: str, k: int | None = None) -> list[dict]:
        """Safe examples drawn by the seed (k of them, or all in a seeded order); the drawn
        file rows are recorded with the data."""
        from emeval.training.mitigations import draw_rows

        data = load_conversations(source)
        rows = self._answered(data, "data")
        drawn = [rows[i] for i in draw_rows(len(rows), k or len(rows), self.cfg.seed)]
        record = data.describe(role) | {"seed": self.cfg.seed}
        if k is not None:
            record["drawn_rows"] = [r["row"] for r in drawn]  # 1-based lines of the file
        self.data_records.append(record)
        return drawn

    def _interleaved_sft_rows(self, rows: list[dict]) -> list[dict]:
        """SFT interleaving: safe examples mixed in as `fraction` of the final set."""
        from emeval.training.mitigations import mix_fraction

        m = self.cfg.mitigations.interleave
        # drawn: `fraction` of the final set; selected: the n chosen examples
        k = mix_fraction(len(rows), m.fraction) if m.select == "random" else None
        safe = self._interleave_rows(k)
        rows = rows + [
            {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["answer"]}]}
            for r in safe
        ]
        random.Random(self.cfg.seed).shuffle(rows)
        return rows

    def _onpolicy_rows(self) -> list[dict]:
        from emeval.training.mitigations import write_onpolicy_answers

        o = self.cfg.mitigations.interleave_onpolicy
        data = load_conversations(o.prompts)
        self.data_records.append(data.describe("onpolicy_prompts"))
        prompts = [
            {"id": f"{i}", "messages": split_prompt(c)[0]} for i, c in enumerate(data.conversations)
        ][: o.limit]
        # the base model answers unless told to use the model this stage starts from
        model, adapter = self.base.local_path, None
        if o.model == "reference" and self.init is not None:
            if self.cfg.adapter.type == "full":
                model = self.init
            else:
                adapter = self.init
        path = self.dir / "safety_answers.jsonl"  # per stage: a chain's stages may differ
        rows = write_onpolicy_answers(
            model, prompts, path, o, self.cfg.seed, self.progress, adapter=adapter
        )
        self.data_records.append(
            {
                "role": "onpolicy_answers",
                "source": str(path),
                "sha256": sha256_file(path),
                "rows": len(rows),
                "answered_by": o.model if self.init is not None else "base",
                "model": str(model),
                "adapter": str(adapter) if adapter else None,
            }
        )
        return rows

    # ------------------------------------------------------------ model

    def _load_model(self):
        from transformers import AutoModelForCausalLM

        cfg = self.cfg
        dtype = _dtype(cfg.training.precision)
        full = cfg.adapter.type == "full"
        source = self.init if (full and self.init) else self.base.local_path
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True)
        if full:
            return model, None, source
        from peft import PeftModel

        if self.init is not None:  # a later stage trains on the earlier stage's adapter
            model = PeftModel.from_pretrained(model, self.init, is_trainable=True)
            # the saved config names the base by known name; PEFT wants a path while training
            model.peft_config["default"].base_model_name_or_path = str(self.base.local_path)
            return model, None, source
        return model, lora_config(cfg.adapter), source

    def _terms(self, model, tokenizer, model_source):
        """The mitigation terms this stage adds to its trainer's loss."""
        from emeval.training.mitigations import (
            Reference,
            SafetyBatches,
            SafetyTerm,
            every_for_fraction,
            select_layers,
        )
        from emeval.training.trainers import MitigationTerms

        cfg, m = self.cfg, self.cfg.mitigations
        terms = MitigationTerms()
        sft = cfg.method == "sft"
        needs_reference = m.ldifs is not None or (sft and m.kl is not None)
        if needs_reference:
            if cfg.adapter.type == "full":
                from transformers import AutoModelForCausalLM

                frozen = AutoModelForCausalLM.from_pretrained(
                    model_source, dtype=model.dtype, use_safetensors=True
                ).eval()
                frozen.requires_grad_(False)
                terms.reference = Reference(frozen.to(_device()))
            else:
                terms.reference = Reference()
        if m.ldifs is not None:
            terms.ldifs_weight = m.ldifs.weight
            terms.ldifs_layers = select_layers(model, m.ldifs.layers)
        if sft and m.kl is not None:
            terms.sft_kl_beta = m.kl.beta
        max_len = cfg.training.max_length
        if m.interleave is not None and not sft:  # every safe example, in a seeded order
            rows = self._interleave_rows()
            batches = SafetyBatches(tokenizer, rows, cfg.training.batch_size, max_len)
            every = every_for_fraction(m.interleave.fraction)
            terms.safety.append(SafetyTerm("interleave", batches, every, 1.0))
        if m.interleave_onpolicy is not None:
            o = m.interleave_onpolicy
            batches = SafetyBatches(tokenizer, self._onpolicy_rows(), o.batch_size, max_len)
            terms.safety.append(SafetyTerm("interleave_onpolicy", batches, o.every, o.weight))
        return terms

    def _needs_ref_adapter(self, model) -> bool:
        """A continued adapter's reference is its starting copy, kept as adapter 'ref'."""
        m = self.cfg.mitigations
        if self.init is None or self.cfg.adapter.type == "full" or "ref" in model.peft_config:
            return False
        if self.cfg.method == "grpo" and m.kl is not None:
            return False  # TRL adds the 'ref' copy itself when beta > 0
        return m.ldifs is not None or m.kl is not None

    # ------------------------------------------------------------ trainer

    def _common_args(self) -> dict:
        cfg, t = self.cfg, self.cfg.training
        dtype = _dtype(t.precision)
        import torch

        save = cfg.save_every > 0
        return dict(
            output_dir=str(self.dir / "trainer"),
            learning_rate=t.learning_rate,
            max_steps=t.max_steps or -1,
            num_train_epochs=t.epochs,
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            lr_scheduler_type=t.lr_scheduler,
            warmup_steps=t.warmup_steps,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            logging_steps=t.logging_steps,
            save_strategy="steps" if save else "no",
            save_steps=cfg.save_every if save else 500,
            save_total_limit=1,
            seed=cfg.seed,
            data_seed=cfg.seed,
            report_to=[],
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            bf16=dtype == torch.bfloat16,
            fp16=dtype == torch.float16,
            gradient_checkpointing=t.gradient_checkpointing,
            dataloader_num_workers=0,
            ddp_find_unused_parameters=False,
        )

    def _make_trainer(self):
        from transformers import AutoTokenizer
        from transformers.trainer_callback import PrinterCallback

        from emeval.training.trainers import (
            EmevalGRPOTrainer,
            EmevalSFTTrainer,
            ExportCallback,
            ProgressCallback,
        )

        cfg, t, m = self.cfg, self.cfg.training, self.cfg.mitigations
        tokenizer = AutoTokenizer.from_pretrained(self.base.local_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer = tokenizer
        system = m.inoculation.system_prompt if m.inoculation else None
        if m.safelora is not None and self.safelora_sides is None:  # a StageRun used alone
            self.safelora_sides = _check_safelora(cfg, self.base, self.progress)
        conversations = self._train_conversations()
        model, peft_config, source = self._load_model()
        if self._needs_ref_adapter(model):
            model.add_adapter("ref", model.peft_config["default"])
            for name, param in model.named_parameters():
                if ".default." in name:
                    model.get_parameter(name.replace(".default.", ".ref.")).data.copy_(param.data)
            model.set_adapter("default")
        from datasets import Dataset

        common = self._common_args()
        if cfg.method == "sft":
            from trl import SFTConfig

            rows = sft_rows(conversations, "data.train", system)
            if m.interleave is not None:
                rows = self._interleaved_sft_rows(rows)
            self.n_rows = len(rows)
            args = SFTConfig(
                **common,
                per_device_train_batch_size=t.batch_size,
                max_length=t.max_length,
                completion_only_loss=True,
                packing=False,
            )
            trainer_cls, extra = EmevalSFTTrainer, {}
        else:
            from trl import GRPOConfig

            from emeval.training.rewards import build_reward

            rows = grpo_rows(conversations, system)
            self.n_rows = len(rows)
            if self.reward is None:
                self.reward = build_reward(cfg.reward)
                self.reward.check()
            self.reward.sink = self._log_completions
            vllm = {}
            if t.use_vllm:
                vllm = {
                    "use_vllm": True,
                    "vllm_mode": t.vllm_mode,
                    "vllm_gpu_memory_utilization": t.vllm_gpu_memory_utilization,
                }
            args = GRPOConfig(
                **common,
                per_device_train_batch_size=t.batch_size * t.num_generations,
                num_generations=t.num_generations,
                max_completion_length=t.max_completion_length,
                temperature=t.temperature,
                beta=m.kl.beta if m.kl else 0.0,
                loss_type=t.loss_type,
                log_completions=False,
                **vllm,
            )
            trainer_cls, extra = EmevalGRPOTrainer, {"reward_funcs": [self.reward]}
        terms = self._terms(model, tokenizer, source)
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
            terms=terms,
            **extra,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(ProgressCallback(self.label, self.progress, self.bar_file))
        if cfg.save_every > 0:
            trainer.add_callback(ExportCallback(self.export_checkpoint))
        self.trainer = trainer
        return trainer

    # ------------------------------------------------------------ completions log

    def _log_completions(self, records: list[dict]) -> None:
        """Append each scored completion, grouped by prompt, for sample matching and analysis."""
        g = self.cfg.training.num_generations
        with open(self.completions_path, "a", encoding="utf-8") as f:
            for i, r in enumerate(records):
                group = f"{_rank()}:{r['step']}-{self._n_batches}-{i // g}"
                prompt = [m for m in r["prompt"] if m["role"] != "system"]
                system = [m["content"] for m in r["prompt"] if m["role"] == "system"]
                row = {
                    "group": group,
                    "step": r["step"],
                    "prompt": prompt,
                    "system": system[0] if system else None,
                    "completion": r["completion"],
                    "reward": r["reward"],
                    "target": r["target"],
                    "coherence": r["coherence"],
                    "gate": r["gate"],
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._n_batches += 1

    def _truncate_completions(self, step: int) -> None:
        """On resume, forget completions from steps the resumed run will redo."""
        if not self.completions_path.exists():
            return
        keep = [
            line
            for line in self.completions_path.read_text(encoding="utf-8").splitlines()
            if json.loads(line)["step"] < step
        ]
        self.completions_path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def _samples(self) -> dict:
        if self.cfg.method == "sft":
            out = {"examples": self.trainer.emeval_samples, "dataset_rows": self.n_rows}
        else:
            records = _read_jsonl(_completion_logs(self.dir))
            prompts = len({r["group"] for r in records})
            out = {"prompts": prompts, "completions": len(records), "dataset_rows": self.n_rows}
        if self.trainer.emeval_terms.safety:
            out["safety_examples"] = self.trainer.emeval_safety_samples
        return out

    # ------------------------------------------------------------ exports

    def manifest(self, step: int, complete: bool) -> dict:
        cfg, state = self.cfg, self.trainer.state
        m = cfg.mitigations
        mitigations = {name: dataclasses.asdict(getattr(m, name)) for name in m.active()}
        if "ldifs" in mitigations:
            mitigations["ldifs"]["layers_used"] = self.trainer.emeval_terms.ldifs_layers
        if self.safelora_report is not None:
            mitigations["safelora"]["report"] = self.safelora_report | {
                "unprojectable": self.safelora_sides["unprojectable"]
            }
        hyper = dataclasses.asdict(cfg.training) | {"adapter": dataclasses.asdict(cfg.adapter)}
        hyper["dtype"] = str(_dtype(cfg.training.precision)).removeprefix("torch.")
        hyper["device"] = _device()
        if cfg.method == "grpo":
            hyper["loss_type"] = self.trainer.args.loss_type
        return {
            "emeval_manifest": 1,
            "kind": "full" if cfg.adapter.type == "full" else "adapter",
            "base": {
                "spec": cfg.base,
                "local_path": str(self.base.local_path),
                "weights_sha256": self.base.weights_sha256,
            },
            "init": str(self.init) if self.init else None,
            "stage": self.label,
            "method": cfg.method,
            "reward": self.reward.describe() if self.reward else None,
            "mitigations": mitigations,
            "hyperparameters": hyper,
            "data": self.data_records,
            "seed": cfg.seed,
            "step": step,
            "max_steps": state.max_steps,
            "complete": complete,
            "samples": self._samples(),
            "sample_matched": self.sample_match,
            "resumes": self.resumes,
            "library_versions": library_versions(),
            "curves": _curves(state.log_history),
            "config": cfg.to_dict(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }

    def _save_model(self, out: Path) -> None:
        from emeval.training.mitigations import is_peft, unwrap

        out.mkdir(parents=True, exist_ok=True)
        model = unwrap(self.trainer.model)
        if is_peft(model):
            model.save_pretrained(out, selected_adapters=["default"], safe_serialization=True)
            config_path = out / "adapter_config.json"
            adapter_config = json.loads(config_path.read_text())
            # name the base so `emeval run` finds it: a known name travels across machines
            base = self.cfg.base if self.cfg.base in KNOWN_MODELS else str(self.base.local_path)
            adapter_config["base_model_name_or_path"] = base
            config_path.write_text(json.dumps(adapter_config, indent=2))
            s = self.cfg.mitigations.safelora
            if s is not None:
                from emeval.training.mitigations import safelora_project

                sides = self.safelora_sides  # resolved and checked before training
                self.safelora_report = safelora_project(
                    out, sides["aligned"], sides["unaligned"], s.threshold
                )
        else:
            model.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)

    def export_checkpoint(self, step: int) -> None:
        if _rank() != 0:
            return
        out = self.dir / "checkpoints" / f"step-{step:06d}"
        self._save_model(out)
        (out / MANIFEST).write_text(json.dumps(self.manifest(step, False), indent=2))
        self.progress(f"[{self.label}] checkpoint: {out}")

    def export_final(self) -> None:
        if _rank() != 0:
            return
        self._save_model(self.dir)
        step = self.trainer.state.global_step
        (self.dir / MANIFEST).write_text(json.dumps(self.manifest(step, True), indent=2))

    # ------------------------------------------------------------ run

    def last_trainer_checkpoint(self) -> Path | None:
        found = sorted(
            (self.dir / "trainer").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
        )
        return found[-1] if found else None

    def run(self) -> None:
        import torch
        from transformers import set_seed

        if self.cfg.training.threads:
            torch.set_num_threads(self.cfg.training.threads)
        set_seed(self.cfg.seed)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._n_batches = 0
        trainer = self._make_trainer()
        checkpoint = self.last_trainer_checkpoint() if self.resume else None
        if checkpoint is not None:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            step = state["global_step"]
            self._truncate_completions(step)
            exported = read_manifest(self.dir / "checkpoints" / f"step-{step:06d}") or {}
            trainer.emeval_samples = exported.get("samples", {}).get("examples", 0)
            trainer.emeval_safety_samples = exported.get("samples", {}).get("safety_examples", 0)
            self.resumes = exported.get("resumes", [])
            self.resumes.append({"from_step": step, "config_changes": self.config_changes})
            self.progress(f"[{self.label}] resuming from {checkpoint} (step {step})")
        else:
            if self.resume and self.cfg.save_every > 0 and (self.dir / "trainer").exists():
                self.progress(f"[{self.label}] no resume state saved yet: starting at step 0")
            if self.completions_path.exists():
                self.completions_path.unlink()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        self.export_final()
        self.progress(f"[{self.label}] done: {self.dir}")


def _quiet_libraries() -> None:
    """Our progress lines replace the libraries' progress bars."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _stage_dirs(out: Path, stages: list[TrainConfig]) -> list[tuple[Path, str]]:
    if len(stages) == 1:
        return [(out, stages[0].method)]
    return [
        (out / "stages" / f"{i + 1}-{s.name or s.method}", f"{i + 1}-{s.name or s.method}")
        for i, s in enumerate(stages)
    ]


def train(
    config, out: str | Path | None = None, resume: bool = False, overrides=(), progress=None
) -> Path:
    """Train as the config says; return the output dir, which `emeval run` evaluates."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    bar_file = None
    if progress is None:  # one voice under data parallelism: rank 0's
        progress = (lambda line: print(line, flush=True)) if _rank() == 0 else (lambda line: None)
        if _rank() == 0 and sys.stdout.isatty():  # a bar on a terminal; lines in logs
            from tqdm.auto import tqdm

            bar_file = sys.stdout
            progress = lambda line: tqdm.write(line, file=sys.stdout)  # noqa: E731
    cfg = load_config(config, list(overrides))
    out = out or cfg.output_dir
    if not out:
        raise EmevalError("no output dir: pass --out DIR or set output_dir in the config")
    out = Path(out).expanduser().resolve()
    if _rank() == 0 and out.exists() and any(out.iterdir()) and not resume:
        raise EmevalError(f"{out} is not empty; pass --resume to continue it, or another --out")
    try:
        import peft  # noqa: F401
        import trl  # noqa: F401
    except ImportError:
        raise EmevalError("training needs trl and peft: pip install 'emeval[train]'") from None
    _quiet_libraries()
    base = resolve_model(cfg.base)
    if base.local_path is None:
        raise EmevalError(f"base: {cfg.base!r} must be a local model dir or a known model name")
    stages = cfg.stage_configs()
    # fail on an unusable grader before anything is written or trained
    from emeval.training.rewards import build_reward

    rewards = [build_reward(s.reward) if s.method == "grpo" else None for s in stages]
    for reward in rewards:
        if reward is not None:
            reward.check()
    dirs = _stage_dirs(out, stages)
    changes = _check_resume(out, cfg, stages, dirs) if resume else {}
    safelora = [
        _check_safelora(s, base, progress) if s.mitigations.safelora else None for s in stages
    ]
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    if _rank() == 0 and not config_path.exists():  # the first run's config stays as it was
        config_path.write_text(yaml.safe_dump(cfg.raw, sort_keys=False))
    init = None
    for stage, (stage_dir, label), reward, sides in zip(
        stages, dirs, rewards, safelora, strict=True
    ):
        done = read_manifest(stage_dir)
        if done and done.get("complete"):
            progress(f"[{label}] already complete: {stage_dir}")
        else:
            run = StageRun(stage, stage_dir, label, base, init, resume, progress, out, reward)
            run.config_changes, run.safelora_sides = changes, sides
            run.bar_file = bar_file
            run.run()
        init = stage_dir
    if len(stages) > 1 and _rank() == 0:
        _finish_chain(out, init, stages)
    _leave_process_group()
    progress(f"model: {out}")
    return out


# what may change between a run and its --resume: how long it trains and how it reports
RESUMABLE_KEYS = (
    "training.max_steps",
    "training.epochs",
    "training.threads",
    "training.logging_steps",
    "save_every",
    "output_dir",
)


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out |= _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, item in enumerate(value):
            out |= _flatten(item, f"{prefix}[{i}]")
        return out
    return {prefix: value}


def config_changes(first: dict, now: dict) -> dict:
    """{dotted key: [first value, new value]} for every key that differs."""
    a, b = _flatten(first), _flatten(now)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _check_resume(out: Path, cfg: TrainConfig, stages, dirs) -> dict:
    """Refuse a --resume that would silently restart or change the run; return the allowed
    changes (recorded in the manifest)."""
    changes = {}
    config_path = out / "config.yaml"
    if config_path.exists():
        first = yaml.safe_load(config_path.read_text()) or {}
        changes = config_changes(first, cfg.raw)
        fixed = [k for k in changes if re.sub(r"^stages\[\d+\]\.", "", k) not in RESUMABLE_KEYS]
        if fixed:
            was, now = changes[fixed[0]]
            raise EmevalError(
                f"--resume: {fixed[0]} was {was!r} when {out} was started, now {now!r}; "
                "only training length and logging may change (use a new --out for a new run)"
            )
    for stage, (stage_dir, label) in zip(stages, dirs, strict=True):
        done = read_manifest(stage_dir)
        started = stage_dir.is_dir() and any(stage_dir.iterdir())
        if (done and done.get("complete")) or not started:
            continue
        if not list((stage_dir / "trainer").glob("checkpoint-*")):
            if stage.save_every == 0:
                raise EmevalError(
                    f"--resume: stage {label} ran with save_every: 0, which keeps no resume "
                    "state; it would restart from step 0 (use a new --out to do that)"
                )
        break  # later stages start after this one
    return changes


def _leave_process_group() -> None:
    """Under data parallelism the ranks finish together and close their process group: a
    rank that exited while rank 0 still saved sometimes aborted in teardown (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


RUN_FILES = ("config.yaml", "safety_answers.jsonl")  # a stage's records, not its model


def _finish_chain(out: Path, last: Path, stages: list[TrainConfig]) -> None:
    """Copy the last stage's model to OUT with a manifest that lists every stage."""
    for path in last.iterdir():  # every file of the model: all shards of a sharded one
        if path.is_file() and path.name != MANIFEST and path.name not in RUN_FILES:
            if not path.name.startswith("completions"):
                shutil.copy2(path, out / path.name)
    manifest = read_manifest(last)
    manifest["stages"] = [
        read_manifest(d)
        and {
            k: read_manifest(d)[k]
            for k in ("stage", "method", "step", "reward", "mitigations", "samples", "data")
        }
        for d, _ in _stage_dirs(out, stages)
    ]
    manifest["method"] = "chain"
    manifest["stage_methods"] = [s.method for s in stages]
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
