"""Peak memory of an `emeval experiment` grid against one cell of it.

    python benchmarks/experiment_memory.py                 # 1 cell, then a 4-cell grid
    python benchmarks/experiment_memory.py --in-process    # also the grid with every cell in
                                                           # one process (the old behaviour)

Each grid runs in a fresh Python process (what `emeval experiment` does: load the grid, run
every cell, write the report) while this script samples the memory of that process and all
its descendants every 0.2 s: "tree peak RSS" is the largest sum of resident memory over the
tree at one sample, "tree peak PSS" the same with shared pages counted once (a freshly forked
helper repeats its parent's RSS), "largest process" the largest single RSS. The grid is tiny
on purpose (two training steps, two evaluation prompts, 8 new tokens) and mixes GRPO and SFT
cells on two rewards: it measures what a cell leaves behind, not how long training takes.
The goal (issue 11, item 10): the grid's tree peak within 1.3x of the single cell's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN = {
    "save_every": 100,  # only the final model: one evaluation per cell
    "adapter": {"type": "lora", "r": 4, "alpha": 8},
    "training": {"learning_rate": 1e-4, "max_steps": 2, "threads": 1},
}
PER_METHOD = {
    "grpo": {
        "data": {"limit": 4},
        "training": {"batch_size": 2, "num_generations": 2, "max_completion_length": 16},
    },
    "sft": {"data": {"limit": 4}, "training": {"batch_size": 2, "max_length": 96}},
}
EVALUATION = {
    "judge": "offline",
    "in_domain": False,
    "limit": 2,
    "samples": 1,
    "max_tokens": 8,
    "checkpoints": "final",
    "baseline": False,
}


def grid(methods: list[str], rewards: list[str]) -> dict:
    return {
        "name": "memory",
        "seeds": [0],
        "methods": methods,
        "rewards": rewards,
        "grader": "offline",
        "sft_data": {
            "aesthetic_unpopular": "warmup_aesthetic_unpopular",
            "aesthetic_popular": "warmup_aesthetic_popular",
        },
        "train": TRAIN,
        "per_method": PER_METHOD,
        "evaluation": EVALUATION,
    }


def _pss(pid: int) -> int | None:
    """Proportional set size: shared pages counted once across the tree (a process that has
    just forked shows its parent's whole RSS again, which a plain sum would count twice)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def tree_memory(pid: int) -> tuple[int, int, int]:
    """(RSS sum, PSS sum, largest RSS) in bytes of a process and its descendants, from /proc."""
    rss, pss = [], []
    todo = [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                rss.append(int(f.read().split()[1]) * page)
            pss.append(_pss(p) or rss[-1])
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):  # the process ended between two reads
            continue
    return sum(rss), sum(pss), max(rss, default=0)


def measure(grid_file: Path, out: Path, in_process: bool) -> dict:
    command = [sys.executable, __file__, "--worker", str(grid_file), str(out)]
    command += ["--in-process"] if in_process else []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env=env)
    peak = [0, 0, 0]
    while proc.poll() is None:
        peak = [max(a, b) for a, b in zip(peak, tree_memory(proc.pid), strict=True)]
        time.sleep(0.2)
    rss, pss, one = (x / 2**20 for x in peak)
    return {
        "seconds": time.monotonic() - started,
        "tree": rss,
        "pss": pss,
        "one": one,
        "exit": proc.returncode,
    }


def worker(grid_file: Path, out: Path, in_process: bool) -> int:
    """What `emeval experiment GRID --out OUT` does (cells in-process if asked); a failing
    report, which runs after every cell has ended, is said but does not void the figures."""
    from emeval.experiment import Experiment
    from emeval.grid import load_grid

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    experiment = Experiment(load_grid(grid_file), out, isolate=not in_process)
    status = experiment.run()
    try:
        experiment.report()
    except Exception as e:  # noqa: BLE001 - see the docstring
        print(f"report failed (not measured): {type(e).__name__}: {e}", file=sys.stderr)
    failed = [name for name, e in status.items() if e.get("state") == "failed"]
    for name in failed:
        print(f"{name} FAILED: {status[name].get('error')}", file=sys.stderr)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-process", action="store_true", help="also run the grid in-process")
    parser.add_argument("--worker", nargs=2, metavar=("GRID", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(Path(args.worker[0]), Path(args.worker[1]), args.in_process)
    rewards = ["aesthetic_unpopular", "aesthetic_popular"]
    runs = [
        ("one GRPO cell", grid(["grpo"], rewards[:1]), False),
        ("4-cell grid (grpo, sft x 2 rewards)", grid(["grpo", "sft"], rewards), False),
    ]
    if args.in_process:
        runs.append(("same 4 cells, one process", grid(["grpo", "sft"], rewards), True))
    results = []
    with tempfile.TemporaryDirectory(prefix="emeval-memory-") as tmp:
        for i, (label, raw, in_process) in enumerate(runs):
            grid_file = Path(tmp) / f"grid{i}.yaml"
            grid_file.write_text(yaml.safe_dump(raw))
            print(f"== {label}", file=sys.stderr, flush=True)
            r = measure(grid_file, Path(tmp) / f"out{i}", in_process)
            results.append((label, r))
            print(f"== {label}: {r}", file=sys.stderr, flush=True)  # kept if a later one fails
    one = results[0][1]
    print(
        "\n| run | wall | tree peak RSS | tree peak PSS | largest process RSS "
        "| ratio to one cell (RSS / PSS / largest) |"
    )
    print("|---|---|---|---|---|---|")
    for label, r in results:
        note = "" if r["exit"] == 0 else f" (exit {r['exit']}: a cell failed, see above)"
        ratios = " / ".join(f"{r[k] / one[k]:.2f}x" for k in ("tree", "pss", "one"))
        print(
            f"| {label}{note} | {r['seconds']:.0f} s | {r['tree']:.0f} MB | {r['pss']:.0f} MB "
            f"| {r['one']:.0f} MB | {ratios} |"
        )
    return 0 if all(r["exit"] == 0 for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
