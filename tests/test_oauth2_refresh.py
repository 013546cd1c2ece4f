"""RefreshTokenGrant: rotation, persistence, the store shared with other processes, and
cancellation during the exchange, against a scripted endpoint that rotates refresh tokens."""

from __future__ import annotations

import logging

import anyio
import httpx
import pytest

from secret_guard import register_secret
from servers.scripted import TOKEN_URL, ScriptedEndpoint, SentRequest, error_json, token_json
from tokenflight import (
    ConfigurationError,
    ReauthenticationRequired,
    RefreshTokenGrant,
    Token,
    TokenCache,
    TokenKey,
    TransientRefreshError,
)
from tokenflight.testing import FakeClock

CLIENT_SECRET = "client-secret-5e6f7a8b9c"


def refresh_token(number: int) -> str:
    return f"refresh-token-{number:04d}-xyz"


def access_token(number: int) -> str:
    return f"access-token-{number:04d}-abc"


class RotatingServer:
    """A token endpoint with single-use refresh tokens, like oidc-provider's rotation.

    ``refresh_token(n)`` buys ``access_token(n + 1)`` and ``refresh_token(n + 1)``; a
    refresh token used before, or never issued, gets ``invalid_grant``. With ``delay``,
    the response comes that many seconds (on ``clock``) after the rotation is committed.
    """

    def __init__(self, clock: FakeClock | None = None, *, delay: float = 0.0) -> None:
        self.clock = clock
        self.delay = delay
        self.valid = {refresh_token(0)}
        self.issued = 0
        self.used: list[str | None] = []
        register_secret(*(refresh_token(n) for n in range(20)))
        register_secret(*(access_token(n) for n in range(20)), CLIENT_SECRET)

    def rotate(self, used: str) -> int:
        """Consume ``used`` and issue the next pair; return its number."""
        self.valid.discard(used)
        self.issued += 1
        self.valid.add(refresh_token(self.issued))
        return self.issued

    async def __call__(self, request: SentRequest) -> httpx.Response:
        used = request.field("refresh_token")
        self.used.append(used)
        if used not in self.valid:
            return error_json("invalid_grant", error_description="grant request is invalid")
        number = self.rotate(used)
        if self.delay and self.clock is not None:
            await self.clock.sleep(self.delay)
        return token_json(
            access_token(number), expires_in=3600, refresh_token=refresh_token(number)
        )


def grant(
    endpoint: ScriptedEndpoint, client: httpx.AsyncClient, **options: object
) -> RefreshTokenGrant:
    options.setdefault("refresh_token", refresh_token(0))
    return RefreshTokenGrant(
        TOKEN_URL,
        "app",
        client_secret=CLIENT_SECRET,
        http_client=client,
        **options,  # type: ignore[arg-type]
    )


# -- rotation ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rotated_token_used_next_time() -> None:
    clock = FakeClock()
    server = RotatingServer()
    saved: list[Token] = []
    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        source = grant(endpoint, client, save=saved.append, clock=clock)
        cache = TokenCache(source, clock=clock, skew=30, refresh_ahead=0)
        first = await cache.get()
        await clock.advance(3600)
        second = await cache.get()
        await clock.advance(3600)
        third = await cache.get()

    assert server.used == [refresh_token(0), refresh_token(1), refresh_token(2)]
    assert [first.value, second.value, third.value] == [access_token(n) for n in (1, 2, 3)]
    assert [(t.value, t.refresh_token) for t in saved] == [
        (access_token(n), refresh_token(n)) for n in (1, 2, 3)
    ]
    assert saved[0] is first
    assert saved[0].expires_at == pytest.approx(1_700_000_000 + 3600)
    assert source.generation == 3


@pytest.mark.anyio
async def test_async_save_receives_both_tokens() -> None:
    server = RotatingServer()
    saved: list[tuple[str, str | None]] = []

    async def save(token: Token) -> None:
        await anyio.lowlevel.checkpoint()
        saved.append((token.value, token.refresh_token))

    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        await grant(endpoint, client, save=save).fetch()
    assert saved == [(access_token(1), refresh_token(1))]


@pytest.mark.anyio
async def test_response_without_refresh_token_keeps_current() -> None:
    endpoint = ScriptedEndpoint(lambda request: token_json(access_token(1)))
    async with endpoint.client() as client:
        source = grant(endpoint, client)
        first = await source.fetch()
        await source.fetch()
    assert first.refresh_token == refresh_token(0)
    assert [r.field("refresh_token") for r in endpoint.requests] == [refresh_token(0)] * 2
    assert source.generation == 0


