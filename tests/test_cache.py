"""TokenCache behaviour beyond the named scenarios: keys, invalidation, timing, observability.

Every async test runs on asyncio and trio with a fake clock. The scenario tests live in
test_cache_scenarios.py, the generated interleavings in test_cache_stateful.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Callable, Hashable

import anyio
import pytest
import trio

from cache_support import (
    VALUE_TAIL,
    EventRecorder,
    ScriptedSource,
    Step,
    entered_or_not,
    get_at_once,
    log_texts,
    never_random,
    secrets_of,
)
from tokenflight import (
    Backoff,
    CacheEvent,
    CallableSource,
    ConfigurationError,
    PermanentRefreshError,
    RefreshError,
    RefreshTimeoutError,
    Token,
    TokenCache,
    TransientRefreshError,
)
from tokenflight.testing import FakeClock, wait_all_tasks_blocked

HOUR = 3600.0
SKEW = 30.0


@pytest.fixture(params=[True, False], ids=["entered", "bare"])
def entered(request: pytest.FixtureRequest) -> bool:
    """Whether the test runs inside ``async with cache:``."""
    return bool(request.param)


def constant(value: float) -> Callable[[], float]:
    """Return a ``random`` function for the cache that always returns ``value``."""

    def random() -> float:
        return value

    return random


class KeyedSources:
    """A ``sources=`` factory that makes one ScriptedSource per key and counts its calls."""

    def __init__(self, clock: FakeClock, default: Step | None = None) -> None:
        self.clock = clock
        self.default = default
        self.sources: dict[Hashable, ScriptedSource] = {}
        self.factory_calls: list[Hashable] = []

    def __call__(self, key: Hashable) -> ScriptedSource:
        self.factory_calls.append(key)
        source = self.sources.get(key)
        if source is None:
            source = self.sources[key] = ScriptedSource(self.clock, default=self.default)
        return source


# -- the fresh path --------------------------------------------------------------------


@pytest.mark.anyio
async def test_fresh_get_no_checkpoint(entered: bool) -> None:
    """A fresh token comes back within one step of the coroutine: no lock, no I/O."""
    clock = FakeClock()
    source = ScriptedSource(clock)
    cache = TokenCache(source, clock=clock)

    async with entered_or_not(cache, entered=entered):
        token = await cache.get()
        for _ in range(1000):
            assert get_at_once(cache) is token

    assert source.calls == 1
    assert cache.statistics().hits == 1000


@pytest.mark.anyio
async def test_plain_async_function_accepted() -> None:
    clock = FakeClock()

    async def fetch() -> Token:
        return Token(f"plain-{VALUE_TAIL}", expires_in=60)

    cache = TokenCache(fetch, clock=clock)
    wrapped = TokenCache(CallableSource(fetch), clock=clock)

    assert (await cache.get()).value == f"plain-{VALUE_TAIL}"
    assert (await wrapped.get()).value == f"plain-{VALUE_TAIL}"


@pytest.mark.anyio
async def test_non_token_result_fails_refresh() -> None:
    clock = FakeClock()

    async def fetch() -> Token:
        result: object = {"access_token": "abc"}
        return result  # type: ignore[return-value]

    cache = TokenCache(fetch, clock=clock)

    with pytest.raises(RefreshError) as caught:
        await cache.get()
    assert isinstance(caught.value.__cause__, TypeError)
    assert "expected a tokenflight.Token" in str(caught.value.__cause__)


# -- expiry arithmetic -------------------------------------------------------------------


@pytest.mark.anyio
async def test_expires_in_counts_from_send() -> None:
    """A 60 s lifetime from a fetch that took 10 s ends 50 s after the token arrived."""
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=10.0, lifetime=60.0))
    cache = TokenCache(source, clock=clock, refresh_ahead=0)

    async with clock.autojump():
        token = await cache.get()
    assert clock.monotonic() == 1010.0
    margin = min(SKEW, 60.0 / 4)

    await clock.advance(60.0 - 10.0 - margin - 0.001)
    assert cache.peek() is token
    await clock.advance(0.001)
    assert cache.peek() is None


@pytest.mark.anyio
async def test_expires_at_converted_on_arrival() -> None:
    """An absolute expiry is read against the wall clock once, when the token arrives."""
    clock = FakeClock(wall_start=1_700_000_000.0)
    expires_at = 1_700_000_000.0 + 600.0
    source = ScriptedSource(clock, default=Step(lifetime=None, expires_at=expires_at))
    cache = TokenCache(source, clock=clock, refresh_ahead=0)

    token = await cache.get()
    clock.jump_wall(10 * HOUR)

    await clock.advance(600.0 - SKEW - 0.001)
    assert cache.peek() is token
    await clock.advance(0.001)
    assert cache.peek() is None


@pytest.mark.anyio
async def test_missing_expiry_uses_default_lifetime() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(lifetime=None))
    cache = TokenCache(source, clock=clock, default_lifetime=120.0, refresh_ahead=0)

    token = await cache.get()
    await clock.advance(120.0 - SKEW - 0.001)
    assert cache.peek() is token
    await clock.advance(0.001)
    assert cache.peek() is None


@pytest.mark.anyio
async def test_no_default_lifetime_keeps_token() -> None:
    """With ``default_lifetime=None`` a token without expiry is used until invalidated."""
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(lifetime=None))
    cache = TokenCache(source, clock=clock, default_lifetime=None)

    token = await cache.get()
    await clock.advance(365 * 24 * HOUR)
    assert get_at_once(cache) is token
    assert cache.invalidate(token)
    assert await cache.get() is not token
    assert source.calls == 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("lifetime", "usable"),
    [(5.0, 3.75), (60.0, 45.0), (HOUR, HOUR - SKEW), (24 * HOUR, 24 * HOUR - SKEW)],
    ids=["5s", "60s", "1h", "24h"],
)
async def test_default_margin_scales(lifetime: float, usable: float) -> None:
    """The documented margins: a quarter of the lifetime, at most the 30 s skew."""
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(lifetime=lifetime))
    cache = TokenCache(source, clock=clock, refresh_ahead=0)

    token = await cache.get()
    await clock.advance(usable - 0.001)
    assert cache.peek() is token
    await clock.advance(0.001)
    assert cache.peek() is None


@pytest.mark.anyio
async def test_refresh_window_jitter_bounds() -> None:
    """The refresh starts within the window, at most ``refresh_jitter`` of it late."""
    for random_value, expected_window in ((0.0, 300.0), (0.999, 300.0 * (1 - 0.1 * 0.999))):
        clock = FakeClock()
        source = ScriptedSource(clock)
        cache = TokenCache(source, clock=clock, random=constant(random_value))
        usable_until = 1000.0 + HOUR - SKEW

        async with cache:
            await cache.get()
            await clock.advance(usable_until - expected_window - 0.01 - 1000.0)
            get_at_once(cache)
            await wait_all_tasks_blocked()
            assert source.calls == 1
            await clock.advance(0.01)
            get_at_once(cache)
            await wait_all_tasks_blocked()
            assert source.calls == 2


@pytest.mark.anyio
async def test_short_lifetime_clamped_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """A 20 s token under a 30 s skew is used for 15 s, with one warning per cache.

    It is never refreshed in a loop: 120 calls over its usable life make no fetch.
    """
    caplog.set_level(logging.WARNING, logger="tokenflight")
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(lifetime=20.0))
    cache = TokenCache(source, clock=clock, refresh_ahead=0)

    for _ in range(3):
        token = await cache.get()
        for _ in range(120):
            assert get_at_once(cache) is token
            await clock.advance(0.125)
        assert cache.peek() is None

    assert source.calls == 3
    warnings = [record for record in caplog.records if "skew" in record.getMessage()]
    assert len(warnings) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "step",
    [
        pytest.param(Step(lifetime=None, expires_at=1_700_000_000.0 - 60.0), id="expiry-past"),
        pytest.param(Step(lifetime=0.0), id="zero-lifetime"),
        pytest.param(Step(delay=5.0, lifetime=4.0), id="expired-in-transit"),
    ],
)
async def test_expired_on_arrival_kept_briefly(
    step: Step, caplog: pytest.LogCaptureFixture
) -> None:
    """A token that arrives already expired is still kept briefly, not fetched per call.

    The documented floor is 1 s, of which a quarter is margin and the second half
    refresh-ahead window: the token must be usable on arrival, and calls in the next
    quarter second must make no fetch. The clamp warns once per cache, not per token.
    """
    caplog.set_level(logging.WARNING, logger="tokenflight")
    clock = FakeClock(wall_start=1_700_000_000.0)
    source = ScriptedSource(clock, default=step)
    cache = TokenCache(source, clock=clock)

    async with clock.autojump():
        for round_number in range(1, 4):
            token = await cache.get()
            assert cache.peek() is token
            for _ in range(3):
                assert get_at_once(cache) is token
                await clock.sleep(0.125)
            assert source.calls == round_number
            await clock.sleep(1.0)

    assert len([record for record in caplog.records if record.name == "tokenflight"]) == 1


# -- single flight, keys and eviction -----------------------------------------------------


@pytest.mark.anyio
async def test_keys_refresh_independently(entered: bool) -> None:
    """Each key has its own token and flight, and the factory runs once per key."""
    clock = FakeClock()
    factory = KeyedSources(clock, default=Step(delay=1.0))
    cache = TokenCache(sources=factory, clock=clock)
    results: dict[str, list[Token]] = {"read": [], "write": []}

    async def caller(key: str) -> None:
        results[key].append(await cache.get(key))

    async with entered_or_not(cache, entered=entered), anyio.create_task_group() as task_group:
        for _ in range(10):
            task_group.start_soon(caller, "read")
            task_group.start_soon(caller, "write")
        await wait_all_tasks_blocked()
        assert cache.statistics().in_flight == 2
        await clock.advance(1.0)

    assert sorted(map(str, factory.factory_calls)) == ["read", "write"]
    assert factory.sources["read"].calls == 1
    assert factory.sources["write"].calls == 1
    assert all(token is factory.sources["read"].last for token in results["read"])
    assert all(token is factory.sources["write"].last for token in results["write"])
    assert results["read"][0] is not results["write"][0]


@pytest.mark.anyio
async def test_failure_stays_in_its_key() -> None:
    clock = FakeClock()
    factory = KeyedSources(clock)
    cache = TokenCache(sources=factory, clock=clock)
    factory("bad").then(Step(error=PermanentRefreshError("invalid_scope")))

    with pytest.raises(PermanentRefreshError):
        await cache.get("bad")
    assert await cache.get("good") is factory.sources["good"].last


@pytest.mark.anyio
async def test_missing_source_for_key() -> None:
    clock = FakeClock()
    only_default = TokenCache(ScriptedSource(clock), clock=clock)
    only_keyed = TokenCache(sources=KeyedSources(clock), clock=clock)

    with pytest.raises(ConfigurationError, match="sources"):
        await only_default.get("read")
    with pytest.raises(ConfigurationError, match="default source"):
        await only_keyed.get()


@pytest.mark.anyio
async def test_lru_key_evicted() -> None:
    """Beyond ``max_keys``, the least recently used key goes first."""
    clock = FakeClock()
    factory = KeyedSources(clock)
    events = EventRecorder(clock)
    cache = TokenCache(sources=factory, clock=clock, max_keys=2, hooks=[events])

    await cache.get("a")
    await cache.get("b")
    get_at_once(cache, "a")
    await cache.get("c")

    assert cache.statistics().keys == 2
    assert cache.statistics().evictions == 1
    assert cache.peek("b") is None
    assert cache.peek("a") is factory.sources["a"].last
    assert cache.peek("c") is factory.sources["c"].last
    evicted = [event.key for _, event in events.events if event.name == "key.evicted"]
    assert evicted == ["b"]

    await cache.get("b")
    assert factory.sources["b"].calls == 2


@pytest.mark.anyio
async def test_eviction_spares_key_in_flight() -> None:
    """A key whose refresh is running is not evicted, so its waiters share one fetch.

    Once that refresh is over, the next new key brings the cache back within its bound.
    """
    clock = FakeClock()
    factory = KeyedSources(clock, default=Step(delay=10.0))
    cache = TokenCache(sources=factory, clock=clock, max_keys=1)
    results: list[Token] = []

    async def caller() -> None:
        results.append(await cache.get("slow"))

    async with clock.autojump(), anyio.create_task_group() as task_group:
        task_group.start_soon(caller)
        await clock.sleep(1.0)
        factory("fast").default = Step(delay=0.0)
        await cache.get("fast")
        task_group.start_soon(caller)

    assert factory.sources["slow"].calls == 1
    assert results == [factory.sources["slow"].last] * 2

    factory("third").default = Step(delay=0.0)
    factory("fourth").default = Step(delay=0.0)
    await cache.get("third")
    await cache.get("fourth")
    assert cache.statistics().keys <= 1


# -- invalidate, force_refresh, reset ----------------------------------------------------------


@pytest.mark.anyio
async def test_invalidate_compares_token(entered: bool) -> None:
    """Only the token still cached is dropped. An older or foreign token changes nothing."""
    clock = FakeClock()
    source = ScriptedSource(clock)
    cache = TokenCache(source, clock=clock)

    async with entered_or_not(cache, entered=entered):
        first = await cache.get()
        stranger = Token(f"stranger-{VALUE_TAIL}")
        assert not cache.invalidate(stranger)
        assert not cache.invalidate(first, key="other")
        assert cache.invalidate(first)
        assert not cache.invalidate(first)
        assert cache.peek() is None

        second = await cache.get()
        assert second is not first
        assert not cache.invalidate(first)
        assert cache.peek() is second
        assert source.calls == 2


@pytest.mark.anyio
async def test_many_rejections_one_refresh(entered: bool) -> None:
    """1,000 concurrent rejections of one token, then 1,000 gets: one refresh."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), default=Step(delay=0.5))
    cache = TokenCache(source, clock=clock)
    invalidated: list[bool] = []
    results: list[Token] = []

    async with entered_or_not(cache, entered=entered):
        rejected = await cache.get()

        async def rejected_request() -> None:
            invalidated.append(cache.invalidate(rejected))
            results.append(await cache.get())

        async with anyio.create_task_group() as task_group:
            for _ in range(1000):
                task_group.start_soon(rejected_request)
            await wait_all_tasks_blocked()
            await clock.advance(0.5)

    assert invalidated.count(True) == 1
    assert source.calls == 2
    assert all(token is source.last for token in results)


