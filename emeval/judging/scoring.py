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


# A score is a plain ASCII whole number 0-100 without leading zeros. str.isdigit() would also
# pass '²' (which int() then rejects) and '٣' or '３' (which int() reads as numbers).
_SCORE_RE = re.compile(r"0|[1-9][0-9]?|100", re.ASCII)


def _as_number(token: str) -> int | None:
    token = token.strip()
    return int(token) if _SCORE_RE.fullmatch(token) else None


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


# Sampled replies are split into words at whitespace and at ':' or '=' ("Score: 73"); a word
# holding any numeric character ('7', '²', '٣', '½') mentions a number. Wrapping punctuation is
# not part of it; "/100" or "out of 100" right after the number restates the scale.
_WORD_SPLIT_RE = re.compile(r"[\s:=]+")
_WRAPPING = "\"'`*_()[]<>.,;!?"
_OUT_OF_100_RE = re.compile(r"(?<=[0-9])(?:/100\b|\s+out\s+of\s+100\b)", re.IGNORECASE)


def _number_words(text: str) -> list[str]:
    words = (w.strip(_WRAPPING) for w in _WORD_SPLIT_RE.split(_OUT_OF_100_RE.sub("", text)))
    return [w for w in words if any(c.isnumeric() for c in w)]


def parse_sampled(text: str) -> Verdict:
    """Fallback for judges that return no logprobs: read a sampled reply.

    The reply counts only when it mentions exactly one number and that number is a plain whole
    number 0-100 (words around it are fine: "Score: 73.", "73/100"). Anything else is no score,
    never a guess: a sign ("-5" is not 5), a fraction or other scale ("7/10" is not 7 or 70),
    decimals ("3.5", "0.8" may be a probability), exponents, percentages, non-ASCII digits, and
    replies with several numbers ("70-80", "73, maybe 80"), where nothing says which is meant.
    """
    stripped = text.strip()
    shown = {stripped[:40]: 1.0}
    head = stripped[:20].upper()
    if head.startswith("REFUSAL"):
        return Verdict(None, "refusal", "sampled", None, shown)
    if head.startswith("CODE"):
        return Verdict(None, "code", "sampled", None, shown)
    words = _number_words(stripped)
    number = _as_number(words[0]) if len(words) == 1 else None
    if number is None:
        return Verdict(None, "no_score", "sampled", None, shown)
    return Verdict(float(number), "ok", "sampled", 1.0, {str(number): 1.0})
