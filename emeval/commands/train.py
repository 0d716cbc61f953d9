"""`emeval train CONFIG.yaml [--out DIR] [--resume] [--set KEY=VALUE ...]`."""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model with SFT, GRPO or a chain of them (needs emeval[train])",
        description="Train as CONFIG says (see configs/train/). Writes a PEFT adapter or HF model "
        "dir that `emeval run` evaluates, with emeval-manifest.json and checkpoints every "
        "save_every steps.",
    )
    p.add_argument("config", type=Path, help="training config (YAML)")
    p.add_argument("--out", type=Path, help="output dir (default: the config's output_dir)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set training.max_steps=2 (repeatable)",
    )
    p.set_defaults(
        func=train_command,
        resume_hint="add --resume to the same command to continue from its last checkpoint",
    )


def train_command(args) -> int:
    from emeval.training import train

    train(args.config, out=args.out, resume=args.resume, overrides=args.overrides)
    return 0
