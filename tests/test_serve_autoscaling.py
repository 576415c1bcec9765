"""Serve's autoscaling through the app's settings (issue 37): under a bounded load the scoring replicas grow from
`min_replicas` to `max_replicas`, and shrink back once the load ends."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ray.serve.config import AutoscalingConfig

from pipelines.serving.explainer import ExplainBounds
from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.serve_load import Traffic, run_load
from tests.served import served

pytestmark = pytest.mark.slow  # a Serve app under load

AUTOSCALING = AutoscalingConfig(
    min_replicas=1, max_replicas=2, target_ongoing_requests=1, metrics_interval_s=0.5, look_back_period_s=2,
    upscale_delay_s=1, downscale_delay_s=2,
)


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications["ecg-fm-autoscaling"].deployments["ScoringService"]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for_replicas(count: int, timeout_s: float) -> float:
    """Seconds until `count` scoring replicas run; TimeoutError past `timeout_s`."""
    started = time.monotonic()
    while running_replicas() != count:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{running_replicas()} replicas running after {timeout_s:.0f} s, not {count}")
        time.sleep(0.5)
    return time.monotonic() - started


def test_replicas_grow_under_load_and_shrink_after_it(serve_port, tiny_export):
    from pipelines.serve import scoring_app

    app = scoring_app(str(tiny_export("melp")), "synthetic", num_cpus=0.5, explain=ExplainBounds(replicas=0),
                      autoscaling=AUTOSCALING)
    signals, _ = generate_batch(8, np.random.default_rng(1), SyntheticConfig(n=8))
    ecg = {"b64": base64.b64encode(signals.astype("<f4").tobytes()).decode(), "shape": list(signals.shape)}
    traffic = Traffic("score", f"http://127.0.0.1:{serve_port}/v1/score", [json.dumps({"ecg": ecg}).encode()],
                      "application/json", clients=8)
    with served(app, "ecg-fm-autoscaling"):
        assert running_replicas() == 1
        seen = []
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(run_load, [traffic], 20.0)
            while not load.done():
                seen.append(running_replicas())
                time.sleep(0.5)
            (loaded,) = load.result()
        assert set(loaded.statuses) == {200}
        assert max(seen) == AUTOSCALING.max_replicas, seen  # grown under the load
        wait_for_replicas(AUTOSCALING.min_replicas, timeout_s=60)  # and back once it ended