@pytest.mark.anyio
async def test_rolled_back_refresh_token_ignored(caplog: pytest.LogCaptureFixture) -> None:
    answers = iter(
        [
            token_json(access_token(1), refresh_token=refresh_token(1)),
            token_json(access_token(2), refresh_token=refresh_token(0)),
            token_json(access_token(3), refresh_token=refresh_token(2)),
        ]
    )
    endpoint = ScriptedEndpoint(lambda request: next(answers))
    async with endpoint.client() as client:
        source = grant(endpoint, client)
        await source.fetch()
        with caplog.at_level(logging.WARNING, logger="tokenflight"):
            second = await source.fetch()
        await source.fetch()

    assert second.refresh_token == refresh_token(1)
    used = [r.field("refresh_token") for r in endpoint.requests]
    assert used == [refresh_token(0), refresh_token(1), refresh_token(1)]
    assert "already replaced" in caplog.text
    assert source.generation == 2


@pytest.mark.anyio
async def test_concurrent_callers_one_refresh() -> None:
    clock = FakeClock()
    server = RotatingServer(clock, delay=0.2)
    endpoint = ScriptedEndpoint(server)
    tokens: list[Token] = []
    async with endpoint.client() as client:
        cache = TokenCache(grant(endpoint, client), clock=clock)
        async with cache, clock.autojump():

            async def call() -> None:
                tokens.append(await cache.get())

            for _ in range(2):
                async with anyio.create_task_group() as task_group:
                    for _ in range(50):
                        task_group.start_soon(call)
                await clock.sleep(3600)

    assert server.used == [refresh_token(0), refresh_token(1)]
    assert len({token.value for token in tokens}) == 2
    assert len(tokens) == 100


@pytest.mark.anyio
async def test_keys_share_refresh_token() -> None:
    server = RotatingServer()
    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        source = grant(endpoint, client)
        cache = TokenCache(source, sources=source.for_key, clock=FakeClock())
        read = await cache.get(TokenKey("read"))
        write = await cache.get(TokenKey("write"))
    assert read.value != write.value
    assert server.used == [refresh_token(0), refresh_token(1)]
    assert [r.field("scope") for r in endpoint.requests] == ["read", "write"]


# -- the store ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_store_newer_token_used_without_request() -> None:
    clock = FakeClock()
    stored = Token(
        access_token(7),
        expires_at=clock.time() + 1800,
        refresh_token=refresh_token(7),
    )
    endpoint = ScriptedEndpoint(RotatingServer())
    async with endpoint.client() as client:
        source = grant(endpoint, client, load=lambda: stored, clock=clock)
        token = await source.fetch()
    assert token.value == access_token(7)
    assert token.expires_at == stored.expires_at
    assert token.expires_in is None
    assert endpoint.requests == []


@pytest.mark.anyio
async def test_store_newer_refresh_token_used() -> None:
    clock = FakeClock()
    server = RotatingServer()
    server.valid = {refresh_token(5)}
    server.issued = 5
    stored = Token(access_token(5), expires_at=clock.time() - 10, refresh_token=refresh_token(5))
    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        source = grant(endpoint, client, load=lambda: stored, clock=clock)
        token = await source.fetch()
    assert token.value == access_token(6)
    assert server.used == [refresh_token(5)]


@pytest.mark.anyio
async def test_rotation_elsewhere_recovered_after_invalid_grant() -> None:
    """Another process rotates between our read of the store and our request."""
    clock = FakeClock()
    server = RotatingServer()
    store: dict[str, Token | None] = {"value": None}
    reads: list[Token | None] = []

    async def load() -> Token | None:
        reads.append(store["value"])
        return store["value"]

    async def sibling_rotates_first(request: SentRequest) -> httpx.Response:
        if request.field("refresh_token") == refresh_token(0) and server.issued == 0:
            number = server.rotate(refresh_token(0))
            store["value"] = Token(
                access_token(number), expires_at=clock.time(), refresh_token=refresh_token(number)
            )
        return await server(request)

    saved: list[Token] = []
    endpoint = ScriptedEndpoint(sibling_rotates_first)
    async with endpoint.client() as client:
        source = grant(endpoint, client, load=load, save=saved.append, clock=clock)
        token = await source.fetch()

    assert server.used == [refresh_token(0), refresh_token(1)]
    assert token.value == access_token(2)
    assert token.refresh_token == refresh_token(2)
    assert reads[0] is None
    assert reads[1] is not None
    assert [t.refresh_token for t in saved] == [refresh_token(2)]


