"""A service stopped as Kubernetes and systemd stop one (issue 37): `pipelines.serve` answers SIGTERM by
finishing the request in flight, shutting Serve and its Ray down and exiting 0 within its grace period,
instead of Ray's stack dump and SIGABRT."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from pipelines.synthetic import SyntheticConfig, generate_batch
from tests.housekeeping import end, spawn
from tests.ray_cluster import REPO, free_ports

pytestmark = pytest.mark.slow  # a service with a Ray of its own

GRACE_PERIOD_S = 20


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited before it was ready"
        try:
            if requests.get(f"{url}/healthz", timeout=2).json().get("ready"):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} was not ready within {timeout_s:.0f} s")


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny_export, tmp_path):
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    log = (tmp_path / "serve.log").open("w")
    process = spawn(
        [sys.executable, "-m", "pipelines.serve", "--model", str(tiny_export("melp")), "--task", "synthetic",
         "--port", str(port), "--grace-period-s", str(GRACE_PERIOD_S), "--address", "local"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(url, process)
        signals, _ = generate_batch(4, np.random.default_rng(0), SyntheticConfig(n=4))
        ecg = {"b64": base64.b64encode(signals.astype("<f4").tobytes()).decode(), "shape": list(signals.shape)}
        body = json.dumps({"ecg": ecg, "labels": ["AFIB", "SR"], "explain": True})  # seconds of integrated gradients
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(requests.post, f"{url}/v1/score", data=body, timeout=GRACE_PERIOD_S + 30,
                                    headers={"Content-Type": "application/json"})
            time.sleep(1.0)
            assert not in_flight.done(), "the request must still be in flight when the signal comes"
            stopped_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            answer = in_flight.result()
        returncode = process.wait(timeout=GRACE_PERIOD_S + 30)
        took = time.monotonic() - stopped_at
        output = (tmp_path / "serve.log").read_text()
        assert answer.status_code == 200 and len(answer.json()["results"]) == 4, answer.text[:500]
        assert all(len(result["evidence"]) == 2 for result in answer.json()["results"])
        assert returncode == 0 and took < GRACE_PERIOD_S + 15, (returncode, took, output[-2000:])
        assert "SIGTERM received" not in output and "stopping: requests in flight have up to 20 s" in output
    finally:
        end(process)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=2)
