"""The server clock: offset from Date headers, its limits, and clock-skew rejections."""

from __future__ import annotations

import email.utils
import logging
import random
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tokenflight import (
    ClockSkewError,
    ConfigurationError,
    JwtSigner,
    JwtSource,
    ServerClock,
    Token,
    TokenAuth,
    TokenCache,
    load_signing_key,
    looks_like_clock_skew,
)
from tokenflight._server_clock import parse_http_date, rejection_message
from tokenflight.testing import FakeClock

WALL = 1_700_000_000.0


def http_date(seconds: float) -> str:
    return email.utils.formatdate(seconds, usegmt=True)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- estimating the offset ---------------------------------------------------------------


def test_offset_from_midpoint() -> None:
    clock = FakeClock(wall_start=WALL)
    server_clock = ServerClock(clock)
    # Sent at WALL, received 4 s later; the server's clock read WALL + 2 + 600 halfway.
    assert server_clock.observe(http_date(WALL + 602), WALL, WALL + 4)
    assert server_clock.offset == pytest.approx(600, abs=1)
    assert server_clock.time() == pytest.approx(clock.time() + server_clock.offset)
    assert server_clock.monotonic() == clock.monotonic()
    assert server_clock.updates == 1


def test_offset_negative() -> None:
    server_clock = ServerClock(FakeClock(wall_start=WALL))
    server_clock.observe(http_date(WALL - 300), WALL, WALL)
    assert server_clock.offset == pytest.approx(-300, abs=1)


def test_agreeing_clocks_keep_zero() -> None:
    server_clock = ServerClock(FakeClock(wall_start=WALL))
    for fraction in (0.0, 0.3, 0.7, 0.99):
        now = WALL + fraction
        assert not server_clock.observe(http_date(now), now, now)
    assert server_clock.offset == 0
    assert server_clock.updates == 0


def test_missing_date_ignored() -> None:
    server_clock = ServerClock()
    assert not server_clock.observe(None, WALL, WALL)
    assert server_clock.rejected == 0


def test_receive_before_send_ignored() -> None:
    server_clock = ServerClock()
    assert not server_clock.observe(http_date(WALL + 600), WALL + 5, WALL)
    assert server_clock.offset == 0
    assert server_clock.rejected == 1


@pytest.mark.parametrize("value", [-1, float("inf"), "900", True])
def test_max_offset_checked(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_offset must be"):
        ServerClock(max_offset=value)


def test_parse_http_date_forms() -> None:
    expected = 784111777.0
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == expected
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == expected
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == expected
    assert parse_http_date("not a date") is None
    assert parse_http_date("") is None


# -- wrong estimates ---------------------------------------------------------------------


def test_unparseable_then_valid_date() -> None:
    """A 503 with an unparseable Date changes nothing; a 403 with a valid one does."""
    clock = FakeClock(wall_start=WALL)
    server_clock = ServerClock(clock)
    now = clock.time()
    assert not server_clock.observe("Thu, 99 Foo 0000 99:99:99 GMT", now, now)
    assert not server_clock.observe("garbage", now, now)
    assert server_clock.offset == 0
    assert server_clock.observe(http_date(now + 120), now, now)
    assert server_clock.offset == pytest.approx(120, abs=1)
    assert server_clock.rejected == 2


def test_epoch_date_ignored() -> None:
    """A Date that parses as 1970 is beyond the cap and ignored."""
    server_clock = ServerClock(FakeClock(wall_start=WALL))
    assert not server_clock.observe("Thu, 01 Jan 1970 00:00:00 GMT", WALL, WALL)
    assert not server_clock.observe(http_date(WALL + 86400 * 365 * 40), WALL, WALL)
    assert server_clock.offset == 0
    assert server_clock.time() == WALL


def test_cap_default_and_configured() -> None:
    default = ServerClock(FakeClock(wall_start=WALL))
    assert not default.observe(http_date(WALL + 1800), WALL, WALL)
    assert default.offset == 0
    wide = ServerClock(FakeClock(wall_start=WALL), max_offset=3600)
    assert wide.observe(http_date(WALL + 1800), WALL, WALL)
    assert wide.offset == pytest.approx(1800, abs=1)


@pytest.mark.anyio
async def test_offset_never_oscillates(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """Many noisy estimates of one true offset set it once; signed times only move
    forward with the clock."""
    clock = FakeClock(wall_start=WALL + 0.37)
    server_clock = ServerClock(clock)
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"), clock=server_clock, skew=0)
    true_offset = 120.6
    noise = random.Random(7)
    last_iat = 0
    for _ in range(500):
        sent = clock.time()
        round_trip = noise.uniform(0.0, 0.8)
        server_now = sent + noise.uniform(0, round_trip) + true_offset
        server_clock.observe(http_date(server_now), sent, sent + round_trip)
        iat = signer.issue({}, lifetime=60).claims["iat"]
        assert iat >= last_iat
        last_iat = iat
        await clock.advance(noise.uniform(0.1, 3.0))
    assert server_clock.updates == 1
    assert abs(server_clock.offset - true_offset) <= 1.5


@pytest.mark.anyio
async def test_offset_measured_against_now() -> None:
    """The estimate uses the request's own send and receive times, not the time of an
    earlier signature."""
    clock = FakeClock(wall_start=WALL)
    server_clock = ServerClock(clock)
    await clock.advance(1000)
    now = clock.time()
    server_clock.observe(http_date(now + 90), now, now)
    assert server_clock.offset == pytest.approx(90, abs=1)


def test_offset_follows_real_change() -> None:
    server_clock = ServerClock(FakeClock(wall_start=WALL))
    server_clock.observe(http_date(WALL + 120), WALL, WALL)
    assert server_clock.observe(http_date(WALL + 10 + 5), WALL + 10, WALL + 10)
    assert server_clock.offset == pytest.approx(5, abs=1)
    assert server_clock.updates == 2


def test_rejections_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    server_clock = ServerClock(FakeClock(wall_start=WALL))
    with caplog.at_level(logging.DEBUG, logger="tokenflight"):
        for _ in range(5):
            server_clock.observe("garbage", WALL, WALL)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unparseable Date header" in warnings[0].getMessage()
    assert server_clock.rejected == 5


# -- httpx hooks -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_event_hooks_learn_offset() -> None:
    clock = FakeClock(wall_start=WALL)
    server_clock = ServerClock(clock)
    seen: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions.get("tokenflight.sent_at"))
        return httpx.Response(200, headers={"Date": http_date(clock.time() + 300)})

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), event_hooks=server_clock.event_hooks()
    ) as client:
        await client.get("https://api.example/")
    assert seen == [WALL]
    assert server_clock.offset == pytest.approx(300, abs=1)


