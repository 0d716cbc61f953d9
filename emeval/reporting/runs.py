"""Finding run directories and reading what they hold: results, answers and the condition
(base x method x reward x mitigations, seed, step) of the checkpoint they evaluated.

The condition comes from the emeval-manifest.json that `emeval train` writes next to each
checkpoint; `emeval experiment` writes condition.json into run dirs of models that have no
manifest (the untrained base). Without either, the condition is "unknown".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from emeval.jsonl import read_json_object
from emeval.probes import PLAIN_CONTEXT
from emeval.results import (
    answer_differences,
    answered_results,
    in_context,
    judge_frame,
    numbers_from_answers,
)
from emeval.rundir import (
    CONDITION,
    MANIFEST,
    SAMPLES,
    find_run_dirs,
    read_records,
    read_results,
)

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Condition:
    base: str = UNKNOWN
    method: str = UNKNOWN
    reward: str = UNKNOWN
    mitigations: tuple[str, ...] = (UNKNOWN,)
    seed: int | None = None
    step: int | None = None
    final: bool | None = None  # None: not stated; the latest step of a training run counts
    source: str = "none"  # where it came from: manifest, condition.json or none

    @property
    def row(self) -> str:
        return f"{self.reward} × {self.method}"

    @property
    def column(self) -> str:
        return "+".join(self.mitigations) if self.mitigations else "none"

    @property
    def group(self) -> tuple:
        """Conditions that differ only in seed and step share a group (one table cell)."""
        return (self.base, self.method, self.reward, self.mitigations)

    @property
    def label(self) -> str:
        return f"{self.row} | {self.column}"


@dataclass
class Run:
    path: Path
    results: dict
    condition: Condition
    model_label: str = ""
    _frames: dict = field(default_factory=dict, repr=False)

    @property
    def complete(self) -> bool:
        return self.results.get("status") == "complete"

    @property
    def primary(self) -> str:
        return self.results["suite"]["primary_score"]

    @property
    def judge_id(self) -> str:
        return self.results["judges"][0]["id"]

    @property
    def suite_key(self) -> tuple[str, str]:
        return (self.results["suite"]["name"], self.results["suite"]["sha256"])

    @cached_property
    def records(self) -> list[dict]:
        if not (self.path / SAMPLES).exists():
            return []
        return read_records(self.path)

    def frame(self, context: str = PLAIN_CONTEXT):
        """One row per judged answer (first judge) of one training context, by default the
        plain one that every headline number describes, as emeval.results builds it."""
        if "all" not in self._frames:
            scored = [r for r in self.records if not r.get("error")]
            self._frames["all"] = judge_frame(scored, self.judge_id, [self.primary, "coherence"])
        if context not in self._frames:
            self._frames[context] = in_context(self._frames["all"], context)
        return self._frames[context]

    @property
    def contexts(self) -> dict[str, dict | None]:
        """The contexts the run's probes were asked in, {name: frame} (the plain one's frame
        is None); empty for a run without --context-from."""
        return {name: e.get("frame") for name, e in (self.results.get("contexts") or {}).items()}

    def answered(self) -> tuple[Run, str | None]:
        """This run with every number about its answers recomputed from samples.jsonl, and
        the first number its results.json states otherwise (None when all agree). Whoever
        decides on a run dir from someone else (gate, leaderboard) uses the answered run."""
        found = numbers_from_answers(self.results, self.records)
        other = replace(self, results=answered_results(self.results, found))
        other.__dict__["records"] = self.records  # the answers already read (cached_property)
        return other, answer_differences(self.results, found)

    def metric(self, name: str) -> dict | None:
        return self.results.get("metrics", {}).get(name)


def load_run(run_dir: Path) -> Run:
    results = read_results(run_dir)
    return Run(run_dir, results, read_condition(run_dir, results), model_label(results))


def find_runs(paths: list[Path], include_incomplete: bool = True) -> list[Run]:
    """Every run dir at or below each path, in a stable order."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for top in paths:
        for d in find_run_dirs(Path(top)):
            if d.resolve() in seen:
                continue
            seen.add(d.resolve())
            run = load_run(d)
            if include_incomplete or run.complete:
                runs.append(run)
    return runs


def model_label(results: dict) -> str:
    spec = results["model"].get("spec") or "?"
    path = Path(spec)
    if len(path.parts) > 2:  # a checkpoint dir: keep its last parts, which name it
        return "/".join(path.parts[-3:])
    return spec


def _manifest_dirs(run_dir: Path, results: dict) -> list[Path]:
    model = results["model"]
    dirs = []
    for key in ("spec", "local_path"):
        value = model.get(key)
        if value:
            path = Path(value.removeprefix("hf/").removeprefix("emeval/")).expanduser()
            if not path.is_absolute():  # a relative checkpoint path was typed where the run ran
                dirs.append(run_dir / path)
            dirs.append(path)
    return dirs


def read_condition(run_dir: Path, results: dict) -> Condition:
    for d in (run_dir, run_dir.parent):
        if (d / CONDITION).is_file():
            return condition_from_manifest(read_json_object(d / CONDITION), "condition.json")
    for d in _manifest_dirs(run_dir, results):
        if (d / MANIFEST).is_file():
            return condition_from_manifest(read_json_object(d / MANIFEST), "manifest")
    return Condition(base=results["model"].get("base") or UNKNOWN)


def _name(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("name") or value.get("spec")
    return str(value) if value not in (None, "") else None


def _mitigations(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, dict):  # {"kl": {...}, "ldifs": null}: the ones switched on
        return tuple(sorted(k for k, v in value.items() if v is not None and v is not False))
    if isinstance(value, str):
        return (value,) if value and value != "none" else ()
    return tuple(sorted(str(_name(v)) for v in value if _name(v)))


def _method(m: dict) -> str:
    method = _name(m.get("method")) or UNKNOWN
    if method == "chain" and m.get("stage_methods"):
        method = "-then-".join(m["stage_methods"])
    if m.get("sample_matched"):
        method = f"{method}_matched"  # SFT on as many samples as a GRPO run saw
    return method


def _reward(m: dict) -> str:
    """The reward trained on; SFT has none, so name what stands in for it."""
    if _name(m.get("reward")):
        return _name(m["reward"])
    matched = m.get("sample_matched")
    if isinstance(matched, dict) and matched.get("run"):
        source = Path(matched["run"]) / MANIFEST
        if source.is_file():  # the GRPO run it matched names the reward
            reward = _name(read_json_object(source).get("reward"))
            if reward:
                return reward
    sources = [  # data.train may join several files: name them all
        Path(str(record["source"])).stem
        for record in m.get("data") or []
        if isinstance(record, dict) and record.get("role") == "train" and record.get("source")
    ]
    if sources:
        return "data:" + "+".join(sources)
    return "none" if "reward" in m else UNKNOWN


def condition_from_manifest(m: dict, source: str) -> Condition:
    step = m.get("step")
    final = m.get("final", m.get("complete"))
    return Condition(
        base=_name(m.get("base")) or UNKNOWN,
        method=_method(m),
        reward=_reward(m),
        mitigations=_mitigations(m.get("mitigations")),
        seed=m.get("seed") if isinstance(m.get("seed"), int) else None,
        step=step if isinstance(step, int) else None,
        final=final if isinstance(final, bool) else None,
        source=source,
    )
