"""A progress line for long Ray jobs: records done, rate, rejections so far, ETA.

Tasks report to a zero-CPU `ProgressCounter` actor (fire and forget); a driver thread prints a
line every few seconds. Counts from retried tasks may repeat, so the line is a guide; the final
summary comes from the job's own results.
"""

from __future__ import annotations

import sys
import threading
import time

import ray


@ray.remote(num_cpus=0)
class ProgressCounter:
    def __init__(self) -> None:
        self.done = 0
        self.rejected = 0

    def add(self, done: int, rejected: int) -> None:
        self.done += done
        self.rejected += rejected

    def totals(self) -> tuple[int, int]:
        return self.done, self.rejected


class ProgressLine:
    """Context manager printing `label: done/total records · rate · rejected · ETA` periodically."""

    def __init__(self, label: str, total: int, interval_s: float = 5.0, stream=sys.stderr) -> None:
        self.label = label
        self.total = total
        self.interval_s = interval_s
        self.stream = stream
        self.counter = ProgressCounter.remote()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.time()

    def __enter__(self) -> ProgressLine:
        self._started = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        ray.kill(self.counter)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            done, rejected = ray.get(self.counter.totals.remote())
            elapsed = time.time() - self._started
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = f"{(self.total - done) / rate:.0f} s" if rate > 0 else "?"
            print(
                f"{self.label}: {done:,}/{self.total:,} records · {rate:,.0f}/s · {rejected:,} rejected · ETA {eta}",
                file=self.stream,
                flush=True,
            )
