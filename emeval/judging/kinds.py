"""Judge kinds: what a --judge SPEC can name, and turning a SPEC into a judge.

Each kind says which specs it accepts and builds the judge; `judge_from_spec` asks the kinds
in order. A new kind of judge is a module implementing the Judge protocol (base.py) and one
JudgeKind in JUDGE_KINDS. Judges are built once per process and SPEC: a run's check, its
Inspect scorer and its results all use the same instance, so a local judge model loads once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emeval.errors import EmevalError
from emeval.judging.base import Judge
from emeval.judging.cache import CachedJudge

DEFAULT_JUDGE = "offline"


@dataclass(frozen=True)
class JudgeKind:
    name: str
    example: str  # what a SPEC of this kind looks like, for help and errors
    accepts: Callable[[str], bool]
    build: Callable[[str], Judge]


def _offline(spec: str) -> Judge:
    from emeval.judging.offline import OfflineJudge

    return OfflineJudge.load(spec.partition(":")[2] or None)


def _local_dir(spec: str) -> str | None:
    """The local model a SPEC names (known name, dir, hf/DIR, emeval/DIR), or None."""
    from emeval.models import KNOWN_MODELS, split_model_spec

    if spec in KNOWN_MODELS:
        return spec
    provider, rest = split_model_spec(spec)
    path = rest if provider in ("hf", "emeval") else spec
    return path if Path(path).expanduser().is_dir() else None


def _local(spec: str) -> Judge:
    from emeval.judging.local import LocalLogprobJudge
    from emeval.models import resolve_model

    return LocalLogprobJudge(resolve_model(_local_dir(spec)).local_path, name=spec)


def _served(spec: str) -> Judge:
    from emeval.judging.llm import InspectJudge

    return InspectJudge(spec)


def _is_inspect_model(spec: str) -> bool:
    from emeval.models import INSPECT_PROVIDERS, split_model_spec

    provider, rest = split_model_spec(spec)
    return provider in INSPECT_PROVIDERS and bool(rest)


JUDGE_KINDS: list[JudgeKind] = [
    JudgeKind(
        "offline",
        "offline, offline:DIR",
        lambda s: s == "offline" or s.startswith("offline:"),
        _offline,
    ),
    JudgeKind(
        "local",
        "a known model name, a local model dir, hf/DIR",
        lambda s: bool(_local_dir(s)),
        _local,
    ),  # fmt: skip
    JudgeKind(
        "inspect",
        "openai/gpt-4o-2024-08-06, openai-api/SERVICE/MODEL, vllm/...",
        _is_inspect_model,
        _served,
    ),  # fmt: skip
]

_BUILT: dict[tuple[str, bool], Judge] = {}
_LOCK = threading.Lock()


def judge_from_spec(spec: str | None, cached: bool = True) -> Judge:
    """The judge a --judge SPEC names (wrapped in the call cache unless cached=False)."""
    if spec is None:
        spec = DEFAULT_JUDGE
    if not spec.strip():  # `--judge ""` is a slip (an unset variable), not a choice
        raise EmevalError("empty judge spec: name a judge, or leave --judge out for the default")
    with _LOCK:
        if (spec, cached) in _BUILT:
            return _BUILT[(spec, cached)]
        for kind in JUDGE_KINDS:
            if kind.accepts(spec):
                judge = kind.build(spec)
                break
        else:
            examples = "; ".join(f"{k.name}: {k.example}" for k in JUDGE_KINDS)
            raise EmevalError(f"unknown judge {spec!r}; judges are {examples}")
        built = CachedJudge(judge) if cached else judge
        _BUILT[(spec, cached)] = built
        return built


def validation_of(judge) -> dict | str:
    """What a results file says about how far to trust a judge: its bundled validation
    figures, or "unvalidated"."""
    return getattr(judge, "validation", None) or "unvalidated"
