"""A judge on any Inspect model (API or server): temperature 0, top-20 logprobs.

The first output token's top logprobs hold the score distribution only when the tokenizer
keeps 0-100 as single tokens (GPT-4o); those verdicts carry method 'logprob'. Open models
served behind vLLM, llama.cpp or Ollama (SmolLM2, Qwen, Llama-2, Gemma) split "85" into "8",
"5", and reading the first token would score 8. When the top tokens hold single digits but no
multi-digit number, the judge continues each likely first digit with a further request whose
assistant message is that digit, and scores the numbers 0-100 from their digit-sequence
probabilities (method 'logprob_digits'), as the exact local judge does on a local model.

A continuation is trusted only when the server's prompt grew by exactly the prefix's tokens;
a server that opens a new turn instead makes the judge refuse, in one line naming it. Where
the API returns no logprobs, the judge samples a short reply and parses the number (method
'sampled'; runs report it).
"""

from __future__ import annotations

import asyncio
import math
import re

from inspect_ai.model import (
    ChatMessageAssistant,
    ChatMessageUser,
    GenerateConfig,
    ModelOutput,
    get_model,
)

from emeval.errors import EmevalError
from emeval.judging.base import JudgeRequest
from emeval.judging.scoring import (
    NUMBER_MASS_MIN,
    Verdict,
    aggregate_number_probs,
    aggregate_top_logprobs,
    parse_sampled,
)
from emeval.models import PING_SECONDS, check_served, provider_error

LOGPROB_CONFIG = GenerateConfig(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20)
# vLLM appends a new assistant header after the last message unless told to continue it;
# llama.cpp's server continues a trailing assistant message by itself and ignores these keys.
CONTINUE_CONFIG = LOGPROB_CONFIG.merge(
    GenerateConfig(extra_body={"add_generation_prompt": False, "continue_final_message": True})
)
# the same, with the logprob of each prompt token (vLLM): P(first digit) for digits that
# were not among the first token's top 20
PROMPT_LOGPROB_CONFIG = CONTINUE_CONFIG.merge(GenerateConfig(prompt_logprobs=1))
SAMPLED_CONFIG = GenerateConfig(max_tokens=8, temperature=0.0)
# Inspect's own retries wait minutes on a dead server; emeval retries with its own backoff.
CLIENT_CONFIG = GenerateConfig(max_retries=1, timeout=120)
# Bumped when the way scores are computed changes: verdicts cached under an older protocol
# (first-digit scores of digit-splitting judges) are not reused.
PROTOCOL = "2"

NUMBERS = {str(n) for n in range(101)}
# number strings that other numbers extend ("1".."9", "10"): each needs one continuation
EXTENDABLE = {s[:i] for s in NUMBERS for i in range(1, len(s))}
# A first digit below this probability is not continued (its mass is left out of the
# numbers): at most 9 such digits, so the score moves by well under a point. A verdict costs
# at most 12 requests: the first token, the digits 1-9, "10", and "0" when it is not in the
# first token's top 20.
MIN_PREFIX_PROB = 1e-4
# Digits outside the first token's top 20 are measured (one request each, with prompt
# logprobs, which a server computes without its prefix cache) only where they could move the
# score by more than this many points or change whether there is a score at all.
UNSEEN_POINTS = 0.5
_ASCII_DIGITS = re.compile(r"[0-9]+")


def _ascii_number(token: str) -> str | None:
    """The token as a number string 0-100 without leading zeros, or None ('²' is not one)."""
    s = token.strip()
    return s if _ASCII_DIGITS.fullmatch(s) and s in NUMBERS else None


def splits_digits(top: dict[str, float]) -> bool:
    """A tokenizer that keeps numbers whole offers some multi-digit number among a judge's
    top-20 tokens; one that splits them offers single digits only."""
    numbers = [n for n in map(_ascii_number, top) if n is not None]
    return bool(numbers) and all(len(n) == 1 for n in numbers)


def _prompt_tokens(output: ModelOutput) -> int | None:
    u = output.usage
    if u is None:
        return None
    # Inspect reports prompt tokens served from the server's prefix cache separately
    return u.input_tokens + (u.input_tokens_cache_read or 0) + (u.input_tokens_cache_write or 0)


def _last_prompt_prob(output: ModelOutput, text: str) -> float | None:
    """P(the assistant prefix's one token | the prompt), from vLLM's prompt logprobs."""
    plp = output.choices[0].prompt_logprobs if output.choices else None
    if not (plp and plp.content) or plp.content[-1].token.strip() != text.strip():
        return None
    return math.exp(plp.content[-1].logprob)


