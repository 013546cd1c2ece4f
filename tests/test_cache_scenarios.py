"""The token cache against failures that real token-handling code has shipped.

Each test rewrites one such failure as a scenario and runs on asyncio and trio with a
fake clock. Where the original failure involved a particular number, the test uses the
cache's documented default instead (skew 30 s, refresh-ahead window 300 s, refresh
timeout 30 s, cooldown after a failed refresh 5 s doubling to 60 s). Tests with the
``entered`` parameter run once inside ``async with cache:`` and once without it,
because single flight must hold either way.
"""

from __future__ import annotations

import asyncio
import logging
import pprint
import traceback
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
import sniffio
import trio

from cache_support import (
    REFRESH_TAIL,
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
    PermanentRefreshError,
    ReauthenticationRequired,
    RefreshError,
    RefreshTimeoutError,
    Token,
    TokenAuth,
    TokenCache,
    TransientRefreshError,
    parse_token_response,
)
from tokenflight.testing import FakeClock, wait_all_tasks_blocked

HOUR = 3600.0
# Default skew: a token counts as expired this long before its expiry.
SKEW = 30.0
# Default refresh timeout, the time budget of one refresh with its retries.
TIMEOUT = 30.0
# First cooldown after a failed refresh, without jitter.
FIRST_COOLDOWN = 5.0


@pytest.fixture(params=[True, False], ids=["entered", "bare"])
def entered(request: pytest.FixtureRequest) -> bool:
    """Whether the test runs inside ``async with cache:``."""
    return bool(request.param)


# -- single flight ------------------------------------------------------------------


@pytest.mark.anyio
async def test_expired_token_one_fetch(entered: bool) -> None:
    """100 tasks that find the cached token expired cause exactly one fetch.

    All of them get the identical token, and calls 10 s later make no fetch at all.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(delay=0.0), default=Step(delay=0.2, lifetime=HOUR))
    cache = TokenCache(source, clock=clock)
    results: list[Token] = []

    async def caller() -> None:
        results.append(await cache.get())

    async with entered_or_not(cache, entered=entered):
        await cache.get()
        await clock.advance(HOUR)
        assert cache.peek() is None

        async with anyio.create_task_group() as task_group:
            for _ in range(100):
                task_group.start_soon(caller)
            await wait_all_tasks_blocked()
            assert source.calls == 2
            await clock.advance(0.2)

        assert source.calls == 2
        assert len(results) == 100
        assert all(token is source.tokens[1] for token in results)
        assert source.max_in_flight == 1

        await clock.advance(10)
        for _ in range(100):
            assert get_at_once(cache) is source.tokens[1]
        assert source.calls == 2


@pytest.mark.anyio
async def test_failure_shared_by_waiters(entered: bool) -> None:
    """Five callers share one failing fetch: one call, the same error, nobody hangs.

    The endpoint returns 503 with ``Retry-After: 60``, longer than the refresh's budget,
    so the cache does not retry inside this refresh (a shorter blip would be retried).
    Calls before the Retry-After has passed raise the error at once without a fetch. The
    first call after it makes exactly one new fetch, which succeeds.
    """
    clock = FakeClock()
    unavailable = TransientRefreshError("token endpoint answered 503", retry_after=60)
    source = ScriptedSource(clock, Step(delay=0.1, error=unavailable), default=Step(delay=0.1))
    cache = TokenCache(source, clock=clock, random=never_random)
    errors: list[tuple[float, BaseException]] = []

    async def caller() -> None:
        try:
            await cache.get()
        except RefreshError as error:
            errors.append((clock.monotonic(), error))

    async with entered_or_not(cache, entered=entered):
        async with anyio.create_task_group() as task_group:
            for _ in range(5):
                task_group.start_soon(caller)
            await clock.advance(0.1)

        assert source.calls == 1
        assert len(errors) == 5
        assert {time for time, _ in errors} == {1000.1}
        for _, error in errors:
            assert type(error) is TransientRefreshError
            assert str(error) == "token endpoint answered 503"
            assert isinstance(error, TransientRefreshError)
            assert error.retry_after == 60

        await clock.advance(59.8)
        with pytest.raises(TransientRefreshError):
            get_at_once(cache)
        assert source.calls == 1

        await clock.advance(0.2)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(caller)
            task_group.start_soon(caller)
            await clock.advance(0.1)
        assert source.calls == 2
        assert len(errors) == 5
        assert cache.peek() is source.last


@pytest.mark.anyio
async def test_slow_exclusive_source_once(entered: bool) -> None:
    """Six clients built at once on one cache share one 1-second source call.

    The source allows one run at a time (as a lock around a credential process would),
    so six calls would take 6 s. The cache makes one, and everyone is ready after 1 s.
    """
    clock = FakeClock()
    calls = 0
    lock: anyio.Lock | None = None

    async def credential_process() -> Token:
        nonlocal calls, lock
        lock = lock or anyio.Lock()
        async with lock:
            calls += 1
            await clock.sleep(1.0)
            return Token(f"process-{calls}-{VALUE_TAIL}", expires_in=HOUR)

    cache = TokenCache(credential_process, clock=clock)
    ready_at: list[float] = []

    async def build_client() -> None:
        await cache.get()
        ready_at.append(clock.monotonic())

    async with (
        entered_or_not(cache, entered=entered),
        clock.autojump(),
        anyio.create_task_group() as task_group,
    ):
        for _ in range(6):
            task_group.start_soon(build_client)

    assert calls == 1
    assert ready_at == [1001.0] * 6


@pytest.mark.anyio
async def test_auth_per_request_shares_cache(entered: bool) -> None:
    """A new httpx client and TokenAuth per request, one shared cache: one refresh.

    Single flight belongs to the cache, keyed by credential, not to the Auth or the
    client object, so 20 concurrent requests with an expired token cause one fetch.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(delay=0.0), default=Step(delay=0.5))
    cache = TokenCache(source, clock=clock)
    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        authorization = request.headers.get("authorization", "")
        seen.append(authorization)
        if authorization != f"Bearer {source.last.value}":
            return httpx.Response(401)
        return httpx.Response(200, json={"ok": True})

    async def request_once() -> None:
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(api), auth=TokenAuth(cache)
        ) as client:
            response = await client.get("https://api.example.test/items")
        assert response.status_code == 200

    async with entered_or_not(cache, entered=entered):
        await cache.get()
        await clock.advance(HOUR)

        async with anyio.create_task_group() as task_group:
            for _ in range(20):
                task_group.start_soon(request_once)
            await wait_all_tasks_blocked()
            await clock.advance(0.5)

    assert source.calls == 2
    assert source.max_in_flight == 1
    assert seen == [f"Bearer {source.tokens[1].value}"] * 20


