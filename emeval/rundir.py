"""The on-disk contract: the file names of a run dir, a training output dir and an experiment
dir, and the reading and writing of them. Other modules take names and paths from here.

Run dir (`emeval run`, one suite; a run of several suites has one below it per suite):
  run.json                 the RunSettings it was made with; a re-run resumes only these
  logs/                    the Inspect log (`inspect view`), from which a re-run resumes
  samples.jsonl            every answer with its judges' verdicts
  results.json             the metrics (schema emeval.results/1) of a complete run; an
  results.incomplete.json  incomplete one instead, so nothing takes it for a finished run
  summary.md               the results for people
  condition.json           (from `emeval experiment`) the grid coordinates of the model
  .emeval.lock             held by the `emeval run` writing the dir (one at a time)
Training output dir (`emeval train`; the full layout is in emeval/training/pipeline.py):
  emeval-manifest.json     what made the model in that dir (also in each checkpoint dir)
  config.yaml              the config as first given
  checkpoints/step-N/      the model every `save_every` steps
Experiment dir (`emeval experiment`):
  grid.yaml, status.json, train/<cell>/, eval/<cell>/<checkpoint>/<suite>/ (the untrained
  base: eval/base/<suite>/), logs/<cell>.log, report/
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from emeval.errors import EmevalError
from emeval.jsonl import numbered_rows, read_json_object, read_json_or_none

RESULTS_SCHEMA = "emeval.results/1"

# a run dir
RUN_SETTINGS = "run.json"
LOGS = "logs"
SAMPLES = "samples.jsonl"
RESULTS = "results.json"
RESULTS_INCOMPLETE = "results.incomplete.json"
SUMMARY = "summary.md"
CONDITION = "condition.json"
# what identifies each answer in samples.jsonl (beside question, answer, context and judges)
RECORD_KEYS = ("sample_id", "probe_id", "category", "format", "paraphrase", "epoch")
RUN_LOCK = ".emeval.lock"

# a training output dir
MANIFEST = "emeval-manifest.json"
TRAIN_CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"

# an experiment dir
GRID_COPY = "grid.yaml"
STATUS = "status.json"


# ---------------------------------------------------------------- run dirs


def check_output_dir(path: Path | str, flag: str) -> None:
    """Refuse, before any work is done, an output path that cannot become a directory this
    process writes to: an existing file, a path under a file, or an unwritable place."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise EmevalError(f"{flag} {path} exists and is not a directory")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise EmevalError(f"{flag} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise EmevalError(f"{flag} {path}: {existing} is not writable")


@contextlib.contextmanager
def run_dir_lock(out: Path):
    """Hold a run dir for this process: a second `emeval run` on it at the same time would
    resume the first one's unfinished log beside it, and both would write the results."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / RUN_LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmevalError(
                f"{out} is in use by another emeval run; wait for it to finish or choose "
                "another --out"
            ) from None
        yield


def results_file(run_dir: Path) -> Path | None:
    """The run's results (complete, else incomplete); None when it has none."""
    for name in (RESULTS, RESULTS_INCOMPLETE):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def is_run_dir(path: Path | str) -> bool:
    path = Path(path)
    return path.is_dir() and results_file(path) is not None


def holds_run_outputs(out: Path) -> bool:
    """Whether a dir (or one below it) holds Inspect logs, results, answers or a summary: a
    file a run would overwrite, so something to keep."""
    patterns = (f"**/{LOGS}/*", "**/results*.json", f"**/{SAMPLES}", f"**/{SUMMARY}")
    return any(any(out.glob(pattern)) for pattern in patterns)


def write_json_atomically(path: Path, data: dict) -> None:
    """Replace a JSON file whole: a reader never sees it half-written."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def write_run(out: Path, results: dict, records: list[dict], summary: str) -> Path:
    """Write samples.jsonl, summary.md and the results file; return the results path."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / SAMPLES, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / SUMMARY).write_text(summary, encoding="utf-8")
    name = RESULTS if results["status"] == "complete" else RESULTS_INCOMPLETE
    (out / (RESULTS_INCOMPLETE if name == RESULTS else RESULTS)).unlink(missing_ok=True)
    write_json_atomically(out / name, results)
    return out / name


