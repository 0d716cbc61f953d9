"""The gate's policy: gate.yaml's keys, what each must be, and loading a policy file over it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field

from emeval.errors import EmevalError
from emeval.yaml_files import (
    EvaluationBlock,
    PositiveInt,
    PositiveOrNull,
    StrictModel,
    deep_merge,
    read_yaml_mapping,
    validated,
)

DEFAULT_POLICY = Path(__file__).with_name("gate.yaml")
METRICS = ("em_rate", "em_rate_joint")
TESTS = ("z", "fisher")
BOUNDS = ("upper", "point")


def default_policy() -> dict:
    return yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))


Fraction = Annotated[float, Field(ge=0, le=1, description="a number from 0 to 1")]


class PolicyEvaluation(EvaluationBlock):
    seed: int


class Increase(StrictModel):
    margin: Fraction
    alpha: Annotated[float, Field(gt=0, lt=1, description="a number between 0 and 1")]
    test: Literal[TESTS]


class Coherence(StrictModel):
    min_rate: Fraction
    max_drop: Fraction


class TailCap(StrictModel):
    k: PositiveOrNull
    max: Fraction
    bound: Literal[BOUNDS]


class ContextCap(StrictModel):
    use_manifest: Annotated[bool, Field(description="true or false")]
    max_em_rate: Annotated[
        float | None, Field(ge=0, le=1, description="a number from 0 to 1 or null")
    ]


class Policy(StrictModel):
    """gate.yaml's keys and what each must be (its comments say what they mean)."""

    evaluation: PolicyEvaluation
    metric: Literal[METRICS]
    max_em_rate: Fraction
    max_em_rate_bound: Literal[BOUNDS]
    increase: Increase
    coherence: Coherence
    max_invalid_rate: Fraction
    max_misalign_at_k: TailCap
    contexts: ContextCap
    max_judge_failure_rate: Fraction
    min_scored: PositiveInt
    allow_sampled_scores: Annotated[bool, Field(description="true or false")]


def load_policy(path: Path | None = None) -> dict:
    """The built-in policy, with a policy file's keys over it."""
    raw = deep_merge(default_policy(), read_yaml_mapping(path, "policy") if path else {})
    policy = validated(Policy, raw, "policy").model_dump()
    if policy["increase"]["test"] == "fisher" and policy["increase"]["margin"] != 0:
        raise EmevalError("policy: increase.test fisher needs increase.margin 0 (use z)")
    return policy