# -- time -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_refresh_before_expiry_boundary(entered: bool) -> None:
    """A token expiring at 1000 with the default 30 s skew is replaced from 970 on.

    The clock sweeps from 960 to 1000 in half seconds. The mock API rejects a token whose
    expiry has passed when the request arrives, 2 s after it was sent. With no
    refresh-ahead window, the refresh happens exactly when the clock reaches 970, and no
    request is rejected. With the default window, no request is rejected either.
    """
    transit = 2.0
    for refresh_ahead in (0.0, 300.0):
        clock = FakeClock(start=0.0)
        source = ScriptedSource(clock, default=Step(lifetime=1000.0))
        cache = TokenCache(source, clock=clock, refresh_ahead=refresh_ahead)
        rejected: list[float] = []
        refreshed_at: float | None = None

        async with entered_or_not(cache, entered=entered):
            await cache.get()
            await clock.advance(960.0)
            while clock.monotonic() <= 1000.0:
                token = await cache.get()
                sent = clock.monotonic()
                if sent + transit >= source.expiry[token]:
                    rejected.append(sent)
                if refreshed_at is None and source.calls == 2:
                    refreshed_at = sent
                await clock.advance(0.5)

        assert rejected == []
        assert source.calls == 2
        if refresh_ahead == 0.0:
            assert refreshed_at == 970.0


