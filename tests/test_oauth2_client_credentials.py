"""ClientCredentials: client authentication, request fields, transport errors, cache keys,
and its behaviour behind a TokenCache, against a scripted endpoint."""

from __future__ import annotations

import base64
import logging
import urllib.parse

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from servers.scripted import TOKEN_URL, ScriptedEndpoint, SentRequest, error_json, token_json
from tokenflight import (
    AuthClient,
    ClientCredentials,
    ConfigurationError,
    PermanentRefreshError,
    RefreshError,
    TokenAuth,
    TokenCache,
    TokenKey,
    TransientRefreshError,
    load_signing_key,
)
from tokenflight.testing import FakeClock

SECRET = "s3cr3t value:with/specials%"
ACCESS = "access-9d8c7b6a5f4e3d2c1b0a"


def ok(request: SentRequest) -> httpx.Response:
    return token_json(ACCESS, expires_in=3600)


def basic_credentials(request: SentRequest) -> tuple[str, str]:
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(encoded).decode().partition(":")
    return urllib.parse.unquote(user), urllib.parse.unquote(password)


# -- client authentication -------------------------------------------------------------


@pytest.mark.anyio
async def test_basic_auth_form_encodes_credentials() -> None:
    endpoint = ScriptedEndpoint(ok)
    async with endpoint.client() as client:
        source = ClientCredentials(
            TOKEN_URL, "svc id", client_secret=SECRET, scope="write read", http_client=client
        )
        token = await source.fetch()

    assert token.value == ACCESS
    [request] = endpoint.requests
    assert request.method == "POST"
    assert basic_credentials(request) == ("svc id", SECRET)
    encoded = base64.b64decode(request.headers["authorization"].split()[1]).decode()
    assert encoded == "svc%20id:s3cr3t%20value%3Awith%2Fspecials%25"
    assert request.form == {"grant_type": ["client_credentials"], "scope": ["read write"]}
    assert request.headers["accept"] == "application/json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"


@pytest.mark.anyio
async def test_post_auth_sends_secret_in_body() -> None:
    endpoint = ScriptedEndpoint(ok)
    async with endpoint.client() as client:
        source = ClientCredentials(
            TOKEN_URL,
            "svc",
            client_secret=SECRET,
            auth_method="client_secret_post",
            http_client=client,
        )
        await source.fetch()

    [request] = endpoint.requests
    assert "authorization" not in request.headers
    assert request.field("client_id") == "svc"
    assert request.field("client_secret") == SECRET


