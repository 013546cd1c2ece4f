"""Pools of API keys that rotate when a rate limit hits.

A :class:`KeyPool` lends one key per attempt and learns from each response:

* 429 (or a 403 that carries ``Retry-After`` or ``X-RateLimit-Remaining: 0``) cools the
  key's quota bucket down until ``Retry-After`` or ``X-RateLimit-Reset``. Without
  either, the cooldown is a jittered backoff, and it is never shorter than
  ``min_cooldown``. The next attempt takes a key from another bucket at once;
* ``X-RateLimit-Remaining`` on any response caps how many requests the bucket may have
  in flight, and 0 cools it down until the reset ahead of a 429;
* 401 or 403 removes the key from the pool, with a warning that shows its fingerprint.

The pool never sends a crowd of requests to a bucket whose quota it has not seen. A
bucket is in one of these states::

    state      when                                    requests admitted
    ---------  --------------------------------------  ----------------------------------
    unknown    new, or its cooldown just ended         one probe at a time
    counted    the last response said N remaining      while in flight < N
    open       the last response had no quota headers  any number
    cooling    rate limited, until its reset time      none

so 1,000 callers that find the next key free send it one probe, then as many requests
as its quota allows, instead of 1,000 requests that 999 times come back as 429.

Callers that find no key to use wait for a response or for the earliest reset, within
their wait budget; past it they get :class:`~tokenflight.RateLimitedError` naming the
earliest retry time.
"""

from __future__ import annotations

import itertools
import logging
import math
import random as _random
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import anyio
import httpx

from ._clock import Clock, SystemClock
from ._credentials import Credentials, check_header_value
from ._errors import (
    ConfigurationError,
    InvalidTokenError,
    NoUsableKeyError,
    RateLimitedError,
    SigningError,
)
from ._policy import Backoff
from ._signing import (
    KeyLease,
    Outcome,
    RetryPolicy,
    SigningAuth,
    check_header_name,
    rate_limit_remaining,
    rate_limit_reset,
    retry_after,
)

__all__ = ["KeyPool", "KeyPoolAuth", "KeyPoolStatistics", "PoolKey"]

logger = logging.getLogger("tokenflight")

Strategy = Literal["round_robin", "least_recently_used"]
BucketState = Literal["unknown", "counted", "open", "cooling"]


@dataclass(frozen=True, eq=False, repr=False)
class PoolKey:
    """A key of a :class:`KeyPool` and the quota bucket it draws from.

    :param credentials: the key: a plain API key string, or :class:`Credentials` for
        signing schemes.
    :param bucket: the name of the quota the key counts against, such as a project id.
        Keys that share a bucket cool down together. ``None`` gives the key a bucket of
        its own.
    """

    credentials: Credentials | str
    bucket: Hashable = None

    def __repr__(self) -> str:
        return f"PoolKey({_as_credentials(self.credentials)!r}, bucket={self.bucket!r})"


def _as_credentials(key: Credentials | str) -> Credentials:
    return key if isinstance(key, Credentials) else Credentials(None, key)


@dataclass(frozen=True)
class KeyPoolStatistics:
    """A snapshot of a :class:`KeyPool`, returned by :meth:`KeyPool.statistics`.

    :param keys: keys in the pool, removed ones excluded.
    :param removed: keys removed after a 401 or 403.
    :param cooling: buckets cooling down right now.
    :param in_flight: attempts holding a key right now.
    :param waiting: callers waiting for a key right now.
    :param leases: keys lent so far.
    :param rate_limited: rate-limit responses (429, or 403 with rate-limit headers) so far.
    """

    keys: int
    removed: int
    cooling: int
    in_flight: int
    waiting: int
    leases: int
    rate_limited: int


class _Bucket:
    __slots__ = (
        "cooling_until",
        "failures",
        "generation",
        "in_flight",
        "name",
        "remaining",
        "remaining_until",
        "state",
    )

    def __init__(self, name: Hashable) -> None:
        self.name = name
        self.state: BucketState = "unknown"
        self.remaining = 0
        # Wall-clock reset time of the window that ``remaining`` counts down, when known.
        self.remaining_until = -math.inf
        self.in_flight = 0
        self.cooling_until = -math.inf
        # Consecutive rate limits, for the backoff when the server gives no reset time.
        self.failures = 0
        # Counts cooldowns, so that the many 429s of one burst escalate the backoff once.
        self.generation = 0


class _Key:
    __slots__ = ("bucket", "credentials", "index", "last_used", "removed")

    def __init__(self, credentials: Credentials, bucket: _Bucket, index: int) -> None:
        self.credentials = credentials
        self.bucket = bucket
        self.index = index
        self.last_used = -math.inf
        self.removed = False