@pytest.mark.anyio
async def test_force_refresh_fetches(entered: bool) -> None:
    """With 50 s left and a 10 s margin, force_refresh() fetches but get() does not.

    force_refresh() makes a real fetch and returns the new token even though the
    cached one is still fresh, and joins a refresh already in flight.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=1.0))
    cache = TokenCache(source, clock=clock, skew=10, refresh_ahead=30, random=never_random)

    async with entered_or_not(cache, entered=entered), clock.autojump():
        first = await cache.get()
        await clock.sleep(HOUR - 50 - 1)  # the fetch took 1 s, so 50 s of life are left
        assert get_at_once(cache) is first
        assert source.calls == 1

        forced = await cache.force_refresh()
        assert source.calls == 2
        assert forced is not first
        assert forced is source.last
        assert get_at_once(cache) is forced

        # Two forced refreshes at once: one fetch, one token.
        results: list[Token] = []

        async def force() -> None:
            results.append(await cache.force_refresh())

        async with anyio.create_task_group() as task_group:
            task_group.start_soon(force)
            task_group.start_soon(force)
        assert source.calls == 3
        assert results == [source.last, source.last]

        # A forced refresh joins the refresh that an expired token started.
        assert cache.invalidate(source.last)
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(cache.get)
            await wait_all_tasks_blocked()
            assert source.calls == 4
            assert await cache.force_refresh() is source.last
        assert source.calls == 4


@pytest.mark.anyio
async def test_slow_endpoint_refreshed_ahead(entered: bool) -> None:
    """A 15 s refresh starts at the refresh-ahead boundary and nobody gets an expired token.

    Lifetime 3600 s, default window (300 s before the token stops being usable, at
    3570 s): requests arrive once a second. Requests during the refresh use the old
    token at once, except, without ``async with``, the one request that runs it.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(delay=0.0), default=Step(delay=15.0))
    cache = TokenCache(source, clock=clock, random=never_random)
    boundary = 1000.0 + HOUR - SKEW - 300.0
    requests: list[tuple[float, float, Token]] = []

    async def request() -> None:
        sent = clock.monotonic()
        token = await cache.get()
        requests.append((sent, clock.monotonic(), token))

    async with entered_or_not(cache, entered=entered):
        first = await cache.get()
        await clock.advance(boundary - 100 - 1000.0)
        async with anyio.create_task_group() as task_group:
            for _ in range(200):
                task_group.start_soon(request)
                await clock.advance(1.0)
            await clock.advance(15.0)

    assert source.started[1] == boundary
    assert source.calls == 2
    second = source.tokens[1]
    for sent, answered, token in requests:
        assert answered < source.expiry[token] - SKEW
        if sent < boundary + 15.0:
            assert token is first or (not entered and sent == boundary)
        else:
            assert token is second
    waited = [(sent, answered) for sent, answered, _ in requests if answered != sent]
    assert waited == ([] if entered else [(boundary, boundary + 15.0)])


@pytest.mark.anyio
@pytest.mark.parametrize(
    "expires_in",
    [pytest.param('"3600"', id="string"), pytest.param("3600.0", id="float"), None],
)
async def test_lifetime_parsed_and_cached(entered: bool, expires_in: str | None) -> None:
    """An ``expires_in`` of "3600", 3600.0 or none at all caches the token for an hour.

    The source parses each response with the token-response parser. A missing lifetime
    takes the documented ``default_lifetime`` of 3600 s. 100 sequential requests spread
    over 50 minutes make one call, and the token stops being used 30 s (the skew) before
    its hour is up.
    """
    clock = FakeClock()
    calls = 0

    async def endpoint() -> Token:
        nonlocal calls
        calls += 1
        fields = f'"access_token": "access-{calls}-{VALUE_TAIL}", "token_type": "bearer"'
        if expires_in is not None:
            fields += f', "expires_in": {expires_in}'
        return parse_token_response(
            200, f"{{{fields}}}".encode(), headers={"Content-Type": "application/json"}
        )

    cache = TokenCache(endpoint, clock=clock)
    async with entered_or_not(cache, entered=entered):
        first = await cache.get()
        assert first.expires_in == (None if expires_in is None else 3600.0)
        for _ in range(100):
            assert get_at_once(cache) is first
            await clock.advance(30.0)
        assert calls == 1

        await clock.advance(HOUR - SKEW - 3000.0 - 0.001)
        assert cache.peek() is first
        await clock.advance(0.001)
        assert cache.peek() is None


@pytest.mark.anyio
async def test_wall_clock_steps_ignored(entered: bool) -> None:
    """Wall-clock steps, back or forward, never change when a cached token expires.

    Both an ``expires_in`` token and an ``expires_at`` token (converted with the wall
    clock once, on arrival) expire on the monotonic clock only.
    """
    for step in (Step(lifetime=HOUR), Step(lifetime=None, expires_at=1_700_000_000.0 + HOUR)):
        clock = FakeClock(wall_start=1_700_000_000.0)
        source = ScriptedSource(clock, step, default=Step())
        cache = TokenCache(source, clock=clock, refresh_ahead=0)

        async with entered_or_not(cache, entered=entered):
            token = await cache.get()
            clock.jump_wall(-1.0)
            assert get_at_once(cache) is token
            clock.jump_wall(-HOUR)
            await clock.advance(HOUR - SKEW - 0.001)
            assert get_at_once(cache) is token
            clock.jump_wall(+3 * HOUR)
            assert get_at_once(cache) is token
            assert source.calls == 1
            await clock.advance(0.001)
            assert cache.peek() is None
            assert await cache.get() is not token
            assert source.calls == 2


