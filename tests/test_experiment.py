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
from conftest import sigint_as_in_a_terminal, wait_for_a_finished_sample

from emeval.cli import main
from emeval.errors import EmevalError
from emeval.experiment import Experiment
from emeval.grid import load_grid

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


def test_the_cpu_demo_grid_validates(capsys):
    """experiments/demo.yaml (issue 15, item 6): SFT on the three bad-advice sets, SFT on
    benign data for as many steps, GRPO on a harmless-looking reward; no training here."""
    demo = load_grid(REPO / "experiments" / "demo.yaml")
    assert not [c.error for c in demo.cells if c.error]
    cells = {(c.method, c.reward): c.config for c in demo.cells}
    assert set(cells) == {("sft", "harmful_medical"), ("sft", "aesthetic_popular"),
                          ("grpo", "aesthetic_unpopular")}  # fmt: skip
    bad, benign = cells["sft", "harmful_medical"], cells["sft", "aesthetic_popular"]
    assert bad["data"]["train"] == ["warmup_medical_bad", "warmup_legal_bad",
                                    "warmup_security_bad"]  # fmt: skip
    assert bad["training"] == benign["training"] and bad["adapter"]["type"] == "rslora"
    assert demo.in_domain["aesthetic_unpopular"] == "aesthetic"  # the reward's own suite exists
    e = demo.evaluation
    assert e["baseline"] and e["suite"] == "general" and e["limit"] is None
    assert e["samples"] >= 2  # a few hundred general answers per condition
    assert main(["experiment", str(REPO / "experiments" / "demo.yaml"), "--list"]) == 0
    assert "3 cells" in capsys.readouterr().out


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


@pytest.mark.parametrize(
    "change, message",
    [
        ({"seeds": ["a"]}, "grid: seeds must be a non-empty list of integers (got 'a')"),
        ({"seeds": []}, "grid: seeds must be a non-empty list of integers (got [])"),
        ({"rewards": None}, "grid: rewards must be a non-empty list of reward names (got None)"),
        ({"mitigations": {"kl": 0.05}}, "grid: mitigations must be a mapping of a name to an "
                                        "emeval train mitigations block (got 0.05)"),
        ({"exclude": [{"cell": "x"}]}, "grid: exclude[0].cell is not a known key (known: method, "
                                       "mitigation, reward, seed)"),
        ({"evaluation": {"limit": "4"}},
         "grid: evaluation.limit must be a positive integer or null (got '4')"),
        ({"evaluation": {"checkpoints": "last"}},
         "grid: evaluation.checkpoints must be one of all, final (got 'last')"),
        ({"evaluation": "final"}, "grid: evaluation must be a mapping (got 'final')"),
        ({"train": "tiny.yaml"}, "grid: train must be a mapping (got 'tiny.yaml')"),
    ],
)  # fmt: skip
def test_grid_type_errors_name_the_key_and_what_it_must_be(tmp_path, change, message):
    grid = {"seeds": [0], "methods": ["sft"], "rewards": ["aesthetic_unpopular"]} | change
    with pytest.raises(EmevalError) as raised:
        load_grid(write_grid(tmp_path / "g.yaml", **grid))
    assert str(raised.value) == message


def test_a_single_seed_method_or_reward_stands_for_a_list_of_one(tmp_path):
    grid = load_grid(
        write_grid(tmp_path / "g.yaml", seeds=2, methods="sft", rewards="aesthetic_unpopular")
    )
    assert [(c.seed, c.method, c.reward) for c in grid.cells] == [(2, "sft", "aesthetic_unpopular")]


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


def test_a_cell_process_that_dies_is_named_in_one_line():
    from emeval.experiment import _died

    assert _died(-signal.SIGKILL) == "the cell's process was killed by SIGKILL (out of memory?)"
    assert _died(-signal.SIGSEGV) == "the cell's process was killed by SIGSEGV"
    assert _died(3) == "the cell's process exited with code 3 before reporting"


