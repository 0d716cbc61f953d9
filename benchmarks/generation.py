"""Stock Inspect `hf/` provider vs emeval's `emeval/` backend on the same probes and settings.

    python benchmarks/generation.py                      # 8 probes x 4 samples, 128 tokens, T=1
    python benchmarks/generation.py --probes 32 --samples 4 --max-tokens 256
    python benchmarks/generation.py --providers emeval   # only the emeval backend

Each provider runs in its own child process (so peak memory is its own), through a plain
Inspect eval of the first N prompts of the general suite with `epochs = samples`. Model loading
is timed apart from generation. Output tokens are counted the same way for both: the answer
text re-tokenized, plus one end-of-turn token when the answer stopped by itself (the stock
provider's usage counts the padded batch width, not each answer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROVIDERS = ("hf", "emeval")


def child(args) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.model import GenerateConfig, get_model
    from inspect_ai.solver import generate
    from transformers import AutoTokenizer

    from emeval.models import resolve_model
    from emeval.probes import load_suite

    ref = resolve_model(args.model)
    prompts = [p.user for p in load_suite("general").prompts[: args.probes]]
    config = GenerateConfig(
        temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed, top_p=1.0
    )
    model_args = dict(ref.model_args)
    if args.provider == "hf":
        model_args["device"] = "cpu" if not torch.cuda.is_available() else "cuda:0"
    start = time.perf_counter()
    model = get_model(f"{args.provider}/{ref.local_path}", config=config, **model_args)
    load_s = time.perf_counter() - start

    task = Task(dataset=[Sample(input=p) for p in prompts], solver=generate(), epochs=args.samples)
    tokenizer = AutoTokenizer.from_pretrained(ref.local_path)
    with tempfile.TemporaryDirectory() as log_dir:
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        log = inspect_eval(
            task,
            model=model,
            display="none",
            log_dir=log_dir,
            max_connections=args.max_connections,
            score=False,
        )[0]
        generate_s = time.perf_counter() - start
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
        if log.status != "success":
            raise SystemExit(f"{args.provider}: eval {log.status}: {log.error}")
        tokens = 0
        for sample in log.samples:
            choice = sample.output.choices[0]
            tokens += len(tokenizer.encode(choice.message.text, add_special_tokens=False))
            tokens += choice.stop_reason == "stop"
        samples = len(log.samples)
    return {
        "provider": args.provider,
        "samples": samples,
        "output_tokens": tokens,
        "load_s": round(load_s, 2),
        "generate_s": round(generate_s, 2),
        "tokens_per_s": round(tokens / generate_s, 1),
        "samples_per_s": round(samples / generate_s, 3),
        "cpu_s_per_1k_tokens": round(1000 * cpu_s / tokens, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "threads": torch.get_num_threads(),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}, load avg {load:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-connections", type=int, help="Inspect max_connections (default: all samples)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (both)")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", choices=PROVIDERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.child:
        args.provider = args.child
        print(json.dumps(child(args)))
        return 0

    print(f"machine: {machine()}")
    print(
        f"work: {args.probes} probes x {args.samples} samples, {args.max_tokens} new tokens, "
        f"temperature {args.temperature}, model {args.model}"
    )
    results = {}
    for provider in args.providers.split(","):
        command = [sys.executable, __file__, "--child", provider]
        for name in ("model", "probes", "samples", "max_tokens", "temperature", "seed"):
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        connections = args.max_connections or args.probes * args.samples
        command += ["--max-connections", str(connections)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        results[provider] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[provider]
        print(
            f"{provider:>7}: load {r['load_s']:6.1f} s  generate {r['generate_s']:6.1f} s  "
            f"{r['output_tokens']:6d} tokens  {r['tokens_per_s']:7.1f} tokens/s  "
            f"{r['samples_per_s']:6.2f} samples/s  "
            f"{r['cpu_s_per_1k_tokens']:5.1f} CPU-s/1k tokens  "
            f"peak RSS {r['peak_rss_mb']} MB",
            flush=True,
        )
    if "hf" in results and "emeval" in results:
        speedup = results["emeval"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
        wall = results["hf"]["generate_s"] / results["emeval"]["generate_s"]
        results["ratio_tokens_per_s"] = round(speedup, 2)
        print(f"emeval/hf: {speedup:.1f}x tokens/s, {wall:.1f}x less generation wall time")
    if args.json:
        settings = {k: str(v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"machine": machine(), "args": settings} | results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
