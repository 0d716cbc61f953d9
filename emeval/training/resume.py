"""--resume: what may change between a run and its continuation, and the refusals that keep
a resumed run from silently restarting or changing."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from emeval.errors import EmevalError
from emeval.rundir import TRAIN_CONFIG, read_manifest
from emeval.training.config import TrainConfig

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


def check_resume(out: Path, cfg: TrainConfig, stages, dirs) -> dict:
    """Refuse a --resume that would silently restart or change the run; return the allowed
    changes (recorded in the manifest)."""
    changes = {}
    config_path = out / TRAIN_CONFIG
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
