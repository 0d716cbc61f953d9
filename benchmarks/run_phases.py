"""Wall time of a default `emeval run`, split into load, generate, judge and report.

    python benchmarks/run_phases.py                       # the default run (general suite)
    python benchmarks/run_phases.py --max-connections 512 -- --judge smollm2-135m-instruct

Runs emeval.runner.run in this process with timers around its parts: everything before the
first generation request (checkpoint checks, judge loading, Inspect start-up, model load) is
"load"; "generate" is the span in which the engine has requests; judging runs as each sample
finishes, so "judge busy" overlaps generation and "judge tail" is what is left after the last
answer; "report" writes results.json and summary.md. Peak memory is this process's max RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


class Spans:
    """Union of [start, end) intervals in which at least one call was running."""

    def __init__(self):
        self.active = 0
        self.began = 0.0
        self.total = 0.0
        self.first = self.last = None

    def enter(self):
        now = time.perf_counter()
        if self.active == 0:
            self.began = now
        self.first = self.first or now
        self.active += 1

    def leave(self):
        now = time.perf_counter()
        self.active -= 1
        if self.active == 0:
            self.total += now - self.began
        self.last = now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-connections", type=int, help="passed to emeval run")
    parser.add_argument(
        "--warm-judge-cache",
        action="store_true",
        help="use emeval's judge-call cache (default: an empty one, so judging is timed)",
    )
    parser.add_argument("run_args", nargs="*", help="more `emeval run` arguments after --")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import emeval.runner as runner
    from emeval.backend import engine as engine_module
    from emeval.cli import build_parser
    from emeval.judging import cache as base

    generation, judging, report = Spans(), Spans(), Spans()
    submit = engine_module.Engine.submit

    def timed_submit(self, prompt, params):
        generation.enter()
        future = submit(self, prompt, params)
        future.add_done_callback(lambda _: generation.leave())
        return future

    engine_module.Engine.submit = timed_submit
    score = base.CachedJudge.score

    async def timed_score(self, requests):
        judging.enter()
        try:
            return await score(self, requests)
        finally:
            judging.leave()

    base.CachedJudge.score = timed_score
    write = runner._write_from_log

    def timed_write(*a, **kw):
        report.enter()
        try:
            return write(*a, **kw)
        finally:
            report.leave()

    runner._write_from_log = timed_write

    with tempfile.TemporaryDirectory() as out:
        if not args.warm_judge_cache:  # the run is seeded: a rerun would hit cached verdicts
            init = base.JudgeCache.__init__

            def fresh_cache(self, path=None):
                init(self, path or Path(out) / "judge_cache.sqlite")

            base.JudgeCache.__init__ = fresh_cache
        argv = ["run", "--out", str(Path(out) / "run")] + args.run_args
        if args.max_connections:
            argv += ["--max-connections", str(args.max_connections)]
        parsed = build_parser().parse_args(argv)
        start = time.perf_counter()
        code = parsed.func(parsed)
        end = time.perf_counter()
        records = Path(out) / "run" / "samples.jsonl"
        samples = len(records.read_text().splitlines()) if records.exists() else 0
    if code:
        return code
    if generation.first is None:
        print("no generation went through the emeval engine (another provider?)")
        return 1
    load = generation.first - start
    tail = max(0.0, (judging.last or generation.last) - generation.last)
    print(f"emeval run {' '.join(argv[3:])}: {samples} samples")
    print(f"  total    {end - start:6.1f} s")
    print(f"  load     {load:6.1f} s  (checks, judge, Inspect start-up, model load)")
    print(f"  generate {generation.total:6.1f} s  (engine busy)")
    print(f"  judge    {judging.total:6.1f} s busy, {tail:.1f} s after the last answer")
    print(f"  report   {report.total:6.1f} s")
    other = end - start - load - (generation.last - generation.first) - tail - report.total
    print(f"  other    {other:6.1f} s  (Inspect bookkeeping, log writing)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS {peak:6.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
