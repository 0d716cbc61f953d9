"""What a generation request asks for and what it gets back (shared by both engines)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self):
        # a negative temperature would invert the distribution rather than fail
        if not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be 0 or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_tokens < 1 or self.top_logprobs < 0:
            raise ValueError(f"top_k, top_logprobs must be >= 0 and max_tokens >= 1: {self}")


@dataclass
class TokenLogprob:
    """Log-probability of a generated token under the model (before temperature and
    truncation, as vLLM and the stock hf provider report it), and the most likely tokens."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string) | "length"
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None
