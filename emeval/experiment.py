"""`emeval experiment GRID.yaml`: train a grid of conditions, evaluate every checkpoint, report.

The grid (seeds x methods x rewards x mitigations on one base model) is read into cells by
emeval/grid.py; the experiment dir's layout is emeval/rundir.py's ExperimentDir. Each cell
trains with emeval.training.train into OUT/train/<cell>/, then every saved checkpoint is
evaluated with one suite and judge into OUT/eval/<cell>/<step>/<suite>/, next to a
condition.json naming its grid coordinates. Running the grid again skips what is done
(a trained cell has a complete manifest, an evaluated checkpoint a results.json) and resumes
what is not; a cell that fails is logged to OUT/logs/<cell>.log and the others go on.
OUT/status.json says where each cell stands; OUT/report/ is `emeval report OUT/eval`.

Each cell (and the baseline) trains and evaluates in a child process of its own: whatever a
cell leaves behind (models, trainers, caches, allocator arenas) goes when its process ends,
so a grid's peak memory stays that of its largest cell instead of growing cell by cell. The
parent only keeps the books (status.json, logs) and never imports torch.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import yaml

from emeval.capability import BUNDLED, FOLDER, read_result
from emeval.errors import EmevalError
from emeval.grid import Cell, Grid
from emeval.jsonl import read_json_or_none
from emeval.rundir import (
    RESULTS,
    TRAIN_CONFIG,
    ExperimentDir,
    read_manifest,
    results_file,
    trained_models,
    write_condition,
    write_json_atomically,
)

DEFAULT_OUT_ROOT = Path("reports") / "experiments"


def _say(message: str) -> None:
    print(f"emeval experiment: {message}", file=sys.stderr, flush=True)


# Ctrl-C: a child still running this long after the parent saw it is sent SIGINT itself (the
# signal went to the parent alone), and one still running STOP_GRACE_S later is terminated.
FORWARD_AFTER_S = 10.0
STOP_GRACE_S = 30.0


def _child_main(conn, grid: Grid, out: Path, job: str, cell: Cell | None) -> None:
    """Entry point of a cell's process: do the work, send back how it went, never raise.

    Exceptions travel as text (type name, first line, traceback): not every exception from
    torch or Inspect pickles, and the parent only needs the words."""
    try:
        experiment = Experiment(grid, out, isolate=False)
        fields = experiment._baseline_work() if job == "baseline" else experiment._cell_work(cell)
        conn.send(("done", fields))
    except KeyboardInterrupt:
        # Ctrl-C (the terminal's, or forwarded by the parent), which says it in one line
        sys.exit(130)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent as text
        conn.send(("failed", type(e).__name__, _first_line(e), _traceback_text(e)))
    finally:
        conn.close()


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _traceback_text(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def _died(exitcode: int | None) -> str:
    """Why a cell's process ended without a word, in one line."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if -exitcode == signal.SIGKILL else ""
        return f"the cell's process was killed by {name}{hint}"
    return f"the cell's process exited with code {exitcode} before reporting"


