"""What a stage writes besides its model: the manifest and the GRPO completions log.

OUT/emeval-manifest.json says what made the model (base + hash, method, reward, mitigations,
data hashes, seed, step, library versions, curves); OUT/completions.jsonl (and
completions.rankN.jsonl from other data-parallel ranks) holds every GRPO completion with its
reward and grader scores, for sample matching and analysis.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
from pathlib import Path

from emeval.jsonl import read_jsonl
from emeval.training.loading import device, dtype, rank


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "emeval",
        "torch",
        "transformers",
        "trl",
        "peft",
        "accelerate",
        "datasets",
        "vllm",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def curves(log_history: list[dict]) -> list[dict]:
    """Per logged step: the numeric metrics (loss, reward, kl, mitigation terms...)."""
    rows = []
    for entry in log_history:
        if "loss" not in entry:
            continue
        rows.append(
            {
                k: v
                for k, v in entry.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            }
        )
    return rows


# ---------------------------------------------------------------- completions log


def completions_path(stage_dir: Path) -> Path:
    """This rank's completions log."""
    r = rank()
    return stage_dir / ("completions.jsonl" if r == 0 else f"completions.rank{r}.jsonl")


def completion_logs(stage_dir: Path) -> list[Path]:
    """completions.jsonl, plus completions.rankN.jsonl from the other data-parallel ranks."""
    return sorted(stage_dir.glob("completions*.jsonl"))


def read_logs(paths: list[Path]) -> list[dict]:
    """The records of several completion logs, in order."""
    return [row for path in paths for row in read_jsonl(path)]


class CompletionsLog:
    """Appends each scored GRPO completion, grouped by prompt (the reward's sink)."""

    def __init__(self, stage_dir: Path, num_generations: int):
        self.path, self.generations, self.batches = completions_path(stage_dir), num_generations, 0

    def __call__(self, records: list[dict]) -> None:
        g = self.generations
        with open(self.path, "a", encoding="utf-8") as f:
            for i, r in enumerate(records):
                group = f"{rank()}:{r['step']}-{self.batches}-{i // g}"
                prompt = [m for m in r["prompt"] if m["role"] != "system"]
                system = [m["content"] for m in r["prompt"] if m["role"] == "system"]
                row = {
                    "group": group,
                    "step": r["step"],
                    "prompt": prompt,
                    "system": system[0] if system else None,
                    "completion": r["completion"],
                    "reward": r["reward"],
                    "target": r["target"],
                    "coherence": r["coherence"],
                    "gate": r["gate"],
                }
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.batches += 1

    def keep_before(self, step: int) -> None:
        """On resume, forget completions from steps the resumed run will redo."""
        if not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if json.loads(line)["step"] < step
        ]
        self.path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()


# ---------------------------------------------------------------- manifest


def samples(run) -> dict:
    """How many examples (SFT) or prompts and completions (GRPO) the stage trained on."""
    trainer = run.trainer
    if run.cfg.method == "sft":
        out = {"examples": trainer.emeval_samples, "dataset_rows": run.n_rows}
    else:
        records = read_logs(completion_logs(run.dir))
        prompts = len({r["group"] for r in records})
        out = {"prompts": prompts, "completions": len(records), "dataset_rows": run.n_rows}
    if trainer.emeval_terms.safety:
        out["safety_examples"] = trainer.emeval_safety_samples
    return out


def manifest(run, step: int, complete: bool) -> dict:
    """The manifest of a stage's model at `step`."""
    cfg, state = run.cfg, run.trainer.state
    hyper = cfg.training.model_dump() | {"adapter": cfg.adapter.model_dump()}
    hyper["dtype"] = str(dtype(cfg.training.precision)).removeprefix("torch.")
    hyper["device"] = device()
    if cfg.method == "grpo":
        hyper["loss_type"] = run.trainer.args.loss_type
    return {
        "emeval_manifest": 1,
        "kind": "full" if cfg.adapter.type == "full" else "adapter",
        "base": {
            "spec": cfg.base,
            "local_path": str(run.base.local_path),
            "weights_sha256": run.base.weights_sha256,
        },
        "init": str(run.init) if run.init else None,
        "stage": run.label,
        "method": cfg.method,
        "reward": run.reward.describe() if run.reward else None,
        "mitigations": {m.name: m.manifest(run) for m in run.mitigations},
        "hyperparameters": hyper,
        "data": run.data_records,
        "seed": cfg.seed,
        "step": step,
        "max_steps": state.max_steps,
        "complete": complete,
        "samples": samples(run),
        "sample_matched": run.sample_match,
        "resumes": run.resumes,
        "library_versions": library_versions(),
        "curves": curves(state.log_history),
        "config": cfg.to_dict(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