def test_observe_response_without_mark() -> None:
    clock = FakeClock(wall_start=WALL)
    server_clock = ServerClock(clock)
    request = httpx.Request("GET", "https://api.example/")
    response = httpx.Response(503, headers={"Date": http_date(WALL - 200)}, request=request)
    assert server_clock.observe_response(response)
    assert server_clock.offset == pytest.approx(-200, abs=1)
    assert not server_clock.observe_response(httpx.Response(200))


# -- the offset in expiry conversion -----------------------------------------------------


@pytest.mark.anyio
async def test_cache_converts_exp_with_offset() -> None:
    """An absolute expiry from the server converts with the server's offset."""
    clock = FakeClock(wall_start=WALL)
    server_clock = ServerClock(clock)
    server_clock.observe(http_date(WALL + 600), WALL, WALL)
    fetches = 0

    async def fetch() -> Token:
        nonlocal fetches
        fetches += 1
        # The server issues tokens valid for 1000 s of its own time.
        return Token(f"token-{fetches}", expires_at=server_clock.time() + 1000)

    cache = TokenCache(fetch, clock=server_clock, skew=30, refresh_ahead=0, random=lambda: 0.0)
    first = await cache.get()
    await clock.advance(960)
    assert await cache.get() is first
    await clock.advance(20)
    assert await cache.get() is not first
    assert fetches == 2


# -- recognising and reporting skew ------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "iat in the future",
        "Token used before issued",
        "Token used too early, 1700000001 < 1700000002",
        "token expired",
        "JWT has expired",
        "The token is not yet valid (nbf)",
        "'Issued at' claim ('iat') must be an Integer representing the time that the "
        "assertion was issued",
        "'Expiration time' claim ('exp') must be a numeric value representing the future "
        "time at which the assertion expires",
        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
        "timeframe. Check your iat and exp values in the JWT claim.",
        "'Expiration time' claim ('exp') is too far in the future",
        "RequestTimeTooSkewed",
        "Signature expired: 20231114T221320Z is now earlier than 20231114T222320Z",
    ],
)
def test_skew_messages_recognised(message: str) -> None:
    assert looks_like_clock_skew(message)


@pytest.mark.parametrize(
    "message",
    [
        "invalid_client: client authentication failed",
        "invalid_scope",
        "Bad credentials",
        "unauthorized_client",
        "expires_in must be a number",
        "HTTP 401",
    ],
)
def test_other_messages_not_skew(message: str) -> None:
    assert not looks_like_clock_skew(message)


def test_skew_error_message(ec_key: ec.EllipticCurvePrivateKey) -> None:
    server_clock = ServerClock(FakeClock(wall_start=WALL))
    server_clock.observe(http_date(WALL + 600), WALL, WALL)
    token = JwtSigner(load_signing_key(ec_key, algorithm="ES256")).sign({}, lifetime=60)
    error = server_clock.skew_error(f"token expired: {token}", used_offset=0.0)
    message = str(error)
    assert isinstance(error, ClockSkewError)
    assert "clocks likely disagree" in message
    assert "token expired" in message
    assert "offset +600" in message or "offset +601" in message
    assert "used +0.0 s" in message
    assert token not in message
    assert token.split(".")[2][:10] not in message
    assert "<JWT redacted>" in message