@pytest.mark.anyio
async def test_private_key_jwt_assertion_claims() -> None:
    private_key = ec.generate_private_key(ec.SECP256R1())
    key = load_signing_key(private_key, algorithm="ES256", kid="key-1")
    clock = FakeClock(wall_start=1_700_000_000.7)
    endpoint = ScriptedEndpoint(ok)
    async with endpoint.client() as client:
        source = ClientCredentials(
            TOKEN_URL, "svc", signing_key=key, http_client=client, clock=clock
        )
        assert repr(source).count("private_key_jwt") == 1
        await source.fetch()
        await source.fetch()

    first, second = endpoint.requests
    assert "authorization" not in first.headers
    assert first.field("client_id") == "svc"
    assert first.field("client_assertion_type") == (
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    )
    assertion = first.field("client_assertion")
    assert assertion is not None
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "ES256"
    assert header["kid"] == "key-1"
    claims = jwt.decode(
        assertion,
        private_key.public_key(),
        algorithms=["ES256"],
        audience=TOKEN_URL,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims["iss"] == "svc"
    assert claims["sub"] == "svc"
    assert claims["aud"] == TOKEN_URL
    assert claims["iat"] == 1_700_000_000 - 60
    assert isinstance(claims["exp"], int)
    assert claims["exp"] > 1_700_000_000
    other = jwt.decode(second.field("client_assertion") or "", options={"verify_signature": False})
    assert claims["jti"] != other["jti"]


@pytest.mark.anyio
async def test_assertion_audience_can_be_issuer() -> None:
    key = load_signing_key(ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    endpoint = ScriptedEndpoint(ok)
    async with endpoint.client() as client:
        source = ClientCredentials(
            TOKEN_URL,
            "svc",
            signing_key=key,
            assertion_audience="https://idp.example",
            http_client=client,
        )
        await source.fetch()
    assertion = endpoint.requests[0].field("client_assertion") or ""
    assert jwt.decode(assertion, options={"verify_signature": False})["aud"] == (
        "https://idp.example"
    )


def test_hmac_key_rejected_for_private_key_jwt() -> None:
    key = load_signing_key(b"k" * 32, algorithm="HS256")
    with pytest.raises(ConfigurationError, match="HMAC key"):
        ClientCredentials(TOKEN_URL, "svc", signing_key=key)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({}, "client_secret or a signing_key"),
        ({"auth_method": "client_secret_post"}, "needs a client_secret"),
        ({"auth_method": "bogus", "client_secret": SECRET}, "auth_method must be one of"),
        ({"auth_method": "private_key_jwt", "client_secret": SECRET}, "not used with"),
        ({"client_secret": SECRET, "extra_params": {"scope": "x"}}, "cannot set 'scope'"),
        ({"client_secret": SECRET, "scope": 'bad"scope'}, "invalid scope token"),
        ({"client_secret": SECRET, "max_response_size": 10}, "at least 1024"),
    ],
)
def test_invalid_options_rejected(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        ClientCredentials(TOKEN_URL, "svc", **options)  # type: ignore[arg-type]


def test_missing_client_id_rejected() -> None:
    with pytest.raises(ConfigurationError, match="client_id"):
        ClientCredentials(TOKEN_URL, client_secret=SECRET)


# -- endpoint URLs ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://idp.example/token",
        "ftp://idp.example/token",
        "https://user:pw@idp.example/token",
        "https://idp.example/token#fragment",
        "/token",
    ],
)
def test_unsafe_token_url_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ClientCredentials(url, "svc", client_secret=SECRET)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/token", "http://localhost/token", "http://[::1]:9000/token"],
)
def test_http_allowed_on_loopback(url: str) -> None:
    assert ClientCredentials(url, "svc", client_secret=SECRET).token_url == url


def test_http_allowed_with_unsafe_option() -> None:
    source = ClientCredentials(
        "http://idp.internal/token", "svc", client_secret=SECRET, unsafe_allow_http=True
    )
    assert source.token_url == "http://idp.internal/token"


# -- the HTTP client ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_client_with_tokenflight_auth_rejected() -> None:
    cache = TokenCache(lambda: None)  # type: ignore[arg-type, return-value]
    async with httpx.AsyncClient(auth=TokenAuth(cache)) as client:
        with pytest.raises(ConfigurationError, match="carries tokenflight auth"):
            ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
    async with AuthClient(cache, base_url="https://api.example") as auth_client:
        with pytest.raises(ConfigurationError, match="carries tokenflight auth"):
            ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=auth_client)


@pytest.mark.anyio
async def test_client_auth_not_applied_to_token_request() -> None:
    endpoint = ScriptedEndpoint(ok)
    transport = httpx.MockTransport(endpoint._handle)
    async with httpx.AsyncClient(transport=transport, auth=("someone", "else")) as client:
        source = ClientCredentials(
            TOKEN_URL,
            "svc",
            client_secret=SECRET,
            auth_method="client_secret_post",
            http_client=client,
        )
        await source.fetch()
    assert "authorization" not in endpoint.requests[0].headers