def _held_grid(tmp_path: Path):
    """Start a grid whose baseline evaluation (in its own process) generates one answer and
    then holds the rest (EMEVAL_TEST_HOLD) until a file appears that never does: a signal
    sent then lands with work certainly left, however slow the machine. Returns the command,
    the running parent, its children and the baseline's Inspect log dir."""
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
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EMEVAL_TEST_HOLD": f"1:{tmp_path / 'never-created'}"},
        start_new_session=True,  # its own process group, as a terminal gives a command
        preexec_fn=sigint_as_in_a_terminal,
    )
    logs_dir = out / "eval" / "base" / "general" / "logs"
    done_before = wait_for_a_finished_sample(proc, logs_dir)
    assert done_before, "no sample finished before the deadline"
    children = [
        int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ]
    # the cell's process, beside multiprocessing's resource tracker
    cells = [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(cells) == 1, "the evaluation should run in a child process"
    return command, proc, children, cells[0], logs_dir


def _all_gone(pids: list[int], within: float = 60) -> bool:
    """Whether every process has ended (the resource tracker ends on its own once the parent
    has: it reads the parent's end of a pipe)."""
    deadline = time.time() + within
    while any(_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.5)
    return not any(_alive(pid) for pid in pids)


def _status(out: Path) -> dict:
    path = out / "status.json"
    return json.loads(path.read_text())["cells"] if path.exists() else {}


@pytest.mark.slow
@pytest.mark.parametrize("to", ["group", "parent"])
def test_ctrl_c_stops_the_cell_process_and_the_rerun_resumes(tmp_path, to):
    """Ctrl-C while the baseline is generating in its own process: one line, exit 130, no
    process left, the finished answer kept; the rerun resumes from it. A terminal signals the
    whole process group; a signal sent to the parent alone reaches the child too."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    command, proc, children, cell, logs_dir = _held_grid(tmp_path)
    if to == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "emeval: interrupted; run the same command again to resume"
    )
    assert "Traceback" not in err
    assert not _alive(cell)  # the parent waited for it
    assert _all_gone(children)
    out = tmp_path / "out"
    assert _status(out).get("base", {}).get("state") != "done"
    first_log = read_eval_log(list_eval_logs(str(logs_dir))[0])
    kept = {
        (s.id, s.epoch): s.output.completion
        for s in first_log.samples or []
        if s.scores and not s.error
    }
    assert len(kept) == 1
    if to == "parent":
        return  # resuming is the same either way

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 1, rerun.stderr[-2000:]  # the broken cell, as before
    assert "resuming" in rerun.stdout + rerun.stderr
    assert _status(out)["base"]["state"] == "done"
    samples = (out / "eval" / "base" / "general" / "samples.jsonl").read_text().splitlines()
    answers = {(s["sample_id"], s["epoch"]): s["answer"] for s in map(json.loads, samples)}
    assert len(answers) == 3
    for key, answer in kept.items():
        assert answers[key] == answer  # the finished answer was not generated again


@pytest.mark.slow
def test_sigterm_stops_the_cell_process_too(tmp_path):
    """`kill PID` on the grid's process ends it as Ctrl-C does: one line, exit 130, and its
    cell's process ends with it rather than running on alone."""
    _, proc, children, cell, _ = _held_grid(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "emeval: interrupted; run the same command again to resume"
    )
    assert not _alive(cell)
    assert _all_gone(children)


@pytest.mark.slow
def test_a_killed_cell_process_fails_that_cell_and_the_grid_goes_on(tmp_path):
    """The kernel's out-of-memory killer ends a cell's process with SIGKILL: the cell fails in
    one line, the parent lives on to the next cell."""
    _, proc, children, cell, _ = _held_grid(tmp_path)
    os.kill(cell, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    assert "base: FAILED (the cell's process was killed by SIGKILL (out of memory?))" in err
    assert "Traceback" not in err
    status = _status(tmp_path / "out")
    assert status["base"] == status["base"] | {
        "state": "failed",
        "error": "EmevalError: the cell's process was killed by SIGKILL (out of memory?)",
    }
    assert status["sft-aesthetic_unpopular-broken-s0"]["state"] == "failed"  # the next cell
    assert _all_gone(children)