@pytest.mark.anyio
async def test_invalid_grant_without_newer_store_requires_sign_in() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(lambda request: error_json("invalid_grant"))
    saved: list[Token] = []
    async with endpoint.client() as client:
        source = grant(endpoint, client, load=lambda: None, save=saved.append, clock=clock)
        cache = TokenCache(source, clock=clock)
        for _ in range(100):
            with pytest.raises(ReauthenticationRequired, match="invalid_grant"):
                await cache.get()
            await clock.advance(6)
    assert len(endpoint.requests) == 1
    assert saved == []


@pytest.mark.anyio
async def test_store_with_replaced_token_ignored(caplog: pytest.LogCaptureFixture) -> None:
    server = RotatingServer()
    stale = Token(access_token(0), expires_at=4e9, refresh_token=refresh_token(0))
    loads = iter([None, stale])
    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        source = grant(endpoint, client, load=lambda: next(loads))
        await source.fetch()
        with caplog.at_level(logging.WARNING, logger="tokenflight"):
            token = await source.fetch()
    assert token.value == access_token(2)
    assert server.used == [refresh_token(0), refresh_token(1)]
    assert "already replaced" in caplog.text


@pytest.mark.anyio
async def test_save_failure_logged_and_token_kept(caplog: pytest.LogCaptureFixture) -> None:
    server = RotatingServer()

    def save(token: Token) -> None:
        raise OSError("disk full")

    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        source = grant(endpoint, client, save=save)
        with caplog.at_level(logging.ERROR, logger="tokenflight"):
            first = await source.fetch()
        await source.fetch()
    assert first.value == access_token(1)
    assert "save() failed with OSError" in caplog.text
    assert server.used == [refresh_token(0), refresh_token(1)]


# -- cancellation and timeouts -------------------------------------------------------------


async def cancel_caller_at(clock: FakeClock, cache: TokenCache, seconds: float) -> list[str]:
    """Start a caller, cancel it ``seconds`` later (fake time), and report what it saw."""
    outcome: list[str] = []
    scopes: list[anyio.CancelScope] = []

    async def caller() -> None:
        with anyio.CancelScope() as scope:
            scopes.append(scope)
            await cache.get()
            outcome.append("token")
        if scope.cancelled_caught:
            outcome.append("cancelled")

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(caller)
        await clock.advance(seconds)
        scopes[0].cancel()
        await clock.advance(10)
    return outcome


@pytest.mark.anyio
async def test_cancelled_caller_keeps_rotation_in_cache() -> None:
    clock = FakeClock()
    server = RotatingServer(clock, delay=5)
    saved: list[Token] = []
    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        cache = TokenCache(grant(endpoint, client, save=saved.append), clock=clock)
        async with cache:
            outcome = await cancel_caller_at(clock, cache, 2)
            token = await cache.get()

    assert outcome == ["cancelled"]
    assert token.value == access_token(1)
    assert [t.refresh_token for t in saved] == [refresh_token(1)]
    assert server.used == [refresh_token(0)]


@pytest.mark.anyio
async def test_cancelled_leader_keeps_rotation() -> None:
    """Without the cache's task group, the shielded exchange still finishes and saves."""
    clock = FakeClock()
    server = RotatingServer(clock, delay=5)
    saved: list[Token] = []
    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        cache = TokenCache(grant(endpoint, client, save=saved.append), clock=clock)
        outcome = await cancel_caller_at(clock, cache, 2)
        server.delay = 0
        token = await cache.get()

    # The leader gets its cancellation at its next checkpoint after the shielded exchange.
    # Depending on the backend, that checkpoint comes before the flight's result is
    # published or after it. Either way the rotation is kept and no refresh token is used twice.
    assert saved[0].refresh_token == refresh_token(1)
    if outcome == ["cancelled"]:
        assert server.used == [refresh_token(0), refresh_token(1)]
        assert token.value == access_token(2)
    else:
        assert outcome == ["token"]
        assert server.used == [refresh_token(0)]
        assert token.value == access_token(1)


