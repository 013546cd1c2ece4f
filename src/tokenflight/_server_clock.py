"""A clock that follows the server's time, learned from HTTP ``Date`` headers.

A peer that checks JWT times (``iat``, ``nbf``, ``exp``) compares them with its own
clock. When the local clock is off by minutes, locally signed JWTs are rejected however
they are backdated. :class:`ServerClock` estimates ``server time - local time`` from the
``Date`` header of responses and adds it to :meth:`ServerClock.time`, so signers and
expiry conversions that read this clock work in the server's time.

The estimate compares the ``Date`` with the midpoint between sending the request and
receiving the response. ``Date`` has a resolution of one second, and the server wrote it
at some moment between send and receive, so each estimate carries an uncertainty of
one second plus half the round trip. A new estimate replaces the offset only when the
two uncertainty intervals do not overlap, so repeated estimates of the same true offset
never move it back and forth. Estimates larger than ``max_offset`` and ``Date`` values
that do not parse are ignored: a broken header must not throw the clock by decades.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx

from ._clock import Clock, SystemClock
from ._errors import ClockSkewError, ConfigurationError

__all__ = ["ServerClock", "looks_like_clock_skew", "parse_http_date", "rejection_message"]

logger = logging.getLogger("tokenflight")

_T = TypeVar("_T")

# Key of the request extension in which the request hook stores the local send time.
_SENT_AT = "tokenflight.sent_at"

# The resolution of an HTTP Date. A server that truncates has its true time in
# [Date, Date + 1), and one that rounds in [Date - 0.5, Date + 0.5). An estimate centred
# on Date + 0.5 with this half-width covers both.
_DATE_RESOLUTION = 1.0

# Phrases peers use when they reject a time claim, matched case-insensitively. The bare
# claim names must be whole words, so that "expires_in" or "iatrogenic" do not match.
_SKEW_PATTERN = re.compile(
    r"\b(?:iat|nbf|exp)\b"
    r"|issued[ _-]?at|not[ _-]?before|expired|expiration|in the future|too early|before issued"
    r"|not yet valid|not valid yet|clock|skew|time ?frame|too far|stale|timestamp",
    re.IGNORECASE,
)

# A JWT inside a peer's message is replaced before the message is shown.
_JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_MAX_MESSAGE = 300


def looks_like_clock_skew(message: str) -> bool:
    """Return whether a peer's error message points at a time claim or the clock.

    It matches the messages token endpoints and APIs send when they reject a JWT's times, for
    example "iat in the future", "Token used before issued", "Token used too early",
    "token expired", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a
    reasonable timeframe" or "RequestTimeTooSkewed".
    """
    return bool(_SKEW_PATTERN.search(message))


def _redact(message: str) -> str:
    text = _JWT_PATTERN.sub("<JWT redacted>", message)
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text


def parse_http_date(value: str) -> float | None:
    """Parse an HTTP ``Date`` value (RFC 9110 section 5.6.7) into Unix seconds.

    Accepts the IMF-fixdate form and the obsolete RFC 850 and asctime forms; a date
    without a zone is read as GMT, as HTTP requires. Returns ``None`` when the value
    does not parse.
    """
    try:
        parsed = email.utils.parsedate_tz(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed[9] is None:
        parsed = (*parsed[:9], 0)
    try:
        seconds = float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None
    return seconds if math.isfinite(seconds) else None


class ServerClock:
    """A :class:`~tokenflight.Clock` whose :meth:`time` is the server's estimated time.

    ``monotonic()`` and ``sleep()`` are those of the underlying clock; ``time()`` is the
    underlying ``time()`` plus :attr:`offset`. Pass one ServerClock as the ``clock`` of
    signers, token sources and the cache that talk to the same server, and feed it the
    server's responses with :meth:`observe`, :meth:`observe_response` or the httpx
    :meth:`event_hooks`.

    The offset starts at 0. It changes only when an estimate disagrees with it beyond
    both estimates' uncertainty (see the module documentation), and estimates whose size
    exceeds ``max_offset`` are ignored with a warning.

    :param clock: the local clock; the system clock by default.
    :param max_offset: largest offset in seconds, either way, that an estimate may have.
    :raises ConfigurationError: for a ``max_offset`` that is negative or not finite.
    """

    __slots__ = ("_clock", "_max_offset", "_offset", "_rejected", "_uncertainty", "_updates")

    def __init__(self, clock: Clock | None = None, *, max_offset: float = 900.0) -> None:
        if (
            isinstance(max_offset, bool)
            or not isinstance(max_offset, (int, float))
            or not math.isfinite(max_offset)
            or max_offset < 0
        ):
            msg = f"max_offset must be a finite number of seconds >= 0, got {max_offset!r}"
            raise ConfigurationError(msg)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._max_offset = float(max_offset)
        self._offset = 0.0
        # Uncertainty of the estimate behind the current offset. The initial 0 trusts the
        # local clock until an estimate shows that it is clearly wrong.
        self._uncertainty = 0.0
        self._updates = 0
        self._rejected = 0

    # -- Clock -----------------------------------------------------------------------

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def time(self) -> float:
        """Return the server's estimated time: the local wall clock plus :attr:`offset`."""
        return self._clock.time() + self._offset

    async def sleep(self, seconds: float) -> None:
        await self._clock.sleep(seconds)

    # -- the offset ------------------------------------------------------------------

    @property
    def offset(self) -> float:
        """Seconds to add to the local wall clock to get the server's time."""
        return self._offset

    @property
    def local_clock(self) -> Clock:
        """The underlying clock, whose ``time()`` has no offset applied."""
        return self._clock

    @property
    def max_offset(self) -> float:
        """Largest offset, in seconds either way, that an estimate may have."""
        return self._max_offset

    @property
    def updates(self) -> int:
        """How many times an estimate has changed the offset."""
        return self._updates

    @property
    def rejected(self) -> int:
        """How many ``Date`` values were ignored as unparseable or beyond ``max_offset``."""
        return self._rejected

    def observe(self, date_header: str | None, sent_at: float, received_at: float) -> bool:
        """Learn from one response's ``Date`` header.

        :param date_header: the ``Date`` header value, or ``None`` when the response had none.
        :param sent_at: local wall-clock time (Unix seconds, without the offset) when the
            request was sent; read it from :attr:`local_clock`.
        :param received_at: local wall-clock time when the response arrived.
        :returns: whether the offset changed.
        """
        if date_header is None:
            return False
        server_time = parse_http_date(date_header)
        if server_time is None:
            self._reject("unparseable Date header %r ignored", date_header[:64])
            return False
        if not (math.isfinite(sent_at) and math.isfinite(received_at)) or received_at < sent_at:
            self._reject(
                "Date header ignored: receive time %r precedes send time %r",
                received_at,
                sent_at,
            )
            return False

        round_trip = received_at - sent_at
        midpoint = sent_at + round_trip / 2
        estimate = server_time + _DATE_RESOLUTION / 2 - midpoint
        uncertainty = _DATE_RESOLUTION + round_trip / 2
        if abs(estimate) > self._max_offset:
            self._reject(
                "Date header %r is %+.0f s from the local clock, beyond max_offset=%g s; ignored",
                date_header[:64],
                estimate,
                self._max_offset,
            )
            return False
        if abs(estimate - self._offset) <= uncertainty + self._uncertainty:
            return False

        previous = self._offset
        self._offset = estimate
        self._uncertainty = uncertainty
        self._updates += 1
        logger.info(
            "server clock offset changed from %+.1f s to %+.1f s (Date %r, round trip %.3f s)",
            previous,
            estimate,
            date_header[:64],
            round_trip,
        )
        return True

    def observe_response(self, response: httpx.Response, *, sent_at: float | None = None) -> bool:
        """Learn from an httpx response's ``Date`` header.

        The send time comes from ``sent_at``, else from the mark the request hook of
        :meth:`event_hooks` left on the request, else the receive time is used for both.

        :returns: whether the offset changed.
        """
        received_at = self._clock.time()
        if sent_at is None:
            try:
                mark = response.request.extensions.get(_SENT_AT)
            except RuntimeError:  # a response built without a request
                mark = None
            sent_at = mark if isinstance(mark, float) else received_at
        return self.observe(response.headers.get("Date"), sent_at, received_at)

    def event_hooks(self) -> dict[str, list[Callable[[Any], Awaitable[None]]]]:
        """Return httpx ``event_hooks`` that feed every response's ``Date`` to this clock.

        >>> client = httpx.AsyncClient(event_hooks=server_clock.event_hooks())

        The request hook records the local send time on the request; the response hook
        calls :meth:`observe_response`.
        """

        async def mark_sent(request: httpx.Request) -> None:
            request.extensions[_SENT_AT] = self._clock.time()

        async def observe(response: httpx.Response) -> None:
            self.observe_response(response)

        return {"request": [mark_sent], "response": [observe]}

    def _reject(self, message: str, *args: object) -> None:
        self._rejected += 1
        # The first rejection is a warning and repeats go to DEBUG, so a broken peer cannot
        # flood the log.
        level = logging.WARNING if self._rejected == 1 else logging.DEBUG
        logger.log(level, message, *args)

    # -- rejections --------------------------------------------------------------------

    def skew_error(self, peer_message: str, *, used_offset: float | None = None) -> ClockSkewError:
        """Build the :class:`~tokenflight.ClockSkewError` for a peer's time-claim rejection.

        The message states that the clocks likely disagree and quotes the peer's message,
        with any JWT in it replaced and shortened to 300 characters. It also gives the
        measured offset and the offset the rejected request was signed with.

        :param peer_message: what the peer said, for example an ``error_description``.
        :param used_offset: the :attr:`offset` the rejected request was signed with.
        """
        used = "" if used_offset is None else f", the request used {used_offset:+.1f} s"
        msg = (
            f"the peer rejected a time claim, so the local and the server clocks likely "
            f"disagree: {_redact(peer_message)!r}. Measured server clock offset "
            f"{self._offset:+.1f} s{used}. Synchronise this machine's clock (NTP), or "
            "pass this ServerClock as the signer's clock and feed it the server's responses"
        )
        return ClockSkewError(msg)

    async def retry_on_skew(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``attempt``, and run it once more if it failed on clock skew and the
        offset has changed since it started.

        ``attempt`` signs with this clock, sends, feeds the response to this clock and
        raises :class:`~tokenflight.ClockSkewError` (for example from :meth:`skew_error`)
        when the peer rejects a time claim. It must sign before its first checkpoint, so
        the offset it signs with is the one read here.

        Each call compares the current offset with the snapshot it took before its own
        attempt, not with what its own response taught. So when many concurrent requests
        fail at once, each retries once, although only the first response changed the
        offset. A second skew failure, or a failure with an unchanged offset, propagates.

        :raises ClockSkewError: when the retry fails too, or when no retry can help
            because the offset did not change.
        """
        used = self._offset
        try:
            return await attempt()
        except ClockSkewError:
            if self._offset == used:
                raise
            logger.info(
                "retrying once after a clock-skew rejection: offset %+.1f s -> %+.1f s",
                used,
                self._offset,
            )
        return await attempt()

    def __repr__(self) -> str:
        return (
            f"ServerClock(offset={self._offset:+.1f}, max_offset={self._max_offset:g}, "
            f"clock={self._clock!r})"
        )


def rejection_message(response: httpx.Response) -> str:
    """Return the peer's explanation for a rejected request, for skew checks and errors.

    It joins ``error``, ``error_description`` and ``message`` of a JSON body and the
    ``error_description`` of a ``WWW-Authenticate`` header. Without any of those it
    returns the first 300 characters of a non-JSON body, or else the status code. The
    response body must have been read.
    """
    parts: list[str] = []
    try:
        body: Any = response.json()
    except (ValueError, UnicodeDecodeError, httpx.ResponseNotRead):
        body = None
    if isinstance(body, Mapping):
        for name in ("error", "error_description", "message"):
            value = body.get(name)
            if isinstance(value, str) and value:
                parts.append(value)
    challenge = response.headers.get("WWW-Authenticate", "")
    found = re.search(r'error_description="([^"]*)"', challenge)
    if found:
        parts.append(found.group(1))
    if not parts:
        try:
            text = response.text
        except httpx.ResponseNotRead:
            text = ""
        if text and body is None:
            parts.append(text[:_MAX_MESSAGE])
    return ": ".join(parts) if parts else f"HTTP {response.status_code}"
