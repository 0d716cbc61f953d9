"""emeval experiment: grid checking, failure isolation, and one tiny real grid (train + eval +
report) that a second invocation skips; every cell in a process of its own, whose failures and
Ctrl-C surface as from one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from emeval.cli import main
from emeval.errors import EmevalError
from emeval.experiment import Experiment, load_grid

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = {
    "save_every": 1,
    "data": {"limit": 4},
    "adapter": {"type": "lora", "r": 4, "alpha": 8},
    "training": {"learning_rate": 1e-4, "max_steps": 2, "batch_size": 2, "max_length": 96,
                 "threads": 1},
}  # fmt: skip


def write_grid(path: Path, **grid) -> Path:
    path.write_text(yaml.safe_dump(grid))
    return path


def test_shipped_grids_expand(capsys):
    smoke = load_grid(REPO / "experiments" / "smoke.yaml")
    assert smoke.cells and not [c.error for c in smoke.cells if c.error]
    assert {c.method for c in smoke.cells} == {"grpo", "sft", "sft_matched"}
    paper = load_grid(REPO / "experiments" / "paper.yaml")
    assert not [c.error for c in paper.cells if c.error]
    assert len(paper.cells) > len(smoke.cells)
    assert main(["experiment", str(REPO / "experiments" / "smoke.yaml"), "--list"]) == 0
    assert f"{len(smoke.cells)} cells" in capsys.readouterr().out


def test_grid_errors_name_the_key(tmp_path):
    base = {"seeds": [0], "methods": ["sft"], "rewards": ["aesthetic_unpopular"]}
    with pytest.raises(EmevalError, match="grid: rewardz is not a known key"):
        load_grid(write_grid(tmp_path / "g.yaml", **base, rewardz=[]))
    with pytest.raises(EmevalError, match="grid: methods must be among"):
        load_grid(write_grid(tmp_path / "g.yaml", **base | {"methods": ["dpo"]}))
    with pytest.raises(EmevalError, match="list grpo too"):
        load_grid(write_grid(tmp_path / "g.yaml", **base | {"methods": ["sft_matched"]}))
    grid = load_grid(write_grid(tmp_path / "g.yaml", **base), ["evaluation.limit=4", "seeds=[3]"])
    assert grid.evaluation["limit"] == 4 and [c.seed for c in grid.cells] == [3]
    with pytest.raises(EmevalError, match="expected KEY=VALUE"):
        load_grid(write_grid(tmp_path / "g.yaml", **base), ["evaluation.limit"])
    with pytest.raises(EmevalError, match="evaluation.judges is not a known key"):
        load_grid(write_grid(tmp_path / "g.yaml", **base, evaluation={"judges": "x"}))


def test_cells_exclusions_and_dependencies(tmp_path):
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml",
            seeds=[0, 1],
            methods=["grpo", "sft", "sft_matched"],
            rewards=["aesthetic_unpopular", "harmful_medical"],
            mitigations={"none": {}, "kl": {"kl": {"beta": 0.05}}},
            exclude=[{"method": "sft", "mitigation": "kl"}, {"seed": 1, "method": "grpo"}],
            sft_data={"aesthetic_unpopular": "warmup_aesthetic_unpopular"},
            train=TINY_TRAIN,
        )
    )
    names = [c.name for c in grid.cells]
    assert (
        "sft-aesthetic_unpopular-kl-s0" not in names and "grpo-harmful_medical-none-s1" not in names
    )
    assert names[0].startswith("grpo-")  # GRPO runs before the SFT that matches its samples
    matched = next(c for c in grid.cells if c.name == "sft_matched-harmful_medical-kl-s0")
    assert matched.depends_on == "grpo-harmful_medical-kl-s0"
    missing = next(c for c in grid.cells if c.name == "sft-harmful_medical-none-s0")
    assert "sft_data.harmful_medical" in missing.error
    assert grid.in_domain == {"aesthetic_unpopular": "aesthetic", "harmful_medical": "medical"}
    grpo = next(c for c in grid.cells if c.name == "grpo-aesthetic_unpopular-kl-s0")
    assert grpo.config["reward"] == {"name": "aesthetic_unpopular", "grader": "offline"}
    assert grpo.config["mitigations"] == {"kl": {"beta": 0.05}}


def test_failed_cells_are_reported_and_dependants_skip(tmp_path):
    grid = load_grid(
        write_grid(
            tmp_path / "g.yaml",
            seeds=[0],
            methods=["grpo", "sft_matched"],
            rewards=["aesthetic_unpopular"],
            train=TINY_TRAIN,
            per_method={"grpo": {"training": {"num_generations": 1}}},
            evaluation={"baseline": False},
        )
    )
    status = Experiment(grid, tmp_path / "out").run()
    assert status["grpo-aesthetic_unpopular-none-s0"]["state"] == "failed"
    assert (
        "num_generations must be at least 2" in status["grpo-aesthetic_unpopular-none-s0"]["error"]
    )
    matched = status["sft_matched-aesthetic_unpopular-none-s0"]
    assert matched["state"] == "failed" and "did not finish" in matched["error"]
    saved = json.loads((tmp_path / "out" / "status.json").read_text())["cells"]
    assert saved == status
    assert (tmp_path / "out" / "logs" / "grpo-aesthetic_unpopular-none-s0.log").exists()


@pytest.mark.slow
def test_tiny_grid_end_to_end_and_rerun_skips(tmp_path, capfd):
    grid = write_grid(
        tmp_path / "tiny.yaml",
        name="tiny",
        seeds=[0],
        methods=["sft"],
        rewards=["aesthetic_unpopular"],
        mitigations={"none": {}, "broken": {"kl": {"beta": -1}}},
        sft_data={"aesthetic_unpopular": "warmup_aesthetic_unpopular"},
        train=TINY_TRAIN,
        evaluation={"judge": "smollm2-135m-instruct", "in_domain": False, "limit": 1,
                    "max_tokens": 8, "checkpoints": "final", "baseline": False},
    )  # fmt: skip
    out = tmp_path / "out"
    # the broken cell fails, the good one trains, is evaluated and reported: exit 1
    assert main(["experiment", str(grid), "--out", str(out)]) == 1
    cell = "sft-aesthetic_unpopular-none-s0"
    status = json.loads((out / "status.json").read_text())["cells"]
    assert status[cell]["state"] == "done" and status[cell]["new_runs"] == 1
    # the cell trained and evaluated in a process of its own, gone with whatever it held
    pid = status[cell]["pid"]
    assert pid != os.getpid() and not _alive(pid)
    manifest = out / "train" / cell / "emeval-manifest.json"
    results = out / "eval" / cell / "final" / "general" / "results.json"
    assert json.loads(manifest.read_text())["complete"] is True
    assert json.loads(results.read_text())["status"] == "complete"
    # the full merged copy of the adapter is dropped once evaluated
    assert not Path(json.loads(results.read_text())["model"]["local_path"]).exists()
    table = (out / "report" / "comparison.md").read_text()
    assert "aesthetic_unpopular × sft" in table
    stamps = (manifest.stat().st_mtime_ns, results.stat().st_mtime_ns)
    capfd.readouterr()  # cells write to the inherited file descriptors, not sys.stderr

    assert main(["experiment", str(grid), "--out", str(out)]) == 1
    assert f"{cell}: already trained" in capfd.readouterr().err
    assert (manifest.stat().st_mtime_ns, results.stat().st_mtime_ns) == stamps
    rerun = json.loads((out / "status.json").read_text())["cells"][cell]
    assert rerun["new_runs"] == 0 and rerun["pid"] == pid  # nothing left: no process started


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still has a pid; one that is not our child cannot be one of ours to reap
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_a_failure_in_a_cells_process_is_one_line_and_the_grid_goes_on(tmp_path, capfd):
    """The GRPO cell's grader cannot load: that happens in the cell's process, which sends back
    the same one-line message as before; the sample-matched cell that needs it is skipped."""
    grid = write_grid(
        tmp_path / "g.yaml",
        seeds=[0],
        methods=["grpo", "sft_matched"],
        rewards=["aesthetic_unpopular"],
        grader=str(tmp_path / "no-such-judge"),
        train=TINY_TRAIN,
        evaluation={"baseline": False},
    )
    out = tmp_path / "out"
    assert main(["experiment", str(grid), "--out", str(out)]) == 1
    err = capfd.readouterr().err
    cell = "grpo-aesthetic_unpopular-none-s0"
    assert f"{cell}: FAILED (unknown judge" in err and "Traceback" not in err
    status = json.loads((out / "status.json").read_text())["cells"]
    assert status[cell]["state"] == "failed"
    assert status[cell]["error"].startswith("EmevalError: unknown judge")
    assert "did not finish" in status["sft_matched-aesthetic_unpopular-none-s0"]["error"]
    log = Path(status[cell]["log"]).read_text()
    assert "Traceback" in log and "unknown judge" in log  # the details, from the child


@pytest.mark.slow
def test_ctrl_c_stops_the_cell_process_and_the_rerun_resumes(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) while the baseline is generating in its
    own process: one line, exit 130, no process left; the rerun keeps the finished answer."""
    from inspect_ai.log import list_eval_logs, read_eval_log, read_eval_log_sample_summaries

    grid = write_grid(
        tmp_path / "g.yaml",
        seeds=[0],
        methods=["sft"],
        rewards=["aesthetic_unpopular"],
        mitigations={"broken": {"kl": {"beta": -1}}},  # fails before any process: no training
        sft_data={"aesthetic_unpopular": "warmup_aesthetic_unpopular"},
        train=TINY_TRAIN,
        evaluation={"judge": "smollm2-135m-instruct", "in_domain": False, "limit": 3,
                    "samples": 1, "max_tokens": 8},
    )  # fmt: skip
    out = tmp_path / "out"
    command = [sys.executable, "-m", "emeval.cli", "experiment", str(grid), "--out", str(out)]
    # the evaluation generates one answer, then holds the rest until this file exists (never):
    # the signal lands with work certainly left, however slow the machine
    release = tmp_path / "never-created"
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EMEVAL_TEST_HOLD": f"1:{release}"},
        start_new_session=True,  # its own process group, as a terminal gives a command
    )
    logs_dir = out / "eval" / "base" / "general" / "logs"
    deadline = time.time() + 600
    done_before = []
    while time.time() < deadline and proc.poll() is None:
        logs = list_eval_logs(str(logs_dir)) if logs_dir.exists() else []
        if logs:
            done_before = read_eval_log_sample_summaries(logs[0])
            if done_before:
                break
        time.sleep(1)
    assert done_before, "no sample finished before the deadline"
    children = [
        int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ]
    assert children, "the evaluation should run in a child process"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "emeval: interrupted; run the same command again to resume"
    )
    assert "Traceback" not in err
    assert not any(_alive(pid) for pid in children)
    status = (
        json.loads((out / "status.json").read_text())["cells"]
        if (out / "status.json").exists()
        else {}
    )
    assert status.get("base", {}).get("state") != "done"
    first_log = read_eval_log(list_eval_logs(str(logs_dir))[0])
    kept = {
        (s.id, s.epoch): s.output.completion
        for s in first_log.samples or []
        if s.scores and not s.error
    }
    assert len(kept) == 1

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 1, rerun.stderr[-2000:]  # the broken cell, as before
    assert "resuming" in rerun.stdout + rerun.stderr
    assert json.loads((out / "status.json").read_text())["cells"]["base"]["state"] == "done"
    samples = (out / "eval" / "base" / "general" / "samples.jsonl").read_text().splitlines()
    answers = {(s["sample_id"], s["epoch"]): s["answer"] for s in map(json.loads, samples)}
    assert len(answers) == 3
    for key, answer in kept.items():
        assert answers[key] == answer  # the finished answer was not generated again