def test_skew_error_shortens_message() -> None:
    error = ServerClock().skew_error("iat " + "x" * 5000)
    assert len(str(error)) < 700


def test_rejection_message_sources() -> None:
    body = {"error": "invalid_token", "error_description": "iat in the future"}
    assert rejection_message(httpx.Response(401, json=body)) == "invalid_token: iat in the future"
    challenge = 'Bearer error="invalid_token", error_description="Token used before issued"'
    response = httpx.Response(401, headers={"WWW-Authenticate": challenge})
    assert rejection_message(response) == "Token used before issued"
    assert rejection_message(httpx.Response(403, text="Signature expired")) == "Signature expired"
    assert rejection_message(httpx.Response(401)) == "HTTP 401"


# -- learning from a rejection and signing again -----------------------------------------


class SkewedApi:
    """A mock API whose clock runs ``offset`` seconds ahead of the local FakeClock.

    It accepts a bearer JWT only when iat and nbf are not in its future and exp is not in
    its past, with no leeway, and sends a Date header with every response.
    """

    def __init__(self, clock: FakeClock, offset: float, public_key: Any) -> None:
        self.clock = clock
        self.offset = offset
        self.public_key = public_key
        self.requests = 0
        self.rejections = 0
        self.gate: anyio.Event | None = None
        self.gate_size = 0

    def now(self) -> float:
        return self.clock.time() + self.offset

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.gate is not None:
            # Hold the first wave until every request of it has arrived, so all of them
            # are signed with the old offset and rejected together.
            if self.requests >= self.gate_size:
                self.gate.set()
            await self.gate.wait()
        token = request.headers["Authorization"].removeprefix("Bearer ")
        claims = jwt.decode(
            token,
            self.public_key,
            algorithms=["ES256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
            audience="https://api.example",
        )
        headers = {"Date": http_date(self.now())}
        problem = None
        if claims["iat"] > self.now() or claims["nbf"] > self.now():
            problem = "Token used before issued"
        elif claims["exp"] <= self.now():
            problem = "Token expired"
        if problem is not None:
            self.rejections += 1
            body = {"error": "invalid_token", "error_description": problem}
            return httpx.Response(401, json=body, headers=headers)
        return httpx.Response(200, json={"ok": True}, headers=headers)


def _client(api: SkewedApi, server_clock: ServerClock) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.MockTransport(api.handle), event_hooks=server_clock.event_hooks()
    )


async def call_with_signer(
    client: httpx.AsyncClient, signer: JwtSigner, server_clock: ServerClock
) -> httpx.Response:
    """Sign, send, and turn a time-claim rejection into ClockSkewError, retrying once."""

    async def attempt() -> httpx.Response:
        used = server_clock.offset
        token = signer.sign({"aud": "https://api.example"}, lifetime=300)
        response = await client.get(
            "https://api.example/data", headers={"Authorization": f"Bearer {token}"}
        )
        if response.status_code == 401:
            message = rejection_message(response)
            if looks_like_clock_skew(message):
                raise server_clock.skew_error(message, used_offset=used)
        return response

    return await server_clock.retry_on_skew(attempt)


def _signer(key: ec.EllipticCurvePrivateKey, clock: ServerClock) -> JwtSigner:
    return JwtSigner(load_signing_key(key, algorithm="ES256"), clock=clock, skew=60)


