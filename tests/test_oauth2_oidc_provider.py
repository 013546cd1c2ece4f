"""OAuth2 sources against a real authorization server: oidc-provider on 127.0.0.1.

The server counts token requests itself, so "one request per expiry" is measured where it
matters. Time in the cache is a FakeClock moved by the test. The server's 5-second tokens
are real, and each step of a test takes far less real time than their lifetime.
"""

from __future__ import annotations

from typing import Literal

import anyio
import jwt
import pytest

from secret_guard import register_secret
from servers.fixtures import OidcServer
from tokenflight import (
    CacheEvent,
    ClientCredentials,
    PermanentRefreshError,
    ReauthenticationRequired,
    RefreshTokenGrant,
    Token,
    TokenCache,
    TokenKey,
)
from tokenflight.testing import FakeClock, wait_all_tasks_blocked

pytestmark = pytest.mark.server


class FlightTracker:
    """A cache hook that lets the test wait until no refresh is running."""

    def __init__(self) -> None:
        self.running = 0
        self._idle: anyio.Event | None = None

    def __call__(self, event: CacheEvent) -> None:
        if event.name == "refresh.started":
            self.running += 1
        elif event.name in {"refresh.succeeded", "refresh.failed"}:
            self.running -= 1
            if self.running == 0 and self._idle is not None:
                self._idle.set()

    async def wait_idle(self) -> None:
        # A refresh launched in the background may not have started yet; once every task
        # is blocked, it has started and is waiting for the server.
        await wait_all_tasks_blocked()
        # Bounded: a refresh against the local server takes milliseconds.
        with anyio.fail_after(10):
            while self.running:
                self._idle = anyio.Event()
                await self._idle.wait()


def secret_of(server: OidcServer, client_id: str) -> str:
    secret = server.client(client_id).client_secret
    assert secret is not None
    return secret


# -- client credentials ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("client_id", "method"),
    [("cc-basic", "client_secret_basic"), ("cc-post", "client_secret_post")],
)
async def test_client_secret_methods(
    oidc_server: OidcServer,
    client_id: str,
    method: Literal["client_secret_basic", "client_secret_post"],
) -> None:
    before = len(oidc_server.token_requests(client_id))
    async with ClientCredentials(
        oidc_server.token_url,
        client_id,
        client_secret=secret_of(oidc_server, client_id),
        auth_method=method,
        scope="read",
    ) as source:
        token = await source.fetch()
    register_secret(token.value)

    assert token.token_type == "Bearer"
    assert token.expires_in == 300
    assert token.scope == "read"
    records = oidc_server.token_requests(client_id)[before:]
    assert [(r["grant_type"], r["status"]) for r in records] == [("client_credentials", 200)]


@pytest.mark.anyio
@pytest.mark.parametrize("client_id", ["cc-rsa", "cc-ec"])
async def test_private_key_jwt(oidc_server: OidcServer, client_id: str) -> None:
    client = oidc_server.client(client_id)
    before = len(oidc_server.token_requests(client_id))
    async with ClientCredentials(
        oidc_server.token_url, client_id, signing_key=client.signing_key()
    ) as source:
        # The server rejects a replayed assertion, so two successes show a fresh jti each.
        first = await source.fetch()
        second = await source.fetch()
    register_secret(first.value, second.value)

    assert first.value != second.value
    records = oidc_server.token_requests(client_id)[before:]
    assert [r["status"] for r in records] == [200, 200]


@pytest.mark.anyio
async def test_private_key_jwt_issuer_audience(oidc_server: OidcServer) -> None:
    client = oidc_server.client("cc-ec")
    async with ClientCredentials(
        oidc_server.token_url,
        "cc-ec",
        signing_key=client.signing_key(),
        assertion_audience=oidc_server.issuer,
    ) as source:
        token = await source.fetch()
    register_secret(token.value)
    assert token.expires_in == 300