@dataclass(eq=False)
class _Slot:
    key: _Key
    generation: int


class KeyPool:
    """Several keys used in turn; a rate-limited key cools down while the others serve.

    The pool is driven by :class:`KeyPoolAuth` (plain API keys in a header) or by a
    signer such as :class:`~tokenflight.HmacAuth` given the pool as its credentials.
    Code that talks HTTP another way calls :meth:`acquire`, then :meth:`report` with the
    response, or :meth:`release` when there was none.

    The pool belongs to one event loop at a time and is not thread-safe. It creates its
    anyio primitives lazily, so it can be built outside an event loop.

    :param keys: the keys: API key strings, :class:`~tokenflight.Credentials`, or
        :class:`PoolKey` to name a quota bucket.
    :param strategy: ``"round_robin"`` takes the keys in turn; ``"least_recently_used"``
        takes the usable key that waited longest.
    :param clock: time source of cooldowns and waits.
    :param cooldown: cooldown of a bucket rate limited without ``Retry-After`` or a reset
        header, growing with each consecutive rate limit.
    :param min_cooldown: shortest cooldown in seconds, even when the server sends 0, so a
        rate-limited bucket is never retried in a tight loop.
    :param probe: admit one request at a time to a bucket whose quota is unknown, until
        a response reports the quota. Turn off only for APIs without rate-limit headers
        that tolerate bursts.
    :param random: function returning floats in [0, 1) for the cooldown jitter.
    :raises ConfigurationError: for an empty pool, an unknown strategy, a negative
        ``min_cooldown``, or the same key twice.
    :raises InvalidTokenError: for an API key string that is empty or contains a
        control character or a non-ASCII character, which an HTTP header cannot carry.
        The message shows the key's fingerprint, never the key.
    """

    def __init__(
        self,
        keys: Iterable[str | Credentials | PoolKey],
        *,
        strategy: Strategy = "round_robin",
        clock: Clock | None = None,
        cooldown: Backoff | None = None,
        min_cooldown: float = 1.0,
        probe: bool = True,
        random: Callable[[], float] | None = None,
    ) -> None:
        if strategy not in ("round_robin", "least_recently_used"):
            msg = f"strategy must be 'round_robin' or 'least_recently_used', got {strategy!r}"
            raise ConfigurationError(msg)
        if not isinstance(min_cooldown, int | float) or not 0 <= min_cooldown < math.inf:
            msg = f"min_cooldown must be a finite number of seconds >= 0, got {min_cooldown!r}"
            raise ConfigurationError(msg)
        self._strategy = strategy
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._cooldown = cooldown if cooldown is not None else Backoff(1.0, 2.0, 60.0, 0.5)
        self._min_cooldown = float(min_cooldown)
        self._probe = probe
        self._random = random if random is not None else _random.random
        self._keys: list[_Key] = []
        self._buckets: dict[Hashable, _Bucket] = {}
        self._cursor = 0
        # Callers waiting for a key, in arrival order; each waits on its own event.
        self._waiters: dict[int, anyio.Event] = {}
        self._waiter_ids = itertools.count()
        # Set when the keys or the set of cooling buckets changed: every waiter must then
        # look again, to take a new timer or to give up on its budget.
        self._wake_all = False
        self._leases = 0
        self._rate_limited = 0
        for key in keys:
            self.add(key)
        if not self._keys:
            msg = "a KeyPool needs at least one key"
            raise ConfigurationError(msg)

    @classmethod
    def from_buckets(
        cls,
        buckets: Mapping[Hashable, Iterable[str | Credentials]],
        *,
        strategy: Strategy = "round_robin",
        clock: Clock | None = None,
        cooldown: Backoff | None = None,
        min_cooldown: float = 1.0,
        probe: bool = True,
        random: Callable[[], float] | None = None,
    ) -> KeyPool:
        """Build a pool from keys grouped by quota bucket: ``{"project-1": [k1, k2]}``.

        The other parameters are those of the constructor.
        """
        keys = [PoolKey(key, bucket) for bucket, group in buckets.items() for key in group]
        return cls(
            keys,
            strategy=strategy,
            clock=clock,
            cooldown=cooldown,
            min_cooldown=min_cooldown,
            probe=probe,
            random=random,
        )

    def add(self, key: str | Credentials | PoolKey) -> None:
        """Add a key to the pool; it is usable at once.

        An API key string is checked here, so that a bad key fails when it is added and
        not at its first request. The secret of :class:`~tokenflight.Credentials` is a
        signing secret that no header carries, so it is not checked.

        :raises ConfigurationError: when the pool already contains the same secret.
        :raises InvalidTokenError: for an API key string that is empty or contains a
            control character or a non-ASCII character. The message shows the key's
            fingerprint, never the key.
        """
        pool_key = key if isinstance(key, PoolKey) else PoolKey(key)
        if isinstance(pool_key.credentials, str):
            check_header_value(pool_key.credentials, "the API key", secret=True)
        credentials = _as_credentials(pool_key.credentials)
        for existing in self._keys:
            if not existing.removed and existing.credentials.secret == credentials.secret:
                msg = f"the key with fingerprint {credentials.fingerprint} is in the pool already"
                raise ConfigurationError(msg)
        name = pool_key.bucket if pool_key.bucket is not None else _OwnBucket(len(self._keys))
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(name)
        self._keys.append(_Key(credentials, bucket, len(self._keys)))
        self._wake_all = True
        self._notify()

    @property
    def clock(self) -> Clock:
        """The clock that times cooldowns."""
        return self._clock

    @property
    def rotation_limit(self) -> int:
        """How many times one request may move to another key: twice the pool's size."""
        return 2 * len(self._keys)

    # -- lending ---------------------------------------------------------------------

    async def acquire(self, max_wait: float = 0.0) -> KeyLease:
        """Lend a key for one attempt, waiting if no key can take a request now.

        Waiting for an in-flight probe or quota is not limited: a response always comes
        (or the request fails and releases its key). Waiting for a cooldown to end is
        limited to ``max_wait`` seconds in total.

        Cancellation: a cancelled caller stops waiting and keeps no key.

        :param max_wait: the caller's budget, in seconds, for waiting out cooldowns.
        :raises RateLimitedError: when every usable bucket is cooling down for longer
            than what is left of ``max_wait``; it names the earliest retry time.
        :raises NoUsableKeyError: when every key has been removed.
        """
        budget = max(0.0, max_wait)
        while True:
            now = self._clock.monotonic()
            key = self._admit(now)
            if key is not None:
                bucket = key.bucket
                bucket.in_flight += 1
                key.last_used = now
                self._leases += 1
                return KeyLease(key.credentials, slot=_Slot(key, bucket.generation))

            live = [key for key in self._keys if not key.removed]
            if not live:
                msg = (
                    f"every key of the pool ({len(self._keys)}) was rejected by the server "
                    "and removed; add valid keys with KeyPool.add()"
                )
                raise NoUsableKeyError(msg)
            buckets = {id(key.bucket): key.bucket for key in live}.values()
            cooling_ends = [b.cooling_until for b in buckets if b.state == "cooling"]
            wait = min(cooling_ends) - now if cooling_ends else math.inf
            # Only a wait for cooldowns counts against the budget: a wait for a probe or
            # for quota ends with a response, which always comes.
            all_cooling = len(cooling_ends) == len(buckets)
            if all_cooling and wait > budget:
                raise self._rate_limited_error(wait, budget, len(live))

            waiter = next(self._waiter_ids)
            event = self._waiters[waiter] = anyio.Event()
            try:
                await self._wait(event, wait)
            except BaseException:
                # A waiter cancelled after its wake-up must pass the wake-up on, or the
                # capacity it was woken for could sit unused while others sleep.
                if event.is_set():
                    self._notify()
                raise
            finally:
                self._waiters.pop(waiter, None)
            if all_cooling:
                budget = max(0.0, budget - (self._clock.monotonic() - now))

    def _admit(self, now: float) -> _Key | None:
        candidates = []
        for key in self._keys:
            if key.removed:
                continue
            bucket = key.bucket
            if bucket.state == "cooling" and now >= bucket.cooling_until:
                bucket.state = "unknown"
            if self._admits(bucket):
                candidates.append(key)
        if not candidates:
            return None
        if self._strategy == "least_recently_used":
            return min(candidates, key=lambda key: (key.last_used, key.index))
        after = [key for key in candidates if key.index >= self._cursor]
        chosen = after[0] if after else candidates[0]
        self._cursor = chosen.index + 1
        return chosen

    def _admits(self, bucket: _Bucket) -> bool:
        if bucket.state == "open":
            return True
        if bucket.state == "counted":
            return bucket.in_flight < bucket.remaining
        if bucket.state == "unknown":
            return not self._probe or bucket.in_flight == 0
        return False

    def _rate_limited_error(self, wait: float, budget: float, live: int) -> RateLimitedError:
        retry_at = self._clock.time() + wait
        when = datetime.fromtimestamp(retry_at, tz=timezone.utc).isoformat(timespec="seconds")
        msg = (
            f"all {live} keys of the pool are rate limited; the earliest retry is at {when} "
            f"(in {wait:.1f} s), beyond the wait budget of {budget:.1f} s. Retry then, or "
            "allow a longer wait with RetryPolicy(max_wait=...)"
        )
        return RateLimitedError(msg, retry_at=retry_at, retry_after=wait)

    # -- learning from responses ---------------------------------------------------------

    def report(
        self,
        lease: KeyLease,
        status: int,
        headers: Mapping[str, str],
        *,
        may_remove: bool = True,
    ) -> Outcome:
        """Settle ``lease`` with the response's status and headers; return what happened.

        :param may_remove: whether a 401 or 403 may remove the key. A request that has
            already lost one key to a rejection passes ``False``: when the next key is
            rejected too, the request itself is the likely cause, not the key.
        :returns: ``"rate_limited"`` when the key's bucket now cools down,
            ``"removed"`` when the key left the pool, ``"ok"`` otherwise.
        """
        slot = self._settle(lease)
        if slot is None:
            return "ok"
        key, bucket = slot.key, slot.key.bucket
        now = self._clock.monotonic()
        wall = self._clock.time()
        try:
            remaining = rate_limit_remaining(headers)
            asked = retry_after(headers, wall)
            reset = rate_limit_reset(headers, wall)
            if status == 429 or (status == 403 and (asked is not None or remaining == 0)):
                self._cool(bucket, slot.generation, asked if asked is not None else reset, now)
                self._rate_limited += 1
                logger.info(
                    "key rate limited: key=%s bucket=%r status=%d cooldown=%.1fs",
                    key.credentials.fingerprint,
                    bucket.name,
                    status,
                    bucket.cooling_until - now,
                )
                return "rate_limited"
            if status in (401, 403):
                if not may_remove or key.removed:
                    return "ok"
                key.removed = True
                self._wake_all = True
                left = sum(not k.removed for k in self._keys)
                logger.warning(
                    "key removed from the pool after HTTP %d: fingerprint=%s keys_left=%d",
                    status,
                    key.credentials.fingerprint,
                    left,
                )
                return "removed"
            bucket.failures = 0
            self._count(bucket, slot.generation, remaining, reset, now, wall)
            return "ok"
        finally:
            self._notify()

    def _count(
        self,
        bucket: _Bucket,
        generation: int,
        remaining: int | None,
        reset: float | None,
        now: float,
        wall: float,
    ) -> None:
        if remaining is None:
            if bucket.state != "cooling":
                bucket.state = "open"
            return
        # Responses overtake each other, so within one window the smallest count is the
        # newest. Only a response from a later window (a later reset time) may raise it.
        same_window = bucket.state == "counted"
        if reset is not None:
            window_end = wall + reset
            if window_end < bucket.remaining_until - 1.0:
                return
            if window_end > bucket.remaining_until + 1.0:
                same_window = False
            bucket.remaining_until = max(bucket.remaining_until, window_end)
        if remaining == 0:
            self._cool(bucket, generation, reset, now)
        elif bucket.state != "cooling":
            if same_window:
                remaining = min(remaining, bucket.remaining)
            bucket.state = "counted"
            bucket.remaining = remaining

    def release(self, lease: KeyLease) -> None:
        """Settle ``lease`` without a response, for example after a connection error."""
        if self._settle(lease) is not None:
            self._notify()

    def _settle(self, lease: KeyLease) -> _Slot | None:
        # A lease settles once: a second report or release of it changes nothing.
        slot = lease.slot
        if not isinstance(slot, _Slot):
            return None
        lease.slot = None
        lease.settled = True
        slot.key.bucket.in_flight -= 1
        return slot

    def _cool(self, bucket: _Bucket, generation: int, wait: float | None, now: float) -> None:
        if generation == bucket.generation:
            # The first rate limit of this burst. Later responses to requests admitted
            # before it only extend the cooldown and do not escalate the backoff.
            bucket.generation += 1
            bucket.failures += 1
        if wait is None:
            wait = self._cooldown.delay(bucket.failures, self._random)
        wait = max(wait, self._min_cooldown)
        bucket.cooling_until = max(bucket.cooling_until, now + wait)
        if bucket.state != "cooling":
            self._wake_all = True
        bucket.state = "cooling"
        bucket.remaining = 0

    # -- waiting -------------------------------------------------------------------------

    def _capacity(self, now: float) -> float:
        """Return how many more requests the pool would admit right now."""
        capacity = 0.0
        seen: set[int] = set()
        for key in self._keys:
            bucket = key.bucket
            if key.removed or id(bucket) in seen:
                continue
            seen.add(id(bucket))
            state = bucket.state
            if state == "cooling":
                if now < bucket.cooling_until:
                    continue
                state = "unknown"
            if state == "open" or (state == "unknown" and not self._probe):
                return math.inf
            if state == "counted":
                capacity += max(0, bucket.remaining - bucket.in_flight)
            elif bucket.in_flight == 0:
                capacity += 1
        return capacity

    def _notify(self) -> None:
        # Wake as many waiters as could be admitted now, first come first served. The
        # others sleep on: waking all of them after every response would cost a full
        # pass over every waiter per response.
        if self._wake_all:
            self._wake_all = False
            count = math.inf
        else:
            count = self._capacity(self._clock.monotonic())
        while self._waiters and count > 0:
            waiter = next(iter(self._waiters))
            self._waiters.pop(waiter).set()
            count -= 1

    async def _wait(self, event: anyio.Event, seconds: float) -> None:
        if seconds == math.inf:
            await event.wait()
            return
        async with anyio.create_task_group() as group:

            async def wake_at_deadline() -> None:
                await self._clock.sleep(seconds)
                group.cancel_scope.cancel()

            group.start_soon(wake_at_deadline)
            await event.wait()
            group.cancel_scope.cancel()

    # -- inspection ----------------------------------------------------------------------

    def statistics(self) -> KeyPoolStatistics:
        """Return a snapshot of the pool's counters."""
        now = self._clock.monotonic()
        live = [key for key in self._keys if not key.removed]
        buckets = {id(key.bucket): key.bucket for key in live}.values()
        return KeyPoolStatistics(
            keys=len(live),
            removed=len(self._keys) - len(live),
            cooling=sum(b.state == "cooling" and now < b.cooling_until for b in buckets),
            in_flight=sum(b.in_flight for b in self._buckets.values()),
            waiting=len(self._waiters),
            leases=self._leases,
            rate_limited=self._rate_limited,
        )

    def __repr__(self) -> str:
        live = sum(not key.removed for key in self._keys)
        return f"KeyPool(keys={live}, buckets={len(self._buckets)}, strategy={self._strategy!r})"


