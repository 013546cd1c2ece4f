"""Scripted token sources and small helpers shared by the cache tests."""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from tokenflight import CacheEvent, Token, TokenCache
from tokenflight.testing import FakeClock

# Every token value and refresh token the scripted sources issue ends with one of these,
# so a test can search any text for a leaked secret without knowing which token leaked.
VALUE_TAIL = "Zq8yVt3kPwLm"
REFRESH_TAIL = "Rf7uXc2nBh5s"


def never_random() -> float:
    """Return 0.0: with it, jittered delays and windows take their full documented length."""
    return 0.0


@dataclass(frozen=True)
class Step:
    """What one ``fetch()`` of a :class:`ScriptedSource` does.

    It waits ``delay`` seconds on the fake clock (``None``: forever), then raises
    ``error`` if one is given, and otherwise returns a new token whose ``expires_in`` is
    ``lifetime`` (or whose ``expires_at`` is ``expires_at``, in Unix seconds).
    """

    delay: float | None = 0.0
    lifetime: float | None = 3600.0
    error: BaseException | None = None
    expires_at: float | None = None


class ScriptedSource:
    """A token source that follows a script and records every call, for assertions.

    Each ``fetch()`` takes the next :class:`Step` of the script, or ``default`` once the
    script is used up. The source counts calls and calls in flight, and records when
    each call started and when the server stops accepting each token it issued.
    """

    def __init__(self, clock: FakeClock, *steps: Step, default: Step | None = None) -> None:
        self.clock = clock
        self.steps: deque[Step] = deque(steps)
        self.default = default if default is not None else Step()
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.cancelled = 0
        self.started: list[float] = []
        self.tokens: list[Token] = []
        # Monotonic time at which the server stops accepting each issued token.
        self.expiry: dict[Token, float] = {}

    def then(self, *steps: Step) -> None:
        """Append ``steps`` to the script."""
        self.steps.extend(steps)

    async def fetch(self) -> Token:
        self.calls += 1
        number = self.calls
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        started = self.clock.monotonic()
        self.started.append(started)
        step = self.steps.popleft() if self.steps else self.default
        try:
            if step.delay is None:
                await anyio.sleep_forever()
            else:
                await self.clock.sleep(step.delay)
            if step.error is not None:
                # A fresh copy per call, so tracebacks do not pile up on one instance.
                raise copy.copy(step.error)
            token = Token(
                f"access-{number}-{VALUE_TAIL}",
                expires_in=step.lifetime,
                expires_at=step.expires_at,
                refresh_token=f"refresh-{number}-{REFRESH_TAIL}",
            )
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        self.tokens.append(token)
        if step.lifetime is not None:
            self.expiry[token] = started + step.lifetime
        elif step.expires_at is not None:
            self.expiry[token] = self.clock.monotonic() + step.expires_at - self.clock.time()
        return token

    @property
    def last(self) -> Token:
        """The token issued most recently."""
        return self.tokens[-1]


class EventRecorder:
    """An event hook that keeps every event with the fake time it arrived at."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.events: list[tuple[float, CacheEvent]] = []

    def __call__(self, event: CacheEvent) -> None:
        self.events.append((self.clock.monotonic(), event))

    def names(self) -> list[str]:
        """Return the names of the events in order."""
        return [event.name for _, event in self.events]

    def times(self, name: str) -> list[float]:
        """Return the times at which events called ``name`` arrived."""
        return [time for time, event in self.events if event.name == name]


def get_at_once(cache: TokenCache, key: Any = None) -> Token:
    """Call ``cache.get(key)`` and require it to finish without suspending even once.

    This checks "returned at once, no lock, no I/O, no waiting" on any backend: the
    coroutine is stepped a single time, and it must return (or raise) in that step.
    """
    coroutine = cache.get(key)
    try:
        coroutine.send(None)
    except StopIteration as stop:
        token: Token = stop.value
        return token
    coroutine.close()
    msg = f"cache.get({key!r}) suspended instead of answering at once"
    raise AssertionError(msg)


@asynccontextmanager
async def entered_or_not(cache: TokenCache, *, entered: bool) -> AsyncIterator[TokenCache]:
    """Run the block inside ``async with cache:`` when ``entered``, else without it."""
    if entered:
        async with cache:
            yield cache
    else:
        yield cache


def log_texts(records: Iterable[logging.LogRecord]) -> list[str]:
    """Return every text a log handler could write for ``records``.

    That is each formatted message, the raw message and arguments, and any exception
    and stack text, so a secret hidden in an argument's repr is found too.
    """
    formatter = logging.Formatter()
    texts: list[str] = []
    for record in records:
        texts.append(formatter.format(record))
        texts.append(str(record.msg))
        texts.append(repr(record.args))
        if record.exc_info:
            texts.append(formatter.formatException(record.exc_info))
    return texts


def secrets_of(tokens: Iterable[Token]) -> list[str]:
    """Return the secret strings of ``tokens``: values and refresh tokens."""
    secrets: list[str] = []
    for token in tokens:
        secrets.append(token.value)
        if token.refresh_token is not None:
            secrets.append(token.refresh_token)
    return secrets