@pytest.mark.anyio
async def test_resource_indicator_gives_jwt_access_token(oidc_server: OidcServer) -> None:
    async with ClientCredentials(
        oidc_server.token_url, "cc-basic", client_secret=secret_of(oidc_server, "cc-basic")
    ) as source:
        cache = TokenCache(source, sources=source.for_key)
        token = await cache.get(TokenKey("read", resource="urn:tokenflight:api"))
        plain = await cache.get(TokenKey("read"))
    register_secret(token.value, plain.value)

    claims = jwt.decode(token.value, options={"verify_signature": False})
    assert claims["aud"] == "urn:tokenflight:api"
    assert claims["scope"] == "read"
    assert claims["client_id"] == "cc-basic"
    assert plain.value.count(".") == 0  # opaque without a resource


@pytest.mark.anyio
async def test_discovery_finds_token_endpoint(oidc_server: OidcServer) -> None:
    async with ClientCredentials(
        issuer_url=oidc_server.issuer,
        client_id="cc-basic",
        client_secret=secret_of(oidc_server, "cc-basic"),
    ) as source:
        url_before = source.token_url
        token = await source.fetch()
        url_after = source.token_url
    assert url_before is None
    assert url_after == oidc_server.token_url
    register_secret(token.value)


@pytest.mark.anyio
async def test_wrong_secret_permanent_without_retries(oidc_server: OidcServer) -> None:
    wrong = "not-the-right-secret-at-all"
    register_secret(wrong)
    clock = FakeClock()
    before = len(oidc_server.token_requests("cc-basic"))
    source = ClientCredentials(oidc_server.token_url, "cc-basic", client_secret=wrong)
    async with source, TokenCache(source, clock=clock) as cache:
        for _ in range(5):
            with pytest.raises(PermanentRefreshError, match="invalid_client"):
                await cache.get()
            await clock.advance(30)

    records = oidc_server.token_requests("cc-basic")[before:]
    assert [(r["status"], r["error"]) for r in records] == [(401, "invalid_client")]


# -- short tokens under load -------------------------------------------------------------


async def run_rounds(
    cache: TokenCache, clock: FakeClock, tracker: FlightTracker, *, rounds: int, step: float
) -> list[list[Token]]:
    """In each round, 500 tasks call ``cache.get()`` at once; then time moves by ``step``."""
    results: list[list[Token]] = []
    for _ in range(rounds):
        tokens: list[Token] = []

        async def call() -> None:
            tokens.append(await cache.get())  # noqa: B023 - each round awaits its own tasks

        async with anyio.create_task_group() as task_group:
            for _ in range(500):
                task_group.start_soon(call)
        await tracker.wait_idle()
        results.append(tokens)
        await clock.advance(step)
    return results


def expected_fetch_times(rounds: int, step: float, refresh_after: float) -> list[float]:
    """The round times at which a token whose refresh falls due ``refresh_after`` s after
    it was requested gets renewed, starting with the first round."""
    times = [0.0]
    for index in range(1, rounds):
        now = index * step
        if now >= times[-1] + refresh_after - 1e-9:
            times.append(now)
    return times


@pytest.mark.anyio
async def test_expiring_tokens_one_request_per_expiry(oidc_server: OidcServer) -> None:
    """500 tasks keep calling while 5-second tokens expire: one request per expiry."""
    clock = FakeClock(start=0.0)
    tracker = FlightTracker()
    before = len(oidc_server.token_requests("cc-short"))
    async with ClientCredentials(
        oidc_server.token_url, "cc-short", client_secret=secret_of(oidc_server, "cc-short")
    ) as source:
        # No refresh ahead: each token is used until it expires (5 s minus the 1 s
        # skew), so every expiry finds all 500 callers waiting on one refresh.
        cache = TokenCache(source, clock=clock, skew=1, refresh_ahead=0, hooks=[tracker])
        async with cache:
            results = await run_rounds(cache, clock, tracker, rounds=45, step=0.5)

    records = oidc_server.token_requests("cc-short")[before:]
    distinct = {token.value for tokens in results for token in tokens}
    register_secret(*distinct)
    fetch_times = expected_fetch_times(45, 0.5, refresh_after=4.0)
    assert len(records) == len(fetch_times) == 6
    assert all(record["status"] == 200 for record in records)
    assert len(distinct) == len(records)
    assert cache.statistics().fetches == len(records)
    assert all(len(tokens) == 500 for tokens in results)
    for index, tokens in enumerate(results):
        assert len({token.value for token in tokens}) == 1, f"round {index} saw two tokens"
    assert all(token.expires_in == 5 for tokens in results for token in tokens)