@pytest.mark.anyio
async def test_invalidate_during_refresh_ahead_joins_it() -> None:
    """Invalidating the token while a background refresh runs makes callers wait for it."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), default=Step(delay=5.0))
    cache = TokenCache(source, clock=clock, random=never_random)
    results: list[Token] = []

    async def caller() -> None:
        results.append(await cache.get())

    async with cache:
        first = await cache.get()
        await clock.advance(HOUR - SKEW - 100.0)
        assert get_at_once(cache) is first
        await wait_all_tasks_blocked()
        assert source.calls == 2
        assert cache.invalidate(first)
        async with anyio.create_task_group() as task_group:
            for _ in range(5):
                task_group.start_soon(caller)
            await clock.advance(5.0)

    assert source.calls == 2
    assert results == [source.last] * 5


@pytest.mark.anyio
async def test_force_refresh_ignores_cooldown(entered: bool) -> None:
    """force_refresh() fetches during a cooldown and after a permanent error."""
    clock = FakeClock()
    source = ScriptedSource(
        clock,
        Step(error=TransientRefreshError("503", retry_after=600)),
        Step(error=PermanentRefreshError("invalid_client")),
        default=Step(),
    )
    cache = TokenCache(source, clock=clock)

    async with entered_or_not(cache, entered=entered):
        with pytest.raises(TransientRefreshError):
            await cache.get()
        with pytest.raises(TransientRefreshError):
            get_at_once(cache)
        with pytest.raises(PermanentRefreshError):
            await cache.force_refresh()
        with pytest.raises(PermanentRefreshError):
            get_at_once(cache)
        assert await cache.force_refresh() is source.last
        assert get_at_once(cache) is source.last
    assert source.calls == 3


@pytest.mark.anyio
async def test_reset_forgets_permanent_error() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock, Step(error=PermanentRefreshError("invalid_client")))
    cache = TokenCache(source, clock=clock)

    with pytest.raises(PermanentRefreshError):
        await cache.get()
    await clock.advance(24 * HOUR)
    with pytest.raises(PermanentRefreshError):
        get_at_once(cache)
    assert source.calls == 1

    cache.reset()
    assert cache.statistics().keys == 0
    assert await cache.get() is source.last
    assert source.calls == 2


@pytest.mark.anyio
async def test_reset_during_refresh_discards_result() -> None:
    """A refresh running while its key is reset still answers its waiters, but is not kept."""
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=1.0))
    cache = TokenCache(source, clock=clock)
    results: list[Token] = []

    async def caller() -> None:
        results.append(await cache.get())

    async with cache:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(caller)
            await wait_all_tasks_blocked()
            cache.reset()
            await clock.advance(1.0)
        assert results == [source.tokens[0]]
        assert cache.peek() is None

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(caller)
            await wait_all_tasks_blocked()
            await clock.advance(1.0)
    assert results[1] is source.tokens[1]


@pytest.mark.anyio
async def test_clear_forgets_every_key() -> None:
    clock = FakeClock()
    factory = KeyedSources(clock)
    cache = TokenCache(sources=factory, clock=clock)
    await cache.get("a")
    await cache.get("b")

    cache.clear()

    assert cache.statistics().keys == 0
    assert cache.peek("a") is None
    await cache.get("a")
    assert factory.sources["a"].calls == 2


# -- refresh ahead -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_refresh_ahead_in_background() -> None:
    """Inside ``async with``, the window starts one background refresh and nobody waits."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), default=Step(delay=10.0))
    events = EventRecorder(clock)
    cache = TokenCache(source, clock=clock, random=never_random, hooks=[events])

    async with cache:
        first = await cache.get()
        await clock.advance(HOUR - SKEW - 300.0)
        for _ in range(100):
            assert get_at_once(cache) is first
        await wait_all_tasks_blocked()
        assert source.calls == 2
        assert cache.statistics().in_flight == 1
        await clock.advance(10.0)
        assert get_at_once(cache) is source.last

    started = [event for _, event in events.events if event.name == "refresh.started"]
    assert [event.background for event in started] == [False, True]


