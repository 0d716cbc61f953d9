"""The judge-call cache: verdicts stored by (judge id, rubric hash, how prompts are rendered,
question, answer), shared by every process on the machine."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from emeval.judging.base import Judge, JudgeRequest
from emeval.judging.rubrics import RENDERING
from emeval.judging.scoring import Verdict
from emeval.resources import cache_dir


class JudgeCache:
    """Content-addressed store of verdicts: (judge id, rubric hash, question, answer)."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_dir() / "judge_cache.sqlite"
        # several processes (a grid's cells, parallel runs) judge at once: wait for a lock
        # instead of failing, and let readers go on while one writes
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, json TEXT)")

    @staticmethod
    def key(judge_id: str, request: JudgeRequest) -> str:
        parts = [judge_id, request.rubric.sha256, RENDERING, request.question, request.answer]
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
        self.cache = cache or JudgeCache()

    @property
    def validation(self) -> dict | None:
        return getattr(self.inner, "validation", None)

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