@pytest.mark.anyio
async def test_redirect_not_followed() -> None:
    endpoint = ScriptedEndpoint(
        lambda request: httpx.Response(307, headers={"Location": "https://evil.example/token"})
    )
    async with endpoint.client() as client:
        source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
        with pytest.raises(PermanentRefreshError, match=r"redirect to https://evil\.example"):
            await source.fetch()
    assert len(endpoint.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("declared", [True, False])
async def test_oversized_response_rejected(declared: bool) -> None:
    payload = b'{"access_token": "' + b"a" * 300_000 + b'"}'

    async def chunks() -> object:
        for start in range(0, len(payload), 4096):
            yield payload[start : start + 4096]

    def large(request: SentRequest) -> httpx.Response:
        if declared:
            return httpx.Response(200, content=payload)
        return httpx.Response(200, content=chunks())  # type: ignore[arg-type]

    endpoint = ScriptedEndpoint(large)
    async with endpoint.client() as client:
        source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
        with pytest.raises(RefreshError, match="larger than 262144 bytes") as caught:
            await source.fetch()
    assert type(caught.value) is RefreshError


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "message"),
    [
        (httpx.ConnectError("connection refused"), "failed: ConnectError"),
        (httpx.ReadTimeout("read timed out"), "timed out"),
        (httpx.RemoteProtocolError("peer closed"), "failed: RemoteProtocolError"),
    ],
)
async def test_transport_errors_transient(error: httpx.TransportError, message: str) -> None:
    def fail(request: SentRequest) -> httpx.Response:
        raise error

    endpoint = ScriptedEndpoint(fail)
    async with endpoint.client() as client:
        source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
        with pytest.raises(TransientRefreshError, match=message) as caught:
            await source.fetch()
    assert caught.value.__cause__ is error


# -- behind a cache --------------------------------------------------------------------


@pytest.mark.anyio
async def test_wrong_secret_one_request_then_permanent() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(
        lambda request: error_json(
            "invalid_client", status=401, error_description="client authentication failed"
        )
    )
    async with endpoint.client() as client:
        source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
        async with TokenCache(source, clock=clock) as cache:
            for _ in range(10):
                with pytest.raises(PermanentRefreshError, match="invalid_client"):
                    await cache.get()
                await clock.advance(6)
    assert len(endpoint.requests) == 1


@pytest.mark.anyio
async def test_error_leaves_cache_block_ungrouped() -> None:
    """A refresh error raised in ``async with cache:`` reaches the caller as itself."""
    endpoint = ScriptedEndpoint(lambda request: error_json("invalid_client", status=401))
    async with endpoint.client() as client:
        source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
        with pytest.raises(PermanentRefreshError):
            async with TokenCache(source, clock=FakeClock()) as cache:
                await cache.get()


@pytest.mark.anyio
async def test_rate_limit_honours_retry_after() -> None:
    clock = FakeClock()
    sent_at: list[float] = []

    def limited_once(request: SentRequest) -> httpx.Response:
        sent_at.append(clock.monotonic())
        if len(sent_at) == 1:
            return error_json(None, status=429, headers={"Retry-After": "7"})
        return token_json(ACCESS)

    endpoint = ScriptedEndpoint(limited_once)
    async with endpoint.client() as client:
        source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
        cache = TokenCache(source, clock=clock, random=lambda: 0.0)
        async with cache, clock.autojump():
            token = await cache.get()
    assert token.value == ACCESS
    assert len(sent_at) == 2
    assert sent_at[1] - sent_at[0] >= 7


@pytest.mark.anyio
async def test_missing_expires_in_uses_cache_default() -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(lambda request: token_json(ACCESS, expires_in=None))
    async with endpoint.client() as client:
        source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
        cache = TokenCache(source, clock=clock, default_lifetime=600, refresh_ahead=0, skew=0)
        for _ in range(100):
            await cache.get()
        assert len(endpoint.requests) == 1
        await clock.advance(600)
        await cache.get()
    assert len(endpoint.requests) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("expires_in", ["3600", 3600.0])
async def test_string_and_float_lifetimes_cached(expires_in: object) -> None:
    clock = FakeClock()
    endpoint = ScriptedEndpoint(lambda request: token_json(ACCESS, expires_in=expires_in))
    async with endpoint.client() as client:
        source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
        cache = TokenCache(source, clock=clock, skew=0, refresh_ahead=0)
        for _ in range(100):
            await cache.get()
        await clock.advance(3599)
        await cache.get()
        assert len(endpoint.requests) == 1
        await clock.advance(1)
        await cache.get()
    assert len(endpoint.requests) == 2


# -- cache keys --------------------------------------------------------------------------