@pytest.mark.anyio
async def test_refresh_ahead_bare_one_caller_waits() -> None:
    """Without ``async with``, the first caller in the window runs the refresh and waits.

    It gets the new token, and callers meanwhile get the current one at once.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), default=Step(delay=10.0))
    cache = TokenCache(source, clock=clock, random=never_random)
    answered: list[tuple[float, Token]] = []

    async def caller() -> None:
        token = await cache.get()
        answered.append((clock.monotonic(), token))

    first = await cache.get()
    await clock.advance(HOUR - SKEW - 300.0)
    window_start = clock.monotonic()
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(caller)
        await wait_all_tasks_blocked()
        for _ in range(10):
            assert get_at_once(cache) is first
        await clock.advance(10.0)

    assert answered == [(window_start + 10.0, source.last)]
    assert source.calls == 2


@pytest.mark.anyio
async def test_refresh_ahead_failure_returns_current_bare() -> None:
    """Without ``async with``, a caller whose refresh ahead fails still gets the token."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), default=Step(error=PermanentRefreshError("no")))
    cache = TokenCache(source, clock=clock, random=never_random)

    first = await cache.get()
    await clock.advance(HOUR - SKEW - 300.0)

    assert await cache.get() is first
    assert source.calls == 2
    assert get_at_once(cache) is first


