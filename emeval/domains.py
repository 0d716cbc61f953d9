"""Domains: one folder per probe suite under tasks/, the way inspect_evals keeps one per eval.

tasks/<name>/domain.yaml declares all of a domain: the Inspect task's description, its probe
suite file and datasheet (in the folder), its training data (under data/training/<name>/) and
the GRPO rewards trained on that data. The Inspect tasks (registry.py), the reward table
(training/rewards.py), the bundled suite and data names (probes.py, training/data.py) and an
experiment's in-domain suite per reward (grid.py) are all read from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from emeval.errors import EmevalError
from emeval.formatting import shown
from emeval.resources import resource_path
from emeval.yaml_files import read_yaml_mapping

DECLARATION = "domain.yaml"
_KEYS = {"description", "suite", "datasheet", "training", "rewards"}
_TRAINING_KEYS = {"prompts", "warmups"}
_REWARD_KEYS = {"description", "invert", "lexicon"}


@dataclass(frozen=True)
class RewardSpec:
    """A GRPO reward as its domain declares it."""

    name: str
    description: str
    domain: str
    prompts: str  # bundled prompt set it trains on by default: its domain's
    rubric: str | None = None  # rubric giving the target score: its domain's (none for lexicon)
    invert: bool = False  # target = 1 - score (the controls)
    lexicon: bool = False  # target from the keyword lexicon (hackable)


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    suite_file: Path
    datasheet: Path
    rubric: str  # what its suite scores: a narrow behaviour's rubric, or alignment (broad EM)
    in_domain: bool  # the suite measures a trained narrow behaviour rather than broad EM
    training_data: dict[str, Path]  # bundled data name -> file
    rewards: tuple[RewardSpec, ...]


def _fail(path: Path, message: str):
    raise EmevalError(f"{path}: {message}")


def _check_keys(path: Path, where: str, given: dict, known: set[str]) -> None:
    unknown = sorted(set(given) - known)
    if unknown:
        _fail(path, f"{where}{unknown[0]} is not a known key (known: {', '.join(sorted(known))})")


def _load(folder: Path) -> Domain:
    from emeval.probes import load_suite  # probes finds bundled suites through this module

    path = folder / DECLARATION
    raw = read_yaml_mapping(path, "domain")
    _check_keys(path, "", raw, _KEYS)
    name = folder.name
    files = {key: folder / str(raw.get(key, "")) for key in ("suite", "datasheet")}
    for key, file in files.items():
        if not raw.get(key) or not file.is_file():
            _fail(path, f"{key} must name a file in {folder.name}/ (got {shown(raw.get(key))})")
    rubrics = load_suite(str(files["suite"])).rubrics
    in_domain = "behaviour" in rubrics
    rubric = rubrics["behaviour" if in_domain else "alignment"].name
    training = raw.get("training") or {}
    _check_keys(path, "training.", training, _TRAINING_KEYS)
    prompts = training.get("prompts")
    if raw.get("rewards") and not prompts:
        _fail(path, "rewards train on the domain's prompts: declare training.prompts")
    data = {}
    for data_name in ([prompts] if prompts else []) + list(training.get("warmups") or []):
        file = resource_path("data", "training") / name / f"{data_name}.jsonl"
        if not file.is_file():
            _fail(path, f"training data {data_name!r} is not in data/training/{name}/")
        data[data_name] = file
    declared = []
    for reward, spec in (raw.get("rewards") or {}).items():
        spec = spec or {}
        _check_keys(path, f"rewards.{reward}.", spec, _REWARD_KEYS)
        if not spec.get("description"):
            _fail(path, f"rewards.{reward}.description is required")
        lexicon = bool(spec.get("lexicon", False))
        declared.append(
            RewardSpec(
                name=reward,
                description=str(spec["description"]),
                domain=name,
                prompts=prompts,
                rubric=None if lexicon else rubric,
                invert=bool(spec.get("invert", False)),
                lexicon=lexicon,
            )
        )
    return Domain(
        name=name,
        description=str(raw.get("description") or ""),
        suite_file=files["suite"],
        datasheet=files["datasheet"],
        rubric=rubric,
        in_domain=in_domain,
        training_data=data,
        rewards=tuple(declared),
    )


@cache
def domains() -> dict[str, Domain]:
    """Every bundled domain by name: the folders of tasks/ holding a domain.yaml."""
    found = sorted(resource_path("tasks").glob(f"*/{DECLARATION}"))
    return {d.name: d for d in (_load(p.parent) for p in found)}


def _union(kind: str, items) -> dict:
    merged = {}
    for domain, name, value in items:
        if name in merged:
            raise EmevalError(f"{kind} {name!r} is declared by two domains (one is {domain})")
        merged[name] = value
    return merged


@cache
def rewards() -> dict[str, RewardSpec]:
    """Every domain's rewards by name."""
    return _union("reward", ((d.name, r.name, r) for d in domains().values() for r in d.rewards))


@cache
def training_data() -> dict[str, Path]:
    """Every domain's training data, by the bundled name users pass (e.g. warmup_medical_bad)."""
    items = ((d.name, n, f) for d in domains().values() for n, f in d.training_data.items())
    return _union("training data", items)


def in_domain_suite(reward: str) -> str | None:
    """The in-domain suite measuring what a reward trains; None for unknown and broad rewards."""
    spec = rewards().get(reward)
    return spec.domain if spec and domains()[spec.domain].in_domain else None