def test_token_key_normalizes() -> None:
    assert TokenKey("write read") == TokenKey(["read", "write", "read"])
    assert TokenKey(resource=["urn:b", "urn:a"]) == TokenKey(resource=("urn:a", "urn:b"))
    assert TokenKey("read") != TokenKey("read", audience="https://api.example")
    assert TokenKey().scope is None
    assert hash(TokenKey("a b")) == hash(TokenKey("b a"))


@pytest.mark.anyio
async def test_keys_get_separate_tokens() -> None:
    counter = iter(range(100))
    endpoint = ScriptedEndpoint(lambda request: token_json(f"{ACCESS}-{next(counter)}"))
    async with endpoint.client() as client:
        source = ClientCredentials(
            TOKEN_URL, "svc", client_secret=SECRET, scope="base", http_client=client
        )
        cache = TokenCache(source, sources=source.for_key, clock=FakeClock())
        default = await cache.get()
        read = await cache.get(TokenKey("read"))
        write = await cache.get("write")
        api = await cache.get(TokenKey("read", audience="https://api.example", resource="urn:x"))
        assert await cache.get(TokenKey(["read"])) is read
        assert await cache.get(None) is default

    assert len({default.value, read.value, write.value, api.value}) == 4
    forms = [request.form for request in endpoint.requests]
    assert forms[0]["scope"] == ["base"]
    assert forms[1]["scope"] == ["read"]
    assert forms[2]["scope"] == ["write"]
    assert forms[3] == {
        "grant_type": ["client_credentials"],
        "scope": ["read"],
        "audience": ["https://api.example"],
        "resource": ["urn:x"],
    }
    assert len(endpoint.requests) == 4


def test_for_key_rejects_other_types() -> None:
    source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET)
    with pytest.raises(ConfigurationError, match="TokenKey"):
        source.for_key(42)


@pytest.mark.anyio
async def test_several_resources_sent_repeated() -> None:
    endpoint = ScriptedEndpoint(ok)
    async with endpoint.client() as client:
        source = ClientCredentials(
            TOKEN_URL,
            "svc",
            client_secret=SECRET,
            resource=["https://b.example", "https://a.example"],
            extra_params={"tenant": "t1"},
            http_client=client,
        )
        await source.fetch()
    form = endpoint.requests[0].form
    assert form["resource"] == ["https://a.example", "https://b.example"]
    assert form["tenant"] == ["t1"]


# -- secrets -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_secret_not_in_repr_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    endpoint = ScriptedEndpoint(
        lambda request: error_json(
            "invalid_client", status=401, error_description=f"secret {SECRET} is wrong"
        )
    )
    caplog.set_level(logging.DEBUG, logger="tokenflight")
    async with endpoint.client() as client:
        source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET, http_client=client)
        cache = TokenCache(source, clock=FakeClock())
        with pytest.raises(PermanentRefreshError) as caught:
            await cache.get()

    assert SECRET not in repr(source)
    assert SECRET not in str(source)
    assert SECRET not in repr(source._auth)
    chain: BaseException | None = caught.value
    while chain is not None:
        assert SECRET not in str(chain)
        chain = chain.__cause__
    assert "secret *** is wrong" in str(caught.value)
    assert SECRET not in caplog.text


# -- event loops -------------------------------------------------------------------------


def test_source_reused_across_event_loops() -> None:
    endpoint = ScriptedEndpoint(ok)
    transport = httpx.MockTransport(endpoint._handle)
    source = ClientCredentials(TOKEN_URL, "svc", client_secret=SECRET)
    # The source's own client is created per event loop; route it to the mock endpoint.
    original = httpx.AsyncClient.__init__

    def with_mock_transport(self: httpx.AsyncClient, *args: object, **kwargs: object) -> None:
        kwargs["transport"] = transport
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    async def fetch_and_close() -> str:
        token = await source.fetch()
        await source.aclose()
        return token.value

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx.AsyncClient, "__init__", with_mock_transport)
        assert anyio.run(fetch_and_close, backend="asyncio") == ACCESS
        assert anyio.run(fetch_and_close, backend="trio") == ACCESS
        assert anyio.run(source.fetch, backend="asyncio").value == ACCESS
        assert anyio.run(source.fetch, backend="trio").value == ACCESS
    assert len(endpoint.requests) == 4