@pytest.mark.anyio
async def test_refresh_ahead_bare_failure_past_margin() -> None:
    """Without ``async with``, a caller whose refresh ahead outlives the token gets no token.

    A 60 s token is in its window 40 s after it was fetched. The refresh then hangs for
    the whole 30 s timeout, by which time the token is past its margin (and its expiry).
    The caller must get the refresh's error, not the dead token.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(lifetime=60.0), default=Step(delay=None))
    cache = TokenCache(source, clock=clock)

    first = await cache.get()
    await clock.advance(40.0)
    async with clock.autojump():
        with pytest.raises(RefreshTimeoutError):
            await cache.get()

    assert clock.monotonic() == 1070.0
    assert first is source.tokens[0]
    assert cache.peek() is None


# -- failures, backoff and cooldown ------------------------------------------------------------


@pytest.mark.anyio
async def test_transient_failure_retried_in_refresh(entered: bool) -> None:
    """A 503 blip is retried after the backoff inside the same refresh, so waiters get a token."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(error=TransientRefreshError("503")), default=Step())
    cache = TokenCache(source, clock=clock, random=never_random)
    results: list[Token] = []

    async def caller() -> None:
        results.append(await cache.get())

    async with (
        entered_or_not(cache, entered=entered),
        clock.autojump(),
        anyio.create_task_group() as task_group,
    ):
        for _ in range(5):
            task_group.start_soon(caller)

    assert source.started == [1000.0, 1000.5]
    assert results == [source.last] * 5
    assert cache.statistics().failures == 0


