"""Peak memory of a command: the summed PSS of its process and all its descendants (the driver, and the raylet,
GCS and workers of the Ray cluster it starts), sampled while it runs.

    measured = run_measured([sys.executable, "-m", "pipelines.prepare", ...], env=env)
    measured.seconds, measured.peak_mib                    # wall time from start to exit, peak summed PSS
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Measured:
    """One command's wall time (start-up included) and the peak summed PSS of its process tree, MiB."""

    seconds: float
    peak_mib: float


def tree_pss_mib(root: psutil.Process) -> float:
    """Summed PSS (MiB) of `root` and its descendants now; processes gone meanwhile count 0.
    Raises psutil.NoSuchProcess when `root` itself is gone."""
    total = 0
    for proc in [root] + root.children(recursive=True):
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


class PeakSampler:
    """Samples `tree_pss_mib` of a process every `interval_s` in a thread, keeping the peak, until stopped."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        self.peak_mib = 0.0
        self._root = psutil.Process(pid)
        self._interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                self.peak_mib = max(self.peak_mib, tree_pss_mib(self._root))
            except psutil.NoSuchProcess:
                return
            self._done.wait(self._interval_s)

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self._done.set()
        self._thread.join()
        return self.peak_mib


def run_measured(command: list[str], env: dict[str, str], log: Path | None = None, timeout_s: float = 7200) -> Measured:
    """Run `command` to its end, its output into `log` (or discarded); RuntimeError naming the command and the
    log if it exits non-zero."""
    with open(log, "w") if log else open("/dev/null", "w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        sampler = PeakSampler(process.pid)
        code = process.wait(timeout=timeout_s)
        seconds = time.perf_counter() - started
        peak = sampler.stop()
    if code != 0:
        raise RuntimeError(f"exit {code}: {' '.join(command)}" + (f" (output: {log})" if log else ""))
    return Measured(seconds, peak)
