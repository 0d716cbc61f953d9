"""Where a stage runs and what it loads: rank, device, dtype, tokenizer, the model to train.

The model a stage trains is the base model with a new LoRA adapter, the previous chain
stage's adapter continued, or (adapter.type: full) all the weights of the base or of the
previous stage's model. Heavy imports (torch, transformers, PEFT) happen inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path


def rank() -> int:
    """This process's rank under `accelerate launch` / torchrun (0 when run alone)."""
    return int(os.environ.get("RANK", "0"))


def device() -> str:
    import torch

    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"


def dtype(precision: str):
    import torch

    if precision == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if cuda_bf16 else "fp32"
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def lora_config(a):
    """PEFT's LoraConfig for an `adapter:` section."""
    from peft import LoraConfig

    return LoraConfig(
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules=a.target_modules,
        use_rslora=a.type == "rslora",
        task_type="CAUSAL_LM",
    )


def load_tokenizer(model_dir: Path):
    """The tokenizer, with the end-of-sequence token as padding where it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_merged(model_dir: Path, adapter: Path | None = None):
    """A model for inference only: model_dir, with a PEFT adapter merged in if given."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model


def load_trainable(cfg, base_dir: Path, init: Path | None):
    """(model, PEFT config for the trainer to add or None, the dir its weights came from)."""
    from transformers import AutoModelForCausalLM

    full = cfg.adapter.type == "full"
    source = init if (full and init) else base_dir
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype(cfg.training.precision), use_safetensors=True
    )
    if full:
        return model, None, source
    from peft import PeftModel

    if init is not None:  # a later stage trains on the earlier stage's adapter
        model = PeftModel.from_pretrained(model, init, is_trainable=True)
        # the saved config names the base by known name; PEFT wants a path while training
        model.peft_config["default"].base_model_name_or_path = str(base_dir)
        return model, None, source
    return model, lora_config(cfg.adapter), source


def keep_reference_adapter(model) -> None:
    """A continued adapter's reference is its starting copy, kept as adapter 'ref'."""
    model.add_adapter("ref", model.peft_config["default"])
    for name, param in model.named_parameters():
        if ".default." in name:
            model.get_parameter(name.replace(".default.", ".ref.")).data.copy_(param.data)
    model.set_adapter("default")


def frozen_copy(model_source: Path, like):
    """A frozen copy of the weights in model_source, as the reference of full fine-tuning."""
    from transformers import AutoModelForCausalLM

    frozen = AutoModelForCausalLM.from_pretrained(
        model_source, dtype=like.dtype, use_safetensors=True
    ).eval()
    frozen.requires_grad_(False)
    return frozen.to(device())