@pytest.mark.anyio
async def test_backoff_spacing_within_refresh(entered: bool) -> None:
    """Retries inside one refresh follow the backoff until the next would pass the budget."""
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(error=TransientRefreshError("503")))
    cache = TokenCache(source, clock=clock, random=never_random)

    async with entered_or_not(cache, entered=entered), clock.autojump():
        with pytest.raises(TransientRefreshError):
            await cache.get()

    # Delays 0.5, 1, 2, 4, 8: the next, 16 s, would end after the 30 s budget.
    assert source.started == [1000.0, 1000.5, 1001.5, 1003.5, 1007.5, 1015.5]
    assert clock.monotonic() == 1015.5


@pytest.mark.anyio
async def test_backoff_jitter_shortens_delays() -> None:
    """With jitter the delays shrink by up to half, never grow."""
    clock = FakeClock()
    source = ScriptedSource(
        clock, Step(error=TransientRefreshError("503")), Step(error=OSError("reset")), Step()
    )
    cache = TokenCache(source, clock=clock, random=lambda: 0.999)

    async with clock.autojump():
        await cache.get()

    first_gap = source.started[1] - source.started[0]
    second_gap = source.started[2] - source.started[1]
    assert 0.25 <= first_gap < 0.5
    assert 0.5 <= second_gap < 1.0