# -- failures and cancellation ------------------------------------------------------


@pytest.mark.anyio
async def test_failed_refresh_keeps_valid_token(
    entered: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """While the token is usable, a failing background refresh never reaches callers.

    The token has 4 minutes of use left (inside the default 5-minute window) and the
    endpoint returns 503 to every refresh. Requests once a second keep getting the
    token, and the failure is logged as a warning once. Later refreshes start only after
    the cooldown. Once the token is past its margin, the 503 surfaces.
    """
    caplog.set_level(logging.DEBUG, logger="tokenflight")
    clock = FakeClock()
    unavailable = TransientRefreshError("token endpoint answered 503")
    source = ScriptedSource(clock, Step(), default=Step(error=unavailable))
    events = EventRecorder(clock)
    cache = TokenCache(source, clock=clock, random=never_random, hooks=[events])
    usable_until = 1000.0 + HOUR - SKEW

    async with entered_or_not(cache, entered=entered), clock.autojump():
        first = await cache.get()
        await clock.sleep(usable_until - 240.0 - clock.monotonic())
        while clock.monotonic() < usable_until:
            if entered:
                assert get_at_once(cache) is first
            else:
                assert await cache.get() is first
            assert cache.peek() is first
            await clock.sleep(1.0)

        with pytest.raises(TransientRefreshError, match="503"):
            await cache.get()

    assert source.calls > 1
    warnings = [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING and record.getMessage().startswith("refresh failed")
    ]
    assert len(warnings) == 1
    assert "still serving the current token" in warnings[0].getMessage()

    failed = events.times("refresh.failed")
    started = events.times("refresh.started")[1:]
    assert len(failed) >= 2
    for number, (failed_at, next_start) in enumerate(
        zip(failed, started[1:], strict=False), start=1
    ):
        assert next_start >= failed_at + cache.policy.cooldown.delay(number, never_random)
    assert started[1] - failed[0] >= FIRST_COOLDOWN


@pytest.mark.anyio
async def test_invalid_grant_not_retried(entered: bool) -> None:
    """``invalid_grant`` is fetched once, and every later call raises it until reset().

    100 calls over 10 minutes make no further call and each raises
    ReauthenticationRequired without waiting. After reset() (new credentials) the next
    call fetches again. A 429 with ``Retry-After: 7`` is instead retried, 7 s later.
    """
    clock = FakeClock()
    revoked = ReauthenticationRequired("token endpoint answered invalid_grant")
    source = ScriptedSource(clock, Step(error=revoked))
    cache = TokenCache(source, clock=clock)

    async with entered_or_not(cache, entered=entered):
        with pytest.raises(ReauthenticationRequired):
            await cache.get()
        for _ in range(100):
            await clock.advance(6.0)
            with pytest.raises(ReauthenticationRequired, match="invalid_grant"):
                get_at_once(cache)
        assert source.calls == 1

        cache.reset()
        assert await cache.get() is source.last
        assert source.calls == 2

    clock = FakeClock()
    rate_limited = TransientRefreshError("token endpoint answered 429", retry_after=7)
    source = ScriptedSource(clock, Step(error=rate_limited))
    cache = TokenCache(source, clock=clock)
    async with entered_or_not(cache, entered=entered), clock.autojump():
        token = await cache.get()
    assert token is source.last
    assert source.started == [1000.0, 1007.0]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(TransientRefreshError("503"), TransientRefreshError, id="transient"),
        pytest.param(PermanentRefreshError("invalid_client"), PermanentRefreshError, id="perm"),
        pytest.param(ValueError("malformed JSON"), RefreshError, id="other"),
    ],
)
async def test_failed_refresh_keeps_cached_token(
    entered: bool, error: Exception, expected: type[RefreshError]
) -> None:
    """A background refresh that fails leaves the valid token in the cache.

    Later callers get it, and the error reaches callers only once the token is past its
    margin.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), default=Step(error=error))
    cache = TokenCache(source, clock=clock, random=never_random)
    usable_until = 1000.0 + HOUR - SKEW

    async with entered_or_not(cache, entered=entered), clock.autojump():
        first = await cache.get()
        await clock.sleep(usable_until - 100.0 - clock.monotonic())
        assert await cache.get() is first
        await clock.sleep(60.0)
        assert source.calls >= 2
        assert cache.peek() is first
        assert await cache.get() is first
        await clock.sleep(usable_until - clock.monotonic())
        assert cache.peek() is None

        with pytest.raises(expected) as caught:
            await cache.get()
    assert type(caught.value) is expected


@pytest.mark.anyio
async def test_hung_refresh_times_out(entered: bool) -> None:
    """An endpoint that never responds fails its 50 waiters after the 30 s timeout.

    Every waiter gets RefreshTimeoutError at exactly 30 s, the fetch is cancelled and the
    in-flight slot cleared. After the cooldown the next call starts a fresh attempt.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), Step(delay=None), default=Step())
    cache = TokenCache(source, clock=clock, random=never_random)
    failures: list[tuple[float, BaseException]] = []

    async def caller() -> None:
        try:
            await cache.get()
        except RefreshError as error:
            failures.append((clock.monotonic(), error))

    async with entered_or_not(cache, entered=entered):
        await cache.get()
        await clock.advance(HOUR)
        async with anyio.create_task_group() as task_group:
            for _ in range(50):
                task_group.start_soon(caller)
            await clock.advance(TIMEOUT)
        expired_at = 1000.0 + HOUR

        assert len(failures) == 50
        for failed_at, error in failures:
            assert failed_at == expired_at + TIMEOUT
            assert isinstance(error, RefreshTimeoutError)
        assert source.calls == 2
        assert source.cancelled == 1
        assert source.in_flight == 0
        assert cache.statistics().in_flight == 0

        with pytest.raises(RefreshTimeoutError):
            get_at_once(cache)
        await clock.advance(FIRST_COOLDOWN)
        assert await cache.get() is source.last
        assert source.calls == 3


