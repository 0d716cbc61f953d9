"""The judge interface, the judge-call cache, and turning a --judge SPEC into a judge."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from emeval.errors import EmevalError
from emeval.judging.rubrics import Rubric
from emeval.judging.scoring import Verdict
from emeval.resources import cache_dir

DEFAULT_JUDGE = "offline"


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


class JudgeCache:
    """Content-addressed store of verdicts: (judge id, rubric hash, question, answer)."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / "judge_cache.sqlite"
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, json TEXT)")

    @staticmethod
    def key(judge_id: str, request: JudgeRequest) -> str:
        parts = [judge_id, request.rubric.sha256, request.question, request.answer]
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()

    def get(self, key: str) -> Verdict | None:
        row = self._db.execute("SELECT json FROM verdicts WHERE key = ?", (key,)).fetchone()
        return Verdict.from_dict(json.loads(row[0])) if row else None

    def put(self, key: str, verdict: Verdict) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (key, json.dumps(verdict.to_dict()))
        )
        self._db.commit()


class CachedJudge:
    """Wraps a judge so repeated (judge, rubric, question, answer) calls cost nothing.
    Errors are not cached: a transient failure is retried next time."""

    def __init__(self, judge: Judge, cache: JudgeCache | None = None):
        self.inner = judge
        self.id = judge.id
        self.validation = getattr(judge, "validation", None)
        self.cache = cache or JudgeCache()

    def check(self) -> None:
        self.inner.check()

    async def score(self, requests: list[JudgeRequest]) -> list[Verdict]:
        keys = [JudgeCache.key(self.id, r) for r in requests]
        found = [self.cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            fresh = await self.inner.score([requests[i] for i in missing])
            for i, verdict in zip(missing, fresh, strict=True):
                found[i] = verdict
                if verdict.status != "error":
                    self.cache.put(keys[i], verdict)
        return found


def validation_of(judge) -> dict | str:
    """What a results file says about how far to trust a judge: its bundled validation
    figures, or "unvalidated"."""
    return getattr(judge, "validation", None) or "unvalidated"


def judge_from_spec(spec: str | None, cached: bool = True) -> Judge:
    """--judge SPEC: 'offline', 'offline:DIR', a known model name, a local model dir,
    hf/PATH, or any Inspect model string (openai/..., openai-api/..., vllm/...)."""
    from emeval.models import INSPECT_PROVIDERS, KNOWN_MODELS

    spec = spec or DEFAULT_JUDGE
    judge: Judge
    if spec == "offline" or spec.startswith("offline:"):
        from emeval.judging.offline import OfflineJudge

        judge = OfflineJudge.load(spec.partition(":")[2] or None)
    else:
        provider, _, rest = spec.partition("/")
        local = rest if provider in ("hf", "emeval") and Path(rest).expanduser().is_dir() else spec
        if spec in KNOWN_MODELS or Path(local).expanduser().is_dir():
            from emeval.judging.local import LocalLogprobJudge
            from emeval.models import resolve_model

            judge = LocalLogprobJudge(resolve_model(local).local_path, name=spec)
        elif provider in INSPECT_PROVIDERS and rest:
            from emeval.judging.llm import InspectJudge

            judge = InspectJudge(spec)
        else:
            raise EmevalError(
                f"unknown judge {spec!r}: use 'offline', a known model name, a local model dir "
                "or an Inspect model string such as openai/gpt-4o-2024-08-06"
            )
    return CachedJudge(judge) if cached else judge
