"""The httpx auth flow that request signers and key pools share.

Each attempt of a request (the first one, a retry after a backoff, a retry with another
key) goes through the same steps in :class:`SigningAuth`:

1. take one immutable :class:`Credentials` snapshot, from a fixed value, a
   :class:`~tokenflight.TokenCache` or a :class:`~tokenflight.KeyPool`;
2. on the first attempt only, read the body into memory, with a size limit, so it can be
   hashed and sent again;
3. reset the URL and headers to what the caller built, read the clock, and sign;
4. send, and inspect the response. A rate-limited or rejected key rotates to another
   key at once. A clock-skew rejection teaches the clock the server's offset. A
   retryable status waits for its backoff. Every resend goes back to step 1, so no
   timestamp, nonce or signature is ever reused.

This module also contains what those steps share: the body reader, the URI encoding of
canonical requests, and the parsing of ``Retry-After`` and rate-limit headers.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random as _random
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import httpx

from ._cache import TokenCache
from ._clock import Clock, SystemClock
from ._credentials import Credentials
from ._errors import ConfigurationError, NoUsableKeyError, RateLimitedError, SigningError
from ._nonce import KeyedLocks
from ._policy import Backoff
from ._token import Token

__all__ = [
    "CredentialsFunction",
    "KeyLease",
    "Outcome",
    "RetryPolicy",
    "SigningAuth",
    "canonical_query",
    "rate_limit_remaining",
    "rate_limit_reset",
    "retry_after",
    "uri_encode",
]

logger = logging.getLogger("tokenflight")

CredentialsFunction = Callable[[], Awaitable[Credentials]]
Outcome = Literal["ok", "rate_limited", "removed"]
ResponseCheck = Callable[[httpx.Response], bool]

DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024

# Statuses whose body a clock-skew or credentials check may need to read. Error bodies
# are short; a success body is never read, so streamed downloads stay streamed.
_CHECKED_STATUSES = frozenset({400, 401, 403})


# -- retry policy ------------------------------------------------------------------

_RETRY_BACKOFF = Backoff(initial=1.0, multiplier=2.0, maximum=60.0, jitter=0.5)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry settings of a signer, for an attempt whose response has a retryable status.

    A retry waits ``max(backoff delay, Retry-After)`` on the signer's clock and is then
    signed afresh. Rotating to another key of a :class:`~tokenflight.KeyPool` is not a
    retry and does not count against ``attempts``.

    :param attempts: retries after the first attempt, at most; 0 sends each request
        once and only waits for a rate-limited key pool.
    :param statuses: response statuses that are retried. 429 and 503 mean the server did
        not process the request, so even a POST is safe to send again.
    :param backoff: delays between retries when the server sends no ``Retry-After``.
    :param max_wait: the caller's wait budget for one request, in seconds: the total of
        every backoff delay and every wait for a rate-limited key pool. A wait that would
        exceed it is not taken: the response goes back to the caller, or a key pool raises
        :class:`~tokenflight.RateLimitedError`.
    :raises ConfigurationError: when a value is out of range.
    """

    attempts: int = 2
    statuses: frozenset[int] = frozenset({429, 503})
    backoff: Backoff = _RETRY_BACKOFF
    max_wait: float = 60.0

    def __post_init__(self) -> None:
        attempts: object = self.attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            msg = (
                "RetryPolicy.attempts is the number of retries after the first attempt and "
                f"must be an int >= 0 (0 for no retries), got {attempts!r}"
            )
            raise ConfigurationError(msg)
        wait: object = self.max_wait
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
            msg = f"RetryPolicy.max_wait must be a number of seconds >= 0, got {wait!r}"
            raise ConfigurationError(msg)
        object.__setattr__(self, "statuses", frozenset(self.statuses))


NO_RETRY = RetryPolicy(attempts=0, max_wait=0.0)


# -- rate-limit headers ------------------------------------------------------------


def _lower_keys(headers: Mapping[str, str]) -> Mapping[str, str]:
    if isinstance(headers, httpx.Headers):
        return headers
    return {name.lower(): value for name, value in headers.items()}