@pytest.mark.anyio
async def test_hung_refresh_ahead_keeps_serving() -> None:
    """In the refresh-ahead window, a hung background refresh never delays callers."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), Step(delay=None), default=Step(delay=None))
    cache = TokenCache(source, clock=clock, random=never_random)

    async with cache, clock.autojump():
        first = await cache.get()
        await clock.sleep(HOUR - SKEW - 120.0)
        for _ in range(60):
            assert get_at_once(cache) is first
            await clock.sleep(1.0)
        assert cache.statistics().failures >= 1
        assert source.max_in_flight == 1


@pytest.mark.anyio
async def test_failed_refresh_releases_slot(entered: bool) -> None:
    """A source that raises an ordinary exception leaves nothing locked behind.

    The caller gets RefreshError with the exception as its cause. The slot is free:
    calls during the cooldown raise at once instead of hanging, a forced refresh starts
    a new attempt at once, and after the cooldown a plain call does too.
    """
    clock = FakeClock()
    source = ScriptedSource(
        clock, Step(error=ValueError("boom")), Step(error=ValueError("boom")), default=Step()
    )
    cache = TokenCache(source, clock=clock, random=never_random)

    async with entered_or_not(cache, entered=entered):
        with pytest.raises(RefreshError) as caught:
            await cache.get()
        assert type(caught.value) is RefreshError
        assert isinstance(caught.value.__cause__, ValueError)
        assert cache.statistics().in_flight == 0

        with pytest.raises(RefreshError):
            get_at_once(cache)
        await clock.advance(FIRST_COOLDOWN)
        with pytest.raises(RefreshError):
            await cache.get()
        assert source.calls == 2

        assert await cache.force_refresh() is source.last
        assert source.calls == 3


@pytest.mark.anyio
async def test_cancelled_refresh_releases_slot(entered: bool) -> None:
    """A refresh cancelled mid-fetch leaves the slot free for an immediate new attempt.

    Without ``async with``, the caller running the refresh is cancelled. Inside it, the
    cache is closed while its refresh runs. Either way the next call fetches at once.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(delay=10.0), default=Step(delay=0.0))
    cache = TokenCache(source, clock=clock)

    if entered:
        async with cache, anyio.create_task_group() as task_group:
            task_group.start_soon(cache.get)
            await wait_all_tasks_blocked()
            assert source.calls == 1
            task_group.cancel_scope.cancel()
        assert source.cancelled == 1
        async with cache:
            assert await cache.get() is source.last
    else:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(cache.get)
                await wait_all_tasks_blocked()
                scope.cancel()
        assert source.cancelled == 1
        assert await cache.get() is source.last

    assert source.calls == 2
    assert cache.statistics().in_flight == 0


