"""Parts every benchmark group shares: the loopback server, the in-process endpoint,
connection pools, the event-loop heartbeat and the round profile."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import httpx

from ._pool import PreopenedTransport
from ._server import STATIC_TOKEN

__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "STATIC_TOKEN",
    "Endpoint",
    "LoopbackServer",
    "Profile",
    "StallMeter",
    "in_process_endpoint",
    "loopback_server",
    "open_pool",
    "with_heartbeat",
]

T = TypeVar("T")

CLIENT_ID = "bench-client"
CLIENT_SECRET = "bench-client-secret"

# Seconds the loopback server may live; a benchmark group takes far less.
SERVER_MAX_SECONDS = 1800.0


@dataclass(frozen=True)
class Profile:
    """How long to measure: the number of rounds and the size of each one."""

    quick: bool
    rounds: int

    def pick(self, quick: T, full: T) -> T:
        """Return ``quick`` for a quick run and ``full`` otherwise."""
        return quick if self.quick else full


@dataclass(frozen=True)
class Endpoint:
    """Destination of a client variant's API and token requests.

    ``transport`` builds the API client's transport (``None`` for httpx's stock pool).
    The token transports are set for the in-process endpoint and are ``None`` on loopback,
    where token clients open real connections.
    """

    base_url: str
    token_url: str
    api_path: str
    async_token_transport: Callable[[], httpx.AsyncBaseTransport] | None = None
    sync_token_transport: Callable[[], httpx.BaseTransport] | None = None


# -- in-process --------------------------------------------------------------

_TOKEN_BODY = json.dumps(
    {"access_token": "in-process-token", "token_type": "Bearer", "expires_in": 3600}
).encode()


def _mock_handler(request: httpx.Request) -> httpx.Response:
    """Respond like the loopback server, without sockets and without checking tokens.

    The API responds with 401 when no Authorization header arrived, so a variant that fails to
    authenticate cannot look fast.
    """
    if request.url.path == "/token":
        return httpx.Response(
            200, content=_TOKEN_BODY, headers={"content-type": "application/json"}
        )
    if "authorization" not in request.headers:
        return httpx.Response(401, content=b"missing token")
    return httpx.Response(200, content=b"ok")


def mock_transport() -> httpx.MockTransport:
    """Return an in-process transport that serves the API and the token endpoint."""
    return httpx.MockTransport(_mock_handler)


def in_process_endpoint() -> Endpoint:
    """Return the endpoint served in-process by :func:`mock_transport`."""
    return Endpoint(
        base_url="https://api.example.test",
        token_url="https://auth.example.test/token",
        api_path="/api",
        async_token_transport=mock_transport,
        sync_token_transport=mock_transport,
    )


# -- loopback ----------------------------------------------------------------


class LoopbackServer:
    """The benchmark server (``bench._server``) running in a child process.

    Settings and counters go through a blocking client: call :meth:`control` and
    :meth:`stats` only outside a measured window.
    """

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._control = httpx.Client(base_url=self.base_url, timeout=10.0)

    def endpoint(self) -> Endpoint:
        """Return the endpoint for clients of this server."""
        return Endpoint(base_url=self.base_url, token_url=f"{self.base_url}/token", api_path="/api")

    def control(self, **settings: Any) -> dict[str, int]:
        """Change settings (see ``bench._server``) and return the counters."""
        response = self._control.post("/control", json=settings)
        response.raise_for_status()
        return _counters(response.json())

    def stats(self) -> dict[str, int]:
        """Return the server's counters."""
        response = self._control.get("/stats")
        response.raise_for_status()
        return _counters(response.json())

    def close(self) -> None:
        """Stop the server process and wait for it."""
        self._control.close()
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def _counters(data: Any) -> dict[str, int]:
    return {str(name): int(value) for name, value in dict(data).items()}


@contextmanager
def loopback_server() -> Iterator[LoopbackServer]:
    """Start the benchmark server on 127.0.0.1 and a free port; stop it on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench._server", "--max-seconds", str(SERVER_MAX_SECONDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("PORT "):
        process.kill()
        raise RuntimeError(f"the benchmark server did not start; it printed {line!r}")
    server = LoopbackServer(process, int(line.split()[1]))
    try:
        yield server
    finally:
        server.close()


async def open_pool(base_url: str, connections: int) -> httpx.AsyncBaseTransport:
    """Return a transport with ``connections`` connections to ``base_url`` already open.

    Requests wait in line for a free connection; see :mod:`bench._pool` for why this is
    not httpx's own pool. The caller's client takes over the transport and closes it.
    """
    return await PreopenedTransport.open(base_url, connections)


# -- event-loop health -------------------------------------------------------


class StallMeter:
    """A task that sleeps 1 ms in a loop and records how late it wakes up.

    ``max_stall`` is the longest delay beyond the 1 ms, in seconds: the longest time the
    event loop ran other code without returning to this task.
    """

    interval = 0.001

    def __init__(self) -> None:
        self.max_stall = 0.0
        self.wakeups = 0

    async def run(self) -> None:
        """Measure until cancelled."""
        last = time.perf_counter()
        while True:
            await anyio.sleep(self.interval)
            now = time.perf_counter()
            self.max_stall = max(self.max_stall, now - last - self.interval)
            self.wakeups += 1
            last = now


async def with_heartbeat(work: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """Run ``work`` while a :class:`StallMeter` runs; return its result and the max stall."""
    meter = StallMeter()
    result: list[T] = []
    async with anyio.create_task_group() as group:
        group.start_soon(meter.run)
        # Let the heartbeat take its first reading before the work starts.
        await anyio.sleep(0.005)
        meter.max_stall = 0.0
        result.append(await work())
        group.cancel_scope.cancel()
    return result[0], meter.max_stall


def collect_garbage() -> None:
    """Collect garbage between measurements so one variant's garbage is not another's cost."""
    gc.collect()


# -- load --------------------------------------------------------------------


@dataclass
class LoadOutcome:
    """Result of one load run: elapsed seconds, requests, and responses other than 200."""

    elapsed: float
    requests: int
    failures: int

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.elapsed


async def drive(client: httpx.AsyncClient, path: str, workers: int, total: int) -> LoadOutcome:
    """Send ``total`` GET requests from ``workers`` tasks, each waiting for its response."""
    per_worker = total // workers
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for _ in range(per_worker):
            response = await client.get(path)
            if response.status_code != 200:
                failures += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(workers):
            group.start_soon(worker)
    return LoadOutcome(time.perf_counter() - start, per_worker * workers, failures)


async def drive_for(
    client: httpx.AsyncClient, path: str, workers: int, seconds: float
) -> LoadOutcome:
    """Send GET requests from ``workers`` tasks for ``seconds``, each waiting for its response."""
    requests = 0
    failures = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal requests, failures
        while time.perf_counter() < deadline:
            response = await client.get(path)
            requests += 1
            if response.status_code != 200:
                failures += 1

    start = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(workers):
            group.start_soon(worker)
    return LoadOutcome(time.perf_counter() - start, requests, failures)
