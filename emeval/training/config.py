"""The training config: YAML -> pydantic sections, checked key by key.

Every problem is an EmevalError that names the offending key, e.g.
"config: mitigations.kl.beta must be a number" (see sections.py). Types, choices and ranges
are declared on the fields; `TrainConfig._check` holds the checks across sections, and each
mitigation checks its own section (mitigations/). A chain's stages inherit every top-level
section and override what they name, so a warm-up and an RL stage share base, adapter and seed.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from emeval.errors import EmevalError
from emeval.training.mitigations import MitigationsConfig
from emeval.training.sections import Bool, Int, Number, Section, Str, config_error
from emeval.yaml_files import (
    ConfigProblem,
    apply_overrides,
    deep_merge,
    one_line,
    read_yaml_mapping,
)


class AdapterConfig(Section):
    """lora/rslora train a PEFT adapter (rslora scales by alpha/sqrt(r)); full: all weights."""

    type: Literal["lora", "rslora", "full"] = "lora"
    r: Int = Field(16, gt=0)
    alpha: Int = Field(32, gt=0)
    dropout: Number = 0.0
    target_modules: list[Str] | Str = "all-linear"

    @field_validator("dropout")
    @classmethod
    def _dropout(cls, value):
        if not 0 <= value < 1:
            raise ConfigProblem("", "must be in [0, 1)")
        return value


class SampleMatchConfig(Section):
    """Build the SFT set from a finished GRPO run so SFT sees exactly as many samples."""

    run: Str = ""  # output dir of the GRPO run (holds completions.jsonl and emeval-manifest.json)
    # best: best completion per prompt; top: highest rewards; data: data.train
    select: Literal["best", "top", "data"] = "best"
    count: Literal["prompts", "completions"] = "prompts"  # match its prompts or completions


class DataConfig(Section):
    # SFT examples or GRPO prompts, one source or a list joined in order; GRPO defaults to the
    # reward's set
    train: Str | list[Str] | None = None
    limit: Int | None = Field(None, gt=0)  # use only the first N examples (after shuffling)
    shuffle: Bool = True
    sample_matched: SampleMatchConfig | None = None


class RewardConfig(Section):
    name: Str = ""
    grader: Str = "offline"  # 'offline', 'lexicon' (hackable only), or any judge spec
    min_words: Int = Field(5, ge=0)  # shorter answers get reward 0
    coherence_threshold: Number = 0.5  # coherence (0-1) below this gets reward 0
    incoherence_weight: Number = Field(0.5, ge=0)  # reward = target - weight * (1 - coherence)
    max_repetition: Number = 0.5  # share of repeated word trigrams above this gets reward 0

    @field_validator("coherence_threshold")
    @classmethod
    def _threshold(cls, value):
        if not 0 <= value <= 1:
            raise ConfigProblem("", "must be in [0, 1]")
        return value

    @field_validator("max_repetition")
    @classmethod
    def _repetition(cls, value):
        if not 0 < value <= 1:
            raise ConfigProblem("", "must be in (0, 1]")
        return value


class TrainingConfig(Section):
    learning_rate: Number = Field(1e-4, gt=0)
    max_steps: Int | None = Field(None, gt=0)  # default: one pass over data.train (epochs)
    epochs: Number = Field(1.0, gt=0)
    batch_size: Int = Field(4, gt=0)  # SFT: examples per micro-step; GRPO: prompts per one
    gradient_accumulation_steps: Int = Field(1, gt=0)
    num_generations: Int = Field(4, gt=0)  # GRPO completions per prompt
    max_completion_length: Int = Field(48, gt=0)  # GRPO
    max_length: Int = Field(512, gt=0)  # SFT: longer examples are truncated
    temperature: Number = Field(0.8, gt=0)  # GRPO sampling
    loss_type: Str = "dapo"  # GRPO loss normalisation (TRL's loss_type: grpo, dr_grpo, dapo...)
    lr_scheduler: Str = "constant"
    warmup_steps: Int = Field(0, ge=0)
    weight_decay: Number = Field(0.0, ge=0)
    max_grad_norm: Number = Field(1.0, ge=0)
    logging_steps: Int = Field(1, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU with it
    gradient_checkpointing: Bool = False
    use_vllm: Bool = False  # GRPO generation with vLLM (GPU only)
    vllm_mode: Str = "colocate"
    vllm_gpu_memory_utilization: Number = 0.3
    threads: Int | None = Field(None, gt=0)  # CPU threads for torch; 1 is fastest when busy


# keys of `training` that only GRPO reads
GRPO_ONLY = (
    "loss_type",
    "temperature",
    "num_generations",
    "max_completion_length",
    "use_vllm",
    "vllm_mode",
    "vllm_gpu_memory_utilization",
)


class TrainConfig(Section):
    method: Literal["sft", "grpo", "chain"] = "sft"
    base: Str = "smollm2-135m-instruct"
    seed: Int = 0
    save_every: Int = Field(10, ge=0)  # steps between checkpoints; 0: only the final model
    output_dir: Str | None = None
    name: Str | None = None  # a chain stage's name
    data: DataConfig = Field(default_factory=DataConfig)
    reward: RewardConfig | None = None
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    mitigations: MitigationsConfig = Field(default_factory=MitigationsConfig)
    stages: list[dict] | None = None  # method: chain
    _source: str | None = PrivateAttr(None)  # the YAML file it came from
    _raw: dict = PrivateAttr(default_factory=dict)  # as written, for the manifest

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def raw(self) -> dict:
        return self._raw

    def stage_configs(self) -> list[TrainConfig]:
        """One config per stage: the config itself, or each chain stage merged over it."""
        if self.method != "chain":
            return [self]
        base = {k: v for k, v in self.raw.items() if k not in ("stages", "method")}
        stages = []
        for i, stage in enumerate(self.stages or []):
            merged = deep_merge(base, stage, null_deletes=True)
            stages.append(_build_config(merged, f"stages[{i}].", self.source, written=stage))
        return stages

    def to_dict(self) -> dict:
        return self.model_dump()

    @model_validator(mode="after")
    def _check(self):
        """The checks across sections (a chain's are made on each of its stages)."""
        from emeval.training.rewards import REWARDS

        if self.method == "chain":
            if not self.stages:
                raise ConfigProblem("stages", "must list the stages of a chain (method: chain)")
            for i, stage in enumerate(self.stages):
                if stage.get("method") not in ("sft", "grpo"):
                    raise ConfigProblem(f"stages[{i}].method", "must be sft or grpo")
            return self
        if self.stages:
            raise ConfigProblem("stages", "is only for method: chain")
        t, r, d = self.training, self.reward, self.data
        rewards = ", ".join(REWARDS)
        if self.method == "grpo":
            if t.num_generations < 2:
                raise ConfigProblem(
                    "training.num_generations", "must be at least 2 (GRPO compares them)"
                )
            if r is None or not r.name:
                raise ConfigProblem("reward.name", f"is required for grpo; one of {rewards}")
        if r is not None:
            if r.name not in REWARDS:
                raise ConfigProblem("reward.name", f"must be one of {rewards} (got {r.name!r})")
            if r.grader == "lexicon" and not REWARDS[r.name].lexicon:
                raise ConfigProblem(
                    "reward.grader", f"'lexicon' only grades reward hackable, not {r.name}"
                )
        if t.use_vllm and self.method != "grpo":
            raise ConfigProblem("training.use_vllm", "only applies to grpo")
        s = d.sample_matched
        if s is not None:
            if self.method != "sft":
                raise ConfigProblem("data.sample_matched", "only applies to method: sft")
            if not s.run:
                raise ConfigProblem("data.sample_matched.run", "must name a finished GRPO run dir")
            if t.max_steps is not None or t.epochs != 1:
                raise ConfigProblem(
                    "training.epochs",
                    "must be 1 and max_steps unset for sample-matched "
                    "SFT (one pass over exactly the matched samples)",
                )
            if s.select == "data" and not d.train:
                raise ConfigProblem("data.train", "is required with sample_matched.select: data")
        elif self.method == "sft" and not d.train:
            raise ConfigProblem("data.train", "is required for sft (a chat-jsonl file or dataset)")
        for plugin in self.mitigations.plugins():
            with _in_section(plugin.name):
                plugin.check(self)
        return self


@contextlib.contextmanager
def _in_section(name: str, prefix: str | None = None):
    """Put a mitigation's section path in front of its ConfigProblem: raised again as a
    ConfigProblem inside pydantic (no prefix), else as the one-line EmevalError."""
    try:
        yield
    except ConfigProblem as problem:
        key = f"mitigations.{name}" + (f".{problem.key}" if problem.key else "")
        if prefix is None:
            raise ConfigProblem(key, problem.message) from None
        raise config_error(prefix + key, problem.message) from None


def _ignored(cfg: TrainConfig, written: dict) -> list[tuple[str, str]]:
    """(key, why) for each key written for this stage that its method would not use."""
    out = []
    training = written.get("training") or {}
    data = written.get("data") or {}
    if cfg.method == "sft":
        if written.get("reward") is not None:
            out.append(("reward", "only applies to grpo (sft learns from its data)"))
        out += [(f"training.{k}", "only applies to grpo") for k in GRPO_ONLY if k in training]
    s = cfg.data.sample_matched
    if s is not None:
        if data.get("limit") is not None:
            out.append(("data.limit", "cannot be used with sample_matched (the GRPO run sets it)"))
        if s.select != "data":
            for key in ("train", "shuffle"):
                if data.get(key) is not None:  # null is the same as leaving it out
                    out.append((f"data.{key}", "only applies with sample_matched.select: data"))
    sections = written.get("mitigations") or {}
    for plugin in cfg.mitigations.plugins():
        section = sections.get(plugin.name) if isinstance(sections, dict) else None
        for key, why in plugin.ignored(cfg, section if isinstance(section, dict) else {}):
            out.append((f"mitigations.{plugin.name}" + (f".{key}" if key else ""), why))
    return out


def _check_start(cfg: TrainConfig, prefix: str) -> None:
    """Checks for a stage that starts from the base model."""
    for plugin in cfg.mitigations.plugins():
        with _in_section(plugin.name, prefix):
            plugin.check_start(cfg)


def _check_chain(cfg: TrainConfig) -> None:
    stages = cfg.stage_configs()
    first = stages[0].adapter.model_dump()
    for i, stage in enumerate(stages):
        if i == 0:
            _check_start(stage, "stages[0].")
        for plugin in stage.mitigations.plugins():
            if plugin.last_stage_only and i < len(stages) - 1:
                raise config_error(
                    f"stages[{i}].mitigations.{plugin.name}", "only applies to the last stage"
                )
        # a later stage trains the adapter (or model) the first one made, shape and all
        for key, value in stage.adapter.model_dump().items():
            if i and value != first[key]:
                raise config_error(
                    f"stages[{i}].adapter.{key}",
                    f"cannot change in a chain: this stage continues the adapter of stage 0 "
                    f"({key}: {first[key]!r})",
                )
    # a top-level key is inherited by every stage: refused only when no stage uses it
    base = {k: v for k, v in cfg.raw.items() if k not in ("stages", "method")}
    unused = [dict(_ignored(stage, base)) for stage in stages]
    for key, why in unused[0].items():
        if all(key in u for u in unused):
            raise config_error(key, f"{why}, and no stage uses it")


def _build_config(
    raw: Any, prefix: str = "", source: str | None = None, written: dict | None = None
) -> TrainConfig:
    if not isinstance(raw, dict):
        raise EmevalError("config: the file must hold a mapping of keys to values")
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise one_line(e, TrainConfig, "config", prefix) from None
    cfg._raw = copy.deepcopy(raw)
    cfg._source = source
    if cfg.method == "chain":
        _check_chain(cfg)
    else:  # a key that would be silently ignored is an error, like an unknown one
        for key, why in _ignored(cfg, raw if written is None else written):
            raise config_error(f"{prefix}{key}", why)
        if written is None:  # a config of its own, not a chain's stage
            _check_start(cfg, prefix)
    return cfg


def load_config(source: str | Path | dict | TrainConfig, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML path, a dict or a TrainConfig, with KEY=VALUE overrides."""
    if isinstance(source, TrainConfig):
        if not overrides:
            return source
        source, name = copy.deepcopy(source.raw), source.source
    elif isinstance(source, dict):
        source, name = copy.deepcopy(source), None
    else:
        source, name = read_yaml_mapping(source, "config"), str(source)
    apply_overrides(source, overrides, "training.max_steps=2")
    return _build_config(source, "", name)
