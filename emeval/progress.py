"""Progress of long work: a tqdm bar on a terminal, a plain line every few seconds otherwise
(CI logs and pipes get readable lines, not carriage returns)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts done out of total with the rate and an estimate of time left.

    with Progress("judging", total=n) as bar:
        bar.advance(k)
    """

    def __init__(self, label: str, total: int, unit: str = "answers", every_s: float = 10.0):
        self.label, self.total, self.unit, self.every_s = label, max(int(total), 0), unit, every_s
        self.done = 0
        self.start = self.last = time.monotonic()
        self._bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=label, unit=f" {unit}", leave=False)

    def __enter__(self) -> Progress:
        if self._bar is None:  # plain lines: say what starts, so a log shows the work began
            print(f"{self.label}: 0/{self.total} {self.unit}", file=sys.stderr, flush=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            print(self.line(now), file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = f"{left:.0f} s left" if left == left else "time left unknown"
        return f"{self.label}: {self.done}/{self.total} {self.unit} ({rate:.1f}/s, {eta})"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.done:
            took = time.monotonic() - self.start
            print(f"{self.label}: {self.done}/{self.total} {self.unit} in {took:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
