"""A loopback API that verifies HMAC signatures and rate-limits each quota bucket,
driven by 1,000 concurrent tasks through one key pool.

The server is a small ASGI app served by hypercorn on 127.0.0.1, in the test's own
event loop (asyncio or trio). Server and client read the same FakeClock, so rate-limit
windows pass in fake time while the requests travel over real sockets.
"""

from __future__ import annotations

import math
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast

import anyio
import httpx
import hypercorn.config
import pytest
import sniffio

from tokenflight import (
    Credentials,
    HmacAuth,
    HmacVerifier,
    KeyPool,
    RetryPolicy,
    SignatureVerificationError,
)
from tokenflight.testing import FakeClock

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

KEYS = {"id-1": "secret-1", "id-2": "secret-2", "id-3": "secret-3", "id-4": "secret-4"}
BUCKETS = {"P1": ["id-1", "id-2"], "P2": ["id-3"], "P3": ["id-4"]}
QUOTA = 50  # requests per bucket per window
WINDOW = 60.0  # seconds of fake time


class RateLimitedApi:
    """Verify each request's signature, then count it against its key's bucket."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        # The tolerance is wide because autojump moves fake time whenever every task
        # waits, including while requests are on the wire.
        self.verifier = HmacVerifier(KEYS, tolerance=3600, clock=clock)
        self.bucket_of = {key: bucket for bucket, keys in BUCKETS.items() for key in keys}
        self.used: Counter[tuple[str, int]] = Counter()
        self.accepted: Counter[str] = Counter()
        self.limited = 0
        self.rejected: list[str] = []
        self.in_flight: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        status, headers = self.answer(scope, body)
        raw_headers = [(name.encode(), value.encode()) for name, value in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": b""})

    def answer(self, scope: Scope, body: bytes) -> tuple[int, dict[str, str]]:
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        try:
            verified = self.verifier.verify(scope["method"], target, scope["headers"], body)
        except SignatureVerificationError as error:
            self.rejected.append(error.reason)
            return 401, {}
        assert verified.key_id is not None
        bucket = self.bucket_of[verified.key_id]
        now = self.clock.time()
        window = int(now // WINDOW)
        reset = (window + 1) * WINDOW
        used = self.used[bucket, window]
        if used >= QUOTA:
            self.limited += 1
            wait = str(max(1, math.ceil(reset - now)))
            return 429, {"Retry-After": wait, "X-RateLimit-Remaining": "0"}
        self.used[bucket, window] = used + 1
        self.accepted[verified.key_id] += 1
        return 200, {
            "X-RateLimit-Remaining": str(QUOTA - used - 1),
            "X-RateLimit-Reset": str(int(reset)),
        }


@asynccontextmanager
async def serve(app: RateLimitedApi) -> AsyncIterator[str]:
    """Serve ``app`` with hypercorn on 127.0.0.1 and a free port; yield its base URL."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    config = hypercorn.config.Config()
    # hypercorn takes over the listening socket, already bound and listening, so
    # connections queue in its backlog until hypercorn accepts them.
    config.bind = [f"fd://{listener.detach()}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    # Idle keep-alive connections must outlive the slowest stretch of the test, or
    # hypercorn may close one just as the client reuses it.
    config.keep_alive_timeout = 600.0
    config.backlog = 1024
    serve_app: Callable[..., Coroutine[Any, Any, None]]
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as serve_on_trio

        serve_app = cast(Callable[..., Coroutine[Any, Any, None]], serve_on_trio)
    else:
        from hypercorn.asyncio import serve as serve_on_asyncio

        serve_app = cast(Callable[..., Coroutine[Any, Any, None]], serve_on_asyncio)

    stop = anyio.Event()
    async with anyio.create_task_group() as group:
        group.start_soon(partial(serve_app, app, config, shutdown_trigger=stop.wait))
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop.set()


@pytest.mark.anyio
async def test_thousand_tasks_one_pool() -> None:
    clock = FakeClock(wall_start=1_700_000_040.0)  # 20 s before a window boundary
    app = RateLimitedApi(clock)
    pool = KeyPool.from_buckets(
        {bucket: [Credentials(key, KEYS[key]) for key in keys] for bucket, keys in BUCKETS.items()},
        clock=clock,
    )
    auth = HmacAuth(pool, clock=clock, retry=RetryPolicy(attempts=0, max_wait=3600))
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)

    async with (
        serve(app) as base_url,
        clock.autojump(),
        httpx.AsyncClient(base_url=base_url, auth=auth, limits=limits, timeout=60) as client,
    ):

        async def call(index: int) -> None:
            response = await client.post(f"/orders?n={index}", content=b'{"qty": 1}')
            statuses[response.status_code] += 1

        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                for index in range(1000):
                    group.start_soon(call, index)

    assert statuses == {200: 1000}
    assert app.rejected == []
    assert sum(app.accepted.values()) == 1000
    assert set(app.accepted) == set(KEYS)
    for (bucket, window), used in app.used.items():
        assert used <= QUOTA, (bucket, window)
    # The pool sends a bucket only as many requests as its responses report remaining,
    # with one probe after each reset, and waits out the reset instead of trying. So the
    # 1,000 callers never stampede a key, and the server never has to send a 429.
    assert app.limited == 0
    statistics = pool.statistics()
    assert statistics.in_flight == 0
    assert statistics.waiting == 0
    assert statistics.removed == 0
    assert statistics.leases == 1000 + app.limited
