"""The `emeval/<model dir>` Inspect model provider.

Inspect calls `generate` once per sample, concurrently; every call hands its prompt to one
shared engine (engine.py, or vLLM where it is installed and chosen) which runs all of them as
one batch. Model args (`-M name=value`):

- backend: auto | transformers | vllm. auto uses vLLM on a CUDA GPU when vllm is importable,
  otherwise the transformers engine (on a CPU vLLM's ~30 s start costs more than it saves
  on an evaluation-sized run; see benchmarks/README.md).
- dtype: auto | float32 | bfloat16 | float16 (auto: bf16 only where measured faster).
- kv_cache_gb (default: 1.0 on a CPU; on a GPU 40% of the memory left after loading),
  max_batch (default 256), threads, device, runner (auto|slots|hf).
- pack_weights: true | false (default: true for the fast path in fp32 on a CPU with oneDNN:
  linear layers run on weights packed once for oneDNN; see compute.py).
- use_safetensors, trust_remote_code: passed on to transformers (emeval sets them from its
  checkpoint checks).

For tests only: EMEVAL_TEST_HOLD=N:FILE lets this process's first N generate calls through and
holds every later one until FILE exists, so a test can interrupt a run with work certainly left
(tests/test_run_cli.py). Unset, it is one environment lookup per call and changes nothing.
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import anyio
import sniffio
from inspect_ai._util.constants import DEFAULT_MAX_TOKENS
from inspect_ai.model import (
    ChatCompletionChoice,
    ChatMessage,
    ChatMessageAssistant,
    GenerateConfig,
    Logprob,
    Logprobs,
    ModelAPI,
    ModelOutput,
    ModelUsage,
    TopLogprob,
    modelapi,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from emeval.backend.params import Completion, SamplingParams
from emeval.formatting import shown

# one engine per (model dir, settings) in this process: Inspect may build several Model
# objects for the same model (e.g. per task), and each engine holds the weights
_engines: dict[tuple, Any] = {}
_engines_lock = threading.Lock()

ENGINE_ARGS = ("dtype", "device", "threads", "kv_cache_gb", "max_batch", "runner", "pack_weights")


def check_engine_args(args: dict) -> None:
    """Reject ill-typed engine args in one line (a text kv_cache_gb would otherwise be
    multiplied into a string of gigabytes before anything complained)."""
    for name in ("threads", "max_batch"):
        value = args.get(name)
        if value is not None and (type(value) is not int or value < 1):
            raise ValueError(f"{name} must be a whole number >= 1, got {shown(value)}")
    value = args.get("kv_cache_gb")
    if value is not None and (type(value) not in (int, float) or not 0 < value < float("inf")):
        raise ValueError(f"kv_cache_gb must be a number of gigabytes > 0, got {shown(value)}")
    value = args.get("pack_weights")
    if value is not None and type(value) is not bool:
        raise ValueError(f"pack_weights must be true or false, got {shown(value)}")


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken vllm install counts as absent
        return False
    return True


def choose_backend(requested: str | None) -> str:
    requested = requested or "auto"
    if requested not in ("auto", "transformers", "vllm"):
        raise ValueError(f"unknown backend {requested!r}; use auto, transformers or vllm")
    if requested != "auto":
        return requested
    import torch

    return "vllm" if torch.cuda.is_available() and vllm_available() else "transformers"


def get_engine(model_dir: str, backend: str, seed: int | None, args: dict) -> Any:
    key = (str(Path(model_dir).resolve()), backend, tuple(sorted(args.items(), key=str)))
    with _engines_lock:
        if key not in _engines:
            if backend == "vllm":
                from emeval.backend.vllm_engine import VLLMEngine

                _engines[key] = VLLMEngine(model_dir, seed=seed, **args)
            else:
                from emeval.backend.engine import Engine

                _engines[key] = Engine(model_dir, seed=seed, **args)
        engine = _engines[key]
    engine.reseed(seed)
    return engine


def close_engines() -> None:
    with _engines_lock:
        for engine in _engines.values():
            engine.close()
        _engines.clear()


class EmevalLocalAPI(ModelAPI):
    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig | None = None,
        **model_args: Any,
    ):
        config = config or GenerateConfig()
        if config.max_connections is None:
            # Inspect otherwise ramps concurrency up from 20 as requests succeed (adaptive
            # connections), which starves the batch; Model keeps this same config object
            config.max_connections = self.max_connections()
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        if not Path(model_name).is_dir():
            raise ValueError(f"emeval/{model_name}: not a local model directory")
        self.backend = choose_backend(model_args.pop("backend", None))
        args = {k: model_args.pop(k) for k in ENGINE_ARGS if model_args.get(k) is not None}
        check_engine_args(args)
        args.update(model_args)  # loading options (use_safetensors, trust_remote_code, ...)
        self.engine = get_engine(model_name, self.backend, config.seed, args)
        self.tokenizer = self.engine.tokenizer

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS

    def max_connections(self) -> int:
        # every sample's request waits in the engine's queue, so let them all through:
        # the engine, not Inspect, decides how many run at once (memory budget)
        return 4096

    def collapse_user_messages(self) -> bool:
        return True

    def close(self) -> None:
        # engines are shared across Model objects and live until the process ends
        pass

    def prompt_ids(self, messages: list[ChatMessage]) -> list[int]:
        chat = [{"role": m.role, "content": m.text} for m in messages]
        ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        if tools:
            raise ValueError("the emeval provider does not support tool calls")
        await _test_hold()
        prompt = self.prompt_ids(input)
        temperature = 1.0 if config.temperature is None else config.temperature
        params = SamplingParams(
            temperature=temperature,
            top_p=1.0 if config.top_p is None else config.top_p,
            top_k=config.top_k or 0,
            max_tokens=config.max_tokens or DEFAULT_MAX_TOKENS,
            stop=tuple(config.stop_seqs or ()),
            logprobs=bool(config.logprobs) or bool(config.top_logprobs),
            top_logprobs=config.top_logprobs or 0,
        )
        if config.seed is not None:
            self.engine.reseed(config.seed)
        futures = [self.engine.submit(prompt, params) for _ in range(config.num_choices or 1)]
        completions = [await _wait(f) for f in futures]
        return ModelOutput(
            model=self.model_name,
            choices=[self._choice(c) for c in completions],
            usage=ModelUsage(
                input_tokens=len(prompt),
                output_tokens=sum(len(c.token_ids) for c in completions),
                total_tokens=len(prompt) + sum(len(c.token_ids) for c in completions),
            ),
        )

    def _choice(self, completion: Completion) -> ChatCompletionChoice:
        logprobs = None
        if completion.logprobs is not None:
            logprobs = Logprobs(
                content=[
                    Logprob(
                        token=self._token(t.token_id),
                        logprob=t.logprob,
                        bytes=list(self._token(t.token_id).encode()),
                        top_logprobs=[
                            TopLogprob(
                                token=self._token(i), logprob=v, bytes=list(self._token(i).encode())
                            )
                            for i, v in t.top
                        ]
                        or None,
                    )
                    for t in completion.logprobs
                ]
            )
        return ChatCompletionChoice(
            message=ChatMessageAssistant(
                content=completion.text, model=self.model_name, source="generate"
            ),
            stop_reason="stop" if completion.finish_reason == "stop" else "max_tokens",
            logprobs=logprobs,
        )

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])


@modelapi(name="emeval")
def emeval_provider() -> type[ModelAPI]:
    return EmevalLocalAPI


async def _wait(future: Future) -> Completion:
    if sniffio.current_async_library() == "asyncio":
        return await asyncio.wrap_future(future)
    while not future.done():  # other event loops (trio): poll, cheaply
        await anyio.sleep(0.05)
    return future.result()


_test_hold_calls = 0


async def _test_hold() -> None:
    """EMEVAL_TEST_HOLD=N:FILE (see the module docstring); cancellable, so SIGINT still works."""
    global _test_hold_calls
    hold = os.environ.get("EMEVAL_TEST_HOLD")
    if not hold:
        return
    after, _, release = hold.partition(":")
    _test_hold_calls += 1  # on the event loop, before any await: no lock needed
    if _test_hold_calls > int(after):
        while not Path(release).exists():
            await anyio.sleep(0.05)