@pytest.mark.anyio
async def test_closed_cache_cancels_refresh() -> None:
    """Closing the cache cancels its running refresh, and its waiter starts a new one."""
    clock = FakeClock()
    source = ScriptedSource(clock, Step(delay=10.0), default=Step(delay=1.0))
    cache = TokenCache(source, clock=clock)
    results: list[Token] = []

    async def caller() -> None:
        results.append(await cache.get())

    async with anyio.create_task_group() as task_group:
        async with cache:
            task_group.start_soon(caller)
            await wait_all_tasks_blocked()
            assert source.calls == 1
        assert source.cancelled == 1
        await clock.advance(1.0)

    assert source.calls == 2
    assert results == [source.last]


@pytest.mark.anyio
async def test_timed_out_waiter_keeps_refresh(entered: bool) -> None:
    """A waiter whose own deadline passes releases nothing that another task holds.

    The refresh it waited for keeps running, and a later caller joins it rather than
    starting a second fetch.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=10.0))
    cache = TokenCache(source, clock=clock)
    results: list[Token] = []

    async def leader() -> None:
        results.append(await cache.get())

    async def impatient() -> None:
        with pytest.raises(TimeoutError):
            async with clock.fail_after(1.0):
                await cache.get()

    async with entered_or_not(cache, entered=entered), anyio.create_task_group() as task_group:
        task_group.start_soon(leader)
        await wait_all_tasks_blocked()
        task_group.start_soon(impatient)
        await clock.advance(2.0)
        assert cache.statistics().in_flight == 1
        task_group.start_soon(leader)
        await wait_all_tasks_blocked()
        await clock.advance(8.0)

    assert source.calls == 1
    assert results == [source.last, source.last]


@pytest.mark.anyio
async def test_cancelled_leader_not_cached(entered: bool) -> None:
    """A first caller cancelled natively (asyncio task or trio cancel scope) harms no one.

    The refresh goes on in the cache's task, or its slot is cleared. The callers that
    were not cancelled get a token, and later calls succeed.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=1.0))
    cache = TokenCache(source, clock=clock)
    results: list[Token] = []

    async def waiter() -> None:
        results.append(await cache.get())

    async with entered_or_not(cache, entered=entered):
        async with anyio.create_task_group() as task_group:
            if sniffio.current_async_library() == "asyncio":
                leader_task = asyncio.get_running_loop().create_task(cache.get())
                await wait_all_tasks_blocked()
                for _ in range(5):
                    task_group.start_soon(waiter)
                await wait_all_tasks_blocked()
                await clock.advance(0.1)
                leader_task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await leader_task
            else:
                leader_scope = trio.CancelScope()

                async def leader() -> None:
                    with leader_scope:
                        await cache.get()
                    assert leader_scope.cancelled_caught

                task_group.start_soon(leader)
                await wait_all_tasks_blocked()
                for _ in range(5):
                    task_group.start_soon(waiter)
                await wait_all_tasks_blocked()
                await clock.advance(0.1)
                leader_scope.cancel()
            await clock.advance(2.0)

        assert len(results) == 5
        assert all(token is results[0] for token in results)
        assert source.calls == (1 if entered else 2)
        assert await cache.get() is results[0]
        assert source.calls == (1 if entered else 2)


@pytest.mark.anyio
async def test_waiter_deadline_spares_refresh() -> None:
    """A caller's own deadline ends its wait, not the shared refresh.

    The refresh takes 2 s. A starts it under a 0.5 s deadline, B and C wait without one:
    A gets TimeoutError at 0.5 s, the refresh continues, B and C get the token at 2 s,
    and the endpoint is called once. (Without ``async with`` a refresh runs in the task
    that started it, so A's deadline would restart it. The next test covers that.)
    """
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=2.0))
    cache = TokenCache(source, clock=clock)
    outcomes: dict[str, tuple[str, float]] = {}

    async def caller(name: str, deadline: float | None) -> None:
        try:
            if deadline is None:
                await cache.get()
            else:
                async with clock.fail_after(deadline):
                    await cache.get()
        except TimeoutError:
            outcomes[name] = ("timeout", clock.monotonic())
        else:
            outcomes[name] = ("token", clock.monotonic())

    async with cache, anyio.create_task_group() as task_group:
        task_group.start_soon(caller, "A", 0.5)
        await wait_all_tasks_blocked()
        task_group.start_soon(caller, "B", None)
        task_group.start_soon(caller, "C", None)
        await wait_all_tasks_blocked()
        await clock.advance(2.0)

    assert outcomes == {
        "A": ("timeout", 1000.5),
        "B": ("token", 1002.0),
        "C": ("token", 1002.0),
    }
    assert source.calls == 1


