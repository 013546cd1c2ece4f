"""Helpers for testing code that uses tokenflight, on asyncio and trio alike.

:class:`FakeClock` replaces the real clock in a :class:`~tokenflight.TokenCache` (and in
token sources and signers that take a ``clock``). Time moves only when a test says so,
with :meth:`FakeClock.advance`, or by itself inside :meth:`FakeClock.autojump` whenever
every task is blocked, so tests of expiry and backoff run instantly and deterministically.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import sniffio

__all__ = ["FakeClock", "wait_all_tasks_blocked"]


async def wait_all_tasks_blocked() -> None:
    """Return once every other task of the event loop is blocked waiting for something.

    On trio this is :func:`trio.testing.wait_all_tasks_blocked`. On asyncio it checks each
    task's pending future, yielding with ``sleep(0)`` between checks rather than the real
    100 ms sleeps of :func:`anyio.wait_all_tasks_blocked`.
    """
    if sniffio.current_async_library() == "trio":
        import trio.testing

        await trio.testing.wait_all_tasks_blocked()
        return

    import asyncio

    this_task = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        for task in asyncio.all_tasks():
            if task is this_task:
                continue
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None or waiter.done():
                break
        else:
            return


class FakeClock:
    """A clock whose time moves only when told to.

    ``monotonic()`` starts at ``start`` and ``time()`` at ``wall_start``; both advance
    together, and :meth:`jump_wall` moves the wall clock alone, as an NTP step or a
    suspended laptop would. ``sleep()`` waits until :meth:`advance` (or autojump) moves
    ``monotonic()`` past the sleeper's deadline.

    A FakeClock holds no event-loop objects between calls, so one instance can serve
    successive ``asyncio.run()`` and ``trio.run()`` calls.
    """

    def __init__(self, start: float = 1000.0, *, wall_start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = float(wall_start) - float(start)
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._order = itertools.count()
        self._new_sleeper: anyio.Event | None = None

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        sleeper = (self._now + seconds, next(self._order), event)
        heapq.heappush(self._sleepers, sleeper)
        if self._new_sleeper is not None:
            self._new_sleeper.set()
        try:
            await event.wait()
        finally:
            if not event.is_set():
                # Cancelled: forget the deadline, or autojump would later move time to it.
                self._sleepers.remove(sleeper)
                heapq.heapify(self._sleepers)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking each sleeper at its own deadline.

        Sleepers are woken in deadline order, and the tasks they wake run before time
        moves on, so a chain of sleeps within the interval happens as it would for real.
        """
        if seconds < 0:
            msg = f"a FakeClock cannot go backwards; got advance({seconds!r})"
            raise ValueError(msg)
        target = self._now + seconds
        await wait_all_tasks_blocked()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, event = heapq.heappop(self._sleepers)
            self._now = max(self._now, deadline)
            event.set()
            await wait_all_tasks_blocked()
        self._now = target

    def jump_wall(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (negative steps back); monotonic time stays."""
        self._wall_offset += seconds

    @property
    def next_deadline(self) -> float:
        """Monotonic time of the earliest sleeper, or ``inf`` when nobody sleeps."""
        return self._sleepers[0][0] if self._sleepers else math.inf

    @asynccontextmanager
    async def autojump(self) -> AsyncIterator[None]:
        """Inside this block, jump to the next sleeper's deadline whenever all tasks block.

        Like :class:`trio.testing.MockClock` with ``autojump_threshold=0``, on any backend.
        """
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(self._jump_forever)
            try:
                yield
            finally:
                task_group.cancel_scope.cancel()

    async def _jump_forever(self) -> None:
        while True:
            await wait_all_tasks_blocked()
            if self._sleepers:
                deadline, _, event = heapq.heappop(self._sleepers)
                self._now = max(self._now, deadline)
                event.set()
            else:
                self._new_sleeper = anyio.Event()
                try:
                    await self._new_sleeper.wait()
                finally:
                    self._new_sleeper = None

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._now:.3f}, sleepers={len(self._sleepers)})"
