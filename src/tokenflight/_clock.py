"""Time sources. Everything in tokenflight that reads or waits on time goes through a Clock,
so tests can replace it with :class:`tokenflight.testing.FakeClock`."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

import anyio

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """The three readings of time the library needs.

    ``monotonic()`` drives every expiry and backoff decision, so a wall-clock jump never
    makes a token look fresh or expired. ``time()`` (Unix seconds) is read only to convert
    absolute times such as a JWT's ``exp`` or ``iat``. ``sleep()`` waits on the monotonic
    scale and is a cancellation point.
    """

    def monotonic(self) -> float:
        """Return seconds on a clock that never goes backwards."""
        ...

    def time(self) -> float:
        """Return the wall-clock time as Unix seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the monotonic scale."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time` and :func:`anyio.sleep`.

    It reads no event loop, so it works outside one and across successive
    ``asyncio.run()`` and ``trio.run()`` calls.
    """

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"