@pytest.mark.anyio
async def test_refresh_timeout_keeps_rotation() -> None:
    """The cache's refresh budget runs out while the server is slow to respond."""
    clock = FakeClock()
    server = RotatingServer(clock, delay=40)
    saved: list[Token] = []
    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        cache = TokenCache(grant(endpoint, client, save=saved.append), clock=clock, timeout=30)
        async with cache, clock.autojump():
            token = await cache.get()
    assert token.value == access_token(1)
    assert [t.refresh_token for t in saved] == [refresh_token(1)]


@pytest.mark.anyio
async def test_transport_timeout_rereads_store() -> None:
    server = RotatingServer()
    events: list[str] = []

    def load() -> Token | None:
        events.append("load")
        return None

    def committed_then_timeout(request: SentRequest) -> httpx.Response:
        events.append(f"request {request.field('refresh_token')}")
        server.rotate(request.field("refresh_token") or "")
        raise httpx.ReadTimeout("no answer")

    endpoint = ScriptedEndpoint(committed_then_timeout)
    async with endpoint.client() as client:
        source = grant(endpoint, client, load=load)
        with pytest.raises(TransientRefreshError, match="outcome is unknown"):
            await source.fetch()
        with pytest.raises(TransientRefreshError):
            await source.fetch()
    assert events == [
        "load",
        f"request {refresh_token(0)}",
        "load",
        f"request {refresh_token(0)}",
    ]


# -- errors ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_unauthorized_refresh_one_attempt() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(lambda request: httpx.Response(401))
    async with endpoint.client() as client:
        cache = TokenCache(grant(endpoint, client), clock=clock)
        async with cache:
            for _ in range(60):
                with pytest.raises(ReauthenticationRequired):
                    await cache.get()
                await clock.advance(1)
    assert len(endpoint.requests) == 1


@pytest.mark.anyio
async def test_service_unavailable_retried_with_same_token() -> None:
    clock = FakeClock()
    server = RotatingServer()
    replies = iter(["busy", "busy"])

    async def busy_twice(request: SentRequest) -> httpx.Response:
        if next(replies, None) == "busy":
            return error_json(None, status=503, headers={"Retry-After": "3"})
        return await server(request)

    endpoint = ScriptedEndpoint(busy_twice)
    async with endpoint.client() as client:
        cache = TokenCache(grant(endpoint, client), clock=clock, random=lambda: 0.0)
        async with cache, clock.autojump():
            token = await cache.get()
    assert token.value == access_token(1)
    assert [r.field("refresh_token") for r in endpoint.requests] == [refresh_token(0)] * 3


@pytest.mark.anyio
async def test_public_client_sends_client_id() -> None:
    endpoint = ScriptedEndpoint(RotatingServer())
    async with endpoint.client() as client:
        source = RefreshTokenGrant(
            TOKEN_URL, "spa", refresh_token=refresh_token(0), http_client=client
        )
        await source.fetch()
    [request] = endpoint.requests
    assert "authorization" not in request.headers
    assert request.form == {
        "grant_type": ["refresh_token"],
        "refresh_token": [refresh_token(0)],
        "client_id": ["spa"],
    }


def test_refresh_token_or_load_required() -> None:
    with pytest.raises(ConfigurationError, match="refresh_token"):
        RefreshTokenGrant(TOKEN_URL, "app", client_secret=CLIENT_SECRET)


@pytest.mark.anyio
async def test_load_without_refresh_token_requires_sign_in() -> None:
    endpoint = ScriptedEndpoint(RotatingServer())
    async with endpoint.client() as client:
        source = RefreshTokenGrant(
            TOKEN_URL,
            "app",
            client_secret=CLIENT_SECRET,
            load=lambda: None,
            http_client=client,
        )
        with pytest.raises(ReauthenticationRequired, match="no refresh token"):
            await source.fetch()
    assert endpoint.requests == []


@pytest.mark.anyio
async def test_refresh_token_not_in_repr_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tokenflight")
    server = RotatingServer()
    endpoint = ScriptedEndpoint(server)
    async with endpoint.client() as client:
        source = grant(endpoint, client)
        token = await TokenCache(source, clock=FakeClock()).get()
    for text in (repr(source), str(source), repr(token), caplog.text):
        assert refresh_token(0) not in text
        assert refresh_token(1) not in text
        assert access_token(1) not in text
    assert "generation=1" in repr(source)
