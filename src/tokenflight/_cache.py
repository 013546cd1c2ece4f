"""The single-flight token cache.

One :class:`_Entry` per key contains the current token, the times that decide its state
(see the lifecycle table in ``_policy.py``) and at most one :class:`_Flight`, the
refresh in progress. Every caller that needs a new token waits on that flight's event;
nobody waits on a lock. Who runs the flight:

* inside ``async with cache:``, a task of the cache's own task group, so no caller's
  cancellation or deadline can reach it;
* otherwise the caller that found the token missing (the leader). If the leader is
  cancelled, the flight ends without a result, its waiters wake, and one of them leads
  a new flight. That costs one extra fetch at most and never fails a waiter.
"""

from __future__ import annotations

import copy
import logging
import math
import random as _random
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from contextvars import ContextVar
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from ._clock import Clock, SystemClock
from ._errors import (
    ConfigurationError,
    PermanentRefreshError,
    RefreshError,
    RefreshTimeoutError,
    TransientRefreshError,
)
from ._events import CacheEvent, CacheStatistics, EventHook, EventName
from ._policy import MINIMUM_LIFETIME, Backoff, RefreshPolicy
from ._source import CallableSource, TokenSource
from ._token import Token

__all__ = ["TokenCache"]

logger = logging.getLogger("tokenflight")

# The (cache, key) pairs whose token source is running in the current context. A source
# that requests the key it is refreshing from its own cache would wait on itself for ever.
_refreshing: ContextVar[frozenset[tuple[int, Hashable]]] = ContextVar(
    "tokenflight_refreshing", default=frozenset()
)


class _Flight:
    """One refresh in progress and, once ``done`` is set, its outcome.

    Neither ``token`` nor ``error`` set after ``done`` means the flight was abandoned
    (its leader was cancelled); waiters then start over.
    """

    __slots__ = ("background", "done", "error", "last_attempt_error", "loop", "token")

    def __init__(self, *, background: bool) -> None:
        self.background = background
        self.done = anyio.Event()
        self.token: Token | None = None
        self.error: RefreshError | None = None
        self.last_attempt_error: BaseException | None = None
        # The event loop the flight belongs to. A flight left behind by an earlier
        # asyncio.run() or trio.run() can never finish, so a newer loop ignores it.
        self.loop = anyio.lowlevel.current_token().native_token


class _Entry:
    """Everything the cache holds for one key. Times are on the monotonic clock."""

    __slots__ = (
        "error",
        "failures",
        "flight",
        "key",
        "refresh_at",
        "retry_at",
        "source",
        "token",
        "usable_until",
    )

    def __init__(self, key: Hashable, source: TokenSource) -> None:
        self.key = key
        self.source = source
        self.token: Token | None = None
        self.usable_until = -math.inf
        self.refresh_at = -math.inf
        self.flight: _Flight | None = None
        self.error: RefreshError | None = None
        self.failures = 0
        self.retry_at = -math.inf


def _as_source(source: object) -> TokenSource:
    if isinstance(source, TokenSource):
        return source
    if callable(source):
        return CallableSource(source)
    msg = (
        f"source must have an async fetch() method or be an async function, "
        f"got {type(source).__name__}"
    )
    raise ConfigurationError(msg)


def _is_transient(error: BaseException) -> bool:
    if isinstance(error, TransientRefreshError | OSError | TimeoutError):
        return True
    # httpx is optional for the core; its transport errors are transient when it is used.
    httpx = sys.modules.get("httpx")
    return httpx is not None and isinstance(error, httpx.TransportError)


def _copy_for_waiter(error: RefreshError) -> RefreshError:
    # Raising one instance in many tasks would chain every waiter's traceback onto it, so
    # each waiter gets a copy: same class, message, attributes and cause.
    try:
        clone = copy.copy(error)
    except Exception:  # noqa: BLE001 - a class whose __init__ copy.copy cannot call
        return error
    clone.__cause__ = error.__cause__
    clone.__suppress_context__ = True
    clone.__traceback__ = None
    return clone


