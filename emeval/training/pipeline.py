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

The parts live next door: the data (sample_match.py), model loading (loading.py), trainer
arguments (arguments.py), manifest and logs (records.py), --resume checks (resume.py) and the
mitigations' hooks (mitigations/).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import yaml

from emeval.errors import EmevalError
from emeval.models import KNOWN_MODELS, resolve_model
from emeval.rundir import MANIFEST, TRAIN_CONFIG, checkpoint_dir, read_manifest, write_manifest
from emeval.training.arguments import trainer_args
from emeval.training.config import TrainConfig, load_config
from emeval.training.data import grpo_rows, sft_rows
from emeval.training.loading import (
    frozen_copy,
    keep_reference_adapter,
    load_tokenizer,
    load_trainable,
    rank,
)
from emeval.training.mitigations import Mitigation
from emeval.training.records import CompletionsLog, manifest
from emeval.training.resume import check_resume
from emeval.training.sample_match import train_conversations


class StageRun:
    """One SFT or GRPO stage: data, model, trainer (with its mitigations' hooks), exports."""

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
        mitigations: list[Mitigation] | None = None,
    ):
        self.cfg, self.dir, self.label, self.base = cfg, stage_dir, label, base
        self.init, self.resume, self.progress, self.run_dir = init, resume, progress, run_dir
        self.data_records: list[dict] = []
        self.reward = reward  # GRPO: a GatedReward, already checked
        # one per active mitigation; train() passes the ones it prepared before writing
        self.mitigations = cfg.mitigations.plugins() if mitigations is None else mitigations
        self.sample_match: dict | None = None
        self.completions = CompletionsLog(stage_dir, cfg.training.num_generations)
        self.config_changes: dict = {}  # allowed changes since the first run (--resume)
        self.bar_file = None  # a terminal to draw a progress bar on (else plain lines)
        self.resumes: list[dict] = []
        self.tokenizer = None  # set with the trainer
        self.n_rows = 0

    def mitigation(self, name: str) -> Mitigation | None:
        return next((m for m in self.mitigations if m.name == name), None)

    def reference_model(self) -> tuple[Path, Path | None]:
        """(model dir, adapter dir or None) of the model this stage starts from: the base, or
        in a chain the previous stage's model or adapter."""
        if self.init is None:
            return self.base.local_path, None
        if self.cfg.adapter.type == "full":
            return self.init, None
        return self.base.local_path, self.init

    def load_tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.base.local_path)
        return self.tokenizer

    # ------------------------------------------------------------ trainer

    def _make_trainer(self):
        from datasets import Dataset
        from transformers.trainer_callback import PrinterCallback

        from emeval.training.trainers import (
            EmevalGRPOTrainer,
            EmevalSFTTrainer,
            ExportCallback,
            ProgressCallback,
        )

        cfg, method = self.cfg, self.cfg.method
        tokenizer = self.load_tokenizer()
        for m in self.mitigations:  # done already when train() runs the stage
            m.prepare(cfg, self.base, self.progress)
        conversations = train_conversations(self)
        model, peft_config, source = load_trainable(cfg, self.base.local_path, self.init)
        extra_args: dict = {}
        for m in self.mitigations:
            extra_args |= m.trainer_args(method)
        # a continued adapter's reference is its starting copy; TRL adds it when beta > 0
        if (
            any(m.needs_reference(method) for m in self.mitigations)
            and self.init is not None
            and cfg.adapter.type != "full"
            and "ref" not in model.peft_config
            and not extra_args.get("beta")
        ):
            keep_reference_adapter(model)
        system = next((p for m in self.mitigations if (p := m.system_prompt())), None)
        if method == "sft":
            rows = sft_rows(conversations, "data.train", system)
            for m in self.mitigations:
                rows = m.sft_rows(self, rows)
            trainer_cls, extra = EmevalSFTTrainer, {}
        else:
            from emeval.training.rewards import build_reward

            rows = grpo_rows(conversations, system)
            if self.reward is None:
                self.reward = build_reward(cfg.reward)
                self.reward.check()
            self.reward.sink = self.completions
            trainer_cls, extra = EmevalGRPOTrainer, {"reward_funcs": [self.reward]}
        self.n_rows = len(rows)
        args = trainer_args(cfg, self.dir, extra_args)
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

    def _terms(self, model, tokenizer, model_source):
        """The loss terms the active mitigations add to the trainer's."""
        from emeval.training.mitigations.terms import MitigationTerms, Reference

        terms = MitigationTerms()
        if any(m.needs_reference(self.cfg.method) for m in self.mitigations):
            # full fine-tuning compares against a frozen copy; an adapter switches itself off
            full = self.cfg.adapter.type == "full"
            terms.reference = Reference(frozen_copy(model_source, model) if full else None)
        for m in self.mitigations:
            m.add_terms(self, terms, model, tokenizer)
        return terms

    # ------------------------------------------------------------ exports

    def _save_model(self, out: Path) -> None:
        from emeval.training.mitigations.terms import is_peft, unwrap

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
        else:
            model.save_pretrained(out, safe_serialization=True)
        for m in self.mitigations:
            m.after_save(self, out)
        self.tokenizer.save_pretrained(out)

    def _export(self, out: Path, step: int, complete: bool) -> None:
        self._save_model(out)
        write_manifest(out, manifest(self, step, complete))

    def export_checkpoint(self, step: int) -> None:
        if rank() != 0:
            return
        out = checkpoint_dir(self.dir, step)
        self._export(out, step, False)
        self.progress(f"[{self.label}] checkpoint: {out}")

    def export_final(self) -> None:
        if rank() != 0:
            return
        self._export(self.dir, self.trainer.state.global_step, True)

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
        trainer = self._make_trainer()
        checkpoint = self.last_trainer_checkpoint() if self.resume else None
        if checkpoint is not None:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            step = state["global_step"]
            self.completions.keep_before(step)
            exported = read_manifest(checkpoint_dir(self.dir, step)) or {}
            trainer.emeval_samples = exported.get("samples", {}).get("examples", 0)
            trainer.emeval_safety_samples = exported.get("samples", {}).get("safety_examples", 0)
            self.resumes = exported.get("resumes", [])
            self.resumes.append({"from_step": step, "config_changes": self.config_changes})
            self.progress(f"[{self.label}] resuming from {checkpoint} (step {step})")
        else:
            if self.resume and self.cfg.save_every > 0 and (self.dir / "trainer").exists():
                self.progress(f"[{self.label}] no resume state saved yet: starting at step 0")
            self.completions.clear()
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
        progress = (lambda line: print(line, flush=True)) if rank() == 0 else (lambda line: None)
        if rank() == 0 and sys.stdout.isatty():  # a bar on a terminal; lines in logs
            from tqdm.auto import tqdm

            bar_file = sys.stdout
            progress = lambda line: tqdm.write(line, file=sys.stdout)  # noqa: E731
    cfg = load_config(config, list(overrides))
    out = out or cfg.output_dir
    if not out:
        raise EmevalError("no output dir: pass --out DIR or set output_dir in the config")
    out = Path(out).expanduser().resolve()
    if rank() == 0 and out.exists() and any(out.iterdir()) and not resume:
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
    changes = check_resume(out, cfg, stages, dirs) if resume else {}
    mitigations = [s.mitigations.plugins() for s in stages]
    for stage, found in zip(stages, mitigations, strict=True):
        for m in found:  # e.g. SafeLoRA's modules checked against its two models
            m.prepare(stage, base, progress)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / TRAIN_CONFIG
    if rank() == 0 and not config_path.exists():  # the first run's config stays as it was
        config_path.write_text(yaml.safe_dump(cfg.raw, sort_keys=False))
    init = None
    for stage, (stage_dir, label), reward, found in zip(
        stages, dirs, rewards, mitigations, strict=True
    ):
        done = read_manifest(stage_dir)
        if done and done.get("complete"):
            progress(f"[{label}] already complete: {stage_dir}")
        else:
            run = StageRun(
                stage, stage_dir, label, base, init, resume, progress, out, reward, found
            )
            run.config_changes, run.bar_file = changes, bar_file
            run.run()
        init = stage_dir
    if len(stages) > 1 and rank() == 0:
        _finish_chain(out, init, stages)
    _leave_process_group()
    progress(f"model: {out}")
    return out


def _leave_process_group() -> None:
    """Under data parallelism the ranks finish together and close their process group: a
    rank that exited while rank 0 still saved sometimes aborted in teardown (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


RUN_FILES = (TRAIN_CONFIG, "safety_answers.jsonl")  # a stage's records, not its model


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
    write_manifest(out, manifest)