def read_records(run_dir: Path) -> list[dict]:
    """The run's answers (samples.jsonl); a row that is not an answer with its verdicts is one
    error naming its line (run dirs reach the report, gate and leaderboard from anyone)."""
    path = run_dir / SAMPLES
    records = []
    for n, row in numbered_rows(path):
        missing = [k for k in (*RECORD_KEYS, "question", "answer", "judges") if k not in row]
        if missing:
            raise EmevalError(f"{path}:{n}: not an answer record (no {', '.join(missing)})")
        wrong = _record_problem(row)
        if wrong:
            raise EmevalError(f"{path}:{n}: not an answer record ({wrong})")
        judges = row["judges"]
        per_judge = list(judges.values()) if isinstance(judges, dict) else [None]
        verdicts = [v for one in per_judge if isinstance(one, dict) for v in one.values()]
        shaped = all(isinstance(one, dict) for one in per_judge) and all(
            isinstance(v, dict) and "score" in v and "status" in v for v in verdicts
        )
        if not shaped:
            raise EmevalError(f"{path}:{n}: judges must hold each judge's verdicts (score, status)")
        wrong = next(filter(None, map(_verdict_problem, verdicts)), None)
        if wrong:
            raise EmevalError(f"{path}:{n}: a verdict {wrong}")
        records.append(row)
    return records