class TokenCache:
    """Cache tokens per key, refreshing each one exactly once however many tasks need it.

    ``await cache.get()`` returns a usable token. A fresh token comes straight from memory,
    with no lock, no I/O and no checkpoint. Near its expiry, one refresh runs ahead in the
    background while callers keep getting the current token. A missing or expired token is
    fetched once for all concurrent callers, and each of them gets that token or an error
    of the same class and cause.

    Keys let one cache hold tokens for several credential requests (for example one per
    scope or audience). Pass ``source`` for the default key ``None``, ``sources`` to build a
    source for any other key, or both. At most ``max_keys`` keys are kept; the least
    recently used one goes first.

    **Lifecycle.** Use the cache as ``async with cache:`` (or let an
    :class:`~tokenflight.AuthClient` do it) to give refreshes a task group of their own.
    Without it the cache still works and single flight still holds, but a refresh runs in
    the task of the caller that started it, and the refresh ahead of expiry makes that one
    caller wait (everyone else keeps getting the current token). The cache itself can be
    created outside an event loop and reused across ``asyncio.run()`` and ``trio.run()``.

    **Cancellation.** A caller that is cancelled, or whose own deadline passes, stops
    waiting and nothing else: the refresh goes on for the other callers. Each refresh,
    retries included, is bounded by ``timeout``; its waiters then get
    :class:`~tokenflight.RefreshTimeoutError`.

    **Failures.** Transient errors are retried with backoff within the refresh's time
    budget; permanent ones are not. After a refresh fails, no new one starts until its
    cooldown has passed: callers meanwhile get the current token while it is usable, or
    else the last error at once. A :class:`~tokenflight.PermanentRefreshError` is kept
    until :meth:`reset`. :class:`RefreshPolicy` documents every timing parameter.

    :param source: token source for the key ``None``: a :class:`TokenSource` or an async
        function returning a :class:`Token`.
    :param sources: function from a key to the token source for that key; it is called
        once per key while the key is cached.
    :param skew: seconds before expiry that a token counts as expired. ``skew``,
        ``refresh_ahead``, ``refresh_jitter``, ``timeout``, ``backoff``, ``cooldown`` and
        ``default_lifetime`` are the fields of :class:`RefreshPolicy`, described there.
    :param max_keys: how many keys to keep at most.
    :param clock: time source; :class:`tokenflight.testing.FakeClock` in tests.
    :param random: function returning floats in [0, 1) for jitter; seeded in tests.
    :param hooks: functions called with a :class:`CacheEvent` for each event, for metrics.
        They run inline and must not block; an exception in a hook is logged and ignored.
    """

    def __init__(
        self,
        source: TokenSource | Callable[[], Awaitable[Token]] | None = None,
        *,
        sources: Callable[[Any], TokenSource | Callable[[], Awaitable[Token]]] | None = None,
        skew: float = 30.0,
        refresh_ahead: float = 300.0,
        refresh_jitter: float = 0.1,
        timeout: float = 30.0,
        backoff: Backoff | None = None,
        cooldown: Backoff | None = None,
        default_lifetime: float | None = 3600.0,
        max_keys: int = 1024,
        clock: Clock | None = None,
        random: Callable[[], float] | None = None,
        hooks: Iterable[EventHook] = (),
    ) -> None:
        if source is None and sources is None:
            msg = "TokenCache needs a source, a sources factory, or both"
            raise ConfigurationError(msg)
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            msg = f"max_keys must be an int >= 1, got {max_keys!r}"
            raise ConfigurationError(msg)
        self.policy = RefreshPolicy(
            skew=skew,
            refresh_ahead=refresh_ahead,
            refresh_jitter=refresh_jitter,
            timeout=timeout,
            backoff=backoff if backoff is not None else RefreshPolicy.backoff,
            cooldown=cooldown if cooldown is not None else RefreshPolicy.cooldown,
            default_lifetime=default_lifetime,
        )
        self._source = _as_source(source) if source is not None else None
        self._sources = sources
        self._max_keys = max_keys
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._random = random if random is not None else _random.random
        self._hooks = tuple(hooks)
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._task_group: TaskGroup | None = None
        self._skew_warned = False
        self._short_lifetime_warned = False
        self._hits = 0
        self._misses = 0
        self._refreshes = 0
        self._failures = 0
        self._fetches = 0
        self._waiters = 0
        self._in_flight = 0
        self._evictions = 0

    @property
    def clock(self) -> Clock:
        """The clock this cache reads."""
        return self._clock

    @property
    def entered(self) -> bool:
        """Whether the cache is inside ``async with``, running refreshes in its own tasks."""
        return self._task_group is not None

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> TokenCache:
        if self._task_group is not None:
            msg = "this TokenCache is already entered; enter it once at a time"
            raise RuntimeError(msg)
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel the refreshes the cache is running and wait until they have stopped.

        Cached tokens stay: the cache can be entered again, in this event loop or another.
        """
        task_group, self._task_group = self._task_group, None
        if task_group is None:
            return
        task_group.cancel_scope.cancel()
        # The exception of the `async with` body, if any, is not the task group's: passed
        # in, it would come back wrapped in an ExceptionGroup. It propagates by itself.
        await task_group.__aexit__(None, None, None)

    # -- the public operations ---------------------------------------------------

    async def get(self, key: Hashable = None) -> Token:
        """Return a usable token for ``key``, refreshing it if needed.

        A fresh token returns without a checkpoint. Otherwise this waits for the one
        refresh of ``key`` (starting it if no refresh is running), which may take up to the cache's
        ``timeout``.

        Cancellation: a cancelled caller stops waiting; the refresh continues for others.

        :raises RefreshError: (or a subclass) when the refresh failed, or when an earlier
            failure's backoff has not elapsed and no usable token is cached.
        """
        entry = self._entries.get(key)
        if entry is not None:
            token = entry.token
            if token is not None and self._clock.monotonic() < entry.refresh_at:
                self._hits += 1
                self._entries.move_to_end(key)
                return token
        return await self._get_slow(key)

    async def force_refresh(self, key: Hashable = None) -> Token:
        """Fetch a new token for ``key`` now, or join the refresh already in flight.

        Unlike :meth:`get`, this does not wait for a backoff and retries a permanent error.
        Cancellation behaves as in :meth:`get`.
        """
        self._check_reentry(key)
        entry = self._entry(key)
        while True:
            flight = self._current_flight(entry)
            if flight is None:
                flight = self._launch(entry, background=False)
                if self._task_group is None:
                    await self._run_flight(entry, flight)
            token = await self._wait(flight)
            if token is not None:
                return token

    def invalidate(self, token: Token, key: Hashable = None) -> bool:
        """Drop ``token`` if it is still the one cached for ``key``; return whether it was.

        A server rejected ``token``: invalidating by comparison means that any number of
        concurrent rejections of the same token cause one refresh, and a rejection of an
        older token never discards a newer one.
        """
        entry = self._entries.get(key)
        if entry is None or entry.token is not token:
            return False
        entry.token = None
        entry.usable_until = -math.inf
        entry.refresh_at = -math.inf
        logger.info("token invalidated: key=%r fingerprint=%s", key, token.fingerprint)
        self._emit("token.invalidated", key, fingerprint=token.fingerprint)
        return True

    def peek(self, key: Hashable = None) -> Token | None:
        """Return the token cached for ``key`` if it is still usable, without refreshing."""
        entry = self._entries.get(key)
        if entry is None or entry.token is None:
            return None
        return entry.token if self._clock.monotonic() < entry.usable_until else None

    def reset(self, key: Hashable = None) -> None:
        """Forget ``key``: its token, its failures and any permanent error.

        Call it after replacing credentials that a permanent error rejected. A refresh
        already running for the key finishes, but its result is discarded.
        """
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget every key, as :meth:`reset` does for one."""
        self._entries.clear()

    def statistics(self) -> CacheStatistics:
        """Return a snapshot of the cache's counters."""
        return CacheStatistics(
            keys=len(self._entries),
            hits=self._hits,
            misses=self._misses,
            refreshes=self._refreshes,
            failures=self._failures,
            fetches=self._fetches,
            waiters=self._waiters,
            in_flight=self._in_flight,
            evictions=self._evictions,
        )

    def __repr__(self) -> str:
        return (
            f"TokenCache(source={self._source!r}, keys={len(self._entries)}, "
            f"skew={self.policy.skew}, timeout={self.policy.timeout})"
        )

    # -- the slow path -----------------------------------------------------------

    async def _get_slow(self, key: Hashable) -> Token:
        self._check_reentry(key)
        entry = self._entry(key)
        while True:
            now = self._clock.monotonic()
            token = entry.token
            if token is not None and now < entry.usable_until:
                # Refresh-ahead window: the token is good, so no caller waits for the refresh.
                self._hits += 1
                if self._current_flight(entry) is None and now >= entry.retry_at:
                    ahead = self._launch(entry, background=True)
                    if self._task_group is None:
                        await self._run_flight(entry, ahead)
                        if ahead.token is not None:
                            return ahead.token
                        # The refresh failed, possibly after its whole timeout, so the
                        # current token may have expired or been invalidated meanwhile.
                        if entry.token is token and self._clock.monotonic() < entry.usable_until:
                            return token
                        continue
                return token

            flight = self._current_flight(entry)
            if flight is None:
                if entry.error is not None and now < entry.retry_at:
                    raise _copy_for_waiter(entry.error)
                flight = self._launch(entry, background=False)
                if self._task_group is None:
                    await self._run_flight(entry, flight)
            self._misses += 1
            refreshed = await self._wait(flight)
            if refreshed is not None:
                return refreshed

    def _check_reentry(self, key: Hashable) -> None:
        if (id(self), key) in _refreshing.get():
            msg = (
                f"the token source for key {key!r} asked the same cache for a token while "
                "fetching one, which would wait for ever; give the source an HTTP client "
                "without tokenflight auth"
            )
            raise RuntimeError(msg)

    def _entry(self, key: Hashable) -> _Entry:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        if key is None:
            if self._source is None:
                msg = (
                    "this TokenCache has no default source; call get(key) with a key, or "
                    "pass source= when creating the cache"
                )
                raise ConfigurationError(msg)
            source = self._source
        else:
            if self._sources is None:
                msg = (
                    f"this TokenCache has no sources factory, so it cannot serve key {key!r}; "
                    "pass sources= when creating the cache, or call get() without a key"
                )
                raise ConfigurationError(msg)
            source = _as_source(self._sources(key))
        self._evict_for_new_key()
        entry = self._entries[key] = _Entry(key, source)
        return entry

    def _evict_for_new_key(self) -> None:
        # A key with a refresh in flight has waiters; dropping it would split the flight.
        # So the cache can hold more than max_keys while such refreshes run, and the loop
        # brings it back within the bound at the next new key.
        while len(self._entries) >= self._max_keys:
            found, old_key = self._least_recent_idle_key()
            if not found:
                return
            del self._entries[old_key]
            self._evictions += 1
            logger.debug("key evicted: key=%r", old_key)
            self._emit("key.evicted", old_key)

    def _least_recent_idle_key(self) -> tuple[bool, Hashable]:
        for key, entry in self._entries.items():
            if entry.flight is None:
                return True, key
        return False, None

    def _current_flight(self, entry: _Entry) -> _Flight | None:
        flight = entry.flight
        if flight is not None and flight.loop is not anyio.lowlevel.current_token().native_token:
            entry.flight = flight = None
        return flight

    def _launch(self, entry: _Entry, *, background: bool) -> _Flight:
        flight = entry.flight = _Flight(background=background)
        if self._task_group is not None:
            self._task_group.start_soon(self._run_flight, entry, flight)
        return flight

    async def _wait(self, flight: _Flight) -> Token | None:
        if not flight.done.is_set():
            self._waiters += 1
            try:
                await flight.done.wait()
            finally:
                self._waiters -= 1
        if flight.token is not None:
            return flight.token
        if flight.error is not None:
            raise _copy_for_waiter(flight.error)
        return None

    # -- running one refresh -----------------------------------------------------

    async def _run_flight(self, entry: _Entry, flight: _Flight) -> None:
        """Run one refresh to its end and publish the outcome on ``flight``.

        Every exception the source raises is caught and handed to the waiters, so a failing
        source cannot tear down the cache's task group. Cancellation propagates after the
        flight is marked abandoned.
        """
        key = entry.key
        started = self._clock.monotonic()
        self._in_flight += 1
        logger.debug("refresh started: key=%r background=%s", key, flight.background)
        self._emit("refresh.started", key, background=flight.background)
        reentry_token = _refreshing.set(_refreshing.get() | {(id(self), key)})
        try:
            token, sent_at = await self._fetch_within_budget(entry, flight)
        except Exception as error:  # noqa: BLE001 - every failure is published to the waiters
            self._record_failure(entry, flight, error, started)
        else:
            self._store(entry, token, sent_at, started, flight)
        finally:
            _refreshing.reset(reentry_token)
            self._in_flight -= 1
            if entry.flight is flight:
                entry.flight = None
            flight.done.set()

    async def _fetch_within_budget(self, entry: _Entry, flight: _Flight) -> tuple[Token, float]:
        timeout = self.policy.timeout
        deadline = self._clock.monotonic() + timeout
        outcome: tuple[Token, float] | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as watchdog_group:

            async def cancel_at_deadline() -> None:
                await self._clock.sleep(timeout)
                watchdog_group.cancel_scope.cancel()

            watchdog_group.start_soon(cancel_at_deadline)
            try:
                outcome = await self._attempts(entry, flight, deadline)
            except Exception as error:  # noqa: BLE001 - handed to the caller, not swallowed
                failure = error
            finally:
                watchdog_group.cancel_scope.cancel()

        if failure is not None:
            raise failure
        if outcome is None:
            message = f"refresh of key {entry.key!r} did not finish within {timeout:g} s"
            raise RefreshTimeoutError(message) from flight.last_attempt_error
        return outcome

    async def _attempts(
        self, entry: _Entry, flight: _Flight, deadline: float
    ) -> tuple[Token, float]:
        attempt = 0
        while True:
            attempt += 1
            self._fetches += 1
            sent_at = self._clock.monotonic()
            try:
                token: object = await entry.source.fetch()
            except Exception as error:
                flight.last_attempt_error = error
                if not _is_transient(error):
                    raise
                delay = self.policy.backoff.delay(attempt, self._random)
                retry_after = getattr(error, "retry_after", None)
                if isinstance(retry_after, int | float):
                    delay = max(delay, float(retry_after))
                self._emit(
                    "fetch.failed",
                    entry.key,
                    duration=self._clock.monotonic() - sent_at,
                    attempt=attempt,
                    error=type(error).__name__,
                    background=flight.background,
                )
                if self._clock.monotonic() + delay >= deadline:
                    raise
                logger.info(
                    "fetch failed, retrying: key=%r attempt=%d error=%s delay=%.3fs",
                    entry.key,
                    attempt,
                    type(error).__name__,
                    delay,
                )
                await self._clock.sleep(delay)
                continue
            if not isinstance(token, Token):
                msg = (
                    f"{entry.source!r}.fetch() returned {type(token).__name__}, "
                    "expected a tokenflight.Token"
                )
                raise TypeError(msg)
            return token, sent_at

    def _store(
        self, entry: _Entry, token: Token, sent_at: float, started: float, flight: _Flight
    ) -> None:
        now = self._clock.monotonic()
        policy = self.policy
        if token.expires_in is not None:
            expiry = sent_at + token.expires_in
        elif token.expires_at is not None:
            expiry = now + (token.expires_at - self._clock.time())
        elif policy.default_lifetime is not None:
            expiry = sent_at + policy.default_lifetime
        else:
            expiry = math.inf

        lifetime = expiry - sent_at
        if expiry - now < MINIMUM_LIFETIME:
            # Expired on arrival, or nearly: a wrong clock, a slow endpoint or a server bug.
            # Keeping it for the minimum lifetime avoids a fetch per call.
            level = logging.DEBUG if self._short_lifetime_warned else logging.WARNING
            self._short_lifetime_warned = True
            logger.log(
                level,
                "token arrived with %.1f s of life left; keeping it for %.0f s: "
                "key=%r fingerprint=%s",
                expiry - now,
                MINIMUM_LIFETIME,
                entry.key,
                token.fingerprint,
            )
            expiry = now + MINIMUM_LIFETIME
            lifetime = MINIMUM_LIFETIME
            sent_at = now
        elif lifetime <= policy.skew and not self._skew_warned:
            self._skew_warned = True
            logger.warning(
                "token lifetime %.1f s is not longer than skew=%g s; expiring it %.2f s early "
                "instead. Set a smaller skew for short-lived tokens to silence this warning.",
                lifetime,
                policy.skew,
                policy.margin(lifetime),
            )

        usable_until = expiry - policy.margin(lifetime)
        entry.token = token
        entry.usable_until = usable_until
        entry.refresh_at = usable_until - policy.refresh_window(
            usable_until - sent_at, self._random
        )
        entry.error = None
        entry.failures = 0
        entry.retry_at = -math.inf
        flight.token = token
        self._refreshes += 1

        duration = now - started
        logger.debug(
            "token stored: key=%r fingerprint=%s lifetime=%.1fs duration=%.3fs",
            entry.key,
            token.fingerprint,
            lifetime,
            duration,
        )
        self._emit(
            "refresh.succeeded",
            entry.key,
            fingerprint=token.fingerprint,
            duration=duration,
            background=flight.background,
        )

    def _record_failure(
        self, entry: _Entry, flight: _Flight, error: Exception, started: float
    ) -> None:
        if isinstance(error, RefreshError):
            refresh_error = error
        else:
            kind = TransientRefreshError if _is_transient(error) else RefreshError
            refresh_error = kind(f"refresh of key {entry.key!r} failed: {type(error).__name__}")
            refresh_error.__cause__ = error

        now = self._clock.monotonic()
        entry.failures += 1
        if isinstance(refresh_error, PermanentRefreshError):
            entry.retry_at = math.inf
        else:
            delay = self.policy.cooldown.delay(entry.failures, self._random)
            retry_after = getattr(refresh_error, "retry_after", None)
            if isinstance(retry_after, int | float):
                delay = max(delay, float(retry_after))
            entry.retry_at = now + delay
        entry.error = refresh_error
        flight.error = refresh_error
        self._failures += 1

        still_usable = entry.token is not None and now < entry.usable_until
        # The first failure of a streak, and any failure callers will see, is a warning;
        # repeats while a usable token hides them are only informative.
        level = logging.INFO if still_usable and entry.failures > 1 else logging.WARNING
        logger.log(
            level,
            "refresh failed: key=%r error=%s failures=%d next_attempt=%s%s",
            entry.key,
            type(refresh_error).__name__,
            entry.failures,
            "after reset()" if math.isinf(entry.retry_at) else f"in {entry.retry_at - now:.1f}s",
            "; still serving the current token" if still_usable else "",
        )
        self._emit(
            "refresh.failed",
            entry.key,
            duration=now - started,
            error=type(refresh_error).__name__,
            background=flight.background,
        )

    def _emit(
        self,
        name: EventName,
        key: Hashable,
        *,
        fingerprint: str | None = None,
        duration: float | None = None,
        attempt: int | None = None,
        error: str | None = None,
        background: bool = False,
    ) -> None:
        if not self._hooks:
            return
        event = CacheEvent(name, key, fingerprint, duration, attempt, error, background)
        for hook in self._hooks:
            try:
                hook(event)
            except Exception:
                logger.exception("event hook %r raised; ignoring it", hook)
