"""What both generation engines share: a thread-safe `submit` that queues a request and
starts one worker thread on first use, a blocking `generate`, and `close`.

A subclass builds its queue item in `_item` (under the lock, so per-request state such as a
drawn seed follows submission order), may refuse a prompt in `_refuse`, frees its resources
in `_release`, and consumes the queue in `_run` until it reads the None that `close` puts.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from emeval.backend.params import Completion, SamplingParams

# an idle engine waits for requests to stop arriving (Inspect sends one per sample, a few ms
# apart) before it starts: this long after the last one, and at most GATHER_MAX_S in all
GATHER_IDLE_S = 0.1
GATHER_MAX_S = 2.0


class QueuedEngine:
    worker_name = "emeval-engine"

    def _start_queue(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _item(self, prompt: list[int], params: SamplingParams, future: Future):
        raise NotImplementedError

    def _refuse(self, prompt: list[int]) -> Exception | None:
        return None

    def _release(self) -> None:
        pass

    def _run(self) -> None:
        raise NotImplementedError

    def submit(self, prompt: list[int], params: SamplingParams) -> Future:
        future: Future = Future()
        problem = RuntimeError("engine is closed") if self._closed else self._refuse(prompt)
        if problem is not None:
            future.set_exception(problem)
            return future
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(
                    target=self._run, name=self.worker_name, daemon=True
                )
                self._worker.start()
            item = self._item(list(prompt), params, future)
        self._queue.put(item)
        return future

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        futures = [self.submit(p, params) for p in prompts]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        if self._worker is not None:
            self._worker.join(timeout=30)
        self._release()