@pytest.mark.anyio
async def test_expiring_tokens_refreshed_ahead(oidc_server: OidcServer) -> None:
    """With refresh ahead, the 500 callers never wait after the first token."""
    clock = FakeClock(start=0.0)
    tracker = FlightTracker()
    before = len(oidc_server.token_requests("cc-short"))
    async with ClientCredentials(
        oidc_server.token_url, "cc-short", client_secret=secret_of(oidc_server, "cc-short")
    ) as source:
        cache = TokenCache(source, clock=clock, skew=1, random=lambda: 0.5, hooks=[tracker])
        async with cache:
            results = await run_rounds(cache, clock, tracker, rounds=41, step=0.5)
            # The last round started a refresh in the background; collect its token.
            await tracker.wait_idle()
            latest = await cache.get()
        statistics = cache.statistics()

    records = oidc_server.token_requests("cc-short")[before:]
    distinct = {token.value for tokens in results for token in tokens} | {latest.value}
    register_secret(*distinct)
    # Usable for 4 s (5 s minus the 1 s skew); the window is half of that, less 5 % jitter.
    refresh_after = 4.0 - 2.0 * (1 - 0.1 * 0.5)
    assert len(records) == len(expected_fetch_times(41, 0.5, refresh_after)) == 9
    assert len(distinct) == len(records) == statistics.fetches
    assert statistics.misses == 500  # only the first round waited
    assert all(record["status"] == 200 for record in records)


# -- refresh-token rotation ----------------------------------------------------------------


@pytest.mark.anyio
async def test_rotation_with_50_callers(oidc_server: OidcServer) -> None:
    """50 callers find the token expired: one refresh each time, never invalid_grant."""
    first_refresh_token = oidc_server.first_refresh_token("rt-app")
    saved: list[Token] = []
    clock = FakeClock(start=0.0)
    tracker = FlightTracker()
    before = len(oidc_server.token_requests("rt-app"))
    async with RefreshTokenGrant(
        oidc_server.token_url,
        "rt-app",
        refresh_token=first_refresh_token,
        client_secret=secret_of(oidc_server, "rt-app"),
        save=saved.append,
    ) as source:
        cache = TokenCache(source, clock=clock, skew=1, refresh_ahead=0, hooks=[tracker])
        async with cache:
            for _ in range(4):
                tokens: list[Token] = []

                async def call() -> None:
                    tokens.append(await cache.get())  # noqa: B023 - awaited in this round

                async with anyio.create_task_group() as task_group:
                    for _ in range(50):
                        task_group.start_soon(call)
                await tracker.wait_idle()
                assert len({token.value for token in tokens}) == 1
                register_secret(tokens[0].value)
                await clock.advance(5)

    records = oidc_server.token_requests("rt-app")[before:]
    assert [(r["grant_type"], r["status"], r["error"]) for r in records] == [
        ("refresh_token", 200, None)
    ] * 4
    refresh_tokens = [token.refresh_token for token in saved]
    for value in refresh_tokens:
        assert value is not None
        register_secret(value)
    assert len(saved) == 4
    assert len({first_refresh_token, *refresh_tokens}) == 5  # rotated every time
    assert source.generation == 4


@pytest.mark.anyio
async def test_concurrent_refresh_without_single_flight_fails(oidc_server: OidcServer) -> None:
    """Control: the server really rejects a second use of one refresh token."""
    refresh_token = oidc_server.first_refresh_token("rt-app")
    secret = secret_of(oidc_server, "rt-app")
    outcomes: list[object] = []

    async def refresh_once() -> None:
        async with RefreshTokenGrant(
            oidc_server.token_url, "rt-app", refresh_token=refresh_token, client_secret=secret
        ) as source:
            try:
                token = await source.fetch()
            except ReauthenticationRequired as error:
                outcomes.append(error)
            else:
                register_secret(token.value)
                outcomes.append(token)

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(refresh_once)
        task_group.start_soon(refresh_once)

    kinds = sorted(type(outcome).__name__ for outcome in outcomes)
    assert kinds == ["ReauthenticationRequired", "Token"]
