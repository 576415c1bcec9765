"""The Serve app on a free loopback port, for tests that talk to it over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def served(app, name: str) -> Iterator[int]:
    """Start Serve's proxy on a free 127.0.0.1 port, run `app` (a bound deployment) at `/` as `name`,
    yield the port; shut Serve down afterwards."""
    from ray import serve

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(app, name=name, route_prefix="/")
        yield port
    finally:
        serve.shutdown()