@pytest.mark.anyio
async def test_cooldown_grows_between_failures(entered: bool) -> None:
    """Failed refreshes are spaced by a cooldown of 5 s doubling to 60 s.

    Calls every half second in between raise the last error without a fetch.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(error=RefreshError("malformed token response")))
    events = EventRecorder(clock)
    cache = TokenCache(source, clock=clock, random=never_random, hooks=[events])

    async with entered_or_not(cache, entered=entered):
        for _ in range(800):
            with pytest.raises(RefreshError, match="malformed"):
                await cache.get()
            await clock.advance(0.5)

    failed = events.times("refresh.failed")
    gaps = [later - earlier for earlier, later in itertools.pairwise(failed)]
    assert gaps[:7] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0, 60.0]
    assert set(gaps[7:]) == {60.0}
    assert source.calls == len(failed)


@pytest.mark.anyio
async def test_retry_after_lengthens_cooldown() -> None:
    clock = FakeClock()
    source = ScriptedSource(
        clock, Step(error=TransientRefreshError("429", retry_after=120)), default=Step()
    )
    cache = TokenCache(source, clock=clock, timeout=30)

    with pytest.raises(TransientRefreshError):
        await cache.get()
    await clock.advance(119.0)
    with pytest.raises(TransientRefreshError):
        get_at_once(cache)
    await clock.advance(1.0)
    assert await cache.get() is source.last
    assert source.started == [1000.0, 1120.0]


@pytest.mark.anyio
async def test_down_endpoint_sees_few_requests(entered: bool) -> None:
    """An endpoint down for 10 minutes, asked by 10 callers a second, sees a few calls a minute.

    Each refresh retries within its budget, and refreshes themselves are spaced by the growing
    cooldown, so in the last 5 minutes there are at most 6 fetches per minute.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=0.2, error=TransientRefreshError("503")))
    events = EventRecorder(clock)
    cache = TokenCache(source, clock=clock, random=never_random, hooks=[events])
    failures = 0

    async def caller() -> None:
        nonlocal failures
        try:
            await cache.get()
        except TransientRefreshError:
            failures += 1

    async with entered_or_not(cache, entered=entered), anyio.create_task_group() as task_group:
        for _ in range(600):
            for _ in range(10):
                task_group.start_soon(caller)
            await clock.advance(1.0)
        await clock.advance(60.0)

    assert failures >= 5000
    late = [time for time in source.started if time >= 1300.0]
    assert len(late) <= 6 * 5
    starts = events.times("refresh.started")
    fails = events.times("refresh.failed")
    for number, (failed_at, next_start) in enumerate(zip(fails, starts[1:], strict=False), start=1):
        assert next_start >= failed_at + cache.policy.cooldown.delay(number, never_random)


@pytest.mark.anyio
async def test_permanent_error_in_window_served_until_margin() -> None:
    """A permanent error in the refresh window stops refreshes but not the current token.

    Past its margin, callers get the permanent error at once, and nothing is fetched again.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), default=Step(error=PermanentRefreshError("no")))
    cache = TokenCache(source, clock=clock, random=never_random)

    async with cache:
        first = await cache.get()
        await clock.advance(HOUR - SKEW - 300.0)
        for _ in range(299):
            assert get_at_once(cache) is first
            await clock.advance(1.0)
        assert source.calls == 2
        await clock.advance(1.0)
        for _ in range(10):
            with pytest.raises(PermanentRefreshError):
                get_at_once(cache)
    assert source.calls == 2


@pytest.mark.anyio
async def test_waiters_get_copies_of_error(entered: bool) -> None:
    """Every waiter gets its own exception of the same class, message and cause."""
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=1.0, error=ValueError("bad JSON")))
    cache = TokenCache(source, clock=clock)
    errors: list[RefreshError] = []

    async def caller() -> None:
        try:
            await cache.get()
        except RefreshError as error:
            errors.append(error)

    async with entered_or_not(cache, entered=entered), anyio.create_task_group() as task_group:
        for _ in range(5):
            task_group.start_soon(caller)
        await wait_all_tasks_blocked()
        await clock.advance(1.0)

    assert len(errors) == 5
    assert len({id(error) for error in errors}) == 5
    assert {type(error) for error in errors} == {RefreshError}
    assert {str(error) for error in errors} == {str(errors[0])}
    causes = {id(error.__cause__) for error in errors}
    assert len(causes) == 1
    assert isinstance(errors[0].__cause__, ValueError)


@pytest.mark.anyio
async def test_timeout_cause_is_last_failure() -> None:
    """A refresh that runs out of time reports the last failed attempt as its cause."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(error=OSError("connection reset")), Step(delay=None))
    cache = TokenCache(source, clock=clock, timeout=10.0)

    async with clock.autojump():
        with pytest.raises(RefreshTimeoutError) as caught:
            await cache.get()

    assert clock.monotonic() == 1010.0
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value.__cause__, OSError)
    assert source.cancelled == 1


@pytest.mark.anyio
async def test_os_error_is_transient() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(error=ConnectionRefusedError("refused")))
    cache = TokenCache(source, clock=clock, timeout=2.0, random=never_random)

    async with clock.autojump():
        with pytest.raises(TransientRefreshError) as caught:
            await cache.get()

    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert source.calls > 1


# -- cancellation and lifecycle ---------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_waiter_leaves_no_trace(entered: bool) -> None:
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=5.0))
    cache = TokenCache(source, clock=clock)
    scopes = [anyio.CancelScope() for _ in range(5)]
    results: list[Token] = []

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            results.append(await cache.get())

    async with entered_or_not(cache, entered=entered), anyio.create_task_group() as task_group:
        task_group.start_soon(caller, anyio.CancelScope())
        await wait_all_tasks_blocked()
        for scope in scopes:
            task_group.start_soon(caller, scope)
        await wait_all_tasks_blocked()
        assert cache.statistics().waiters == (6 if entered else 5)
        for scope in scopes:
            scope.cancel()
        await wait_all_tasks_blocked()
        assert cache.statistics().waiters == (1 if entered else 0)
        await clock.advance(5.0)

    assert results == [source.last]
    assert source.calls == 1
    statistics = cache.statistics()
    assert statistics.waiters == 0
    assert statistics.in_flight == 0


