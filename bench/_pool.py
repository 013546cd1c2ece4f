"""A pre-opened, first-come-first-served connection pool for the loopback benchmarks.

httpx 0.28 sends requests through httpcore's ``AsyncConnectionPool`` (httpcore 1.0.9).
On every request that starts or ends, that pool scans each queued request against each
connection. A burst of N queued requests therefore costs O(N x connections) per change
and O(N² x connections) in all. In a one-off measurement on the 2-core benchmark machine
(not repeated by this suite), 1,000 concurrent GETs through 100 already open connections
took 5.9 s with a 2.8 s event-loop stall, and 10,000 did not finish in 10 minutes.
Its idle check also counts every connection instead of the idle ones, so once more than
``max_keepalive_connections`` (20 by default) are open, every connection that turns idle
is closed.

Those costs belong to httpx, not to the auth layer, and they would swamp what the burst
figures compare. :class:`PreopenedTransport` therefore keeps httpx's own transport (the
same request and response conversion and error mapping) and replaces only its pool with
a fixed set of connections, opened before the measurement and handed out in arrival
order. The stock pool is measured separately.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType

import anyio
import httpcore
import httpx

__all__ = ["PreopenedTransport"]


class _ReleasingStream:
    """A response body that gives its connection back to the pool once closed."""

    def __init__(self, stream: Iterable[bytes] | AsyncIterable[bytes], release: _Release) -> None:
        if not isinstance(stream, AsyncIterable):
            raise TypeError("an async connection returned a synchronous response body")
        self._stream = stream
        self._release = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for part in self._stream:
            yield part

    async def aclose(self) -> None:
        try:
            close = getattr(self._stream, "aclose", None)
            if close is not None:
                await close()
        finally:
            self._release()


class _Release:
    """Return one connection to the pool, once."""

    def __init__(self, pool: _FifoPool, connection: httpcore.AsyncHTTPConnection) -> None:
        self._pool = pool
        self._connection = connection
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._pool.give_back(self._connection)


class _FifoPool:
    """A fixed number of HTTP/1.1 connections to one origin, handed out in arrival order."""

    def __init__(self, base_url: str, size: int) -> None:
        url = httpx.URL(base_url)
        port = url.port
        if port is None:
            port = 443 if url.scheme == "https" else 80
        self._origin = httpcore.Origin(url.raw_scheme, url.raw_host, port)
        self._size = size
        self._idle: list[httpcore.AsyncHTTPConnection] = []
        self._slots: anyio.Semaphore | None = None

    def _connection(self) -> httpcore.AsyncHTTPConnection:
        return httpcore.AsyncHTTPConnection(origin=self._origin)

    async def open(self, ping_path: str) -> None:
        """Open every connection with one request to ``ping_path``."""
        self._slots = anyio.Semaphore(self._size)
        connections = [self._connection() for _ in range(self._size)]
        url = httpcore.URL(
            scheme=self._origin.scheme,
            host=self._origin.host,
            port=self._origin.port,
            target=ping_path.encode(),
        )

        async def ping(connection: httpcore.AsyncHTTPConnection) -> None:
            host = self._origin.host + b":" + str(self._origin.port).encode()
            request = httpcore.Request(b"GET", url, headers=[(b"Host", host)])
            response = await connection.handle_async_request(request)
            await response.aread()
            await response.aclose()

        async with anyio.create_task_group() as group:
            for connection in connections:
                group.start_soon(ping, connection)
        self._idle = connections

    def give_back(self, connection: httpcore.AsyncHTTPConnection) -> None:
        """Make ``connection`` available to the next request."""
        assert self._slots is not None
        self._idle.append(connection)
        self._slots.release()

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send ``request`` on the next free connection, waiting in line for one."""
        if self._slots is None:
            raise RuntimeError("open the pool before sending requests")
        await self._slots.acquire()
        connection = self._idle.pop()
        if connection.is_closed() or connection.has_expired():
            # The server closed it while idle; a new connection takes its place.
            await connection.aclose()
            connection = self._connection()
        release = _Release(self, connection)
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            release()
            raise
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_ReleasingStream(response.stream, release),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.aclose()

    async def __aenter__(self) -> _FifoPool:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()


class PreopenedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its pool replaced by ``size`` connections opened up front.

    Create it with :meth:`open` inside the event loop that will use it.
    """

    def __init__(self, base_url: str, size: int) -> None:
        super().__init__()
        self._fifo_pool = _FifoPool(base_url, size)
        # httpx 0.28 keeps the httpcore pool in ``_pool``; only it is replaced.
        self._pool = self._fifo_pool  # type: ignore[assignment]

    @classmethod
    async def open(cls, base_url: str, size: int, ping_path: str = "/ping") -> PreopenedTransport:
        """Return a transport whose ``size`` connections to ``base_url`` are open."""
        transport = cls(base_url, size)
        await transport._fifo_pool.open(ping_path)
        return transport
