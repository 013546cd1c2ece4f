"""When a cached token is refreshed, and how failures are spaced.

The lifecycle of one cache entry, with ``now`` on the monotonic clock::

    state            condition                        get() does
    ---------------  -------------------------------  ------------------------------------
    fresh            now < refresh_at                 return the token (no lock, no I/O)
    refresh-ahead    refresh_at <= now < usable_until return the token; start one background
                                                      refresh unless one runs or backoff waits
    expired/missing  usable_until <= now, or no token join the refresh in flight, or start one
    backing off      a refresh failed, now < retry_at as above while the token is usable;
                                                      past usable_until, raise the last error
    failed for good  a permanent error was raised     raise it at once until reset()

For a token whose lifetime runs from ``issued`` to ``expiry``::

    margin       = min(skew, lifetime / 4)                      expired this early
    usable_until = expiry - margin
    window       = min(refresh_ahead, (usable_until - issued) / 2)
    refresh_at   = usable_until - window * (1 - refresh_jitter * U[0, 1))

Capping the margin at a quarter of the lifetime keeps a 5-second token usable for
3.75 s even with the default 30-second skew; capping the window at half of what is left
keeps a short token from being refreshed more often than every half-lifetime. A lifetime
not longer than ``skew`` itself is logged once as a warning, because it usually means the
skew was set for other tokens. docs/cache.md explains each default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ._errors import ConfigurationError

__all__ = ["Backoff", "RefreshPolicy"]

# A token that arrives with less life than this is still kept this long, so an expiry
# already in the past (a wrong wall clock, a server bug) cannot cause a refresh per call.
MINIMUM_LIFETIME = 1.0


def _require_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"{name} must be a finite number of seconds, got {value!r}"
        raise ConfigurationError(msg)
    if value < 0:
        msg = f"{name} must be >= 0 seconds, got {value!r}"
        raise ConfigurationError(msg)


@dataclass(frozen=True)
class Backoff:
    """Jittered exponential backoff between attempts.

    The delay before retry ``n`` (1-based) is ``min(maximum, initial * multiplier**(n-1))``,
    of which a random share of up to ``jitter`` is taken off, so that many clients that
    failed together do not retry together.

    :param initial: delay before the first retry, in seconds.
    :param multiplier: growth factor per retry, at least 1.
    :param maximum: cap on any one delay, in seconds.
    :param jitter: share of each delay that is random, from 0 (none) to 1.
    """

    initial: float = 0.5
    multiplier: float = 2.0
    maximum: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        _require_non_negative("Backoff.initial", self.initial)
        _require_non_negative("Backoff.maximum", self.maximum)
        if not self.multiplier >= 1:
            msg = f"Backoff.multiplier must be >= 1, got {self.multiplier!r}"
            raise ConfigurationError(msg)
        if not 0 <= self.jitter <= 1:
            msg = f"Backoff.jitter must be between 0 and 1, got {self.jitter!r}"
            raise ConfigurationError(msg)

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        """Return the delay in seconds before retry number ``attempt`` (1 for the first)."""
        exponent = min(max(attempt - 1, 0), 64)
        base = min(self.maximum, self.initial * self.multiplier**exponent)
        return base * (1.0 - self.jitter * random())


@dataclass(frozen=True)
class RefreshPolicy:
    """The timing settings of a :class:`~tokenflight.TokenCache`, validated together.

    :param skew: seconds before its expiry that a token counts as expired, capped at a
        quarter of the token's lifetime.
    :param refresh_ahead: longest refresh-ahead window in seconds, capped at half of the
        token's usable life.
    :param refresh_jitter: share of the window, from 0 to 1, taken off at random so that
        many processes do not refresh at the same instant.
    :param timeout: time budget of one refresh, retries included, in seconds.
    :param backoff: delays between retries within one refresh.
    :param cooldown: delays between failed refreshes: after the n-th failure in a row, no
        new refresh starts for ``cooldown.delay(n)`` seconds (or longer, if the server sent
        ``Retry-After``). Callers meanwhile get the current token while it is usable, and
        the last error otherwise.
    :param default_lifetime: lifetime of a token that carries no expiry, in seconds, or
        ``None`` to keep such a token until it is invalidated.
    """

    skew: float = 30.0
    refresh_ahead: float = 300.0
    refresh_jitter: float = 0.1
    timeout: float = 30.0
    backoff: Backoff = Backoff()
    cooldown: Backoff = Backoff(initial=5.0, multiplier=2.0, maximum=60.0)
    default_lifetime: float | None = 3600.0

    def __post_init__(self) -> None:
        _require_non_negative("skew", self.skew)
        _require_non_negative("refresh_ahead", self.refresh_ahead)
        _require_non_negative("timeout", self.timeout)
        if self.timeout == 0:
            msg = "timeout must be > 0 seconds, got 0"
            raise ConfigurationError(msg)
        if not 0 <= self.refresh_jitter <= 1:
            msg = f"refresh_jitter must be between 0 and 1, got {self.refresh_jitter!r}"
            raise ConfigurationError(msg)
        if self.default_lifetime is not None:
            _require_non_negative("default_lifetime", self.default_lifetime)

    def margin(self, lifetime: float) -> float:
        """Return how long before expiry a token of ``lifetime`` seconds counts as expired."""
        return min(self.skew, lifetime / 4)

    def refresh_window(self, usable: float, random: Callable[[], float]) -> float:
        """Return the jittered refresh-ahead window for ``usable`` seconds of usable life."""
        window = min(self.refresh_ahead, usable / 2)
        return window * (1.0 - self.refresh_jitter * random())