@pytest.mark.anyio
async def test_waiter_deadline_spares_refresh_bare() -> None:
    """Without ``async with``, a waiter's deadline spares the refresh that another runs."""
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=2.0))
    cache = TokenCache(source, clock=clock)
    outcomes: dict[str, tuple[str, float]] = {}

    async def caller(name: str, deadline: float | None) -> None:
        try:
            if deadline is None:
                await cache.get()
            else:
                async with clock.fail_after(deadline):
                    await cache.get()
        except TimeoutError:
            outcomes[name] = ("timeout", clock.monotonic())
        else:
            outcomes[name] = ("token", clock.monotonic())

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(caller, "B", None)
        await wait_all_tasks_blocked()
        task_group.start_soon(caller, "A", 0.5)
        task_group.start_soon(caller, "C", None)
        await wait_all_tasks_blocked()
        await clock.advance(2.0)

    assert outcomes == {
        "A": ("timeout", 1000.5),
        "B": ("token", 1002.0),
        "C": ("token", 1002.0),
    }
    assert source.calls == 1


@pytest.mark.anyio
async def test_leader_cancel_spares_waiters(entered: bool) -> None:
    """The caller that started a 1 s refresh is cancelled after 0.1 s, 10 waiters are not.

    Every waiter gets the token and none sees a cancellation. Inside ``async with`` the
    refresh simply continues (one call). Without it, one waiter restarts it (two).
    """
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=1.0))
    cache = TokenCache(source, clock=clock)
    results: list[Token] = []
    unexpected: list[BaseException] = []

    async def waiter() -> None:
        try:
            results.append(await cache.get())
        except BaseException as error:
            unexpected.append(error)
            raise

    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await cache.get()

    async with entered_or_not(cache, entered=entered), anyio.create_task_group() as task_group:
        task_group.start_soon(leader)
        await wait_all_tasks_blocked()
        for _ in range(10):
            task_group.start_soon(waiter)
        await wait_all_tasks_blocked()
        await clock.advance(0.1)
        leader_scope.cancel()
        await clock.advance(1.1)

    assert unexpected == []
    assert len(results) == 10
    assert all(token is source.last for token in results)
    assert source.calls <= 2
    assert source.calls == (1 if entered else 2)


# -- secrets --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_debug_logs_hold_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG logs of refreshes, failures, retries, invalidation, eviction and 5 requests.

    No message, argument, exception text or stack in any logger's records contains an
    access token or a refresh token. Tokens appear as fingerprints.
    """
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    blip = TransientRefreshError("503")
    source = ScriptedSource(
        clock,
        Step(lifetime=20.0),
        Step(error=blip),
        Step(error=ValueError("bad response")),
        default=Step(),
    )

    def broken_hook(event: object) -> None:
        raise RuntimeError("metrics backend down")

    cache = TokenCache(
        source, sources=lambda key: source, clock=clock, max_keys=1, hooks=[broken_hook]
    )

    def api(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {source.last.value}":
            return httpx.Response(401)
        return httpx.Response(200)

    async with cache, clock.autojump():
        first = await cache.get()
        assert cache.invalidate(first)
        with pytest.raises(RefreshError):
            await cache.get()
        await clock.sleep(FIRST_COOLDOWN)
        await cache.force_refresh()
        async with httpx.AsyncClient(
            transport=httpx.MockTransport(api), auth=TokenAuth(cache)
        ) as client:
            cache.invalidate(source.last)
            for _ in range(5):
                response = await client.get("https://api.example.test/items")
                assert response.status_code == 200
        await cache.get("other-key")

    assert len(source.tokens) >= 3
    secrets = secrets_of(source.tokens)
    texts = log_texts(caplog.records)
    assert texts
    for text in texts:
        for secret in secrets:
            assert secret not in text
        assert VALUE_TAIL not in text
        assert REFRESH_TAIL not in text
    assert any(first.fingerprint in text for text in texts)


@pytest.mark.anyio
async def test_reprs_hold_no_secret() -> None:
    """repr, str, pprint and f-strings of tokens, caches, events and statistics are safe.

    So is a traceback, formatted with its locals, of an error raised from get() while a
    token is cached.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, Step(), default=Step(error=ValueError("bad response")))
    events = EventRecorder(clock)
    cache = TokenCache(source, clock=clock, hooks=[events])
    token = await cache.get()

    await clock.advance(HOUR)
    with pytest.raises(RefreshError) as caught:
        await cache.get()
    formatted = "".join(
        traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()
    )

    renderings: list[Callable[[Any], str]] = [
        repr,
        str,
        pprint.pformat,
        lambda thing: f"{thing}",
        lambda thing: f"{thing!r}",
    ]
    things: list[Any] = [
        token,
        cache,
        cache.statistics(),
        [event for _, event in events.events],
        {"token": token},
    ]
    texts = [render(thing) for render in renderings for thing in things]
    texts.append(formatted)
    texts.append(str(caught.value))
    texts.append(repr(caught.value.__cause__))

    assert "Token(value=<redacted" in formatted
    for text in texts:
        for secret in secrets_of(source.tokens):
            assert secret not in text


