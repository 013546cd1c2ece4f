"""Nonces that are unique and strictly increasing per key, and per-key send ordering.

A nonce read straight from a millisecond clock collides as soon as two requests are
signed within the same millisecond, and goes backwards when the wall clock is stepped
back. :class:`NonceGenerator` keeps the last nonce issued for each key and returns
``max(last + 1, now in ticks)``: seeded from the clock, so nonces keep increasing across
restarts, yet never repeated or decreasing within a process whatever the clock does.

Strictly increasing at issue time is not enough for servers that require each nonce to
exceed the last one they *received*: a request signed later can overtake an earlier one
on the network. :class:`KeyedLocks` lets a signer hold a per-key lock from the moment it
issues the nonce until the response arrives, so requests of one key reach the server in
nonce order.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

import anyio
import anyio.lowlevel

from ._clock import Clock, SystemClock
from ._errors import ConfigurationError

__all__ = ["PROCESS_NONCES", "KeyedLocks", "NonceGenerator"]


class NonceGenerator:
    """Issue integer nonces, strictly increasing per key, seeded from the wall clock.

    Each nonce is ``max(previous + 1, floor(clock.time() * resolution))``. Issuing is a
    plain method call with no checkpoint, guarded by a thread lock, so it is atomic for
    any number of tasks and threads. A wall clock that steps back only slows the nonces
    down to one tick per call until the clock catches up.

    The default resolution of microseconds keeps today's nonces near 1.7e15, below 2**53,
    so they survive a round trip through a JSON number or a JavaScript server.

    :param clock: time source for the seed; its ``time()`` is read on every call.
    :param resolution: ticks per second of the seed, 1_000_000 (microseconds) by default.
        Use 1000 for APIs that expect millisecond nonces.
    :raises ConfigurationError: when ``resolution`` is not a positive int.
    """

    def __init__(self, clock: Clock | None = None, *, resolution: int = 1_000_000) -> None:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            msg = f"resolution must be an int >= 1 (ticks per second), got {resolution!r}"
            raise ConfigurationError(msg)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._resolution = resolution
        self._last: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def next(self, key: Hashable = None, *, now: float | None = None) -> int:
        """Return a new nonce for ``key``, greater than every nonce issued for it before.

        :param now: the wall-clock time (Unix seconds) to seed from; the generator's
            clock is read when it is ``None``.
        """
        seed = int((self._clock.time() if now is None else now) * self._resolution)
        with self._lock:
            nonce = max(self._last.get(key, seed - 1) + 1, seed)
            self._last[key] = nonce
        return nonce

    def last(self, key: Hashable = None) -> int | None:
        """Return the last nonce issued for ``key``, or ``None`` if there was none."""
        return self._last.get(key)

    def __repr__(self) -> str:
        return f"NonceGenerator(resolution={self._resolution}, keys={len(self._last)})"


class KeyedLocks:
    """One :class:`anyio.Lock` per key, created on first use in the running event loop.

    The locks are created lazily, so the object itself may be built outside an event
    loop. A lock left behind by an earlier ``asyncio.run()`` or ``trio.run()`` is replaced
    by a new one for the current loop.
    """

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[object, anyio.Lock]] = {}

    def get(self, key: Hashable) -> anyio.Lock:
        """Return the lock of ``key`` for the running event loop."""
        loop = anyio.lowlevel.current_token().native_token
        entry = self._locks.get(key)
        if entry is None or entry[0] is not loop:
            entry = self._locks[key] = (loop, anyio.Lock())
        return entry[1]


#: The nonce sequence that signers share when they are given no generator of their own,
#: so that two signers of one key in one process never issue the same nonce.
PROCESS_NONCES = NonceGenerator()