class _Unscorable(Exception):
    """This verdict cannot be computed exactly (others may be): an invalid verdict."""


def _top_logprobs(output: ModelOutput) -> dict[str, float] | None:
    logprobs = output.choices[0].logprobs if output.choices else None
    if not (logprobs and logprobs.content and logprobs.content[0].top_logprobs):
        return None
    top: dict[str, float] = {}
    for t in logprobs.content[0].top_logprobs:
        # two token ids may decode to one string: their probabilities add up
        top[t.token] = math.log(math.exp(top.get(t.token, -math.inf)) + math.exp(t.logprob))
    return top


class InspectJudge:
    def __init__(self, model: str, max_concurrency: int = 8, attempts: int = 4):
        self.model_name = model
        self.id = f"inspect:{model}@p{PROTOCOL}"
        self.attempts = attempts
        self.max_concurrency = max_concurrency
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._refusal: str | None = None  # set once the judge is known not to score exactly

    def check(self) -> None:
        """Reachable, and not a digit-splitting judge whose server cannot continue a prefix
        (one judge-shaped probe; a judge that offers no digits on it is checked later)."""
        from emeval.judging.rubrics import load_rubric

        check_served(self.model_name, role="judge")
        config = CLIENT_CONFIG.merge(GenerateConfig(max_retries=0, timeout=PING_SECONDS))

        async def probe() -> None:
            model = get_model(self.model_name, memoize=False, config=config)
            prompt = load_rubric("coherence").render("What is 2 + 2?", "2 + 2 is 4.")
            try:
                await asyncio.wait_for(self._score_prompt(model, prompt), 4 * PING_SECONDS)
            except _Unscorable:  # this answer only; others may score
                pass

        try:
            asyncio.run(probe())
        except EmevalError:
            raise
        except Exception as e:  # noqa: BLE001 - any provider error means unreachable
            raise EmevalError(f"judge {self.model_name} unreachable: {provider_error(e)}") from None
        finally:
            # a semaphore that waited in the probe's event loop cannot be used in the run's
            self._semaphore = asyncio.Semaphore(self.max_concurrency)

    async def score(self, requests: list[JudgeRequest]) -> list[Verdict]:
        return list(await asyncio.gather(*(self._score_one(r) for r in requests)))

    async def _score_one(self, request: JudgeRequest) -> Verdict:
        prompt = request.rubric.render(request.question, request.answer)
        model = get_model(self.model_name, config=CLIENT_CONFIG)
        error = ""
        for attempt in range(self.attempts):
            try:
                return await self._score_prompt(model, prompt)
            except (EmevalError, _Unscorable) as e:  # not exactly scorable: retrying cannot help
                return Verdict(None, "error", "logprob_digits", error=str(e))
            except Exception as e:  # noqa: BLE001 - recorded as an invalid verdict below
                error = f"{type(e).__name__}: {e}"[:300]
                await asyncio.sleep(2**attempt)
        return Verdict(None, "error", "logprob", error=error)

    async def _generate(self, model, messages, config: GenerateConfig) -> ModelOutput:
        async with self._semaphore:
            return await model.generate(messages, config=config)

    async def _score_prompt(self, model, prompt: str) -> Verdict:
        if self._refusal:
            raise EmevalError(self._refusal)
        messages = [ChatMessageUser(content=prompt)]
        output = await self._generate(model, messages, LOGPROB_CONFIG)
        top = _top_logprobs(output)
        if top is None:
            output = await self._generate(model, messages, SAMPLED_CONFIG)
            return parse_sampled(output.completion)
        if not splits_digits(top):
            return aggregate_top_logprobs(top)
        return await self._score_digits(model, prompt, top, _prompt_tokens(output))

    async def _score_digits(
        self, model, prompt: str, first: dict[str, float], prompt_tokens: int | None
    ) -> Verdict:
        """P(n) for n in 0..100 from digit sequences: P("85") = P("8") P("5" | "8"), and a
        number that others extend must also end: P("8") = P("8") P(no digit follows | "8").
        As in the exact local judge, a two-digit number is not checked for a third digit."""
        numbers: dict[int, float] = {}
        other: dict[str, float] = {}
        seen: dict[str, tuple[str, float]] = {}  # first digit -> (its token, probability)
        for token, logprob in first.items():
            p, number = math.exp(logprob), _ascii_number(token)
            if number is None:
                other[token] = other.get(token, 0.0) + p
            elif number not in seen or p > seen[number][1]:
                # "8" and " 8": the likelier spelling is continued, the other left out
                seen[number] = (token, p)
        # A digit outside the top 20 is less likely than the 20th token, and all of them
        # together hold at most what the top 20 leave over.
        unseen = [d for d in "0123456789" if d not in seen]
        floor = min(math.exp(lp) for lp in first.values())
        unseen_max = min(max(0.0, 1.0 - sum(map(math.exp, first.values()))), floor * len(unseen))
        seen_mass = sum(p for _, p in seen.values())
        if seen_mass + unseen_max < NUMBER_MASS_MIN:
            # the numbers cannot hold more than their first digits: no score, whatever
            # follows, so nothing more is requested (number_mass stays unknown, not guessed)
            verdict = aggregate_number_probs({}, other, "logprob_digits")
            verdict.number_mass = None
            verdict.distribution |= {f"{d}...": p for d, (_, p) in seen.items()}
            return verdict

        def add(number: str, p: float) -> None:
            numbers[int(number)] = numbers.get(int(number), 0.0) + p

        async def extend(text: str, number: str, p: float | None, depth: int) -> None:
            """Continue the assistant message `text` (ending in `number`); p is P(text), or
            None to read P(its first digit) from the server's prompt logprobs."""
            messages = [ChatMessageUser(content=prompt), ChatMessageAssistant(content=text)]
            config = CONTINUE_CONFIG if p is not None else PROMPT_LOGPROB_CONFIG
            output = await self._generate(model, messages, config)
            self._check_continued(prompt_tokens, _prompt_tokens(output), depth)
            if p is None:
                p = _last_prompt_prob(output, text)
                if p is None:
                    raise _Unscorable(
                        f"judge {self.model_name}: digits outside the top 20 hold up to "
                        f"{unseen_max:.3f} and the server gives no prompt logprobs"
                    )
            if number not in EXTENDABLE:  # "0": no number goes on from it
                add(number, p)
                return
            top = _top_logprobs(output)
            if top is None:
                raise _Unscorable(f"judge {self.model_name}: no logprobs on a continuation")
            goes_on = 0.0
            deeper = []
            for token, logprob in top.items():
                q = math.exp(logprob)
                if token[:1].isdigit():  # any digit-led token means the number goes on
                    goes_on += q
                longer = number + token
                if _ASCII_DIGITS.fullmatch(token) and longer in NUMBERS:
                    if longer in EXTENDABLE:  # "10" may still become "100"
                        deeper.append(extend(text + token, longer, p * q, depth + 1))
                    else:
                        add(longer, p * q)
            add(number, p * max(0.0, 1.0 - goes_on))
            await asyncio.gather(*deeper)

        jobs = []
        for digit, (token, p) in seen.items():
            if digit not in EXTENDABLE:
                add(digit, p)
            elif p >= MIN_PREFIX_PROB:
                jobs.append(extend(token, digit, p, 1))
        await asyncio.gather(*jobs)
        # Unseen digits add at most unseen_max anywhere in 0..100: measure them only where
        # that could cross the score threshold or move the score by more than UNSEEN_POINTS.
        mass = sum(numbers.values())
        crosses = mass < NUMBER_MASS_MIN <= mass + unseen_max
        moves = mass >= NUMBER_MASS_MIN and 100 * unseen_max / mass > UNSEEN_POINTS
        if unseen and (crosses or moves):
            await asyncio.gather(*(extend(d, d, None, 1) for d in unseen))
        return aggregate_number_probs(numbers, other, "logprob_digits")

    def _check_continued(self, first: int | None, continued: int | None, depth: int) -> None:
        """A server that ignored the assistant prefix, or closed it and opened a new turn,
        would give the first token's distribution again, and a wrong score without a sign."""
        if first is not None and continued is not None and continued - first == depth:
            return
        grew = "unknown" if first is None or continued is None else str(continued - first)
        self._refusal = (
            f"judge {self.model_name} splits numbers into digits and its server did not "
            f"continue an assistant prefix (prompt grew by {grew} tokens, not {depth}), so it "
            "cannot be scored exactly; serve it with vLLM or llama.cpp, or use a local judge"
        )
        raise EmevalError(self._refusal)
