"""The Serve app on a loopback port, for tests that talk to it over real HTTP.

Serve's proxy starts once per session (the `serve_port` fixture of tests/conftest.py); each module runs its app
behind it at `/` and deletes every app afterwards (a module may run more beside it), so no replica outlives
its module to hold CPUs the next tests need.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.ray_cluster import free_ports


def start_proxy() -> int:
    """Start Serve with its HTTP proxy on a free 127.0.0.1 port; the port."""
    from ray import serve

    (port,) = free_ports(1)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


@contextmanager
def served(app, name: str) -> Iterator[None]:
    """Run `app` (a bound deployment) at `/` as `name` behind the session's proxy; delete every app afterwards,
    those the test ran beside it too."""
    from ray import serve

    try:
        serve.run(app, name=name, route_prefix="/")
        yield
    finally:
        for running in serve.status().applications:
            serve.delete(running)