class Experiment:
    def __init__(self, grid: Grid, out: Path, isolate: bool = True):
        """isolate: run each cell in a child process (the default; False runs them in this
        process, which grows with every cell and is kept for benchmarks/experiment_memory.py
        and the cells' own processes)."""
        self.grid, self.out, self.isolate = grid, out, isolate
        self.dir = ExperimentDir(out)
        self.status: dict = (read_json_or_none(self.dir.status) or {}).get("cells", {})

    # -------------------------------------------------------- bookkeeping

    def _save_status(self) -> None:
        data = {"grid": self.grid.source, "name": self.grid.name, "cells": self.status}
        write_json_atomically(self.dir.status, data)

    def _mark(self, cell: str, **fields) -> None:
        self.status[cell] = self.status.get(cell, {}) | fields
        self._save_status()

    # -------------------------------------------------------- child processes

    def _in_child(self, name: str, job: str, cell: Cell | None = None) -> None:
        """Run a job (the baseline or one cell) in a fresh process and record how it went."""
        if not self.isolate:
            try:
                work = self._baseline_work if job == "baseline" else lambda: self._cell_work(cell)
                self._mark(name, state="done", error=None, **work())
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one failed cell must not stop the grid
                self._fail(name, type(e).__name__, _first_line(e), _traceback_text(e))
            return
        # spawn, not fork: a forked child would share (and copy on write) whatever this
        # process holds, and forking a process with threads is unsafe
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        child = ctx.Process(
            target=_child_main,
            args=(send, self.grid, self.out, job, cell),
            name=f"emeval-{name}",
        )
        child.start()
        send.close()  # the child holds the only writer: its exit ends recv() with EOFError
        try:
            try:
                reply = receive.recv()
            except EOFError:
                reply = None
            child.join()
        except KeyboardInterrupt:
            self._stop(child)
            raise
        finally:
            receive.close()
        if reply is None:
            if child.exitcode == 130:  # the child saw Ctrl-C before this process did
                raise KeyboardInterrupt
            message = _died(child.exitcode)
            self._fail(name, "EmevalError", message, message + "\n")
        elif reply[0] == "done":
            self._mark(name, state="done", error=None, **reply[1])
        else:
            self._fail(name, *reply[1:])

    @staticmethod
    def _stop(child) -> None:
        """Ctrl-C. A terminal sends SIGINT to the whole process group, the child included,
        which then saves what it has and exits: a second SIGINT could cut that short, so it
        is forwarded only when the child is still running a while later (the signal was sent
        to this process alone). Whatever still runs after that is ended."""
        child.join(FORWARD_AFTER_S)
        if child.is_alive():
            try:
                os.kill(child.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            child.join(STOP_GRACE_S)
        if child.is_alive():
            child.terminate()
            child.join(5)
        if child.is_alive():
            child.kill()
            child.join()

    # -------------------------------------------------------- evaluation

    def _suites(self, reward: str | None, final: bool) -> list[str]:
        e = self.grid.evaluation
        suites = [e["suite"]]
        domain = self.grid.in_domain.get(reward) if reward else None
        if e["in_domain"] and domain and (final or e["intermediate_in_domain"]):
            suites.append(domain)
        return suites

    @staticmethod
    def _evaluated(eval_dir: Path, suite: str) -> bool:
        out = ExperimentDir.suite_run(eval_dir, suite)
        return bool(results_file(out)) and (out / RESULTS).exists()

    def evaluate(self, model: str, eval_dir: Path, suites: list[str], condition: dict) -> int:
        """Evaluate one model on each suite unless done; return how many runs were made."""
        from emeval.models import drop_merged_copy
        from emeval.runner import RunSettings, run

        e = self.grid.evaluation
        write_condition(eval_dir, condition)
        made, written = 0, []
        for suite in suites:
            if self._evaluated(eval_dir, suite):
                continue
            seed = condition.get("seed") or 0
            settings = RunSettings.from_evaluation(e, model, suite, seed)
            written += run(settings, out=ExperimentDir.suite_run(eval_dir, suite))
            made += 1
        task = self._capability_task(condition.get("final"))
        if task and not read_result(eval_dir / FOLDER):
            from emeval.capability import run_check

            # not counted in `made`, the `emeval run` runs; a grid's limit (a quick check)
            # cuts its questions too unless capability_limit says otherwise
            limit = e["capability_limit"] or e["limit"]
            written.append(run_check(model, eval_dir / FOLDER, task=task, limit=limit))
        if written:
            # a grid merges each adapter checkpoint into a full copy of its base: used, dropped
            local = (read_json_or_none(written[-1]) or {}).get("model", {}).get("local_path")
            drop_merged_copy(local)
        return made

    def _capability_task(self, final: bool) -> str | None:
        """What measures a final checkpoint's benign capability: None when switched off."""
        chosen = self.grid.evaluation["capability"]
        if not final or chosen in (False, None):
            return None
        return BUNDLED if chosen is True else str(chosen)

    def _baseline_condition(self) -> dict:
        return {
            "base": self.grid.base,
            "method": "base",
            "reward": "none",
            "mitigations": [],
            "seed": None,
            "step": 0,
            "final": True,
        }

    def _baseline_work(self) -> dict:
        started = time.monotonic()
        rewards = sorted({c.reward for c in self.grid.cells})
        suites = list(dict.fromkeys(s for r in rewards for s in self._suites(r, True)))
        condition = self._baseline_condition()
        self.evaluate(self.grid.base, self.dir.eval("base"), suites, condition)
        return {"seconds": round(time.monotonic() - started), "pid": os.getpid()}

    def baseline(self) -> None:
        name = "base"
        if self.status.get(name, {}).get("state") == "done":
            return
        _say(f"{name}: evaluating the untrained {self.grid.base}")
        self._in_child(name, "baseline")

    # -------------------------------------------------------- cells

    def _fail(self, name: str, kind: str, message: str, details: str) -> None:
        log = self.dir.log(name)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(details, encoding="utf-8")
        self._mark(name, state="failed", error=f"{kind}: {message}"[:300], log=str(log))
        _say(f"{name}: FAILED ({message[:200]}); details in {log}")

    def run_cell(self, cell: Cell) -> None:
        if cell.error:
            error = EmevalError(cell.error)
            self._fail(cell.name, "EmevalError", cell.error, _traceback_text(error))
            return
        if cell.depends_on and self.status.get(cell.depends_on, {}).get("state") != "done":
            self._mark(
                cell.name,
                state="failed",
                error=f"needs cell {cell.depends_on}, which did not finish",
            )
            _say(f"{cell.name}: skipped, {cell.depends_on} did not finish")
            return
        if self._finished(cell):
            # nothing left to do: not worth a process that would import torch to find that out
            _say(f"{cell.name}: already trained and evaluated")
            self._mark(cell.name, state="done", error=None, new_runs=0)
            return
        self._in_child(cell.name, "cell", cell)

    def _finished(self, cell: Cell) -> bool:
        """Whether the cell is trained with its current config and every checkpoint evaluated."""
        train_dir = self.dir.train(cell.name)
        manifest = read_manifest(train_dir)
        previous = train_dir / TRAIN_CONFIG
        if not (manifest and manifest.get("complete") and previous.exists()):
            return False
        if yaml.safe_load(previous.read_text()) != self._config(cell):
            return False  # the cell's process says why, in one line
        done = trained_models(train_dir, self.grid.evaluation["checkpoints"])
        return all(
            self._evaluated(self.dir.eval(cell.name, label), suite)
            for label, _, _, final in done
            for suite in self._suites(cell.reward, final)
        ) and all(
            read_result(self.dir.eval(cell.name, label) / FOLDER)
            for label, _, _, final in done
            if self._capability_task(final)
        )

    def _cell_work(self, cell: Cell) -> dict:
        """Train one cell and evaluate its checkpoints (in the cell's own process)."""
        train_dir = self.dir.train(cell.name)
        started = time.monotonic()
        self._train(cell, train_dir)
        trained = time.monotonic()
        made = 0
        which = self.grid.evaluation["checkpoints"]
        for label, path, step, final in trained_models(train_dir, which):
            _say(f"{cell.name}: evaluating {label}")
            made += self.evaluate(
                str(path),
                self.dir.eval(cell.name, label),
                self._suites(cell.reward, final),
                cell.condition(self.grid.base, step, final),
            )
        return {
            "train_dir": str(train_dir),
            "train_seconds": round(trained - started),
            "eval_seconds": round(time.monotonic() - trained),
            "new_runs": made,
            "pid": os.getpid(),  # which process did the work (the parent's own when not isolated)
        }

    def _config(self, cell: Cell) -> dict:
        config = copy.deepcopy(cell.config)
        if cell.depends_on:
            config["data"]["sample_matched"]["run"] = str(self.dir.train(cell.depends_on))
        return config

    def _train(self, cell: Cell, train_dir: Path) -> None:
        from emeval.training import train

        manifest = read_manifest(train_dir)
        config = self._config(cell)
        previous = train_dir / TRAIN_CONFIG
        if previous.exists() and yaml.safe_load(previous.read_text()) != config:
            raise EmevalError(
                f"{train_dir} was trained with another config; remove it or use another --out"
            )
        if manifest and manifest.get("complete"):
            _say(f"{cell.name}: already trained")
            return
        _say(f"{cell.name}: training ({config['method']})")
        train(
            config,
            out=train_dir,
            resume=train_dir.exists(),
            progress=lambda line: _say(f"{cell.name}: {line}"),
        )

    # -------------------------------------------------------- everything

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.dir.grid_copy.write_text(yaml.safe_dump(self.grid.raw, sort_keys=False))
        if self.grid.evaluation["baseline"]:
            self.baseline()
        for i, cell in enumerate(self.grid.cells, 1):
            _say(f"[{i}/{len(self.grid.cells)}] {cell.name}")
            self.run_cell(cell)
        return self.status

    def report(self) -> Path | None:
        from emeval.reporting import find_runs, gather, write_report

        if not self.dir.evals.exists():
            return None
        try:
            runs = find_runs([self.dir.evals])
        except EmevalError:
            return None
        report = gather(runs)
        for warning in report.warnings:  # e.g. a cell trained with one seed: no spread
            _say(f"report: warning: {warning}")
        paths = write_report(report, self.dir.report)
        return paths["markdown"]


def default_out(grid: Grid) -> Path:
    return DEFAULT_OUT_ROOT / grid.name
