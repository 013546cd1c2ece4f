"""Helpers for testing code that uses tokenflight, on asyncio and trio alike.

:class:`FakeClock` replaces the real clock in a :class:`~tokenflight.TokenCache` (and in
token sources and signers that take a ``clock``). Time moves only when a test advances it,
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
    100 ms sleeps of :func:`anyio.wait_all_tasks_blocked`. When several tasks wait at
    once, one of them returns and the others keep waiting until every task is blocked
    again, as on trio; :meth:`FakeClock.autojump` always goes last, so time never moves
    while a test is still waiting for the tasks it started to block.
    """
    await _wait_all_tasks_blocked(last=False)


# Tasks inside wait_all_tasks_blocked() on asyncio, with the order in which they return:
# by priority (autojump last), then first come, first served.
_asyncio_idle_waiters: dict[object, tuple[bool, int]] = {}
_asyncio_idle_order = itertools.count()
# Tasks inside wait_all_tasks_blocked() on trio, autojump aside.
_trio_idle_waiters: set[object] = set()


async def _wait_all_tasks_blocked(*, last: bool) -> None:
    if sniffio.current_async_library() == "trio":
        import trio.lowlevel
        import trio.testing

        if not last:
            trio_task = trio.lowlevel.current_task()
            _trio_idle_waiters.add(trio_task)
            try:
                await trio.testing.wait_all_tasks_blocked()
            finally:
                _trio_idle_waiters.discard(trio_task)
            return

        # trio wakes one waiter at a time, the smallest cushion first and ties in no set
        # order. Autojump waits with no cushion while no other task waits. If it wins a tie
        # anyway, it waits again with a cushion of a microsecond (a millisecond of real
        # time, at the event loop's resolution), which lets the other waiters go first.
        while True:
            cushion = 1e-6 if _trio_idle_waiters else 0.0
            await trio.testing.wait_all_tasks_blocked(cushion=cushion)
            if not _trio_idle_waiters:
                return

    import asyncio

    this_task = asyncio.current_task()
    rank = (last, next(_asyncio_idle_order))
    _asyncio_idle_waiters[this_task] = rank
    try:
        while True:
            await asyncio.sleep(0)
            if _all_others_blocked(this_task, rank):
                return
    finally:
        del _asyncio_idle_waiters[this_task]


def _all_others_blocked(this_task: object, rank: tuple[bool, int]) -> bool:
    import asyncio

    for task in asyncio.all_tasks():
        if task is this_task:
            continue
        other_rank = _asyncio_idle_waiters.get(task)
        if other_rank is not None:
            # Another waiter counts as blocked, unless it is due to return first.
            if other_rank < rank:
                return False
            continue
        waiter = getattr(task, "_fut_waiter", None)
        if waiter is None or waiter.done():
            return False

    # A task can look blocked while a callback that will wake it is already scheduled:
    # anyio, for one, delivers a cancellation over several loop iterations. So the loop
    # must also have nothing ready to run but the steps of idle waiters. Event loops
    # without a ready queue (uvloop) get the task check alone.
    ready = getattr(asyncio.get_running_loop(), "_ready", ())
    for handle in ready:
        if handle.cancelled():
            continue
        owner = getattr(handle._callback, "__self__", None)
        if isinstance(owner, asyncio.Task) and (
            owner is this_task or owner in _asyncio_idle_waiters
        ):
            continue
        return False
    return True


class FakeClock:
    """A clock whose time moves only when a test advances it.

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
        """Monotonic time of the earliest sleeper, or ``inf`` when no task sleeps."""
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

    @asynccontextmanager
    async def move_on_after(self, seconds: float) -> AsyncIterator[anyio.CancelScope]:
        """Cancel the block once ``seconds`` have passed on this clock, then carry on.

        The fake-clock counterpart of :func:`anyio.move_on_after`, whose deadline is on the
        event loop's real clock and so never passes in a test driven by a FakeClock. The
        yielded scope's ``cancelled_caught`` is true when the deadline cut the block short.
        """
        deadline_scope = anyio.CancelScope()

        async def cancel_at_deadline() -> None:
            await self.sleep(seconds)
            deadline_scope.cancel()

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(cancel_at_deadline)
            try:
                with deadline_scope:
                    yield deadline_scope
            finally:
                task_group.cancel_scope.cancel()

    @asynccontextmanager
    async def fail_after(self, seconds: float) -> AsyncIterator[anyio.CancelScope]:
        """Like :meth:`move_on_after`, but raise :class:`TimeoutError` at the deadline.

        The fake-clock counterpart of :func:`anyio.fail_after`.

        :raises TimeoutError: when the deadline cut the block short.
        """
        async with self.move_on_after(seconds) as deadline_scope:
            yield deadline_scope
        if deadline_scope.cancelled_caught:
            msg = f"the block did not finish within {seconds:g} s of fake time"
            raise TimeoutError(msg)

    async def _jump_forever(self) -> None:
        while True:
            await _wait_all_tasks_blocked(last=True)
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