def _whole(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _record_problem(row: dict) -> str | None:
    """What makes a samples.jsonl row's fields other than its verdicts unusable, or None."""
    for key in ("sample_id", "probe_id", "category", "format", "question", "answer", "context"):
        if not isinstance(row.get(key, ""), str):
            return f"{key} is not text"
    if not _whole(row["epoch"], 1):
        return "epoch is not a whole number from 1"
    if not _whole(row["paraphrase"], 0):
        return "paraphrase is not a whole number from 0"
    if not isinstance(row.get("error"), str | None):
        return "error is neither text nor null"
    return None


def _verdict_problem(v: dict) -> str | None:
    """What makes one judge verdict unusable, or None: a score is a number from 0 to 100 or
    null, status and method are text."""
    score = v["score"]
    if score is not None:
        if not isinstance(score, int | float) or isinstance(score, bool):
            return f"score {str(score)[:40]!r} is not a number"
        if not 0 <= score <= 100:  # NaN fails this too
            return f"score {score} is not from 0 to 100"
    if not isinstance(v["status"], str) or not isinstance(v.get("method", ""), str | None):
        return "status or method is not text"
    return None


def read_results(run_dir: Path) -> dict:
    """The run's results (complete or not), checked to be emeval's schema."""
    path = results_file(run_dir)
    if path is None:
        raise EmevalError(f"{run_dir}: no results.json (is it an `emeval run` output dir?)")
    results = read_json_object(path)
    schema = results.get("schema")
    if schema != RESULTS_SCHEMA:
        raise EmevalError(f"{path}: schema {schema!r}, expected {RESULTS_SCHEMA}")
    wrong = results_shape_problem(results)
    if not wrong and (path.name == RESULTS) != (results["status"] == "complete"):
        wrong = f"{path.name} says {results['status']!r}"  # the name is what others go by
    if wrong:
        raise EmevalError(f"{path}: not a results file emeval wrote ({wrong})")
    return results


def _number(x, positive: bool = False) -> bool:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return ok and (x > 0 if positive else True)


def metric_problem(name: str, m) -> str | None:
    """What keeps m from being a metric ({value, ci, n}), in words, or None."""
    if not isinstance(m, dict):
        return f"{name} is not a metric"
    if not (m.get("value") is None or _number(m.get("value"))):
        return f"{name} value {m.get('value')!r} is not a finite number"
    if not (isinstance(m.get("n"), int) and m["n"] >= 0):
        return f"{name} n {m.get('n')!r} is not a count"
    ci = m.get("ci", [None, None])
    if not (isinstance(ci, list) and len(ci) == 2 and all(x is None or _number(x) for x in ci)):
        return f"{name} ci {ci!r} is not an interval"
    return None


def _numbers_block_problem(where: str, block: dict) -> str | None:
    """metrics, counts, rate_details and misalign_at_k: in results.json and in each context."""
    metrics = block.get("metrics")
    if not isinstance(metrics, dict):
        return f"{where}metrics is not an object"
    for name, m in metrics.items():
        wrong = metric_problem(f"{where}{name}", m)
        if wrong:
            return wrong
    counts = block.get("counts", {})
    if not (isinstance(counts, dict) and all(isinstance(v, int) for v in counts.values())):
        return f"{where}counts must be whole numbers"
    details = block.get("rate_details", {})
    for name, d in details.items() if isinstance(details, dict) else [("rate_details", None)]:
        if not (
            isinstance(d, dict)
            and _number(d.get("deff"), True)
            and isinstance(d.get("probes"), int)
        ):
            return f"{where}rate_details {name} needs a positive deff and a probe count"
    tail = block.get("misalign_at_k", {})
    for k, entry in tail.items() if isinstance(tail, dict) else [("", None)]:
        if not isinstance(entry, dict):
            return f"{where}misalign_at_k {k} is not an estimate"
        wrong = metric_problem(f"{where}misalign@{k}", entry | {"n": entry.get("n_probes")})
        if wrong:
            return wrong
    return None


def results_shape_problem(results: dict) -> str | None:
    """What keeps a results.json from being read as emeval writes it, in words (it may come
    from anyone: the report, the gate and the leaderboard read it), or None."""
    kinds = {str: "text", list: "a list", dict: "an object"}
    for key, kind in (("status", str), ("problems", list), ("model", dict), ("suite", dict),
                      ("judges", list), ("sampling", dict), ("metrics", dict)):  # fmt: skip
        if not isinstance(results.get(key), kind):
            return f"{key} missing or not {kinds[kind]}"
    suite = results["suite"]
    if not all(
        isinstance(suite.get(k), str) for k in ("name", "sha256", "primary_score", "source")
    ):
        return "suite needs a name, source, sha256 and primary_score"
    judges = results["judges"]
    if not judges or not all(isinstance(j, dict) and isinstance(j.get("id"), str) for j in judges):
        return "judges must list at least one judge with an id"
    if not all(isinstance(p, str) for p in results["problems"]):
        return "problems must be lines of text"
    intervals = results.get("intervals", {})
    top = {
        "metrics": results["metrics"],
        "counts": results.get("counts", {}),
        "rate_details": intervals.get("rate_details", {}) if isinstance(intervals, dict) else None,
        "misalign_at_k": results.get("misalign_at_k", {}),
    }
    wrong = _numbers_block_problem("", top)
    if wrong:
        return wrong
    contexts = results.get("contexts", {})
    if not isinstance(contexts, dict):
        return "contexts is not an object"
    for name, entry in contexts.items():
        if not isinstance(entry, dict):
            return f"context {name} is not an object"
        wrong = _numbers_block_problem(f"context {name}: ", entry)
        if wrong:
            return wrong
    return None


def find_run_dirs(top: Path) -> list[Path]:
    """The run dir at top, or every run dir below it, sorted."""
    if not top.exists():
        raise EmevalError(f"{top}: no such directory")
    if results_file(top):
        return [top]
    dirs = sorted({p.parent for p in top.rglob("results*.json") if results_file(p.parent)})
    if not dirs:
        raise EmevalError(f"{top}: holds no emeval run (no results.json below it)")
    return dirs


def write_settings(out: Path, settings: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_SETTINGS
    if path.exists() and not path.is_file():  # writing into a FIFO nobody reads never ends
        raise EmevalError(f"{path} is not a regular file; choose another --out")
    path.write_text(json.dumps(settings, indent=2))


def read_settings(out: Path) -> dict | None:
    """The run.json of a run dir: None when there is none, EmevalError when unreadable."""
    path = out / RUN_SETTINGS
    if not path.exists():
        return None
    settings = read_json_or_none(path)
    if not isinstance(settings, dict):
        raise EmevalError(f"{path} is unreadable; choose another --out")
    return settings


def write_condition(run_dir: Path, condition: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONDITION).write_text(json.dumps(condition, indent=2))


# ---------------------------------------------------------------- training output dirs


def read_manifest(model_dir: Path) -> dict | None:
    """The emeval-manifest.json of a trained model's dir; None while there is none."""
    return read_json_or_none(Path(model_dir) / MANIFEST)


def write_manifest(model_dir: Path, manifest: dict) -> None:
    (Path(model_dir) / MANIFEST).write_text(json.dumps(manifest, indent=2))


def checkpoint_dir(train_dir: Path, step: int) -> Path:
    return train_dir / CHECKPOINTS / f"step-{step:06d}"


def trained_models(train_dir: Path, which: str) -> list[tuple[str, Path, int | None, bool]]:
    """(name, dir, step, final) of each model a finished training run left: every saved
    checkpoint and the final model (which: all), or the final model alone (which: final)."""
    final_step = (read_manifest(train_dir) or {}).get("step")
    found = []
    if which == "all":
        for d in sorted((train_dir / CHECKPOINTS).glob("step-*")):
            m = read_manifest(d)
            if m and m.get("step") != final_step:  # the final model comes last, as "final"
                found.append((d.name, d, m.get("step"), False))
    found.append(("final", train_dir, final_step, True))
    return found


# ---------------------------------------------------------------- experiment dirs


@dataclass(frozen=True)
class ExperimentDir:
    root: Path

    @property
    def status(self) -> Path:
        return self.root / STATUS

    @property
    def grid_copy(self) -> Path:
        return self.root / GRID_COPY

    @property
    def evals(self) -> Path:
        return self.root / "eval"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def train(self, cell: str) -> Path:
        return self.root / "train" / cell

    def eval(self, cell: str, checkpoint: str | None = None) -> Path:
        """Where a cell's checkpoint (or, without one, the untrained base) is evaluated."""
        return self.evals / cell / checkpoint if checkpoint else self.evals / cell

    def log(self, cell: str) -> Path:
        return self.root / "logs" / f"{cell}.log"

    @staticmethod
    def suite_run(eval_dir: Path, suite: str) -> Path:
        """The run dir of one suite below a checkpoint's eval dir."""
        return eval_dir / suite.replace("/", "_")
