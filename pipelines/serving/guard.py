"""The HTTP app's door: the bearer token, and the bounds of a request body (size and time), as a plain
ASGI middleware in front of the routes; and the rule that a server listening beyond loopback has a token.

    app.add_middleware(RequestGuard)   # settings from app.state: token, max_body_bytes, body_timeout_s
    require_token(token, host="0.0.0.0", allow_no_token=False)   # ValueError: set ECG_FM_API_TOKEN
"""

import asyncio
import hmac
import ipaddress
import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_ENV = "ECG_FM_API_TOKEN"
MAX_BODY_BYTES = 32 * 2**20
"""Bodies larger than this are refused with 413, by their Content-Length or as their bytes arrive."""
BODY_TIMEOUT_S = 10.0
"""A body not complete this long after the request reached the app is refused with 408 and its
connection closed (a client that trickles its body holds nothing for longer)."""
CLOSE = {"Connection": "close"}
"""On a refusal mid-body: Serve's proxy (uvicorn) closes the client connection after such a response."""


class RequestGuard:
    """ASGI middleware: the bearer token (when configured) on every route but /healthz, and the body's
    bounds: its size by Content-Length before it is read and by counting bytes as they arrive (chunked
    bodies too), and its time (`body_timeout_s` from the request's arrival). A body refused mid-way gets
    its 413 / 408 with `Connection: close`. (A plain ASGI class: Starlette's `BaseHTTPMiddleware` costs a
    task group and a stream per request.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = scope["app"].state
        problem = self._header_problem(scope, settings)
        if problem is not None:
            status, detail = problem
            return await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
        await self.app(scope, BoundedBody(receive, settings.max_body_bytes, settings.body_timeout_s), send)

    @staticmethod
    def _header_problem(scope: Scope, settings) -> tuple[int, str] | None:
        headers = Headers(scope=scope)
        if scope["path"] != "/healthz" and settings.token:
            scheme, _, supplied = headers.get("authorization", "").partition(" ")
            if scheme != "Bearer" or not hmac.compare_digest(supplied.strip().encode(), settings.token.encode()):
                return 401, "authorization: a valid bearer token is required (Authorization: Bearer <token>)"
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.max_body_bytes:
            return 413, f"body: {int(length):,} bytes; the limit is {settings.max_body_bytes:,}"
        return None


class BoundedBody:
    """An ASGI `receive` that counts body bytes and keeps a deadline: raises a 413 / 408 `HTTPException`
    (with `Connection: close`) as soon as either bound is passed."""

    def __init__(self, receive: Receive, max_bytes: int, timeout_s: float) -> None:
        self.receive, self.max_bytes, self.timeout_s = receive, max_bytes, timeout_s
        self.deadline = time.monotonic() + timeout_s
        self.received = 0

    async def __call__(self) -> Message:
        try:
            message = await asyncio.wait_for(self.receive(), max(self.deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise HTTPException(408, f"body: not complete within {self.timeout_s:g} s", headers=CLOSE) from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                raise HTTPException(413, f"body: over the limit of {self.max_bytes:,} bytes", headers=CLOSE)
            if not message.get("more_body", False):
                self.deadline = float("inf")
        return message


def require_token(token: str | None, host: str | None, allow_no_token: bool) -> None:
    """Refuse to serve without a bearer token on an address other hosts reach (`host` None: unknown, as in
    a Serve config, so taken as reachable) unless `allow_no_token` says the network is trusted."""
    if token or allow_no_token or _is_loopback(host):
        return
    raise ValueError(
        f"serving on {host or 'the cluster address'} without a bearer token: set {TOKEN_ENV} (e.g. "
        "`openssl rand -hex 32`), or pass allow_no_token / --insecure-no-token on a network only trusted "
        "clients reach"
    )


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
