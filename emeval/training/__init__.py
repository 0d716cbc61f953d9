"""Fine-tune models to study emergent misalignment: SFT, GRPO, chains, mitigations.

    from emeval.training import train
    out_dir = train("configs/train/grpo_aesthetic_unpopular.yaml", out="runs/aesthetic")

Heavy imports (torch, TRL, PEFT) happen only when training starts.
"""

from emeval.training.config import TrainConfig, load_config
from emeval.training.data import load_conversations
from emeval.training.rewards import REWARDS, GatedReward


def train(config, out=None, resume=False, overrides=(), progress=None):
    """Run a training config (YAML path, dict or TrainConfig); return the output dir."""
    from emeval.training.pipeline import train as run

    return run(config, out=out, resume=resume, overrides=overrides, progress=progress)


__all__ = ["REWARDS", "GatedReward", "TrainConfig", "load_config", "load_conversations", "train"]
