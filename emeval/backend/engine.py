"""A generation engine for evaluation workloads on a local transformers checkpoint.

Requests (token ids + sampling settings) are queued from any thread; one worker thread runs them
together: prompts sorted by length are prefilled in groups (identical prompts once), every
running row advances one token per forward pass, finished rows leave at once and waiting
requests take their place. The key/value cache is sized to a memory budget, so a large run
queues instead of growing without bound.

Sampling follows transformers' sampling pipeline (temperature, then top-k, then top-p, then
one multinomial draw) so the answers come from the same distribution as `model.generate`;
temperature 0 is greedy. Unlike transformers' `generate`, top-k is off unless asked for
(transformers quietly applies top_k=50), which is what vLLM and hosted APIs do.
"""

from __future__ import annotations

import logging
import queue
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emeval.backend.compute import TORCH_LOCK, can_pack, pack_linear_layers
from emeval.backend.params import Completion, SamplingParams, TokenLogprob
from emeval.backend.queued import GATHER_IDLE_S, GATHER_MAX_S, QueuedEngine
from emeval.backend.runners import HFRunner, SlotRunner, fast_path_supported

logger = logging.getLogger(__name__)

DEFAULT_KV_CACHE_GB = 1.0  # on a CPU; on a GPU, a share of the memory left after loading
GPU_KV_SHARE = 0.4  # leaves room for activations and a judge model on the same GPU
DEFAULT_MAX_BATCH = 256
PREFILL_TOKENS = 8192  # padded prompt tokens per prefill pass
DRAW_BLOCK_ROWS = 16


@dataclass
class _Job:
    prompt: list[int]
    params: SamplingParams
    future: Future
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str | None = None  # set when a stop string ended it


# ---------------------------------------------------------------- precision


_dtype_choice: dict[str, torch.dtype] = {}
# bf16 on a CPU only when its matrix multiply takes under this share of fp32's time: a small
# gain does not pay for bf16's rounding
BF16_TIME_SHARE = 0.7