@pytest.mark.anyio
async def test_enter_twice_rejected() -> None:
    cache = TokenCache(ScriptedSource(FakeClock()), clock=FakeClock())

    async with cache:
        with pytest.raises(RuntimeError, match="already entered"):
            await cache.__aenter__()


@pytest.mark.anyio
async def test_reenter_after_exit() -> None:
    """A cache can be entered again after leaving, and aclose() without entering is harmless."""
    clock = FakeClock()
    source = ScriptedSource(clock)
    cache = TokenCache(source, clock=clock, random=never_random)
    await cache.aclose()

    async with cache:
        first = await cache.get()
    async with cache:
        assert get_at_once(cache) is first
        await clock.advance(HOUR - SKEW - 100.0)
        get_at_once(cache)
        await wait_all_tasks_blocked()
        assert source.calls == 2


@pytest.mark.anyio
async def test_exit_cancels_background_refresh() -> None:
    """Leaving ``async with`` cancels a running refresh and leaks no task."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), default=Step(delay=None))
    cache = TokenCache(source, clock=clock, random=never_random)

    async with cache:
        first = await cache.get()
        await clock.advance(HOUR - SKEW - 100.0)
        assert get_at_once(cache) is first
        await wait_all_tasks_blocked()
        assert source.in_flight == 1

    assert source.in_flight == 0
    assert source.cancelled == 1
    assert cache.statistics().in_flight == 0
    assert clock.next_deadline == math.inf


@pytest.mark.anyio
async def test_reentrant_source_detected(entered: bool) -> None:
    """A source that asks its own cache for the key it is refreshing fails at once."""
    clock = FakeClock()
    cache: TokenCache

    async def reentrant() -> Token:
        return await cache.get()

    cache = TokenCache(reentrant, clock=clock)
    async with entered_or_not(cache, entered=entered):
        with pytest.raises(RefreshError) as caught:
            await cache.get()

    assert clock.monotonic() == 1000.0
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "same cache" in str(caught.value.__cause__)


@pytest.mark.anyio
async def test_source_may_use_other_key(entered: bool) -> None:
    """A source may ask its cache for a different key, such as a token exchange does."""
    clock = FakeClock()
    cache: TokenCache
    upstream = ScriptedSource(clock)

    async def exchange(key: Hashable) -> Token:
        subject = await cache.get("upstream")
        return Token(f"exchanged-{subject.fingerprint}-{VALUE_TAIL}", expires_in=60)

    def sources(key: Hashable) -> ScriptedSource | CallableSource:
        if key == "upstream":
            return upstream
        return CallableSource(lambda: exchange(key))

    cache = TokenCache(sources=sources, clock=clock)
    async with entered_or_not(cache, entered=entered):
        token = await cache.get("downstream")
    assert token.value.startswith(f"exchanged-{upstream.last.fingerprint}")


def test_created_outside_event_loop() -> None:
    """Creating a cache needs no event loop, and the cache then works under asyncio and trio."""
    clock = FakeClock()
    source = ScriptedSource(clock)
    cache = TokenCache(source, clock=clock)

    first = asyncio.run(cache.get())
    second = trio.run(cache.get)
    assert first is second


def test_flight_of_stopped_loop_ignored() -> None:
    """A refresh left running by an event loop that stopped does not block another loop."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(delay=None), default=Step(delay=0.0))
    cache = TokenCache(source, clock=clock)
    loop = asyncio.new_event_loop()

    async def start_hanging_refresh() -> asyncio.Task[Token]:
        task = loop.create_task(cache.get())
        for _ in range(100):
            await asyncio.sleep(0)
            if source.calls:
                break
        return task

    stranded = loop.run_until_complete(start_hanging_refresh())
    try:
        assert trio.run(cache.get) is source.last
        assert source.calls == 2
    finally:
        stranded.cancel()
        loop.run_until_complete(asyncio.gather(stranded, return_exceptions=True))
        loop.close()
    assert cache.statistics().in_flight == 0


def test_invalid_settings_rejected() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock)

    with pytest.raises(ConfigurationError, match="source"):
        TokenCache(clock=clock)
    with pytest.raises(ConfigurationError, match="max_keys"):
        TokenCache(source, max_keys=0)
    with pytest.raises(ConfigurationError, match="skew"):
        TokenCache(source, skew=-1)
    with pytest.raises(ConfigurationError, match="timeout"):
        TokenCache(source, timeout=0)
    with pytest.raises(ConfigurationError, match="refresh_jitter"):
        TokenCache(source, refresh_jitter=2)
    with pytest.raises(ConfigurationError, match="multiplier"):
        TokenCache(source, backoff=Backoff(multiplier=0.5))
    with pytest.raises(ConfigurationError, match="source"):
        TokenCache(object())  # type: ignore[arg-type]


