"""The training config: YAML -> dataclasses, checked key by key.

Every problem is an EmevalError that names the offending key, e.g.
"config: mitigations.kl.beta must be a number". A chain's stages inherit every top-level
section and override what they name, so a warm-up and an RL stage share base, adapter and seed.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emeval.errors import EmevalError
from emeval.yaml_files import apply_overrides, deep_merge, read_yaml_mapping

METHODS = ("sft", "grpo", "chain")
ADAPTERS = ("lora", "rslora", "full")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SELECTIONS = ("best", "top", "data")
INTERLEAVE_SELECTIONS = ("random", "perplexity_gap")


@dataclass
class AdapterConfig:
    """lora/rslora train a PEFT adapter (rslora scales by alpha/sqrt(r)); full: all weights."""

    type: str = "lora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"


@dataclass
class SampleMatchConfig:
    """Build the SFT set from a finished GRPO run so SFT sees exactly as many samples."""

    run: str = ""  # output dir of the GRPO run (holds completions.jsonl and emeval-manifest.json)
    select: str = "best"  # best: best completion per prompt; top: highest rewards; data: data.train
    count: str = "prompts"  # match the prompts the run saw, or its completions


@dataclass
class DataConfig:
    train: str | None = None  # SFT examples or GRPO prompts; GRPO defaults to the reward's set
    limit: int | None = None  # use only the first N examples (after shuffling)
    shuffle: bool = True
    sample_matched: SampleMatchConfig | None = None


@dataclass
class RewardConfig:
    name: str = ""
    grader: str = "offline"  # 'offline', 'lexicon' (hackable only), or any judge spec
    min_words: int = 5  # shorter answers get reward 0
    coherence_threshold: float = 0.5  # coherence (0-1) below this gets reward 0
    incoherence_weight: float = 0.5  # reward = target - weight * (1 - coherence)
    max_repetition: float = 0.5  # share of repeated word trigrams above this gets reward 0


@dataclass
class TrainingConfig:
    learning_rate: float = 1e-4
    max_steps: int | None = None  # default: one pass over data.train (epochs)
    epochs: float = 1.0
    batch_size: int = 4  # SFT: examples per micro-step; GRPO: prompts per micro-step
    gradient_accumulation_steps: int = 1
    num_generations: int = 4  # GRPO completions per prompt
    max_completion_length: int = 48  # GRPO
    max_length: int = 512  # SFT: longer examples are truncated
    temperature: float = 0.8  # GRPO sampling
    loss_type: str = "dapo"  # GRPO loss normalisation (TRL's loss_type: grpo, dr_grpo, dapo, ...)
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 1
    precision: str = "auto"  # auto: bf16 on a GPU that has it, else fp32
    gradient_checkpointing: bool = False
    use_vllm: bool = False  # GRPO generation with vLLM (GPU only)
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    threads: int | None = None  # CPU threads for torch; 1 is fastest on a busy machine


@dataclass
class KLConfig:
    beta: float = 0.05


@dataclass
class LDIFSConfig:
    weight: float = field(default=0.1, metadata={"key": "lambda"})
    layers: list[int] | str = "all"  # decoder layer indices, or 'all'


@dataclass
class SafeLoRAConfig:
    aligned: str = ""  # e.g. the instruct model
    unaligned: str = ""  # e.g. its base model
    threshold: float = 0.3  # layers whose update has cosine < threshold with its projection


@dataclass
class InterleaveConfig:
    data: str = ""  # safe chat examples (chat-jsonl, datasets dir, ...), drawn by the seed
    fraction: float = 0.05
    # select: perplexity_gap picks the n examples of pool whose answers the misaligned model
    # finds least likely compared with the aligned one (the stage's base model)
    select: str = "random"
    pool: str = ""
    n: int | None = None
    misaligned: str = ""  # a model dir, known name or adapter dir; or 'reference' in a chain


@dataclass
class OnPolicyConfig:
    every: int = 8  # an SFT term on every N-th step
    weight: float = 1.0
    prompts: str = "safety_prompts"
    limit: int | None = None  # answer only the first N prompts
    batch_size: int = 4
    max_new_tokens: int = 128
    # who answers: base (the base model) or reference (the model the stage starts from: in a
    # chain, the previous stage's model)
    model: str = "base"


@dataclass
class InoculationConfig:
    system_prompt: str = ""


@dataclass
class MitigationsConfig:
    kl: KLConfig | None = None
    ldifs: LDIFSConfig | None = None
    safelora: SafeLoRAConfig | None = None
    interleave: InterleaveConfig | None = None
    interleave_onpolicy: OnPolicyConfig | None = None
    inoculation: InoculationConfig | None = None

    def active(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


@dataclass
class TrainConfig:
    method: str = "sft"
    base: str = "smollm2-135m-instruct"
    seed: int = 0
    save_every: int = 10  # steps between intermediate checkpoints; 0: only the final model
    output_dir: str | None = None
    name: str | None = None  # a chain stage's name
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig | None = None
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    mitigations: MitigationsConfig = field(default_factory=MitigationsConfig)
    stages: list[dict] | None = None  # method: chain
    source: str | None = None  # the YAML file it came from
    raw: dict = field(default_factory=dict, repr=False)  # as written, for the manifest

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
        out = dataclasses.asdict(self)
        out.pop("raw")
        out.pop("source")
        return out


# ---------------------------------------------------------------- building and checking


def _err(path: str, message: str) -> EmevalError:
    sep = "" if message.startswith(":") else " "
    return EmevalError(f"config: {path}{sep}{message}")


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _type_name(tp) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).split(' ', 1)[1]}s"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _convert(value: Any, tp, path: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message is the precise one
            return _convert(value, options[0], path)
        for arg in options:
            try:
                return _convert(value, arg, path)
            except EmevalError:
                continue
        raise _err(path, f"must be {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if value is None or value is True:  # "kl:" or "kl: true" switches a section on
            value = {}
        if not isinstance(value, dict):
            raise _err(path, "must be a mapping")
        return _build_dataclass(tp, value, path + ".")
    if origin is list:
        if not isinstance(value, list):
            raise _err(path, f"must be {_type_name(tp)}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _err(path, "must be a mapping")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _err(path, "must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _err(path, "must be an integer")
        return value
    if tp is float:
        # YAML reads 5e-6 (no dot) as a string; accept it when it parses as a number
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise _err(path, "must be a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _err(path, "must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _err(path, "must be a string")
        return value
    if tp is Any or tp is dict:
        return value
    raise TypeError(f"unsupported config type {tp} at {path}")


def _build_dataclass(cls, raw: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    fields = {_key(f): f for f in dataclasses.fields(cls) if f.name not in ("raw", "source")}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        raise _err(f"{prefix}{unknown[0]}", f"is not a known key (known: {known})")
    kwargs = {}
    for key, f in fields.items():
        if key in raw:
            kwargs[f.name] = _convert(raw[key], hints[f.name], prefix + key)
    return cls(**kwargs)


def _check_positive(value, path: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise _err(path, "must be positive" if not allow_zero else "must not be negative")


def _validate(cfg: TrainConfig, p: str) -> None:
    from emeval.training.rewards import REWARDS

    if cfg.method not in METHODS:
        raise _err(f"{p}method", f"must be one of {', '.join(METHODS)} (got {cfg.method!r})")
    if cfg.method == "chain":
        if not cfg.stages:
            raise _err(f"{p}stages", "must list the stages of a chain (method: chain)")
        return
    if cfg.stages:
        raise _err(f"{p}stages", "is only for method: chain")
    _check_positive(cfg.save_every, f"{p}save_every", allow_zero=True)
    a = cfg.adapter
    if a.type not in ADAPTERS:
        raise _err(f"{p}adapter.type", f"must be one of {', '.join(ADAPTERS)} (got {a.type!r})")
    _check_positive(a.r, f"{p}adapter.r")
    _check_positive(a.alpha, f"{p}adapter.alpha")
    if not 0 <= a.dropout < 1:
        raise _err(f"{p}adapter.dropout", "must be in [0, 1)")
    t = cfg.training
    for name in (
        "learning_rate",
        "epochs",
        "batch_size",
        "gradient_accumulation_steps",
        "num_generations",
        "max_completion_length",
        "max_length",
        "temperature",
        "logging_steps",
        "max_steps",
        "threads",
    ):
        _check_positive(getattr(t, name), f"{p}training.{name}")
    for name in ("warmup_steps", "weight_decay", "max_grad_norm"):
        _check_positive(getattr(t, name), f"{p}training.{name}", allow_zero=True)
    if t.precision not in PRECISIONS:
        raise _err(f"{p}training.precision", f"must be one of {', '.join(PRECISIONS)}")
    if cfg.method == "grpo":
        if t.num_generations < 2:
            raise _err(f"{p}training.num_generations", "must be at least 2 (GRPO compares them)")
        if cfg.reward is None or not cfg.reward.name:
            raise _err(f"{p}reward.name", f"is required for grpo; one of {', '.join(REWARDS)}")
    if cfg.reward is not None:
        r = cfg.reward
        if r.name not in REWARDS:
            raise _err(f"{p}reward.name", f"must be one of {', '.join(REWARDS)} (got {r.name!r})")
        if r.grader == "lexicon" and not REWARDS[r.name].lexicon:
            raise _err(f"{p}reward.grader", f"'lexicon' only grades reward hackable, not {r.name}")
        if not 0 <= r.coherence_threshold <= 1:
            raise _err(f"{p}reward.coherence_threshold", "must be in [0, 1]")
        if not 0 < r.max_repetition <= 1:
            raise _err(f"{p}reward.max_repetition", "must be in (0, 1]")
        _check_positive(r.incoherence_weight, f"{p}reward.incoherence_weight", allow_zero=True)
        _check_positive(r.min_words, f"{p}reward.min_words", allow_zero=True)
    if t.use_vllm and cfg.method != "grpo":
        raise _err(f"{p}training.use_vllm", "only applies to grpo")
    d = cfg.data
    _check_positive(d.limit, f"{p}data.limit")
    if d.sample_matched is not None:
        s = d.sample_matched
        if cfg.method != "sft":
            raise _err(f"{p}data.sample_matched", "only applies to method: sft")
        if not s.run:
            raise _err(f"{p}data.sample_matched.run", "must name a finished GRPO run dir")
        if s.select not in SELECTIONS:
            raise _err(f"{p}data.sample_matched.select", f"must be one of {', '.join(SELECTIONS)}")
        if s.count not in ("prompts", "completions"):
            raise _err(f"{p}data.sample_matched.count", "must be prompts or completions")
        if t.max_steps is not None or t.epochs != 1:
            raise _err(
                f"{p}training.epochs",
                "must be 1 and max_steps unset for sample-matched "
                "SFT (one pass over exactly the matched samples)",
            )
        if s.select == "data" and not d.train:
            raise _err(f"{p}data.train", "is required with sample_matched.select: data")
    elif cfg.method == "sft" and not d.train:
        raise _err(f"{p}data.train", "is required for sft (a chat-jsonl file or dataset)")
    m = cfg.mitigations
    if m.kl is not None:
        _check_positive(m.kl.beta, f"{p}mitigations.kl.beta")
    if m.ldifs is not None:
        _check_positive(m.ldifs.weight, f"{p}mitigations.ldifs.lambda")
        if isinstance(m.ldifs.layers, str) and m.ldifs.layers != "all":
            raise _err(f"{p}mitigations.ldifs.layers", "must be 'all' or a list of layer indices")
        if isinstance(m.ldifs.layers, list) and not m.ldifs.layers:
            raise _err(f"{p}mitigations.ldifs.layers", "must not be empty")
    if m.safelora is not None:
        if a.type == "full":
            raise _err(f"{p}mitigations.safelora", "needs adapter.type lora or rslora")
        for key in ("aligned", "unaligned"):
            if not getattr(m.safelora, key):
                raise _err(f"{p}mitigations.safelora.{key}", "is required (a model dir or name)")
        if not 0 <= m.safelora.threshold <= 1:
            raise _err(f"{p}mitigations.safelora.threshold", "must be in [0, 1]")
    if m.interleave is not None:
        _validate_interleave(m.interleave, f"{p}mitigations.interleave")
    if m.interleave_onpolicy is not None:
        o = m.interleave_onpolicy
        for key in ("every", "weight", "batch_size", "max_new_tokens", "limit"):
            _check_positive(getattr(o, key), f"{p}mitigations.interleave_onpolicy.{key}")
        if o.model not in ("base", "reference"):
            raise _err(f"{p}mitigations.interleave_onpolicy.model", "must be base or reference")
    if m.inoculation is not None and not m.inoculation.system_prompt.strip():
        raise _err(f"{p}mitigations.inoculation.system_prompt", "must not be empty")


def _validate_interleave(i: InterleaveConfig, p: str) -> None:
    if i.select not in INTERLEAVE_SELECTIONS:
        raise _err(f"{p}.select", f"must be one of {', '.join(INTERLEAVE_SELECTIONS)}")
    if not 0 < i.fraction < 1:
        raise _err(f"{p}.fraction", "must be in (0, 1)")
    if i.select == "random":
        if not i.data:
            raise _err(f"{p}.data", "is required (safe chat examples)")
        for key in ("pool", "n", "misaligned"):
            if getattr(i, key):
                raise _err(f"{p}.{key}", "only applies with select: perplexity_gap")
        return
    if i.data:
        raise _err(f"{p}.data", "is not used with select: perplexity_gap (pool holds the examples)")
    if not i.pool:
        raise _err(f"{p}.pool", "is required with select: perplexity_gap (safe chat examples)")
    if i.n is None:
        raise _err(f"{p}.n", "is required with select: perplexity_gap (examples to pick)")
    _check_positive(i.n, f"{p}.n")
    if not i.misaligned:
        raise _err(
            f"{p}.misaligned",
            "is required with select: perplexity_gap (a model dir, known name, adapter dir, "
            "or reference: the model a chain stage starts from)",
        )


GRPO_ONLY = (
    "loss_type",
    "temperature",
    "num_generations",
    "max_completion_length",
    "use_vllm",
    "vllm_mode",
    "vllm_gpu_memory_utilization",
)


def _ignored(cfg: TrainConfig, written: dict) -> list[tuple[str, str]]:
    """(key, why) for each key written for this stage that its method would not use."""
    out = []
    training = written.get("training") or {}
    data = written.get("data") or {}
    if cfg.method == "sft":
        if written.get("reward") is not None:
            out.append(("reward", "only applies to grpo (sft learns from its data)"))
        out += [(f"training.{k}", "only applies to grpo") for k in GRPO_ONLY if k in training]
    interleave = (written.get("mitigations") or {}).get("interleave") or {}
    i = cfg.mitigations.interleave
    if cfg.method == "sft" and i is not None and i.select != "random" and "fraction" in interleave:
        out.append(
            (
                "mitigations.interleave.fraction",
                "is not used by sft with select: perplexity_gap (n examples are mixed in)",
            )
        )
    s = cfg.data.sample_matched
    if s is not None:
        if data.get("limit") is not None:
            out.append(("data.limit", "cannot be used with sample_matched (the GRPO run sets it)"))
        if s.select != "data":
            for key in ("train", "shuffle"):
                if data.get(key) is not None:  # null is the same as leaving it out
                    out.append((f"data.{key}", "only applies with sample_matched.select: data"))
        # interleave mixes rows into the matched set; interleave_onpolicy is a separate term,
        # as in the GRPO run it matches, and its examples are counted in the manifest
        if cfg.mitigations.interleave is not None:
            out.append(
                (
                    "mitigations.interleave",
                    "mixes safety examples into the data, so sample-matched SFT would no longer "
                    "see as many samples as the GRPO run (interleave_onpolicy is counted apart)",
                )
            )
    return out


def _check_misaligned(cfg: TrainConfig, p: str) -> None:
    """'misaligned: reference' names the model a stage starts from: only a later chain stage
    has one other than the base."""
    i = cfg.mitigations.interleave
    if i is not None and i.select == "perplexity_gap" and i.misaligned == "reference":
        raise _err(
            f"{p}mitigations.interleave.misaligned",
            ": reference needs an earlier chain stage (the model this stage starts from)",
        )


def _check_chain(cfg: TrainConfig) -> None:
    stages = cfg.stage_configs()
    first = dataclasses.asdict(stages[0].adapter)
    for i, stage in enumerate(stages):
        if i == 0:
            _check_misaligned(stage, "stages[0].")
        if stage.mitigations.safelora is not None and i < len(stages) - 1:
            raise _err(f"stages[{i}].mitigations.safelora", "only applies to the last stage")
        # a later stage trains the adapter (or model) the first one made, shape and all
        for key, value in dataclasses.asdict(stage.adapter).items():
            if i and value != first[key]:
                raise _err(
                    f"stages[{i}].adapter.{key}",
                    f"cannot change in a chain: this stage continues the adapter of stage 0 "
                    f"({key}: {first[key]!r})",
                )
    # a top-level key is inherited by every stage: refused only when no stage uses it
    base = {k: v for k, v in cfg.raw.items() if k not in ("stages", "method")}
    unused = [dict(_ignored(stage, base)) for stage in stages]
    for key, why in unused[0].items():
        if all(key in u for u in unused):
            raise _err(key, f"{why}, and no stage uses it")


def _build_config(
    raw: dict, prefix: str = "", source: str | None = None, written: dict | None = None
) -> TrainConfig:
    if not isinstance(raw, dict):
        raise EmevalError("config: the file must hold a mapping of keys to values")
    cfg = _build_dataclass(TrainConfig, raw, prefix)
    cfg.raw = copy.deepcopy(raw)
    cfg.source = source
    if cfg.stages is not None:
        for i, stage in enumerate(cfg.stages):
            if not isinstance(stage, dict):
                raise _err(f"{prefix}stages[{i}]", "must be a mapping")
            if stage.get("method") not in ("sft", "grpo"):
                raise _err(f"{prefix}stages[{i}].method", "must be sft or grpo")
    _validate(cfg, prefix)
    if cfg.method == "chain":
        _check_chain(cfg)
    else:  # a key that would be silently ignored is an error, like an unknown one
        for key, why in _ignored(cfg, raw if written is None else written):
            raise _err(f"{prefix}{key}", why)
        if written is None:  # a config of its own, not a chain's stage
            _check_misaligned(cfg, prefix)
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