class _OwnBucket:
    """The bucket name of a key that shares its quota with no other key."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<own bucket of key {self.index}>"


class KeyPoolAuth(SigningAuth):
    """Send each request with an API key from a :class:`KeyPool` in a header.

    A rate-limited key hands the request to another key at once, without using up a
    retry. A key rejected with 401 or 403 leaves the pool, and the request tries one
    more key. When every key is cooling down, the request waits for the earliest within
    ``retry.max_wait`` or raises :class:`~tokenflight.RateLimitedError`.

    >>> pool = KeyPool(["key-a", "key-b"])
    >>> auth = KeyPoolAuth(pool, retry=RetryPolicy(attempts=0, max_wait=30))
    >>> client = httpx.AsyncClient(auth=auth)

    :param pool: the keys.
    :param header: the header that carries the key.
    :param scheme: text before the key in the header, such as ``"Bearer"``; ``None``
        sends the key alone.
    :param retry: retries of 429 and 503 that are not rotations, and the wait budget;
        no retries and no waiting by default.
    :param clock: time source of retry waits; the pool's clock by default.
    :param replace_existing: send a key even when the caller set ``header`` already.
    :raises ConfigurationError: for an invalid header name.
    """

    def __init__(
        self,
        pool: KeyPool,
        *,
        header: str = "X-Api-Key",
        scheme: str | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        replace_existing: bool = False,
    ) -> None:
        super().__init__(
            pool,
            clock=clock if clock is not None else pool.clock,
            retry=retry,
            replace_existing=replace_existing,
        )
        self.signature_header = check_header_name(header, "header")
        self._scheme = scheme

    def _wants_body(self, request: httpx.Request) -> bool:
        return False

    def _sign(
        self, request: httpx.Request, credentials: Credentials, body: bytes | None, now: float
    ) -> None:
        # API key strings were checked when they joined the pool; the secret of
        # Credentials given to the pool was not.
        secret = credentials.secret
        if not isinstance(secret, str):
            msg = (
                f"the key with fingerprint {credentials.fingerprint} cannot go in a header: "
                "it is bytes; pass the API key as a str"
            )
            raise SigningError(msg)
        try:
            check_header_value(secret, "the API key", secret=True)
        except InvalidTokenError as error:
            raise SigningError(str(error)) from None
        value = secret if self._scheme is None else f"{self._scheme} {secret}"
        request.headers[self.signature_header] = value

    def __repr__(self) -> str:
        return f"KeyPoolAuth({self._lender!r}, header={self.signature_header!r})"