@pytest.mark.anyio
async def test_control_char_token_rejected(entered: bool) -> None:
    """A source whose token ends in a line feed is rejected on receipt, without leaking it.

    The caller gets RefreshError caused by InvalidTokenError. No message, repr or
    formatted traceback contains the token, and nothing is cached.
    """
    clock = FakeClock()
    secret = f"eyJ-{VALUE_TAIL}"

    async def trailing_newline() -> Token:
        return Token(secret + "\n", expires_in=HOUR)

    cache = TokenCache(trailing_newline, clock=clock)
    async with entered_or_not(cache, entered=entered):
        with pytest.raises(RefreshError) as caught:
            await cache.get()

    error = caught.value
    cause = error.__cause__
    assert type(cause).__name__ == "InvalidTokenError"
    texts = [
        str(error),
        repr(error),
        str(cause),
        repr(cause),
        "".join(traceback.format_exception(error)),
    ]
    for text in texts:
        assert secret not in text
    assert cache.peek() is None


@pytest.mark.anyio
async def test_insert_logged_by_fingerprint(caplog: pytest.LogCaptureFixture) -> None:
    """The line logged when a token enters the cache has its lifetime and fingerprint only."""
    caplog.set_level(logging.DEBUG, logger="tokenflight")
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(lifetime=HOUR))
    cache = TokenCache(source, clock=clock)

    token = await cache.get()

    stored = [record for record in caplog.records if "stored" in record.getMessage()]
    assert len(stored) == 1
    message = stored[0].getMessage()
    assert token.fingerprint in message
    assert "3600" in message
    for text in log_texts(stored):
        assert token.value not in text
        assert VALUE_TAIL not in text
        assert REFRESH_TAIL not in text


# -- event loops ---------------------------------------------------------------------


def test_cache_reused_across_event_loops() -> None:
    """One cache, created outside any event loop, serves asyncio.run twice, then trio.run.

    Each run has 10 tasks contending for an expired token, inside ``async with`` on the
    first and last runs and without it on the second. Each makes exactly one fetch.
    """
    clock = FakeClock()
    source = ScriptedSource(clock, default=Step(delay=1.0, lifetime=60.0))
    cache = TokenCache(source, clock=clock)
    results: list[list[Token]] = []

    async def contend(enter: bool) -> None:
        tokens: list[Token] = []

        async def caller() -> None:
            tokens.append(await cache.get())

        async with entered_or_not(cache, entered=enter):
            await clock.advance(120.0)
            async with anyio.create_task_group() as task_group:
                for _ in range(10):
                    task_group.start_soon(caller)
                await wait_all_tasks_blocked()
                await clock.advance(1.0)
        results.append(tokens)

    asyncio.run(contend(True))
    asyncio.run(contend(False))
    trio.run(contend, True)

    assert source.calls == 3
    assert source.max_in_flight == 1
    assert [len(tokens) for tokens in results] == [10, 10, 10]
    for run, tokens in enumerate(results):
        assert all(token is source.tokens[run] for token in tokens)
