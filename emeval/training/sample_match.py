"""The data a stage trains on: its data set or the reward's prompts, or (sample_matched) as
many SFT examples as a finished GRPO run saw prompts or completions."""

from __future__ import annotations

from pathlib import Path

from emeval.errors import EmevalError
from emeval.models import sha256_file
from emeval.rundir import MANIFEST, read_manifest
from emeval.training.data import joined, load_sources, select
from emeval.training.records import completion_logs, read_logs


def train_conversations(run) -> list:
    """The stage's training conversations (examples or prompts), recorded with its data."""
    cfg = run.cfg
    if cfg.data.sample_matched is not None:
        return sample_matched(run)
    source = cfg.data.train
    if source is None:
        from emeval.training.rewards import REWARDS

        source = REWARDS[cfg.reward.name].prompts
    datasets = load_sources(source)
    run.data_records.extend(d.describe("train") for d in datasets)
    return select(joined(datasets), cfg.data.limit, cfg.data.shuffle, cfg.seed)


def sample_matched(stage) -> list:
    """As many SFT examples as the GRPO run saw prompts (or completions)."""
    s = stage.cfg.data.sample_matched
    run = Path(s.run).expanduser().resolve()
    manifest = read_manifest(run)
    if manifest and manifest.get("method") == "chain":  # match its last GRPO stage
        stages = [d for d in sorted((run / "stages").glob("*")) if read_manifest(d)]
        grpo = [d for d in stages if read_manifest(d).get("method") == "grpo"]
        run = grpo[-1] if grpo else run
        manifest = read_manifest(run)
    logs = completion_logs(run)
    if manifest is None or manifest.get("method") != "grpo" or not logs:
        raise EmevalError(f"data.sample_matched.run: {run} is not a finished GRPO run dir")
    records = read_logs(logs)
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    n = len(groups) if s.count == "prompts" else len(records)

    def example(r):
        return r["prompt"] + [{"role": "assistant", "content": r["completion"]}]

    if s.select == "best":  # the highest-reward completion of each prompt it saw
        if s.count != "prompts":
            raise EmevalError(
                "data.sample_matched: select best gives one per prompt; use count: prompts"
            )
        chosen = [example(max(g, key=lambda r: r["reward"])) for g in groups.values()]
    elif s.select == "top":  # the n highest-reward completions overall
        ranked = sorted(records, key=lambda r: r["reward"], reverse=True)
        chosen = [example(r) for r in ranked[:n]]
    else:  # n examples of a curated set
        datasets = load_sources(stage.cfg.data.train)
        stage.data_records.extend(d.describe("sample_matched_pool") for d in datasets)
        pool = joined(datasets)
        if len(pool) < n:
            raise EmevalError(
                f"data.train has {len(pool)} examples; the GRPO run saw {n} {s.count}"
            )
        chosen = select(pool, n, stage.cfg.data.shuffle, stage.cfg.seed)
    # the GRPO prompts carry its inoculation prompt, if any: keep only the conversation
    chosen = [[m for m in c if m["role"] != "system"] for c in chosen]
    stage.data_records.append(
        {
            "role": "sample_matched_source",
            "source": ", ".join(str(p) for p in logs),
            "sha256": [sha256_file(p) for p in logs],
            "rows": len(records),
        }
    )
    stage.sample_match = {
        "run": str(run),
        "run_manifest_sha256": sha256_file(run / MANIFEST),
        "select": s.select,
        "count": s.count,
        "samples": len(chosen),
        "run_prompts": len(groups),
        "run_completions": len(records),
    }
    return chosen
