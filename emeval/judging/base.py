"""The judge interface: what every judge kind implements. Kinds live in their own modules
(offline.py, local.py, llm.py), the spec parser in kinds.py, the call cache in cache.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from emeval.judging.rubrics import Rubric
from emeval.judging.scoring import Verdict


@dataclass(frozen=True)
class JudgeRequest:
    question: str
    answer: str
    rubric: Rubric


class Judge(Protocol):
    id: str  # stable identity: part of every cache key and recorded with every score

    def check(self) -> None:
        """Fail early with an EmevalError when the judge cannot work (missing, unreachable)."""

    async def score(self, requests: list[JudgeRequest]) -> list[Verdict]:
        """One verdict per request, in order; a failure is a Verdict with status 'error'."""