def _parse_seconds_or_date(value: str, now: float) -> float | None:
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return moment.timestamp() - now
    return seconds if math.isfinite(seconds) else None


def retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Return the seconds a ``Retry-After`` header requests, or ``None`` without one.

    The header may give seconds or an HTTP date, which is compared with ``now`` (Unix
    seconds). A date in the past gives a negative number; an unparseable value ``None``.
    """
    value = _lower_keys(headers).get("retry-after")
    return None if value is None else _parse_seconds_or_date(value, now)


def rate_limit_reset(headers: Mapping[str, str], now: float) -> float | None:
    """Return the seconds until the rate-limit window resets, from the common headers.

    ``X-RateLimit-Reset`` and ``RateLimit-Reset`` are read. Their value is Unix seconds
    when it is above 10**9 (after 2001), Unix milliseconds above 10**12, and otherwise
    seconds from now, which is how the APIs that send them use them.
    """
    lowered = _lower_keys(headers)
    value = lowered.get("x-ratelimit-reset") or lowered.get("ratelimit-reset")
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if number > 1e12:
        return number / 1000 - now
    if number > 1e9:
        return number - now
    return number


def rate_limit_remaining(headers: Mapping[str, str]) -> int | None:
    """Return ``X-RateLimit-Remaining`` (or ``RateLimit-Remaining``) as an int, if sent."""
    lowered = _lower_keys(headers)
    value = lowered.get("x-ratelimit-remaining") or lowered.get("ratelimit-remaining")
    if value is None:
        return None
    try:
        return max(int(float(value.strip())), 0)
    except (ValueError, OverflowError):
        return None


# -- canonical URI encoding ---------------------------------------------------------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_UNRESERVED_AND_SLASH = _UNRESERVED | {ord("/")}


def uri_encode(value: str, *, keep_slash: bool = False) -> str:
    """Percent-encode ``value`` as canonical requests do (RFC 3986 unreserved kept).

    Every UTF-8 byte other than ``A-Z a-z 0-9 - _ . ~`` (and ``/`` when ``keep_slash``)
    becomes ``%XY`` with uppercase hex digits; a space becomes ``%20``, never ``+``.
    """
    safe = _UNRESERVED_AND_SLASH if keep_slash else _UNRESERVED
    return "".join(chr(byte) if byte in safe else f"%{byte:02X}" for byte in value.encode("utf-8"))


def _query_pairs(raw_query: str) -> list[tuple[str, str]]:
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        # "+" means a space in a query string, as httpx's own params encoding writes it.
        pairs.append((urllib.parse.unquote_plus(name), urllib.parse.unquote_plus(value)))
    return pairs


def encode_query(raw_query: str) -> str:
    """Re-encode a raw query string in canonical form, keeping the parameter order."""
    return "&".join(f"{uri_encode(n)}={uri_encode(v)}" for n, v in _query_pairs(raw_query))


def canonical_query(raw_query: str) -> str:
    """Return the canonical form of a raw query string.

    Each name and value is decoded, encoded with :func:`uri_encode`, and the pairs are
    sorted by encoded name, then value. A name without ``=`` gets an empty value.
    """
    pairs = sorted((uri_encode(n), uri_encode(v)) for n, v in _query_pairs(raw_query))
    return "&".join(f"{name}={value}" for name, value in pairs)


# -- request bodies ------------------------------------------------------------------


def _body_too_large(limit: int) -> SigningError:
    return SigningError(
        f"the request body is larger than max_body_size={limit} bytes, so it cannot be "
        "hashed for the signature; raise max_body_size, or pass the body as bytes"
    )


def _consumed() -> SigningError:
    return SigningError(
        "the request body is a stream that was already read, so it cannot be hashed "
        "for the signature; pass the body as bytes or as a new stream for each request"
    )


def _check_declared_length(request: httpx.Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    # str.isdigit() also accepts characters such as "²" that int() rejects.
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _body_too_large(limit)


async def read_body(request: httpx.Request, limit: int) -> bytes:
    """Return the request body, reading a stream into memory with a size limit.

    A streamed body is replaced by the bytes read, so the request can be sent (and sent
    again) with exactly the bytes that were signed. Nothing is sent if this raises.

    :raises SigningError: when the body is larger than ``limit`` bytes, or is a stream
        that was already consumed.
    """
    try:
        return request.content
    except httpx.RequestNotRead:
        pass
    _check_declared_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    stream = request.stream
    try:
        if isinstance(stream, httpx.AsyncByteStream):
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    raise _body_too_large(limit)
                chunks.append(chunk)
        else:
            for chunk in stream:
                size += len(chunk)
                if size > limit:
                    raise _body_too_large(limit)
                chunks.append(chunk)
    except httpx.StreamConsumed:
        raise _consumed() from None
    request.stream = httpx.ByteStream(b"".join(chunks))
    return request.read()


def read_body_sync(request: httpx.Request, limit: int) -> bytes:
    """Synchronous :func:`read_body`, for ``httpx.Client``.

    :raises SigningError: as :func:`read_body` does.
    """
    try:
        return request.content
    except httpx.RequestNotRead:
        pass
    _check_declared_length(request, limit)
    stream = request.stream
    if not isinstance(stream, httpx.SyncByteStream):
        msg = "the request body is an async stream; send it with httpx.AsyncClient"
        raise SigningError(msg)
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise _body_too_large(limit)
            chunks.append(chunk)
    except httpx.StreamConsumed:
        raise _consumed() from None
    request.stream = httpx.ByteStream(b"".join(chunks))
    return request.read()


# -- where the credentials of an attempt come from ------------------------------------


@dataclass(eq=False)
class KeyLease:
    """The credentials one attempt signs with, and where they came from.

    :param credentials: the immutable snapshot to sign with.
    :param token: the cached token the credentials were built from, if any, so that a
        rejection can invalidate exactly that token.
    :param slot: bookkeeping of the :class:`~tokenflight.KeyPool` that lent the key.
    """

    credentials: Credentials
    token: Token | None = None
    slot: object = field(default=None, repr=False)
    settled: bool = False


@runtime_checkable
class KeyLender(Protocol):
    """Lends credentials to one attempt and learns from the server's response to it.

    :class:`~tokenflight.KeyPool` is the lender that rotates keys; the signers wrap a
    fixed :class:`Credentials`, a :class:`~tokenflight.TokenCache` or an async function
    in the simple lenders below.
    """

    @property
    def rotation_limit(self) -> int:
        """How many times one request may move to another key."""
        ...

    async def acquire(self, max_wait: float = 0.0) -> KeyLease:
        """Return a lease, waiting at most ``max_wait`` seconds for a usable key."""
        ...

    def report(
        self, lease: KeyLease, status: int, headers: Mapping[str, str], *, may_remove: bool = True
    ) -> Outcome:
        """Settle ``lease`` with the response status and headers; return the outcome."""
        ...

    def release(self, lease: KeyLease) -> None:
        """Settle ``lease`` without a response (the request failed or was cancelled)."""
        ...


class _StaticLender:
    rotation_limit = 0

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    async def acquire(self, max_wait: float = 0.0) -> KeyLease:
        return KeyLease(self.credentials)

    def report(
        self, lease: KeyLease, status: int, headers: Mapping[str, str], *, may_remove: bool = True
    ) -> Outcome:
        return "ok"

    def release(self, lease: KeyLease) -> None:
        return

    def __repr__(self) -> str:
        return repr(self.credentials)


class _CacheLender(_StaticLender):
    def __init__(self, cache: TokenCache, key: Hashable) -> None:
        self.cache = cache
        self.key = key

    async def acquire(self, max_wait: float = 0.0) -> KeyLease:
        token = await self.cache.get(self.key)
        return KeyLease(Credentials.from_token(token), token=token)

    def __repr__(self) -> str:
        return f"{self.cache!r} key={self.key!r}"


class _FunctionLender(_StaticLender):
    def __init__(self, function: CredentialsFunction) -> None:
        self.function = function

    async def acquire(self, max_wait: float = 0.0) -> KeyLease:
        credentials: object = await self.function()
        if not isinstance(credentials, Credentials):
            msg = f"{self.function!r} returned {type(credentials).__name__}, expected Credentials"
            raise TypeError(msg)
        return KeyLease(credentials)

    def __repr__(self) -> str:
        return getattr(self.function, "__qualname__", repr(self.function))


CredentialsInput = Credentials | TokenCache | KeyLender | CredentialsFunction


def _as_lender(credentials: CredentialsInput, key: Hashable) -> KeyLender:
    checked: object = credentials  # checked at run time for untyped callers
    if isinstance(credentials, Credentials):
        return _StaticLender(credentials)
    if isinstance(credentials, TokenCache):
        return _CacheLender(credentials, key)
    if isinstance(credentials, KeyLender):
        return credentials
    if callable(checked):
        return _FunctionLender(credentials)
    msg = (
        "credentials must be Credentials, a TokenCache, a KeyPool or an async function "
        f"returning Credentials, got {type(checked).__name__}"
    )
    raise ConfigurationError(msg)


# -- clocks that learn the server's offset -------------------------------------------


@runtime_checkable
class OffsetClock(Protocol):
    """A clock that learns the server's offset from ``Date`` headers (a ServerClock)."""

    @property
    def offset(self) -> float:
        """Seconds added to the local wall clock."""
        ...

    def observe(self, date_header: str, sent_at: float, received_at: float) -> object:
        """Learn the offset from a response's ``Date`` and the request's round trip."""
        ...


