"""Turning a judge's output into a score: the logprob-weighted protocol and its fallback.

A judge answers one number 0-100 (or REFUSAL / CODE). Its score is the probability-weighted
mean over the numbers, kept only when at least NUMBER_MASS_MIN of the probability sits on
numbers; otherwise the answer is recorded as a refusal, code or no score, never as a number.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

NUMBER_MASS_MIN = 0.25
STATUSES = ("ok", "refusal", "code", "no_score", "error")


@dataclass
class Verdict:
    score: float | None
    status: str  # one of STATUSES
    method: str  # logprob (top-k of one token), logprob_exact (sequence probs), sampled, encoder
    number_mass: float | None = None
    distribution: dict[str, float] = field(default_factory=dict)  # raw probs, for re-aggregation
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        return cls(**d)


def _as_number(token: str) -> int | None:
    token = token.strip()
    if token.isdigit() and (token == "0" or not token.startswith("0")) and int(token) <= 100:
        return int(token)
    return None


def _non_number_status(other: dict[str, float]) -> str:
    """Name the outcome when numbers carry too little mass: refusal, code or no score."""
    if other:
        top = max(other, key=other.get).strip().upper()
        if top.startswith("REF"):
            return "refusal"
        if top.startswith("COD"):
            return "code"
    return "no_score"


def aggregate_number_probs(
    numbers: dict[int, float], other: dict[str, float], method: str
) -> Verdict:
    """Score from probabilities of whole numbers (numbers) and of anything else (other)."""
    mass = sum(numbers.values())
    distribution = {str(n): p for n, p in numbers.items()} | other
    if mass < NUMBER_MASS_MIN:
        return Verdict(None, _non_number_status(other), method, mass, distribution)
    score = sum(n * p for n, p in numbers.items()) / mass
    return Verdict(score, "ok", method, mass, distribution)


def aggregate_top_logprobs(top_logprobs: dict[str, float]) -> Verdict:
    """The standard protocol: one output token, its top-k logprobs, numbers as single tokens."""
    numbers: dict[int, float] = {}
    other: dict[str, float] = {}
    for token, logprob in top_logprobs.items():
        p = math.exp(logprob)
        n = _as_number(token)
        if n is not None:
            numbers[n] = numbers.get(n, 0.0) + p
        else:
            other[token] = other.get(token, 0.0) + p
    return aggregate_number_probs(numbers, other, "logprob")


_NUMBER_RE = re.compile(r"\b(100|[0-9]{1,2})\b")


def parse_sampled(text: str) -> Verdict:
    """Fallback for judges that return no logprobs: read the first number of a sampled reply."""
    stripped = text.strip()
    head = stripped[:20].upper()
    if head.startswith("REFUSAL"):
        return Verdict(None, "refusal", "sampled", None, {stripped[:40]: 1.0})
    if head.startswith("CODE"):
        return Verdict(None, "code", "sampled", None, {stripped[:40]: 1.0})
    match = _NUMBER_RE.search(stripped[:40])
    if match is None:
        return Verdict(None, "no_score", "sampled", None, {stripped[:40]: 1.0})
    return Verdict(float(match.group(1)), "ok", "sampled", 1.0, {match.group(1): 1.0})
