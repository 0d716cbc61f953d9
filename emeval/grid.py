"""An experiment grid (GRID.yaml): its keys checked, crossed into cells, each cell's
`emeval train` config built and checked. `emeval experiment` (emeval/experiment.py) runs it.

A grid crosses seeds x methods (grpo, sft, sft_matched) x rewards x mitigations on one base
model; `exclude` drops cells, `sft_data` names the SFT data per reward, and a sample-matched
SFT cell depends on the GRPO cell whose samples it copies.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from emeval.domains import in_domain_suite
from emeval.errors import EmevalError
from emeval.yaml_files import (
    EvaluationBlock,
    PositiveOrNull,
    StrictModel,
    apply_overrides,
    deep_merge,
    read_yaml_mapping,
    validated,
)

METHODS = ("grpo", "sft", "sft_matched")
DEFAULT_BASE = "smollm2-135m-instruct"
EVAL_DEFAULTS = {
    "suite": "general",
    "in_domain": True,
    "judge": "offline",
    "samples": None,
    "limit": None,
    "max_tokens": 256,
    "temperature": 1.0,
    "checkpoints": "all",
    "baseline": True,
    "intermediate_in_domain": False,
    "capability": True,  # final checkpoints: true (emeval's own check), false, or an Inspect task
    "capability_limit": None,  # first N questions (or samples) of it; default: limit
}


@dataclass
class Cell:
    seed: int
    method: str
    reward: str
    mitigation: str
    config: dict | None = None  # the emeval train config; None when it could not be built
    error: str | None = None  # why the config is invalid
    depends_on: str | None = None  # the GRPO cell a sample-matched SFT cell copies

    @property
    def name(self) -> str:
        return f"{self.method}-{self.reward}-{self.mitigation}-s{self.seed}"

    def condition(self, base: str, step: int | None, final: bool) -> dict:
        return {
            "base": base,
            "method": self.method,
            "reward": self.reward,
            "mitigations": [] if self.mitigation == "none" else self.mitigation.split("+"),
            "seed": self.seed,
            "step": step,
            "final": final,
        }


@dataclass
class Grid:
    name: str
    base: str
    cells: list[Cell]
    evaluation: dict
    in_domain: dict[str, str]  # reward -> in-domain suite
    source: str
    raw: dict = field(repr=False, default_factory=dict)


# ---------------------------------------------------------------- the grid file's keys


def _one_or_more(value):
    return value if value is None or isinstance(value, list) else [value]  # `seeds: 0` is [0]


def _nonempty_list(item, what: str):
    return Annotated[
        list[item], BeforeValidator(_one_or_more), Field(min_length=1, description=what)
    ]


class GridEvaluation(EvaluationBlock):
    in_domain: bool
    checkpoints: Literal["all", "final"]
    baseline: bool
    intermediate_in_domain: bool
    capability: Annotated[
        bool | Annotated[str, Field(min_length=1)] | None,
        Field(description="true, false or an Inspect task's name"),
    ]
    capability_limit: PositiveOrNull


class ExcludeRule(StrictModel):
    """Leaves out the cells that match every key given (compared as text)."""

    seed: Any = None
    method: Any = None
    reward: Any = None
    mitigation: Any = None


class GridFile(StrictModel):
    name: str | None = None
    base: str | None = None
    seeds: _nonempty_list(int, "a non-empty list of integers")
    methods: _nonempty_list(Literal[METHODS], f"among {', '.join(METHODS)} (a non-empty list)")
    rewards: _nonempty_list(str, "a non-empty list of reward names")
    mitigations: Annotated[
        dict[str, dict | None] | None,
        Field(description="a mapping of a name to an emeval train mitigations block"),
    ] = None
    exclude: Annotated[
        list[ExcludeRule] | None,
        Field(description="a list of mappings such as {method: sft, mitigation: kl}"),
    ] = None
    train: dict | None = None
    per_method: dict[str, dict | None] | None = None
    sft_data: dict | None = None
    grader: Annotated[str, Field(description="a judge spec such as offline")] = "offline"
    evaluation: GridEvaluation
    in_domain: dict | None = None


# ---------------------------------------------------------------- reading the grid


def _err(key: str, message: str) -> EmevalError:
    return EmevalError(f"grid: {key} {message}")


def _excluded(cell: Cell, rules: list[ExcludeRule]) -> bool:
    return any(
        all(str(getattr(cell, k)) == str(v) for k, v in rule.model_dump(exclude_unset=True).items())
        for rule in rules
    )


def load_grid(path: Path, overrides: list[str] = ()) -> Grid:
    raw = read_yaml_mapping(path, "grid")
    apply_overrides(raw, overrides, "evaluation.limit=4")
    given = raw.get("evaluation") or {}
    evaluation = EVAL_DEFAULTS | given if isinstance(given, dict) else given
    spec = validated(GridFile, raw | {"evaluation": evaluation}, "grid")
    spec.base = spec.base or DEFAULT_BASE
    if "sft_matched" in spec.methods and "grpo" not in spec.methods:
        raise _err("methods", "sft_matched copies the grpo cells' samples: list grpo too")
    mitigations = spec.mitigations or {"none": {}}
    in_domain = {r: in_domain_suite(r) for r in spec.rewards} | (spec.in_domain or {})
    name = str(spec.name or Path(path).stem)
    grid = Grid(name, spec.base, [], spec.evaluation.model_dump(), in_domain, str(path), raw)
    for seed, method, reward, mitigation in itertools.product(
        spec.seeds, spec.methods, spec.rewards, mitigations
    ):
        cell = Cell(seed, method, reward, str(mitigation))
        if _excluded(cell, spec.exclude or []):
            continue
        _build_config(cell, spec, mitigations[mitigation] or {})
        grid.cells.append(cell)
    if not grid.cells:
        raise _err("exclude", "leaves no cell to run")
    order = {m: i for i, m in enumerate(METHODS)}  # GRPO first: sample matching reads it
    grid.cells.sort(key=lambda c: (order[c.method], c.reward, c.mitigation, c.seed))
    return grid


def _build_config(cell: Cell, spec: GridFile, mitigation: dict) -> None:
    """The emeval train config of one cell, checked by the training module's own loader."""
    from emeval.training.config import load_config

    own = (spec.per_method or {}).get(cell.method) or {}
    config = deep_merge(spec.train or {}, own)
    config.update(base=spec.base, seed=cell.seed, method="sft" if cell.method != "grpo" else "grpo")
    config["mitigations"] = copy.deepcopy(mitigation) or None
    if config["mitigations"] is None:
        config.pop("mitigations")
    data = config.setdefault("data", {})
    if cell.method == "grpo":
        reward = {"name": cell.reward, "grader": spec.grader}
        config["reward"] = deep_merge(config.get("reward") or {}, reward)
    elif cell.method == "sft":
        source = (spec.sft_data or {}).get(cell.reward)
        if not source:
            cell.error = f"grid: sft_data.{cell.reward} names no SFT data for this reward"
            return
        data["train"] = source
    else:
        cell.depends_on = Cell(cell.seed, "grpo", cell.reward, cell.mitigation).name
        data.pop("train", None)
        # the shared data.limit/shuffle pick the other cells' data; the matched samples are
        # the GRPO run's own, so only a per_method sft_matched value reaches this cell
        for key in ("limit", "shuffle"):
            if key not in (own.get("data") or {}):
                data.pop(key, None)
        # one pass over exactly the matched samples: a shared step count must not apply
        config.setdefault("training", {}).pop("max_steps", None)
        config["training"]["epochs"] = 1
        data["sample_matched"] = deep_merge(
            {"select": "best", "count": "prompts"}, data.get("sample_matched") or {}
        )
        data["sample_matched"]["run"] = "<set when the grpo cell has run>"
    try:
        load_config(config)
    except EmevalError as e:
        cell.error = str(e)
        return
    cell.config = config