# -- the auth flow ---------------------------------------------------------------------


def _require_non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        msg = f"{name} must be an int >= 0, got {value!r}"
        raise ConfigurationError(msg)
    return value


class SigningAuth(httpx.Auth):
    """Base class of the request signers: one fresh signature per attempt.

    Subclasses implement :meth:`_sign`. See the module docstring for the steps of an
    attempt; the parameters are those every signer shares.

    :param credentials: a fixed :class:`Credentials`, a :class:`~tokenflight.TokenCache`
        serving tokens of the shape :meth:`Credentials.from_token` reads, a
        :class:`~tokenflight.KeyPool`, or an async function returning Credentials.
    :param key: the cache key to ask a TokenCache for.
    :param clock: time source of signature timestamps and waits. Pass a clock that
        learns the server's offset (``ServerClock``) to sign with the server's time.
    :param retry: retries of 429 and 503 responses; none by default.
    :param max_body_size: largest streamed body read into memory for hashing, in bytes.
    :param replace_existing: sign a request even when the caller already set the
        signature header on it. By default such a request is sent as the caller built it.
    :param ordered: hold a lock per key from signing until the response arrives, so that
        requests of one key reach the server in the order of their nonces.
    :param clock_skew: returns whether a response rejected the signature's timestamp.
        Such a response teaches an offset-learning clock the server's time from its
        ``Date`` header, and the request is signed again once.
    :param credentials_rejected: returns whether a response rejected the credentials
        themselves. Credentials from a TokenCache are then invalidated, and the request
        is signed once more with fresh ones.
    :param random: function returning floats in [0, 1) for the backoff jitter.
    """

    requires_request_body = False
    requires_response_body = False

    #: The header whose presence means the caller signed the request already.
    signature_header = "Authorization"

    def __init__(
        self,
        credentials: CredentialsInput,
        *,
        key: Hashable = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        replace_existing: bool = False,
        ordered: bool = False,
        clock_skew: ResponseCheck | None = None,
        credentials_rejected: ResponseCheck | None = None,
        random: Callable[[], float] | None = None,
    ) -> None:
        self._lender = _as_lender(credentials, key)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._retry = retry if retry is not None else NO_RETRY
        self._max_body_size = _require_non_negative_int("max_body_size", max_body_size)
        self._replace_existing = replace_existing
        self._ordered = ordered
        self._locks = KeyedLocks()
        self._clock_skew = clock_skew
        self._credentials_rejected = credentials_rejected
        self._random = random if random is not None else _random.random

    @property
    def clock(self) -> Clock:
        """The clock that timestamps signatures."""
        return self._clock

    # -- what subclasses provide ---------------------------------------------------

    def _sign(
        self, request: httpx.Request, credentials: Credentials, body: bytes | None, now: float
    ) -> None:
        """Sign ``request`` in place, for wall-clock time ``now``.

        ``body`` is ``None`` only when :meth:`_wants_body` declined to read a stream.
        """
        raise NotImplementedError

    def _wants_body(self, request: httpx.Request) -> bool:
        """Tell whether the body must be read; a signer with an unsigned mode may decline."""
        return True

    def _credential_headers(self) -> tuple[str, ...]:
        """Return the names of the headers this signer sets."""
        return (self.signature_header,)

    def _clean_next_request(self, response: httpx.Response) -> None:
        # httpx copies every header but Authorization to the request that follows a
        # redirect. A caller who follows it by hand must not carry this signer's headers
        # to wherever the redirect points.
        follow_up = response.next_request
        if follow_up is not None:
            for name in self._credential_headers():
                follow_up.headers.pop(name, None)

    def _ordering_key(self, credentials: Credentials) -> Hashable:
        return credentials.key_id if credentials.key_id is not None else credentials.fingerprint

    # -- the flows -------------------------------------------------------------------

    def _caller_signed(self, request: httpx.Request) -> bool:
        return not self._replace_existing and self.signature_header in request.headers

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        """Sign ``request`` once for ``httpx.Client``; only fixed credentials work here.

        :raises SigningError: when the credentials come from a cache, a pool or a
            function, which need ``httpx.AsyncClient``, or when the body cannot be read.
        """
        if self._caller_signed(request):
            yield request
            return
        if type(self._lender) is not _StaticLender:
            msg = (
                "this signer takes its credentials from a cache, a key pool or an async "
                "function, which needs httpx.AsyncClient; use a fixed Credentials with "
                "httpx.Client"
            )
            raise SigningError(msg)
        body = read_body_sync(request, self._max_body_size) if self._wants_body(request) else None
        self._sign(request, self._lender.credentials, body, self._clock.time())
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Sign each attempt of ``request`` afresh; rotate keys and retry as configured.

        Cancellation: a cancelled request releases its key lease and its ordering lock.

        :raises SigningError: when the body cannot be read for hashing.
        :raises RateLimitedError: when every key of a pool is cooling down for longer
            than the retry policy's ``max_wait``.
        :raises NoUsableKeyError: when every key of a pool has been removed.
        """
        if self._caller_signed(request):
            yield request
            return
        original_url = request.url
        original_headers = request.headers.copy()
        flow = _FlowState(self._retry.max_wait, self._lender.rotation_limit)
        lease = await self._acquire(flow)
        try:
            # Credentials first, then the body: the snapshot is taken once and kept
            # across the await of a streamed body, never re-read field by field.
            body = await self._read_body(request)
            replayable = body is not None or isinstance(request.stream, httpx.ByteStream)
            while True:
                request.url = original_url
                request.headers = original_headers.copy()
                lock = (
                    self._locks.get(self._ordering_key(lease.credentials))
                    if self._ordered
                    else None
                )
                if lock is not None:
                    await lock.acquire()
                try:
                    offset = self._clock.offset if isinstance(self._clock, OffsetClock) else None
                    sent_at = self._clock.time()
                    self._sign(request, lease.credentials, body, sent_at)
                    response = yield request
                    received_at = self._clock.time()
                finally:
                    if lock is not None:
                        lock.release()

                next_lease = await self._next_lease(
                    flow, lease, response, replayable, offset, sent_at, received_at
                )
                if next_lease is None:
                    self._clean_next_request(response)
                    return
                lease = next_lease
        finally:
            if not lease.settled:
                lease.settled = True
                self._lender.release(lease)

    async def _read_body(self, request: httpx.Request) -> bytes | None:
        if not self._wants_body(request):
            try:
                return request.content
            except httpx.RequestNotRead:
                return None
        return await read_body(request, self._max_body_size)

    async def _acquire(self, flow: _FlowState, response: httpx.Response | None = None) -> KeyLease:
        started = self._clock.monotonic()
        try:
            return await self._lender.acquire(max_wait=flow.budget)
        except (RateLimitedError, NoUsableKeyError) as error:
            if response is not None and getattr(error, "response", None) is None:
                error.response = response
            raise
        finally:
            flow.budget = max(0.0, flow.budget - (self._clock.monotonic() - started))

    async def _next_lease(
        self,
        flow: _FlowState,
        lease: KeyLease,
        response: httpx.Response,
        replayable: bool,
        offset: float | None,
        sent_at: float,
        received_at: float,
    ) -> KeyLease | None:
        """Decide what follows ``response``: a lease for the next attempt, or ``None``."""
        status = response.status_code
        lease.settled = True
        outcome = self._lender.report(
            lease, status, response.headers, may_remove=flow.removals == 0
        )
        if outcome != "ok":
            if outcome == "removed":
                flow.removals += 1
            if not replayable or flow.rotations >= flow.rotation_limit:
                return None
            flow.rotations += 1
            await response.aread()
            return await self._acquire(flow, response)

        if status in _CHECKED_STATUSES and (self._clock_skew or self._credentials_rejected):
            await response.aread()
            if not replayable:
                return None
            if (
                self._clock_skew is not None
                and not flow.skew_retried
                and self._clock_skew(response)
            ):
                flow.skew_retried = True
                self._learn_offset(response, offset, sent_at, received_at)
                return await self._acquire(flow)
            if (
                self._credentials_rejected is not None
                and lease.token is not None
                and not flow.credentials_retried
                and self._credentials_rejected(response)
            ):
                flow.credentials_retried = True
                return await self._fresh_credentials(flow, lease)

        if status in self._retry.statuses and replayable and flow.retries < self._retry.attempts:
            delay = self._retry.backoff.delay(flow.retries + 1, self._random)
            asked = retry_after(response.headers, self._clock.time())
            if asked is not None:
                delay = max(delay, asked)
            if delay > flow.budget:
                return None
            flow.retries += 1
            flow.budget -= delay
            logger.info(
                "request got HTTP %d, signing it again after %.3f s: attempt=%d",
                status,
                delay,
                flow.retries + 1,
            )
            await self._clock.sleep(delay)
            return await self._acquire(flow)
        return None

    async def _fresh_credentials(self, flow: _FlowState, lease: KeyLease) -> KeyLease | None:
        lender = self._lender
        if isinstance(lender, _CacheLender) and lease.token is not None:
            lender.cache.invalidate(lease.token, lender.key)
        fresh = await self._acquire(flow)
        if fresh.token is lease.token:
            # The cache still serves the rejected credentials: sending them again is futile.
            return None
        logger.info("credentials rejected; signing again with refreshed credentials")
        return fresh

    def _learn_offset(
        self, response: httpx.Response, offset: float | None, sent_at: float, received_at: float
    ) -> None:
        clock = self._clock
        date = response.headers.get("date")
        if not isinstance(clock, OffsetClock) or date is None:
            return
        # Compare with the offset this request signed with: if another request has
        # corrected it meanwhile, sign with the correction instead of measuring again.
        if clock.offset == offset:
            clock.observe(date, sent_at - (offset or 0.0), received_at - (offset or 0.0))
        logger.info(
            "signature time rejected as clock skew; signing again with offset %.3f s", clock.offset
        )


@dataclass
class _FlowState:
    """The budgets one request has used so far."""

    budget: float
    rotation_limit: int
    retries: int = 0
    rotations: int = 0
    removals: int = 0
    skew_retried: bool = False
    credentials_retried: bool = False


def check_header_name(name: str, what: str) -> str:
    """Return ``name`` if it is a valid HTTP header name, else raise ConfigurationError."""
    if not name or any(ch <= " " or ch in '()<>@,;:\\"/[]?={}\x7f' for ch in name):
        msg = f"{what} must be a valid HTTP header name, got {name!r}"
        raise ConfigurationError(msg)
    return name