# -- statistics, events and logs -----------------------------------------------------------------


@pytest.mark.anyio
async def test_statistics_count(entered: bool) -> None:
    clock = FakeClock()
    source = ScriptedSource(
        clock,
        Step(delay=1.0),
        Step(delay=1.0, error=PermanentRefreshError("invalid_client")),
        default=Step(),
    )
    cache = TokenCache(source, clock=clock)

    async def caller() -> None:
        await cache.get()

    async with entered_or_not(cache, entered=entered):
        async with anyio.create_task_group() as task_group:
            for _ in range(3):
                task_group.start_soon(caller)
            await wait_all_tasks_blocked()
            during = cache.statistics()
            await clock.advance(1.0)
        for _ in range(4):
            get_at_once(cache)
        cache.invalidate(source.last)

        async def forced() -> None:
            with pytest.raises(PermanentRefreshError):
                await cache.force_refresh()

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(forced)
            await wait_all_tasks_blocked()
            await clock.advance(1.0)

    assert during.in_flight == 1
    assert during.waiters == (3 if entered else 2)
    statistics = cache.statistics()
    assert statistics.keys == 1
    assert statistics.hits == 4
    assert statistics.misses == 3
    assert statistics.refreshes == 1
    assert statistics.failures == 1
    assert statistics.fetches == 2
    assert statistics.waiters == 0
    assert statistics.in_flight == 0
    assert statistics.evictions == 0


@pytest.mark.anyio
async def test_events_reported(entered: bool) -> None:
    clock = FakeClock()
    source = ScriptedSource(
        clock,
        Step(delay=2.0, error=TransientRefreshError("503")),
        Step(delay=1.0),
        default=Step(),
    )
    events = EventRecorder(clock)
    cache = TokenCache(source, clock=clock, random=never_random, hooks=[events])

    async with entered_or_not(cache, entered=entered), clock.autojump():
        token = await cache.get()
        cache.invalidate(token)

    assert events.names() == [
        "refresh.started",
        "fetch.failed",
        "refresh.succeeded",
        "token.invalidated",
    ]
    by_name = {event.name: event for _, event in events.events}
    assert by_name["fetch.failed"].attempt == 1
    assert by_name["fetch.failed"].error == "TransientRefreshError"
    assert by_name["fetch.failed"].duration == 2.0
    assert by_name["refresh.succeeded"].fingerprint == token.fingerprint
    assert by_name["refresh.succeeded"].duration == 3.5
    assert by_name["token.invalidated"].fingerprint == token.fingerprint
    assert all(event.key is None for _, event in events.events)
    assert all(not event.background for _, event in events.events)


@pytest.mark.anyio
async def test_failed_refresh_event() -> None:
    clock = FakeClock()
    source = ScriptedSource(clock, Step(error=ValueError("bad JSON")))
    events = EventRecorder(clock)
    cache = TokenCache(source, clock=clock, hooks=[events])

    with pytest.raises(RefreshError):
        await cache.get()

    assert events.names() == ["refresh.started", "refresh.failed"]
    failed = events.events[-1][1]
    assert failed.error == "RefreshError"
    assert failed.fingerprint is None


@pytest.mark.anyio
async def test_broken_hook_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in a hook is logged and does not disturb the refresh or other hooks."""
    clock = FakeClock()
    source = ScriptedSource(clock)
    seen: list[CacheEvent] = []

    def broken(event: CacheEvent) -> None:
        raise RuntimeError("metrics backend down")

    cache = TokenCache(source, clock=clock, hooks=[broken, seen.append])

    assert await cache.get() is source.last
    assert [event.name for event in seen] == ["refresh.started", "refresh.succeeded"]
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "hook" in errors[0].getMessage()


@pytest.mark.anyio
async def test_log_levels(caplog: pytest.LogCaptureFixture) -> None:
    """Refreshes log at DEBUG, retries at INFO, failures at WARNING, under ``tokenflight``."""
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    source = ScriptedSource(
        clock,
        Step(error=TransientRefreshError("503")),
        Step(),
        Step(error=PermanentRefreshError("invalid_client")),
    )
    cache = TokenCache(source, clock=clock, random=never_random)

    async with clock.autojump():
        token = await cache.get()
        cache.invalidate(token)
        with pytest.raises(PermanentRefreshError):
            await cache.get()

    levels = {
        record.getMessage().split(":")[0]: record.levelname
        for record in caplog.records
        if record.name == "tokenflight"
    }
    assert levels["refresh started"] == "DEBUG"
    assert levels["token stored"] == "DEBUG"
    assert levels["fetch failed, retrying"] == "INFO"
    assert levels["token invalidated"] == "INFO"
    assert levels["refresh failed"] == "WARNING"
    for text in log_texts(caplog.records):
        for secret in secrets_of(source.tokens):
            assert secret not in text
