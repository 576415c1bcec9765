"""Running training figures on one worker: loss terms, throughput, time spent waiting for data.

meter.record_batch(data_seconds, compute_seconds, samples, losses)
meter.line(step, total_steps)   # "step 120/600 · 41.3 samples/s · loss 3.21 (rhythm 2.10 …) · data wait 2.1 % · ETA 3m10s"
meter.figures()                 # the same figures as a dict, for Ray Train and TensorBoard
"""

from __future__ import annotations

import time
from collections import defaultdict


class StepMeter:
    """Sums since the last `reset`; samples/s is per worker × `world_size` (equal batches everywhere)."""

    def __init__(self, world_size: int, start_step: int) -> None:
        self.world_size = world_size
        self.started = time.perf_counter()
        self.start_step = start_step
        self.reset()

    def reset(self) -> None:
        self.window_started = time.perf_counter()
        self.loss_sums: dict[str, float] = defaultdict(float)
        self.batches = 0
        self.samples = 0
        self.data_seconds = 0.0
        self.compute_seconds = 0.0

    def record_batch(self, data_seconds: float, compute_seconds: float, samples: int, losses: dict) -> None:
        self.data_seconds += data_seconds
        self.compute_seconds += compute_seconds
        self.samples += samples
        self.batches += 1
        for name, value in losses.items():
            self.loss_sums[name] += float(value.detach()) if hasattr(value, "detach") else float(value)

    def figures(self) -> dict[str, float]:
        elapsed = max(1e-9, time.perf_counter() - self.window_started)
        busy = max(1e-9, self.data_seconds + self.compute_seconds)
        figures = {f"train_{name}": total / max(1, self.batches) for name, total in self.loss_sums.items()}
        figures["samples_per_s"] = self.samples * self.world_size / elapsed
        figures["data_wait_fraction"] = self.data_seconds / busy
        return figures

    def line(self, step: int, total_steps: int) -> str:
        figures = self.figures()
        losses = figures.get("train_loss", float("nan"))
        terms = " ".join(
            f"{name.removeprefix('train_').removesuffix('_loss')} {value:.3f}"
            for name, value in figures.items()
            if name.startswith("train_") and name != "train_loss"
        )
        steps_done = step - self.start_step
        rate = steps_done / max(1e-9, time.perf_counter() - self.started)
        eta = _duration((total_steps - step) / rate) if rate > 0 else "?"
        return (
            f"step {step}/{total_steps} · {figures['samples_per_s']:.1f} samples/s · loss {losses:.3f} ({terms}) · "
            f"data wait {100 * figures['data_wait_fraction']:.1f} % · ETA {eta}"
        )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
