"""What the cache reports: a statistics snapshot and events for metrics hooks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Literal

__all__ = ["CacheEvent", "CacheStatistics", "EventHook", "EventName"]

logger = logging.getLogger("tokenflight")

EventName = Literal[
    "refresh.started",
    "refresh.succeeded",
    "refresh.failed",
    "fetch.failed",
    "token.invalidated",
    "key.evicted",
]


@dataclass(frozen=True)
class CacheEvent:
    """One thing that happened in a cache, passed to every event hook.

    :param name: a stable dotted name: ``refresh.started``, ``refresh.succeeded``,
        ``refresh.failed``, ``fetch.failed`` (one attempt, may be retried),
        ``token.invalidated`` or ``key.evicted``.
    :param key: the cache key concerned (``None`` for the default key).
    :param fingerprint: fingerprint of the token concerned, never its value.
    :param duration: seconds the refresh or attempt took, where that applies.
    :param attempt: 1-based attempt number within the refresh, where that applies.
    :param error: class name of the error, where one occurred.
    :param background: whether the refresh ran ahead of expiry, while callers kept
        using the current token.
    """

    name: EventName
    key: Hashable
    fingerprint: str | None = None
    duration: float | None = None
    attempt: int | None = None
    error: str | None = None
    background: bool = False


EventHook = Callable[[CacheEvent], None]


@dataclass(frozen=True)
class CacheStatistics:
    """A snapshot of a cache's counters, returned by :meth:`TokenCache.statistics`.

    :param keys: entries currently held.
    :param hits: ``get()`` calls answered from the cache without waiting.
    :param misses: ``get()`` calls that had to wait for a refresh.
    :param refreshes: refreshes that produced a token.
    :param failures: refreshes that failed, after their retries.
    :param fetches: calls to a token source's ``fetch()``, retries included.
    :param waiters: callers waiting for a refresh right now.
    :param in_flight: refreshes running right now (at most one per key).
    :param evictions: keys dropped because the cache was full.
    """

    keys: int
    hits: int
    misses: int
    refreshes: int
    failures: int
    fetches: int
    waiters: int
    in_flight: int
    evictions: int
