"""A stage's arguments for TRL's SFTConfig or GRPOConfig, from its `training:` section and
what its mitigations add (e.g. kl's beta under GRPO)."""

from __future__ import annotations

from pathlib import Path

from emeval.training.loading import dtype


def trainer_args(cfg, stage_dir: Path, extra: dict):
    """SFTConfig or GRPOConfig; `extra` (the mitigations' arguments) wins over the defaults."""
    import torch

    t = cfg.training
    precision = dtype(t.precision)
    save = cfg.save_every > 0
    common = dict(
        output_dir=str(stage_dir / "trainer"),
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
        bf16=precision == torch.bfloat16,
        fp16=precision == torch.float16,
        gradient_checkpointing=t.gradient_checkpointing,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )
    if cfg.method == "sft":
        from trl import SFTConfig

        sft = dict(
            per_device_train_batch_size=t.batch_size,
            max_length=t.max_length,
            completion_only_loss=True,
            packing=False,
        )
        return SFTConfig(**common | sft | extra)
    from trl import GRPOConfig

    grpo = dict(
        per_device_train_batch_size=t.batch_size * t.num_generations,
        num_generations=t.num_generations,
        max_completion_length=t.max_completion_length,
        temperature=t.temperature,
        beta=0.0,  # no KL term unless the kl mitigation sets one
        loss_type=t.loss_type,
        log_completions=False,
    )
    if t.use_vllm:
        grpo |= {
            "use_vllm": True,
            "vllm_mode": t.vllm_mode,
            "vllm_gpu_memory_utilization": t.vllm_gpu_memory_utilization,
        }
    return GRPOConfig(**common | grpo | extra)