def cpu_matmul_seconds(rounds: int = 5) -> dict[torch.dtype, float]:
    """Seconds for a few fp32 and bf16 matrix multiplies of a decoding step's size: the best
    of several alternating rounds, so that another process taking the core during one round
    (a shared machine) cannot decide the choice."""
    x, w = torch.randn(64, 512), torch.randn(512, 512)
    pairs = {dtype: (x.to(dtype), w.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    timings = dict.fromkeys(pairs, float("inf"))
    for a, b in pairs.values():
        a @ b  # warm-up: the first call picks and prepares its kernel
    for _ in range(rounds):
        for dtype, (a, b) in pairs.items():
            start = time.perf_counter()
            for _ in range(5):
                a @ b
            timings[dtype] = min(timings[dtype], time.perf_counter() - start)
    return timings


def dtype_from_timings(timings: dict[torch.dtype, float]) -> torch.dtype:
    faster = timings[torch.bfloat16] < BF16_TIME_SHARE * timings[torch.float32]
    return torch.bfloat16 if faster else torch.float32


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 where it is measured faster than fp32 on this device, else fp32.

    CPUs without native bf16 instructions (AVX512-BF16/AMX) emulate it and run bf16 matrix
    multiplies many times slower than fp32, so this is a quick timing, not a flag check."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type != "cpu":
        return torch.float32
    if "cpu" not in _dtype_choice:
        timings = cpu_matmul_seconds()
        _dtype_choice["cpu"] = dtype_from_timings(timings)
        logger.info("matmul timings %s: using %s", timings, _dtype_choice["cpu"])
    return _dtype_choice["cpu"]


def _as_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return pick_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16}
    names |= {"bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return names[dtype]


# ---------------------------------------------------------------- sampling


def sample_next(
    logits: torch.Tensor, params: list[SamplingParams], generator: torch.Generator | None
) -> torch.Tensor:
    """One token per row of fp32 logits (rows, vocab), each row with its own settings.
    Same steps and order as transformers' temperature/top-k/top-p warpers."""
    sampled = [i for i, p in enumerate(params) if p.temperature > 0]
    if not sampled:
        return logits.argmax(-1)

    def tensor(values):
        return torch.tensor(values, device=logits.device)

    everyone = len(sampled) == len(params)
    scores = logits if everyone else logits[tensor(sampled)]
    temperatures = [params[i].temperature for i in sampled]
    if any(t != 1.0 for t in temperatures):
        scores = scores / tensor(temperatures).to(scores.dtype)[:, None]
    top_k = [params[i].top_k for i in sampled]
    if any(k > 0 for k in top_k):
        k_max = min(max(top_k), scores.shape[-1])
        kth = scores.topk(k_max, dim=-1).values  # descending
        ks = tensor([min(k, k_max) if k > 0 else k_max for k in top_k])
        threshold = kth.gather(1, (ks - 1)[:, None])
        off = tensor([k <= 0 for k in top_k])[:, None]
        scores = scores.masked_fill((scores < threshold) & ~off, float("-inf"))
    top_p = tensor([params[i].top_p for i in sampled])
    if bool((top_p < 1.0).any()):
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        drop = mass_before >= top_p[:, None]
        drop[:, 0] = False  # always keep the most likely token
        scores = scores.scatter(1, order, ordered.masked_fill(drop, float("-inf")))
    drawn = draw(scores, generator)
    if everyone:
        return drawn
    tokens = logits.argmax(-1)
    tokens[tensor(sampled)] = drawn
    return tokens


def draw(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row from softmax(scores), by inverting the cumulative distribution
    (in float64): exact like torch.multinomial, which on a CPU costs ~2 ms per row. On a CPU rows
    go in blocks so each block's float64 copy stays in cache (3.5x faster at 162 rows)."""
    u = torch.rand(scores.shape[0], 1, dtype=torch.float64, generator=generator)
    u = u.to(scores.device)  # drawn on the CPU generator: same stream on any device
    index = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
    block = DRAW_BLOCK_ROWS if scores.device.type == "cpu" else scores.shape[0]
    for start in range(0, scores.shape[0], block):
        rows = slice(start, start + block)
        cumulative = scores[rows].softmax(-1).double().cumsum_(-1)
        index[rows] = torch.searchsorted(cumulative, u[rows] * cumulative[:, -1:], right=True)[:, 0]
    return index.clamp_(max=scores.shape[-1] - 1)


# ---------------------------------------------------------------- engine


class Engine(QueuedEngine):
    """Batched generation on one local checkpoint. Thread-safe `submit`, one worker thread."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        dtype: str | torch.dtype | None = "auto",
        device: str | None = None,
        threads: int | None = None,
        kv_cache_gb: float | None = None,
        max_batch: int | None = None,
        runner: str = "auto",
        pack_weights: bool | None = None,
        seed: int | None = None,
        **load_args,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(int(threads))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = _as_dtype(dtype, self.device)
        self.model_dir = Path(model_dir)
        trust = bool(load_args.get("trust_remote_code", False))
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, trust_remote_code=trust)
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=self.dtype, **load_args
        ).to(self.device)
        self.model.eval()
        self.eos_ids = self._eos_ids()
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        self.kv_budget = self._kv_budget(kv_cache_gb)
        self.max_batch = int(max_batch or DEFAULT_MAX_BATCH)
        self.runner = self._make_runner(runner)
        packable = can_pack(self.model)
        if pack_weights is None:
            pack_weights = packable and isinstance(self.runner, SlotRunner)
        if pack_weights and not packable:
            raise ValueError("pack_weights needs fp32 weights on a CPU with oneDNN")
        if pack_weights:
            pack_linear_layers(self.model)
        self.generator = torch.Generator(device="cpu")
        self.seed = None
        self.reseed(seed)
        self._start_queue()
        self.stats = {"forward_s": 0.0, "prefill_tokens": 0, "generated_tokens": 0}

    # ------------------------------------------------------------ setup

    def _eos_ids(self) -> set[int]:
        ids = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        return ids

    def _kv_budget(self, gigabytes: float | None) -> int:
        if gigabytes:
            return int(gigabytes * 2**30)
        default = int(DEFAULT_KV_CACHE_GB * 2**30)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return max(default, int(free * GPU_KV_SHARE))
        return default

    def _make_runner(self, choice: str):
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else min(self.eos_ids or {0})
        if choice == "hf" or (choice == "auto" and not fast_path_supported(self.model)):
            return HFRunner(self.model, pad)
        if choice not in ("auto", "slots"):
            raise ValueError(f"unknown runner {choice!r}; use auto, slots or hf")
        fast = SlotRunner(self.model)
        if choice == "auto" and not self._agrees_with_model(fast):
            logger.warning("fast path disagrees with the model's own forward; not using it")
            return HFRunner(self.model, pad)
        return fast

    @torch.inference_mode()
    def _agrees_with_model(self, runner: SlotRunner) -> bool:
        """Check the fast path against the model's own forward on a short text, so a
        variant the fast path does not know about falls back instead of giving wrong text."""
        ids = self.tokenizer.encode("The quick brown fox jumps over the lazy dog. 1, 2, 3,")
        ids = ids[:24]
        if len(ids) < 8:
            return True
        reference = self.model(torch.tensor([ids], device=self.device)).logits[0, -5:-1].float()
        runner.reserve(1, len(ids))
        got = [runner.add([ids[:-4]])[0]]  # predicts ids[-4]; each step predicts the next one
        for t in ids[-4:-1]:
            got.append(runner.step(torch.tensor([t]))[0])
        runner.release()
        got = torch.stack(got)
        scale = reference.abs().max()
        tolerance = 1e-3 if self.dtype == torch.float32 else 5e-2
        return bool(((got - reference).abs().max() / scale) < tolerance)

    def reseed(self, seed: int | None) -> None:
        """Seed the sampler (once per run, like the stock hf provider): with the same seed,
        requests and batch composition, the same answers come out."""
        if seed is None or seed == self.seed:
            return
        self.seed = seed
        self.generator.manual_seed(int(seed))

    # ------------------------------------------------------------ queue hooks (see queued.py)

    def _refuse(self, prompt: list[int]) -> Exception | None:
        if len(prompt) >= self.max_positions:
            limit = self.max_positions
            return ValueError(f"prompt has {len(prompt)} tokens; the model takes {limit}")
        return None

    def _item(self, prompt: list[int], params: SamplingParams, future: Future) -> _Job:
        return _Job(prompt, params, future)

    def _release(self) -> None:
        self.runner.release()

    # ------------------------------------------------------------ worker

    def _run(self) -> None:
        pending: list[_Job] = []
        rows: list[_Job] = []  # row i of the runner's batch
        while True:
            if not self._gather(pending, block=not rows and not pending):
                closed = RuntimeError("engine closed before this request finished")
                for job in rows + pending:
                    if not job.future.done():
                        job.future.set_exception(closed)
                return
            try:
                self._admit(pending, rows)
                if rows:
                    self._advance(rows)
            except Exception as e:  # noqa: BLE001 - fail the affected requests, keep serving
                logger.exception("generation failed")
                for job in rows + pending:
                    if not job.future.done():
                        job.future.set_exception(e)
                rows.clear()
                pending.clear()
                self.runner.release()

    def _gather(self, pending: list[_Job], block: bool) -> bool:
        """Move queued jobs to pending; False once the engine is closed. An idle engine waits
        until requests stop arriving (Inspect sends one per sample, a few ms apart)."""
        try:
            job = self._queue.get() if block else self._queue.get_nowait()
        except queue.Empty:
            return not self._closed
        deadline = time.monotonic() + GATHER_MAX_S
        while job is not None:
            pending.append(job)
            wait = min(GATHER_IDLE_S, deadline - time.monotonic()) if block else 0
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return not self._closed
        return False

    def _need(self, job: _Job) -> int:
        return min(len(job.prompt) + job.params.max_tokens, self.max_positions)

    def _admit(self, pending: list[_Job], rows: list[_Job]) -> None:
        if not pending:
            return
        runner = self.runner
        if rows and not runner.supports_joining:
            return
        per_token = SlotRunner.bytes_per_token(self.model)
        if not rows:
            # room for requests still on their way, and for somewhat longer prompts; pages
            # of the cache that no row touches are never backed by memory
            need = max(self._need(j) for j in pending)
            capacity = min(self.max_positions, max(need, need * 5 // 4))
            slots = min(self.max_batch, max(1, self.kv_budget // (capacity * per_token)))
            runner.reserve(slots, capacity)
        else:
            slots = runner.slots
        free = slots - len(rows)
        if free <= 0 or (rows and free < min(len(pending), max(1, slots // 8))):
            return  # join in groups, not one prefill per finished row
        fits = [j for j in pending if self._need(j) <= (runner.capacity or 1 << 30)]
        # similar lengths share a prefill; copies of one prompt sit together and prefill once
        fits.sort(key=lambda j: (len(j.prompt), j.prompt))
        chosen = fits[:free]
        # prefill in chunks of bounded padded size (activations scale with rows x width)
        groups = []
        for job in chosen:
            if groups and (len(groups[-1]) + 1) * len(job.prompt) <= PREFILL_TOKENS:
                groups[-1].append(job)
            else:
                groups.append([job])
        if not runner.supports_joining:
            groups = groups[:1]  # the others wait for the next wave
        for group in groups:
            with TORCH_LOCK:
                began = time.perf_counter()
                logits = runner.add([j.prompt for j in group])
                self.stats["forward_s"] += time.perf_counter() - began
                self.stats["prefill_tokens"] += sum(len(j.prompt) for j in group)
                rows.extend(group)
                self._take(rows, len(rows) - len(group), logits)
        # only now: a job whose prefill raised must still be in rows or pending, where the
        # worker's handler fails its request (a job in neither would never be answered)
        taken = {id(j) for group in groups for j in group}
        pending[:] = [j for j in pending if id(j) not in taken]

    def _advance(self, rows: list[_Job]) -> None:
        last = torch.tensor([j.tokens[-1] for j in rows])
        with TORCH_LOCK:
            began = time.perf_counter()
            logits = self.runner.step(last)
            self.stats["forward_s"] += time.perf_counter() - began
            self._take(rows, 0, logits)

    def _take(self, rows: list[_Job], first: int, logits: torch.Tensor) -> None:
        """Sample one token for rows[first:], record it, and retire finished rows."""
        jobs = rows[first:]
        params = [j.params for j in jobs]
        tokens = sample_next(logits, params, self.generator).tolist()
        want = [i for i, p in enumerate(params) if p.logprobs]
        if want:
            logp = torch.log_softmax(logits[torch.tensor(want, device=logits.device)], dim=-1)
            k = max(params[i].top_logprobs for i in want)
            top = logp.topk(k, dim=-1) if k > 0 else None
            for n, i in enumerate(want):
                entry = TokenLogprob(tokens[i], float(logp[n, tokens[i]]), [])
                if top is not None:
                    kk = params[i].top_logprobs
                    ids, values = top.indices[n, :kk].tolist(), top.values[n, :kk].tolist()
                    entry.top = list(zip(ids, values, strict=True))
                jobs[i].logprobs.append(entry)
        self.stats["generated_tokens"] += len(tokens)
        done = []
        for i, (job, token) in enumerate(zip(jobs, tokens, strict=True)):
            job.tokens.append(token)
            if self._finished(job, token):
                done.append(first + i)
        if done:
            for row in done:
                self._resolve(rows[row])
            order = self.runner.remove(done)
            rows[:] = [rows[i] for i in order]

    def _finished(self, job: _Job, token: int) -> bool:
        if token in self.eos_ids:
            return True
        if job.params.stop:
            text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
            cuts = [text.find(s) for s in job.params.stop if s and s in text]
            if cuts:
                job.text = text[: min(cuts)]
                return True
        room = self.max_positions - len(job.prompt)
        return len(job.tokens) >= min(job.params.max_tokens, room)

    def _resolve(self, job: _Job) -> None:
        ended = job.tokens[-1] in self.eos_ids or job.text is not None
        tokens = job.tokens[:-1] if job.tokens[-1] in self.eos_ids else job.tokens
        text = job.text
        if text is None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        job.future.set_result(
            Completion(
                token_ids=job.tokens,
                text=text,
                finish_reason="stop" if ended else "length",
                prompt_tokens=len(job.prompt),
                logprobs=job.logprobs if job.params.logprobs else None,
            )
        )
