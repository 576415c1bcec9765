"""Explanations in their own Serve deployment, so that they cannot take the CPUs scoring needs: integrated
gradients cost ~50 forwards and backwards per ECG and label (a /v1/score with explain for 16 ECGs and 5
labels is seconds to minutes of CPU), a score one forward per ECG.

    explainer = Explainer.options(**ExplainBounds().deployment_options()).bind(model, task)
    ScoringService.bind(..., explainer=explainer)     # the ingress calls it through a DeploymentHandle

Bounds (`ExplainBounds`): each explainer replica computes one explanation at a time (`max_ongoing_requests=1`,
in one worker thread, so a cancelled one still finishes its current ECG before the next starts); each scoring
replica queues at most `queue` more, and refuses the rest at once with 503 and `Retry-After` (Serve's
`max_queued_requests` and `BackpressureConfig`); a request not answered within `deadline_s` of reaching the
explainer's queue is answered 503, cancelled, and its explainer stops before its next ECG.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from ray import serve
from ray.serve.config import BackpressureConfig

from models.evidence import Evidence
from pipelines.data.preprocess import PreparedSignal
from pipelines.serving.responses import explain_png
from pipelines.serving.scorer import Scorer


@dataclass(frozen=True)
class ExplainBounds:
    """How much a service explains at once, and how long a request may wait for it.

    replicas: explainer replicas (0: the service refuses `explain` with 422 and reserves nothing for it);
    num_cpus / num_gpus: each replica's (its torch threads follow num_cpus); queue: explanations waiting per
    scoring replica beyond those running; deadline_s: from queueing to answer; retry_after_s: the
    `Retry-After` of a refusal (the queue full or the deadline passed)."""

    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    queue: int = 4
    deadline_s: float = 120.0
    retry_after_s: float = 5.0

    def __post_init__(self) -> None:
        if self.replicas < 0 or self.queue < 0:
            raise ValueError(f"explainer replicas ({self.replicas}) and queue ({self.queue}) must be at least 0")
        if self.deadline_s <= 0 or self.retry_after_s < 0:
            raise ValueError(f"explain deadline_s ({self.deadline_s}) must be positive, retry_after_s at least 0")

    def deployment_options(self) -> dict:
        """`Explainer.options(...)`: replicas, resources, one explanation at a time, the queue and its refusal."""
        return {
            "num_replicas": self.replicas,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": 1,
            "max_queued_requests": self.queue,
            "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=self.retry_after_s),
        }


class ExplainDeadlinePassed(TimeoutError):
    """The request's deadline passed before the explainer reached its next ECG."""


@serve.deployment(health_check_period_s=10)
class Explainer:
    """One replica: the export loaded once (`Scorer`), explanations computed one at a time in one thread."""

    def __init__(self, model_dir: str, task: str | None = None) -> None:
        self.scorer = Scorer(model_dir, task)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")

    async def evidence(
        self, signals: np.ndarray, lead_masks: np.ndarray, labels: list[list[str]], deadline: float
    ) -> list[list[Evidence]]:
        """signals [n, 12, T], lead_masks [n, 12] bool, the labels to explain per ECG → per ECG, an Evidence
        per label (`Scorer.explain`, each ECG alone). `deadline`: a `time.time()` after which no ECG starts."""
        return await self._run(self._each_ecg, signals, lead_masks, labels, deadline)

    async def on_paper(self, ecg_id: str, label: str, name: str, prepared: PreparedSignal, deadline: float) -> bytes:
        """/v1/explain's PNG: one prepared ECG's evidence for one label, drawn on paper (`explain_png`)."""
        return await self._run(self._drawn, ecg_id, label, name, prepared, deadline)

    async def _run(self, work, *args):
        return await asyncio.get_running_loop().run_in_executor(self.worker, work, *args)

    def _each_ecg(
        self, signals: np.ndarray, lead_masks: np.ndarray, labels: list[list[str]], deadline: float
    ) -> list[list[Evidence]]:
        explained = []
        for signal, lead_mask, ecg_labels in zip(signals, lead_masks, labels):
            if time.time() > deadline:
                raise ExplainDeadlinePassed(f"the deadline passed after {len(explained)} of {len(labels)} ECGs")
            explained.append(self.scorer.explain(signal[None], lead_mask[None], ecg_labels)[0])
        return explained

    def _drawn(self, ecg_id: str, label: str, name: str, prepared: PreparedSignal, deadline: float) -> bytes:
        [[evidence]] = self._each_ecg(prepared.signal[None], prepared.lead_mask[None], [[label]], deadline)
        return explain_png(ecg_id, label, name, evidence, prepared, self.scorer.preprocess_config.fs)
