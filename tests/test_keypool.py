"""Key pools: rotation, cooldowns per quota bucket, waiting budgets, removal on 401/403."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import pickle
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine

import anyio
import anyio.lowlevel
import httpx
import pytest
import trio

from tokenflight import (
    ConfigurationError,
    Credentials,
    HmacAuth,
    HmacVerifier,
    InvalidTokenError,
    KeyPool,
    KeyPoolAuth,
    NoUsableKeyError,
    PoolKey,
    RateLimitedError,
    RetryPolicy,
    SigningError,
    fingerprint,
)
from tokenflight.testing import FakeClock, wait_all_tasks_blocked

URL = "https://api.example.com/v1/items"

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


def client_for(auth: httpx.Auth, handler: Handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth)


def keys_seen(log: list[str]) -> list[str]:
    # The handlers record the key of each attempt as it arrives: the flow signs every
    # attempt on the same request object, so the request itself shows only the last key.
    return log


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200)


# -- choosing keys --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_round_robin_order() -> None:
    pool = KeyPool(["k1", "k2", "k3"], clock=FakeClock(), probe=False)
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.headers["X-Api-Key"])
        return httpx.Response(200)

    async with client_for(KeyPoolAuth(pool), handler) as client:
        for _ in range(5):
            await client.get(URL)

    assert keys_seen(log) == ["k1", "k2", "k3", "k1", "k2"]
    assert pool.statistics().leases == 5
    assert pool.statistics().in_flight == 0


@pytest.mark.anyio
async def test_least_recently_used_order() -> None:
    clock = FakeClock()
    pool = KeyPool(["k1", "k2", "k3"], clock=clock, strategy="least_recently_used", probe=False)
    held = await pool.acquire()  # k1 stays out for a while
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.headers["X-Api-Key"])
        return httpx.Response(200)

    async with client_for(KeyPoolAuth(pool), handler) as client:
        for _ in range(3):
            await clock.advance(1)
            await client.get(URL)
        pool.release(held)
        await clock.advance(1)
        await client.get(URL)

    # Keys never used go first, then always the one whose last use is oldest.
    assert held.credentials.secret == "k1"
    assert keys_seen(log) == ["k2", "k3", "k1", "k2"]


@pytest.mark.anyio
async def test_header_scheme() -> None:
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.headers["Authorization"])
        return httpx.Response(200)

    auth = KeyPoolAuth(KeyPool(["k1"], clock=FakeClock()), header="Authorization", scheme="Bearer")
    async with client_for(auth, handler) as client:
        await client.get(URL)
        await client.get(URL, headers={"Authorization": "Bearer caller"})

    assert log == ["Bearer k1", "Bearer caller"]


# -- rate limits ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rate_limited_key_rotates_at_once() -> None:
    clock = FakeClock()
    pool = KeyPool(["A", "B"], clock=clock)
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.headers["X-Api-Key"])
        if request.headers["X-Api-Key"] == "A" and len(log) == 1:
            return httpx.Response(429, headers={"Retry-After": "30"})
        return httpx.Response(200)

    async with client_for(KeyPoolAuth(pool), handler) as client:
        response = await client.get(URL)
        assert response.status_code == 200
        assert keys_seen(log) == ["A", "B"]
        assert pool.statistics().cooling == 1

        # A stays out until t + 30; then it is back in turn.
        await client.get(URL)
        await clock.advance(29)
        await client.get(URL)
        assert keys_seen(log)[2:] == ["B", "B"]
        await clock.advance(1)
        await client.get(URL)
        assert keys_seen(log)[4] == "A"
    assert pool.statistics().rate_limited == 1


@pytest.mark.anyio
async def test_single_key_429_to_caller() -> None:
    clock = FakeClock()
    pool = KeyPool(["only"], clock=clock)
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(429, headers={"Retry-After": "30"}, text="slow down")

    async with client_for(KeyPoolAuth(pool), handler) as client:
        with pytest.raises(RateLimitedError) as raised:
            await client.get(URL)
        error = raised.value
        assert calls == 1
        assert error.retry_after == pytest.approx(30)
        assert error.retry_at == pytest.approx(clock.time() + 30)
        assert "2023-11-14T22:13:50+00:00" in str(error)
        assert isinstance(error.response, httpx.Response)
        assert error.response.status_code == 429
        assert error.response.text == "slow down"

        # A new request while the key cools down fails at once, without a request.
        await clock.advance(10)
        with pytest.raises(RateLimitedError) as again:
            await client.get(URL)
        assert again.value.retry_after == pytest.approx(20)
        assert again.value.response is None
        assert calls == 1


@pytest.mark.anyio
async def test_wait_within_budget() -> None:
    clock = FakeClock()
    pool = KeyPool(["only"], clock=clock)
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(clock.monotonic())
        if len(times) == 1:
            return httpx.Response(429, headers={"Retry-After": "30"})
        return httpx.Response(200)

    auth = KeyPoolAuth(pool, retry=RetryPolicy(attempts=0, max_wait=45))
    async with client_for(auth, handler) as client, clock.autojump():
        response = await client.get(URL)

    assert response.status_code == 200
    assert times == [1000.0, 1030.0]


@pytest.mark.anyio
async def test_retry_after_http_date() -> None:
    clock = FakeClock()
    pool = KeyPool(["A", "B"], clock=clock)
    when = email.utils.formatdate(clock.time() + 120, usegmt=True)
    responses = iter([httpx.Response(429, headers={"Retry-After": when})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(responses, httpx.Response(200))

    async with client_for(KeyPoolAuth(pool), handler) as client:
        await client.get(URL)

    await clock.advance(119)
    assert pool.statistics().cooling == 1
    await clock.advance(1)
    assert pool.statistics().cooling == 0


@pytest.mark.anyio
async def test_remaining_zero_cools_before_429() -> None:
    clock = FakeClock()
    pool = KeyPool(["A", "B"], clock=clock)
    log: list[str] = []
    reset = str(int(clock.time()) + 60)

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.headers["X-Api-Key"])
        remaining = "0" if request.headers["X-Api-Key"] == "A" else "100"
        headers = {"X-RateLimit-Remaining": remaining, "X-RateLimit-Reset": reset}
        return httpx.Response(200, headers=headers)

    async with client_for(KeyPoolAuth(pool), handler) as client:
        for _ in range(4):
            await client.get(URL)
        await clock.advance(60)
        await client.get(URL)

    assert keys_seen(log) == ["A", "B", "B", "B", "A"]


@pytest.mark.anyio
async def test_reset_seconds_from_now() -> None:
    clock = FakeClock()
    pool = KeyPool(["A"], clock=clock)
    responses = iter([httpx.Response(429, headers={"X-RateLimit-Reset": "42"})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(responses, httpx.Response(200))

    async with client_for(KeyPoolAuth(pool), handler) as client:
        with pytest.raises(RateLimitedError) as raised:
            await client.get(URL)
    assert raised.value.retry_after == pytest.approx(42)


@pytest.mark.anyio
async def test_no_headers_backoff_and_floor() -> None:
    clock = FakeClock()
    pool = KeyPool(["A"], clock=clock, random=lambda: 0.0, min_cooldown=5.0)
    responses = iter([httpx.Response(429), httpx.Response(429, headers={"Retry-After": "0"})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(responses, httpx.Response(200))

    async with client_for(KeyPoolAuth(pool), handler) as client:
        with pytest.raises(RateLimitedError) as first:
            await client.get(URL)
        # Without headers, the pool's backoff decides: 1 s, raised to min_cooldown.
        assert first.value.retry_after == pytest.approx(5.0)
        await clock.advance(5)
        with pytest.raises(RateLimitedError) as second:
            await client.get(URL)
        # "Retry-After: 0" would allow a tight loop; min_cooldown prevents it.
        assert second.value.retry_after == pytest.approx(5.0)


@pytest.mark.anyio
async def test_late_responses_never_raise_count() -> None:
    clock = FakeClock()
    pool = KeyPool(["k1"], clock=clock, probe=False)
    leases = [await pool.acquire() for _ in range(4)]
    reset = int(clock.time()) + 60

    def answer(remaining: int, reset_at: int) -> dict[str, str]:
        return {"X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(reset_at)}

    pool.report(leases[0], 200, answer(5, reset))
    assert pool._capacity(clock.monotonic()) == 5 - 3
    # A response the server sent earlier in the same window arrives late: ignored.
    pool.report(leases[1], 200, answer(9, reset))
    assert pool._capacity(clock.monotonic()) == 5 - 2
    # A response from the next window may raise the count again.
    pool.report(leases[2], 200, answer(40, reset + 60))
    assert pool._capacity(clock.monotonic()) == 40 - 1
    # A response from the window before, arriving after that, is stale.
    pool.report(leases[3], 200, answer(30, reset))
    assert pool._capacity(clock.monotonic()) == 40


# -- quota buckets ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bucket_cools_together() -> None:
    clock = FakeClock()
    pool = KeyPool.from_buckets({"P1": ["k1", "k2"], "P2": ["k3"]}, clock=clock)
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.headers["X-Api-Key"])
        if request.headers["X-Api-Key"] in ("k1", "k2"):
            return httpx.Response(429, headers={"Retry-After": "60"})
        return httpx.Response(200)

    async with client_for(KeyPoolAuth(pool), handler) as client:
        for _ in range(3):
            response = await client.get(URL)
            assert response.status_code == 200

    # k1's 429 cooled all of P1: k2 is never tried, k3 takes every request.
    assert keys_seen(log) == ["k1", "k3", "k3", "k3"]


@pytest.mark.anyio
async def test_concurrent_callers_no_stampede() -> None:
    clock = FakeClock()
    pool = KeyPool.from_buckets({"P1": ["k1", "k2"], "P2": ["k3"]}, clock=clock)
    per_key: Counter[str] = Counter()
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    remaining = {"k3": 1000}

    async def handler(request: httpx.Request) -> httpx.Response:
        key = request.headers["X-Api-Key"]
        per_key[key] += 1
        in_flight[key] += 1
        peak[key] = max(peak[key], in_flight[key])
        try:
            await anyio.lowlevel.checkpoint()
            if key in ("k1", "k2"):
                return httpx.Response(429, headers={"Retry-After": "60"})
            remaining[key] -= 1
            return httpx.Response(200, headers={"X-RateLimit-Remaining": str(remaining[key])})
        finally:
            in_flight[key] -= 1

    statuses: list[int] = []
    async with client_for(KeyPoolAuth(pool), handler) as client:

        async def call() -> None:
            statuses.append((await client.get(URL)).status_code)

        async with anyio.create_task_group() as group:
            for _ in range(100):
                group.start_soon(call)

    assert statuses == [200] * 100
    # One probe found P1 rate limited. No other request went to P1, and its backoff grew once.
    assert per_key["k1"] + per_key["k2"] == 1
    assert pool.statistics().rate_limited == 1
    # P2's quota was unknown, so one probe went first, alone.
    assert per_key["k3"] == 100
    assert peak["k3"] > 1


@pytest.mark.anyio
async def test_all_buckets_cooling_error() -> None:
    clock = FakeClock()
    pool = KeyPool.from_buckets({"P1": ["k1"], "P2": ["k2"]}, clock=clock)
    waits = {"k1": "90", "k2": "40"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": waits[request.headers["X-Api-Key"]]})

    auth = KeyPoolAuth(pool, retry=RetryPolicy(attempts=0, max_wait=10))
    async with client_for(auth, handler) as client:
        with pytest.raises(RateLimitedError) as raised:
            await client.get(URL)

    error = raised.value
    assert error.retry_after == pytest.approx(40)
    assert "all 2 keys" in str(error)
    assert "in 40.0 s" in str(error)
    assert "wait budget of 10.0 s" in str(error)
    copy = pickle.loads(pickle.dumps(RateLimitedError("m", retry_at=1.0, retry_after=2.0)))  # noqa: S301
    assert (copy.retry_at, copy.retry_after) == (1.0, 2.0)


@pytest.mark.anyio
async def test_rotation_keeps_retry_attempts() -> None:
    clock = FakeClock()
    pool = KeyPool(["A", "B"], clock=clock)
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "600"}),
            httpx.Response(503, headers={"Retry-After": "1"}),
            httpx.Response(200),
        ]
    )
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.headers["X-Api-Key"])
        return next(answers)

    auth = KeyPoolAuth(pool, retry=RetryPolicy(attempts=1, max_wait=30))
    async with client_for(auth, handler) as client, clock.autojump():
        response = await client.get(URL)

    # The 429 rotated A to B without counting; the one retry went to the 503.
    assert response.status_code == 200
    assert keys_seen(log) == ["A", "B", "B"]


@pytest.mark.anyio
async def test_stream_body_429_returned() -> None:
    pool = KeyPool(["A", "B"], clock=FakeClock())
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(429, headers={"Retry-After": "5"})

    async def body() -> AsyncIterator[bytes]:
        yield b"once"

    async with client_for(KeyPoolAuth(pool), handler) as client:
        response = await client.post(URL, content=body())

    # The stream cannot be sent again, so the 429 goes back to the caller.
    assert response.status_code == 429
    assert calls == 1


# -- rejected keys ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rejected_key_removed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tokenflight")
    pool = KeyPool(["revoked-secret-key", "good-key"], clock=FakeClock())
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.headers["X-Api-Key"])
        if request.headers["X-Api-Key"] == "revoked-secret-key":
            return httpx.Response(401)
        return httpx.Response(200)

    async with client_for(KeyPoolAuth(pool), handler) as client:
        first = await client.get(URL)
        second = await client.get(URL)

    assert first.status_code == 200
    assert second.status_code == 200
    assert keys_seen(log) == ["revoked-secret-key", "good-key", "good-key"]
    assert pool.statistics().removed == 1
    assert "revoked-secret-key" not in caplog.text
    fingerprint = Credentials(None, "revoked-secret-key").fingerprint
    assert f"fingerprint={fingerprint}" in caplog.text


@pytest.mark.anyio
async def test_one_removal_per_request() -> None:
    pool = KeyPool(["k1", "k2", "k3"], clock=FakeClock())
    log: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        log.append(request.headers["X-Api-Key"])
        return httpx.Response(403)

    async with client_for(KeyPoolAuth(pool), handler) as client:
        response = await client.get(URL)

    # A request that every key is refused points at the request, not at every key.
    assert response.status_code == 403
    assert keys_seen(log) == ["k1", "k2"]
    assert pool.statistics().removed == 1
    assert pool.statistics().keys == 2


@pytest.mark.anyio
async def test_403_with_retry_after_is_rate_limit() -> None:
    pool = KeyPool(["k1", "k2"], clock=FakeClock())
    answers = iter([httpx.Response(403, headers={"Retry-After": "60"})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers, httpx.Response(200))

    async with client_for(KeyPoolAuth(pool), handler) as client:
        response = await client.get(URL)

    assert response.status_code == 200
    assert pool.statistics().removed == 0
    assert pool.statistics().cooling == 1


@pytest.mark.anyio
async def test_every_key_removed() -> None:
    pool = KeyPool(["k1"], clock=FakeClock())

    async with client_for(KeyPoolAuth(pool), lambda request: httpx.Response(401)) as client:
        with pytest.raises(NoUsableKeyError, match=r"KeyPool\.add") as raised:
            await client.get(URL)
        assert isinstance(raised.value.response, httpx.Response)
        assert raised.value.response.status_code == 401
        with pytest.raises(NoUsableKeyError) as again:
            await client.get(URL)
        assert again.value.response is None
        pool.add("k2")
    async with client_for(KeyPoolAuth(pool), ok) as client:
        assert (await client.get(URL)).status_code == 200


# -- signers with a pool ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_hmac_signer_rotates_keys() -> None:
    clock = FakeClock()
    pool = KeyPool([Credentials("id-1", "secret-1"), Credentials("id-2", "secret-2")], clock=clock)
    verifier = HmacVerifier({"id-1": "secret-1", "id-2": "secret-2"}, clock=clock)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        result = verifier.verify(
            request.method, request.url.raw_path, request.headers, request.content
        )
        assert result.key_id is not None
        seen.append(result.key_id)
        if result.key_id == "id-1":
            return httpx.Response(429, headers={"Retry-After": "5"})
        return httpx.Response(200)

    async with client_for(HmacAuth(pool, clock=clock), handler) as client:
        response = await client.post(URL, content=b"payload")

    assert response.status_code == 200
    assert seen == ["id-1", "id-2"]


# -- lifecycle and misuse ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_request_releases_key() -> None:
    clock = FakeClock()
    pool = KeyPool(["k1"], clock=clock)
    started = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        started.set()
        await clock.sleep(3600)
        return httpx.Response(200)

    async with client_for(KeyPoolAuth(pool), handler) as client, anyio.create_task_group() as group:
        group.start_soon(client.get, URL)
        await started.wait()
        assert pool.statistics().in_flight == 1
        group.cancel_scope.cancel()

    assert pool.statistics().in_flight == 0


@pytest.mark.anyio
async def test_cancelled_waiter_passes_wakeup() -> None:
    pool = KeyPool(["k1", "k2"], clock=FakeClock())
    held = await pool.acquire()  # k1's probe: others wait for its response
    limited = await pool.acquire()
    assert pool.report(limited, 429, {"Retry-After": "60"}) == "rate_limited"
    # With k2 cooling down, waiters also wait for its cooldown to end, on a timer.
    served: list[str] = []
    first_in_line = anyio.CancelScope()

    async def first() -> None:
        with first_in_line:
            lease = await pool.acquire()
            try:
                # Whether the cancellation lands in acquire() or here depends on the
                # backend; either way the key must reach the second caller.
                await anyio.lowlevel.checkpoint()
                served.append("first")
            finally:
                pool.release(lease)

    async def second() -> None:
        lease = await pool.acquire()
        served.append("second")
        pool.release(lease)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(first)
            await wait_all_tasks_blocked()
            group.start_soon(second)
            await wait_all_tasks_blocked()
            pool.release(held)  # room for one request: wakes the first in line
            first_in_line.cancel()  # which is cancelled before it can take the key

    assert served == ["second"]
    assert pool.statistics().in_flight == 0
    assert pool.statistics().waiting == 0


def test_pool_reused_across_event_loops() -> None:
    clock = FakeClock()
    pool = KeyPool(["k1"], clock=clock)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"X-RateLimit-Remaining": "1"})

    async def run() -> None:
        # With one request of quota at a time, the other callers wait on the pool's
        # event, which each event loop must create anew.
        async with (
            client_for(KeyPoolAuth(pool), handler) as client,
            anyio.create_task_group() as group,
        ):
            for _ in range(3):
                group.start_soon(client.get, URL)

    asyncio.run(run())
    trio.run(run)
    asyncio.run(run())
    assert pool.statistics().leases == 9


def test_invalid_pools_rejected() -> None:
    with pytest.raises(ConfigurationError):
        KeyPool([])
    with pytest.raises(ConfigurationError):
        KeyPool(["k1", "k1"])
    with pytest.raises(ConfigurationError):
        KeyPool(["k1"], strategy="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        KeyPool(["k1"], min_cooldown=-1)
    with pytest.raises(ConfigurationError):
        KeyPoolAuth(KeyPool(["k1"]), header="Bad Header")
    with pytest.raises(ConfigurationError):
        RetryPolicy(attempts=-1)


@pytest.mark.parametrize(
    "key",
    ["", "zyx-secret\n", "zyx-secret\r\nX-Injected: 1", "zyx-s\u00e9cret", "\x00zyx-secret"],
    ids=["empty", "line-break", "crlf", "non-ascii", "nul"],
)
def test_unsendable_key_rejected_on_add(key: str) -> None:
    with pytest.raises(InvalidTokenError) as raised:
        KeyPool([key])
    pool = KeyPool(["good-key"])
    with pytest.raises(InvalidTokenError) as raised_on_add:
        pool.add(PoolKey(key, bucket="project-1"))

    for error in (raised.value, raised_on_add.value):
        message = str(error)
        assert message.startswith("the API key ")
        assert "zyx" not in message
        if key:
            assert f"fingerprint {fingerprint(key)}" in message
    assert pool.statistics().keys == 1


@pytest.mark.anyio
async def test_unsendable_credentials_secret_not_sent() -> None:
    # A Credentials secret is a signing secret, so the pool takes it; KeyPoolAuth still
    # refuses to put it in a header, before anything is sent.
    pool = KeyPool([Credentials(None, "zyx-s\u00e9cret")], clock=FakeClock())
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    async with client_for(KeyPoolAuth(pool), record) as client:
        with pytest.raises(SigningError) as raised:
            await client.get(URL)

    assert "non-ASCII" in str(raised.value)
    assert "zyx" not in str(raised.value)
    assert sent == []
    assert pool.statistics().in_flight == 0


@pytest.mark.parametrize("attempts", [-1, 1.5, True])
def test_retry_attempts_range_named(attempts: object) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RetryPolicy(attempts=attempts)  # type: ignore[arg-type]

    message = str(raised.value)
    assert "retries after the first attempt" in message
    assert "int >= 0" in message
    assert f"got {attempts!r}" in message


def test_retry_attempts_zero_means_no_retry() -> None:
    assert RetryPolicy(attempts=0).attempts == 0


def test_reprs_hide_keys() -> None:
    pool = KeyPool([PoolKey("secret-key-value", bucket="P1"), "other-secret-value"])
    texts = [repr(pool), repr(PoolKey("secret-key-value")), repr(KeyPoolAuth(pool))]
    for text in texts:
        assert "secret-key-value" not in text
        assert "other-secret-value" not in text
