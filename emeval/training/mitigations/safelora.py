"""safelora: after training, each LoRA update B@A whose cosine similarity with its projection
onto the alignment subspace (C = V V^T / ||V||_F, V = W_aligned - W_unaligned) is below the
threshold is replaced by that projection (B <- C B). Applied to every exported checkpoint; the
resume state keeps the raw adapter. Before anything trains, the adapter's modules are checked
against both models (a naming mismatch would make it a silent no-op).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from emeval.errors import EmevalError
from emeval.training.mitigations.base import Mitigation
from emeval.training.sections import Number, Section, Str
from emeval.yaml_files import ConfigProblem


class SafeLoRAConfig(Section):
    aligned: Str = ""  # e.g. the instruct model
    unaligned: Str = ""  # e.g. its base model
    threshold: Number = 0.3  # layers whose update has cosine < threshold with its projection


class SafeLoRA(Mitigation):
    name = "safelora"
    Config = SafeLoRAConfig
    last_stage_only = True  # it edits the exported adapter, which a later stage would train on
    sides: dict | None = None  # the two models, resolved and checked by prepare
    report: dict | None = None  # what the last projection changed

    def check(self, stage) -> None:
        if stage.adapter.type == "full":
            raise ConfigProblem("", "needs adapter.type lora or rslora")
        for key in ("aligned", "unaligned"):
            if not getattr(self.config, key):
                raise ConfigProblem(key, "is required (a model dir or name)")
        if not 0 <= self.config.threshold <= 1:
            raise ConfigProblem("threshold", "must be in [0, 1]")

    def prepare(self, stage, base, progress) -> None:
        """Resolve the two models and check that the adapter's modules can be projected."""
        if self.sides is not None:
            return
        from emeval.training.loading import lora_config

        s = self.config
        aligned = weights_dir(s.aligned, "aligned")
        unaligned = weights_dir(s.unaligned, "unaligned")
        modules = lora_module_shapes(base.local_path, lora_config(stage.adapter))
        problems = safelora_check(modules, aligned, unaligned)
        if problems:
            progress(
                f"safelora: {len(problems)} of {len(modules)} LoRA modules cannot be projected "
                f"(e.g. {next(iter(problems.values()))}); listed in the manifest"
            )
        self.sides = {"aligned": aligned, "unaligned": unaligned, "unprojectable": problems}

    def after_save(self, run, out: Path) -> None:
        sides = self.sides
        self.report = safelora_project(
            out, sides["aligned"], sides["unaligned"], self.config.threshold
        )

    def manifest(self, run) -> dict:
        out = super().manifest(run)
        if self.report is not None:
            out["report"] = self.report | {"unprojectable": self.sides["unprojectable"]}
        return out


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

    def get(self, name: str):  # a float32 tensor, or None
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
    import torch
    import torch.nn.functional as F
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
