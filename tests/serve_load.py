"""A bounded HTTP load on loopback for the Serve tests and benchmarks: kinds of traffic side by side, each a
number of client threads with one request in flight each, for a fixed time.

    scoring = Traffic("score", f"{url}/v1/score", bodies, "application/json", clients=8, headers=AUTH)
    (result,) = run_load([scoring], seconds=10)          # result.p99_s, result.statuses, ...

A client answered 503 with `Retry-After` waits that long (within the load's time) before its next request,
as a well-behaved client does; every request carries a timeout, so a hung server fails the load instead of
stalling it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import requests


@dataclass(frozen=True)
class Traffic:
    """One kind of request: `clients` threads posting `bodies` in turn to `url`."""

    name: str
    url: str
    bodies: list[bytes]
    content_type: str
    clients: int
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 120.0


@dataclass
class LoadResult:
    """Per request of one traffic, in completion order: latency (s), status, the answer's Retry-After (or
    None), its JSON `field` when refused (or None)."""

    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    retry_after: list[str | None] = field(default_factory=list)
    fields: list[str | None] = field(default_factory=list)
    seconds: float = 0.0

    def percentile_s(self, q: float, status: int = 200) -> float:
        """The `q`th percentile latency of the requests answered `status`."""
        chosen = [t for t, s in zip(self.latencies, self.statuses) if s == status]
        return float(np.percentile(chosen, q)) if chosen else float("nan")

    def count(self, status: int) -> int:
        return sum(s == status for s in self.statuses)

    @property
    def throughput(self) -> float:
        """Requests answered 200 per second."""
        return self.count(200) / self.seconds if self.seconds else 0.0


def run_load(traffics: list[Traffic], seconds: float) -> list[LoadResult]:
    """Every traffic's clients at once until `seconds` have passed; a result per traffic, in order."""
    results = [LoadResult(t.name) for t in traffics]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(traffic: Traffic, result: LoadResult, index: int) -> None:
        session = requests.Session()
        headers = {**traffic.headers, "Content-Type": traffic.content_type}
        i = index
        while time.perf_counter() < deadline:
            body = traffic.bodies[i % len(traffic.bodies)]
            started = time.perf_counter()
            response = session.post(traffic.url, data=body, headers=headers, timeout=traffic.timeout_s)
            elapsed = time.perf_counter() - started
            refused_field = _field(response) if response.status_code >= 400 else None
            with lock:
                result.latencies.append(elapsed)
                result.statuses.append(response.status_code)
                result.retry_after.append(response.headers.get("Retry-After"))
                result.fields.append(refused_field)
            wait = response.headers.get("Retry-After")
            if response.status_code == 503 and wait is not None:
                time.sleep(max(0.0, min(float(wait), deadline - time.perf_counter())))
            i += traffic.clients

    threads = [
        threading.Thread(target=client, args=(traffic, result, k))
        for traffic, result in zip(traffics, results)
        for k in range(traffic.clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        result.seconds = time.perf_counter() - started
    return results


def _field(response: requests.Response) -> str | None:
    try:
        return response.json().get("field")
    except ValueError:
        return None
