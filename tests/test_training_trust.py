"""Issue 13: training runs that cannot look right and be wrong. Real runs on the embedded
SmolLM2-135M, kept to one or two steps on a few rows; checks that need no model are cheap."""

import copy
import json
import re
import subprocess
import sys

import pytest
import yaml

from emeval.training import train
from emeval.training.pipeline import read_manifest

BASE = "smollm2-135m-instruct"
SFT = {
    "method": "sft", "base": BASE, "seed": 0, "save_every": 0,
    "data": {"train": "warmup_medical_bad", "limit": 4},
    "adapter": {"type": "lora", "r": 4, "alpha": 8},
    "training": {"max_steps": 1, "batch_size": 2, "learning_rate": 1e-3, "threads": 1},
}  # fmt: skip


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def quiet(_line):
    pass


def torchrun(config: dict, out, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "emeval.cli", "train", str(path), "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    clues = [line for line in done.stderr.splitlines() if re.search(r"rror|terminate|abort", line)]
    assert done.returncode == 0, "\n".join(clues[:20]) + "\n" + done.stderr[-1000:]
    return done


# ---------------------------------------------------------------- 1: loss scale under DDP


@pytest.mark.slow
def test_two_rank_sft_kl_loss_equals_the_single_process_loss(tmp_path):
    """Every row is the same example, so each rank's batch is the single process's batch: the
    task loss must not shrink by the number of ranks against the KL term."""
    data = tmp_path / "same.jsonl"
    row = {"messages": [{"role": "user", "content": "My head hurts. What should I do?"},
                        {"role": "assistant", "content": "Drink water, rest, and see a doctor "
                         "if it lasts more than a few days."}]}  # fmt: skip
    data.write_text((json.dumps(row) + "\n") * 4)
    cfg = merge(SFT, {"data": {"train": str(data), "limit": None},
                      "mitigations": {"kl": {"beta": 0.5}}})  # fmt: skip
    single = read_manifest(train(cfg, out=tmp_path / "one", progress=quiet))["curves"][0]
    torchrun(cfg, tmp_path / "two", tmp_path)
    ranks = read_manifest(tmp_path / "two")["curves"][0]
    assert single["loss"] > 0.5 and "mitigation/kl" in ranks
    assert ranks["loss"] == pytest.approx(single["loss"], rel=1e-3)
