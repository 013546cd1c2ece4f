"""The demo's load: many concurrent tasks sending requests through one client."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TextIO

import anyio
import httpx

from .._errors import TokenflightError

__all__ = ["LimitedTransport", "LoadResult", "ProgressBar", "drive"]


class LimitedTransport(httpx.AsyncBaseTransport):
    """A transport that lets at most ``limit`` requests into the connection pool at once.

    httpcore's pool scans every queued request against every connection each time a
    request starts or ends, so 900 requests queued on 100 connections make each request
    cost milliseconds of CPU. Requests wait here instead, in an anyio semaphore, after
    the auth flow has run: all the load tasks still go through AuthClient at once. A
    request keeps its slot until its response is closed.

    :param inner: the transport that sends the requests.
    :param semaphore: the slots; create it inside the event loop.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, semaphore: anyio.Semaphore) -> None:
        self._inner = inner
        self._semaphore = semaphore

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._semaphore.acquire()
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._semaphore.release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, self._semaphore)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its transport slot back when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, semaphore: anyio.Semaphore) -> None:
        self._stream = stream
        self._semaphore: anyio.Semaphore | None = semaphore

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            semaphore, self._semaphore = self._semaphore, None
            if semaphore is not None:
                semaphore.release()


@dataclass
class LoadResult:
    """The counts and latencies of one load run, as the client saw them.

    :param statuses: how many responses had each status code.
    :param errors: how many requests raised each error class.
    :param first_errors: the first message of each error class.
    :param latencies: seconds from sending each request to its response, in order of
        completion; failed requests included.
    :param duration: seconds from the first request to the last response.
    """

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: dict[str, str] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    duration: float = 0.0

    @property
    def completed(self) -> int:
        """Requests that got a response or raised."""
        return sum(self.statuses.values()) + sum(self.errors.values())


class ProgressBar:
    """A one-line progress bar on a text stream, redrawn a few times a second.

    :param total: the number of steps at 100 %.
    :param stream: where to draw, normally standard error.
    :param enabled: draw at all; when false, every method does nothing.
    """

    def __init__(self, total: int, *, stream: TextIO, enabled: bool, width: int = 30) -> None:
        self.total = total
        self.done = 0
        self._stream = stream
        self._enabled = enabled
        self._width = width
        self._started = time.monotonic()

    def advance(self) -> None:
        """Count one more step done."""
        self.done += 1

    def draw(self) -> None:
        """Redraw the bar in place."""
        if not self._enabled:
            return
        share = self.done / self.total if self.total else 1.0
        filled = int(share * self._width)
        elapsed = max(time.monotonic() - self._started, 1e-9)
        line = (
            f"\r[{'#' * filled}{'.' * (self._width - filled)}] "
            f"{self.done:,}/{self.total:,} requests, {self.done / elapsed:,.0f}/s"
        )
        self._stream.write(line)
        self._stream.flush()

    async def redraw_forever(self, interval: float = 0.1) -> None:
        """Redraw every ``interval`` seconds until cancelled."""
        while True:
            self.draw()
            await anyio.sleep(interval)

    def close(self) -> None:
        """Draw the final state and end the line."""
        if not self._enabled:
            return
        self.draw()
        self._stream.write("\n")
        self._stream.flush()


async def drive(
    client: httpx.AsyncClient,
    *,
    total: int,
    concurrency: int,
    in_flight: int,
    progress: ProgressBar,
    after_request: Callable[[int], None] | None = None,
) -> LoadResult:
    """Send ``total`` GET requests to ``/items/<n>`` from ``concurrency`` tasks.

    Each task takes the next request number until all are taken. At most ``in_flight``
    requests are inside the client at once. The other tasks wait for a slot before their
    request starts, so that no token waits in a queue long enough to expire. Latency is
    measured from the moment a request gets its slot. ``after_request`` is called with
    the number of requests completed so far, after each one.
    """
    result = LoadResult()
    next_number = 0
    slots = anyio.Semaphore(in_flight)

    async def worker() -> None:
        nonlocal next_number
        while next_number < total:
            number = next_number
            next_number += 1
            async with slots:
                sent = time.perf_counter()
                try:
                    response = await client.get(f"/items/{number}")
                except (httpx.HTTPError, TokenflightError) as error:
                    name = type(error).__name__
                    result.errors[name] += 1
                    result.first_errors.setdefault(name, str(error))
                else:
                    result.statuses[response.status_code] += 1
                result.latencies.append(time.perf_counter() - sent)
            progress.advance()
            if after_request is not None:
                after_request(result.completed)

    started = time.perf_counter()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(progress.redraw_forever)
        async with anyio.create_task_group() as workers:
            for _ in range(min(concurrency, total)):
                workers.start_soon(worker)
        result.duration = time.perf_counter() - started
        task_group.cancel_scope.cancel()
    progress.close()
    return result