@pytest.mark.anyio
async def test_slow_clock_learns_and_retries(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """The local clock is 10 min slow, and the 401's Date gives the offset. The JWT is
    signed again once and accepted, and later JWTs use the offset from the start."""
    clock = FakeClock(wall_start=WALL)
    api = SkewedApi(clock, offset=600, public_key=ec_key.public_key())
    server_clock = ServerClock(clock)
    signer = _signer(ec_key, server_clock)
    async with _client(api, server_clock) as client:
        response = await call_with_signer(client, signer, server_clock)
        assert response.status_code == 200
        assert api.requests == 2
        assert api.rejections == 1
        assert server_clock.offset == pytest.approx(600, abs=1.5)

        await clock.advance(1000)
        response = await call_with_signer(client, signer, server_clock)
        assert response.status_code == 200
        assert api.requests == 3
        assert api.rejections == 1
    assert server_clock.updates == 1


@pytest.mark.anyio
async def test_skew_without_new_offset_raises(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """When the Date shows no offset, signing again cannot help: one attempt, then a
    ClockSkewError with the peer's message and the measured offset."""
    clock = FakeClock(wall_start=WALL)
    # The peer's clock is 10 min ahead, but its Date header claims otherwise.
    api = SkewedApi(clock, offset=600, public_key=ec_key.public_key())
    server_clock = ServerClock(clock)
    signer = _signer(ec_key, server_clock)

    async def local_date(response: httpx.Response) -> None:
        response.headers["Date"] = http_date(clock.time())

    hooks = server_clock.event_hooks()
    hooks["response"].insert(0, local_date)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(api.handle), event_hooks=hooks
    ) as client:
        with pytest.raises(ClockSkewError) as caught:
            await call_with_signer(client, signer, server_clock)
    assert api.requests == 1
    message = str(caught.value)
    assert "Token expired" in message
    assert "offset +0.0 s" in message


@pytest.mark.anyio
async def test_retry_only_once(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """A second skew rejection after the retry propagates: exactly two attempts."""
    clock = FakeClock(wall_start=WALL)
    server_clock = ServerClock(clock)
    attempts = 0

    async def attempt() -> None:
        nonlocal attempts
        attempts += 1
        server_clock.observe(http_date(clock.time() + 100 * attempts), clock.time(), clock.time())
        raise server_clock.skew_error("iat in the future")

    with pytest.raises(ClockSkewError):
        await server_clock.retry_on_skew(attempt)
    assert attempts == 2


@pytest.mark.anyio
async def test_source_in_cache_resigned(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """Through the cache: the rejected JWT is invalidated, the next one is signed with
    the learned offset, and the cache keeps serving it."""
    clock = FakeClock(wall_start=WALL)
    api = SkewedApi(clock, offset=600, public_key=ec_key.public_key())
    server_clock = ServerClock(clock)
    source = JwtSource(_signer(ec_key, server_clock), audience="https://api.example", lifetime=300)
    cache = TokenCache(source, clock=clock, random=lambda: 0.0)

    async def attempt(client: httpx.AsyncClient) -> httpx.Response:
        used = server_clock.offset
        token = await cache.get()
        response = await client.get(
            "https://api.example/data", headers={"Authorization": f"Bearer {token.value}"}
        )
        message = rejection_message(response)
        if response.status_code == 401 and looks_like_clock_skew(message):
            cache.invalidate(token)
            raise server_clock.skew_error(message, used_offset=used)
        return response

    async with _client(api, server_clock) as client:
        first = await server_clock.retry_on_skew(lambda: attempt(client))
        assert first.status_code == 200
        for _ in range(5):
            again = await server_clock.retry_on_skew(lambda: attempt(client))
            assert again.status_code == 200
    assert api.requests == 7
    assert api.rejections == 1
    assert cache.statistics().fetches == 2


@pytest.mark.anyio
async def test_token_auth_resigns_once(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """With TokenAuth and the clock's event hooks on one client, a 401 for a JWT signed
    with a slow clock teaches the offset before TokenAuth fetches a new JWT, so its one
    retry succeeds."""
    clock = FakeClock(wall_start=WALL)
    api = SkewedApi(clock, offset=600, public_key=ec_key.public_key())
    server_clock = ServerClock(clock)
    source = JwtSource(_signer(ec_key, server_clock), audience="https://api.example", lifetime=300)
    cache = TokenCache(source, clock=clock, random=lambda: 0.0)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(api.handle),
        auth=TokenAuth(cache),
        event_hooks=server_clock.event_hooks(),
    ) as client:
        first = await client.get("https://api.example/data")
        second = await client.get("https://api.example/data")
    assert first.status_code == 200
    assert second.status_code == 200
    assert api.requests == 3
    assert api.rejections == 1
    assert server_clock.updates == 1
    assert cache.statistics().fetches == 2


@pytest.mark.anyio
async def test_concurrent_rejections_all_retry(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """Ten concurrent requests rejected together each retry once and succeed, and the
    offset changes once."""
    clock = FakeClock(wall_start=WALL)
    api = SkewedApi(clock, offset=-600, public_key=ec_key.public_key())
    api.gate = anyio.Event()
    api.gate_size = 10
    server_clock = ServerClock(clock)
    signer = _signer(ec_key, server_clock)
    statuses: list[int] = []

    async with _client(api, server_clock) as client:

        async def one() -> None:
            response = await call_with_signer(client, signer, server_clock)
            statuses.append(response.status_code)

        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(one)

    assert statuses == [200] * 10
    assert api.rejections == 10
    assert api.requests == 20
    assert server_clock.updates == 1
    assert server_clock.offset == pytest.approx(-600, abs=1.5)


def test_repr_shows_offset() -> None:
    server_clock = ServerClock(FakeClock(wall_start=WALL))
    server_clock.observe(http_date(WALL + 42), WALL, WALL)
    assert "offset=+42" in repr(server_clock) or "offset=+43" in repr(server_clock)
