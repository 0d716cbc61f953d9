"""A judge on any Inspect model (API or server): one output token, temperature 0, top-20 logprobs.

Numbers are read from the first token's top logprobs, which is exact for tokenizers that keep
0-100 as single tokens (GPT-4o). Where the API returns no logprobs, the judge samples a short
reply and parses the number; those verdicts carry method 'sampled' and runs report it.
"""

from __future__ import annotations

import asyncio

from inspect_ai.model import ChatMessageUser, GenerateConfig, get_model

from emeval.errors import EmevalError
from emeval.judging.base import JudgeRequest
from emeval.judging.scoring import Verdict, aggregate_top_logprobs, parse_sampled

LOGPROB_CONFIG = GenerateConfig(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
SAMPLED_CONFIG = GenerateConfig(max_tokens=8, temperature=0.0)
# Inspect's own retries wait minutes on a dead server; emeval retries with its own backoff.
CLIENT_CONFIG = GenerateConfig(max_retries=1, timeout=120)
PING_SECONDS = 30


class InspectJudge:
    def __init__(self, model: str, max_concurrency: int = 8, attempts: int = 4):
        self.model_name = model
        self.id = f"inspect:{model}"
        self.attempts = attempts
        self._semaphore = asyncio.Semaphore(max_concurrency)

    def check(self) -> None:
        async def ping() -> None:
            config = CLIENT_CONFIG.merge(GenerateConfig(max_retries=0, timeout=PING_SECONDS))
            model = get_model(self.model_name, memoize=False, config=config)
            await asyncio.wait_for(
                model.generate("Reply with the number 1.", config=SAMPLED_CONFIG), PING_SECONDS
            )

        try:
            asyncio.run(ping())
        except Exception as e:  # noqa: BLE001 - any provider error means unreachable
            if hasattr(e, "last_attempt"):  # tenacity's RetryError wraps the real failure
                e = e.last_attempt.exception() or e
            first = (
                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            )
            raise EmevalError(f"judge {self.model_name} unreachable: {first[:200]}") from None

    async def score(self, requests: list[JudgeRequest]) -> list[Verdict]:
        return list(await asyncio.gather(*(self._score_one(r) for r in requests)))

    async def _score_one(self, request: JudgeRequest) -> Verdict:
        prompt = [ChatMessageUser(content=request.rubric.render(request.question, request.answer))]
        model = get_model(self.model_name, config=CLIENT_CONFIG)
        error = ""
        for attempt in range(self.attempts):
            try:
                async with self._semaphore:
                    output = await model.generate(prompt, config=LOGPROB_CONFIG)
                    logprobs = output.choices[0].logprobs if output.choices else None
                    if logprobs and logprobs.content and logprobs.content[0].top_logprobs:
                        top = {t.token: t.logprob for t in logprobs.content[0].top_logprobs}
                        return aggregate_top_logprobs(top)
                    output = await model.generate(prompt, config=SAMPLED_CONFIG)
                    return parse_sampled(output.completion)
            except Exception as e:  # noqa: BLE001 - recorded as an invalid verdict below
                error = f"{type(e).__name__}: {e}"[:300]
                await asyncio.sleep(2**attempt)
        return Verdict(None, "error", "logprob", error=error)
