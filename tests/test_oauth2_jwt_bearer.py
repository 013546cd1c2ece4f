"""JwtBearerGrant: the assertion it signs, and the grant against Authlib's server, which
checks the assertion's times strictly (iat not in the future, exp - iat at most one
hour, no leeway)."""

from __future__ import annotations

import logging
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from secret_guard import register_secret
from servers.fixtures import JwtBearerServer
from servers.scripted import TOKEN_URL, ScriptedEndpoint, SentRequest, error_json, token_json
from tokenflight import (
    ClockSkewError,
    ConfigurationError,
    JwtBearerGrant,
    JwtSigner,
    OAuth2Error,
    PermanentRefreshError,
    RefreshError,
    ServerClock,
    load_signing_key,
)
from tokenflight.testing import FakeClock

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SHORT_LIVED_MESSAGE = "Token must be a short-lived token (60 minutes) and in a reasonable timeframe"


def ok(request: SentRequest) -> httpx.Response:
    return token_json("access-from-assertion-1234", expires_in=3600)


def local_clock(offset: float) -> FakeClock:
    """A clock whose wall time is the real time plus ``offset`` seconds."""
    return FakeClock(wall_start=time.time() + offset)


# -- the assertion ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_assertion_claims() -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    key = load_signing_key(private_key, algorithm="ES256", kid="sa-key")
    clock = FakeClock(wall_start=1_700_000_000.9)
    endpoint = ScriptedEndpoint(ok)
    async with endpoint.client() as client:
        source = JwtBearerGrant(
            TOKEN_URL,
            signing_key=key,
            issuer="robot@project.example",
            subject="user@example.com",
            scope="read write",
            claims={"target": "storage"},
            http_client=client,
            clock=clock,
        )
        await source.fetch()
        await source.fetch()

    first, second = endpoint.requests
    assert "authorization" not in first.headers
    assert first.field("grant_type") == JWT_BEARER
    assert first.field("scope") == "read write"
    assertion = first.field("assertion") or ""
    claims = jwt.decode(
        assertion,
        private_key.public_key(),
        algorithms=["ES256"],
        audience=TOKEN_URL,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["iss"] == "robot@project.example"
    assert claims["sub"] == "user@example.com"
    assert claims["aud"] == TOKEN_URL
    assert claims["target"] == "storage"
    assert claims["iat"] == claims["nbf"] == 1_700_000_000 - 60
    assert claims["exp"] == 1_700_000_000 + 300
    assert all(isinstance(claims[name], int) for name in ("iat", "nbf", "exp"))
    assert '"iat":1699999940,' in jwt.utils.base64url_decode(assertion.split(".")[1]).decode()
    assert jwt.get_unverified_header(assertion)["kid"] == "sa-key"
    other = jwt.decode(second.field("assertion") or "", options={"verify_signature": False})
    assert other["jti"] != claims["jti"]


@pytest.mark.anyio
async def test_assertion_lifetime_capped_at_one_hour() -> None:
    key = load_signing_key(ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    endpoint = ScriptedEndpoint(ok)
    async with endpoint.client() as client:
        source = JwtBearerGrant(
            TOKEN_URL,
            signing_key=key,
            issuer="robot",
            assertion_lifetime=7200,
            http_client=client,
        )
        await source.fetch()
    claims = jwt.decode(
        endpoint.requests[0].field("assertion") or "", options={"verify_signature": False}
    )
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["sub"] == "robot"


@pytest.mark.anyio
async def test_client_secret_authenticates_too() -> None:
    key = load_signing_key(ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    endpoint = ScriptedEndpoint(ok)
    async with endpoint.client() as client:
        source = JwtBearerGrant(
            TOKEN_URL,
            signing_key=key,
            issuer="robot",
            client_id="broker",
            client_secret="broker-secret-123",
            http_client=client,
        )
        await source.fetch()
    [request] = endpoint.requests
    assert request.headers["authorization"].startswith("Basic ")
    assert request.field("assertion") is not None


def test_hmac_key_rejected() -> None:
    key = load_signing_key(b"k" * 32, algorithm="HS256")
    with pytest.raises(ConfigurationError, match="HMAC key"):
        JwtBearerGrant(TOKEN_URL, signing_key=key, issuer="robot")


@pytest.mark.anyio
async def test_rejection_quoting_assertion_redacted(caplog: pytest.LogCaptureFixture) -> None:
    key = load_signing_key(ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")

    def quote_assertion(request: SentRequest) -> httpx.Response:
        return error_json(
            "invalid_grant", error_description=f"bad signature in {request.field('assertion')}"
        )

    caplog.set_level(logging.DEBUG, logger="tokenflight")
    endpoint = ScriptedEndpoint(quote_assertion)
    async with endpoint.client() as client:
        source = JwtBearerGrant(TOKEN_URL, signing_key=key, issuer="robot", http_client=client)
        with pytest.raises(PermanentRefreshError) as caught:
            await source.fetch()
    assertion = endpoint.requests[0].field("assertion") or ""
    assert assertion not in str(caught.value)
    assert "bad signature in ***" in str(caught.value)
    assert assertion not in caplog.text


# -- against Authlib's server ------------------------------------------------------------


def bearer_grant(server: JwtBearerServer, **options: object) -> JwtBearerGrant:
    return JwtBearerGrant(
        server.token_url,
        signing_key=options.pop("signing_key", server.signing_key()),  # type: ignore[arg-type]
        issuer=server.issuer,
        subject="user@tokenflight.test",
        scope="read",
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.anyio
@pytest.mark.server
async def test_grant_accepted(jwt_bearer_server: JwtBearerServer) -> None:
    before = len(jwt_bearer_server.token_requests())
    async with bearer_grant(jwt_bearer_server) as source:
        token = await source.fetch()
    register_secret(token.value)
    assert token.expires_in == 300
    assert token.scope == "read"
    assert jwt_bearer_server.token_requests()[before:] == [{"status": 200, "error": None}]


@pytest.mark.anyio
@pytest.mark.server
async def test_fast_clock_rejected_as_skew(jwt_bearer_server: JwtBearerServer) -> None:
    """Local clock 2 minutes fast, skew 60 s: iat lands in the server's future."""
    async with bearer_grant(jwt_bearer_server, clock=local_clock(120)) as source:
        with pytest.raises(RefreshError) as caught:
            await source.fetch()
    error = caught.value
    assert type(error) is RefreshError
    assert "Clock skew suspected" in str(error)
    assert SHORT_LIVED_MESSAGE in str(error)
    skew = error.__cause__
    assert isinstance(skew, ClockSkewError)
    assert isinstance(skew.__cause__, OAuth2Error)
    assert skew.__cause__.error == "invalid_grant"


@pytest.mark.anyio
@pytest.mark.server
async def test_fast_clock_accepted_with_larger_skew(jwt_bearer_server: JwtBearerServer) -> None:
    """The same clock with a 180 s skew: iat is backdated past the server's now."""
    async with bearer_grant(jwt_bearer_server, clock=local_clock(120), skew=180) as source:
        token = await source.fetch()
    register_secret(token.value)
    assert token.expires_in == 300


@pytest.mark.anyio
@pytest.mark.server
async def test_long_assertion_rejected_unless_capped(jwt_bearer_server: JwtBearerServer) -> None:
    key = jwt_bearer_server.signing_key()
    uncapped = JwtSigner(key, skew=60)  # no max_lifetime: exp - iat = 7260 s
    async with bearer_grant(
        jwt_bearer_server, signing_key=uncapped, assertion_lifetime=7200
    ) as source:
        with pytest.raises(RefreshError, match="short-lived token"):
            await source.fetch()
    async with bearer_grant(jwt_bearer_server, assertion_lifetime=7200) as source:
        token = await source.fetch()
    register_secret(token.value)


@pytest.mark.anyio
@pytest.mark.server
async def test_server_clock_offset_learned(jwt_bearer_server: JwtBearerServer) -> None:
    """Local clock 10 minutes slow: the rejection's Date teaches the offset, and the
    assertion is signed once more and accepted."""
    clock = ServerClock(local_clock(-600))
    before = len(jwt_bearer_server.token_requests())
    async with bearer_grant(jwt_bearer_server, clock=clock) as source:
        token = await source.fetch()
        second = await source.fetch()
    register_secret(token.value, second.value)
    assert 598 <= clock.offset <= 602
    records = jwt_bearer_server.token_requests()[before:]
    assert [record["status"] for record in records] == [400, 200, 200]


@pytest.mark.anyio
@pytest.mark.server
async def test_server_clock_without_change_not_retried(
    jwt_bearer_server: JwtBearerServer,
) -> None:
    """The clock is right, the assertion too long: no offset to learn, one request."""
    clock = ServerClock()
    uncapped = JwtSigner(jwt_bearer_server.signing_key(), clock=clock)
    before = len(jwt_bearer_server.token_requests())
    async with bearer_grant(
        jwt_bearer_server, signing_key=uncapped, assertion_lifetime=7200, clock=clock
    ) as source:
        with pytest.raises(RefreshError, match="Clock skew suspected"):
            await source.fetch()
    assert len(jwt_bearer_server.token_requests()) == before + 1
