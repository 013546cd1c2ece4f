"""Discovery of the token endpoint from issuer metadata (OpenID Connect, RFC 8414)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from servers.fixtures import OidcServer
from servers.scripted import ScriptedEndpoint, SentRequest, token_json
from tokenflight import (
    ClientCredentials,
    ConfigurationError,
    PermanentRefreshError,
    TokenCache,
    TokenKey,
    TransientRefreshError,
    fetch_server_metadata,
)
from tokenflight._oauth2_discovery import metadata_urls

ISSUER = "https://idp.example/tenant-1"
OIDC_URL = "https://idp.example/tenant-1/.well-known/openid-configuration"
RFC8414_URL = "https://idp.example/.well-known/oauth-authorization-server/tenant-1"


def metadata(**fields: Any) -> httpx.Response:
    document = {
        "issuer": ISSUER,
        "token_endpoint": "https://idp.example/tenant-1/oauth2/token",
        "jwks_uri": "https://idp.example/tenant-1/jwks",
        "grant_types_supported": ["client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
    }
    document.update(fields)
    return httpx.Response(200, json={k: v for k, v in document.items() if v is not None})


def serve(documents: dict[str, httpx.Response]) -> ScriptedEndpoint:
    def handler(request: SentRequest) -> httpx.Response:
        if request.method == "POST":
            return token_json("access-discovered-0001")
        return documents.get(request.url, httpx.Response(404))

    return ScriptedEndpoint(handler)


def test_metadata_urls_insert_path() -> None:
    assert metadata_urls(ISSUER) == (OIDC_URL, RFC8414_URL)
    assert metadata_urls("https://idp.example/") == (
        "https://idp.example/.well-known/openid-configuration",
        "https://idp.example/.well-known/oauth-authorization-server",
    )


@pytest.mark.anyio
async def test_openid_configuration_read() -> None:
    endpoint = serve({OIDC_URL: metadata()})
    async with endpoint.client() as client:
        found = await fetch_server_metadata(ISSUER, http_client=client)
    assert found.issuer == ISSUER
    assert found.token_endpoint == "https://idp.example/tenant-1/oauth2/token"
    assert found.jwks_uri == "https://idp.example/tenant-1/jwks"
    assert found.grant_types_supported == ("client_credentials", "refresh_token")
    assert found.document_url == OIDC_URL
    assert [request.url for request in endpoint.requests] == [OIDC_URL]


@pytest.mark.anyio
async def test_rfc8414_used_when_openid_missing() -> None:
    endpoint = serve({RFC8414_URL: metadata(jwks_uri=None, grant_types_supported=None)})
    async with endpoint.client() as client:
        found = await fetch_server_metadata(ISSUER, http_client=client)
    assert found.document_url == RFC8414_URL
    assert found.jwks_uri is None
    assert found.grant_types_supported is None
    assert [request.url for request in endpoint.requests] == [OIDC_URL, RFC8414_URL]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (metadata(issuer="https://attacker.example"), "names issuer"),
        (metadata(token_endpoint=None), "has no token_endpoint"),
        (metadata(token_endpoint="http://idp.example/token"), "unacceptable token endpoint"),
        (httpx.Response(200, content=b"<html></html>"), "not valid JSON"),
        (httpx.Response(200, json=["a"]), "not a JSON object"),
    ],
)
async def test_bad_metadata_rejected(document: httpx.Response, problem: str) -> None:
    endpoint = serve({OIDC_URL: document})
    async with endpoint.client() as client:
        with pytest.raises(PermanentRefreshError, match=problem):
            await fetch_server_metadata(ISSUER, http_client=client)


@pytest.mark.anyio
async def test_no_metadata_names_both_urls() -> None:
    endpoint = serve({})
    async with endpoint.client() as client:
        with pytest.raises(PermanentRefreshError) as caught:
            await fetch_server_metadata(ISSUER, http_client=client)
    assert OIDC_URL in str(caught.value)
    assert RFC8414_URL in str(caught.value)


@pytest.mark.anyio
async def test_unavailable_metadata_transient() -> None:
    endpoint = serve({OIDC_URL: httpx.Response(503, headers={"Retry-After": "20"})})
    async with endpoint.client() as client:
        with pytest.raises(TransientRefreshError, match="HTTP 503") as caught:
            await fetch_server_metadata(ISSUER, http_client=client)
    assert caught.value.retry_after == 20.0


def test_http_issuer_rejected() -> None:
    with pytest.raises(ConfigurationError, match="https"):
        ClientCredentials(issuer_url="http://idp.example", client_id="svc", client_secret="x" * 8)


@pytest.mark.anyio
async def test_source_discovers_once_for_all_keys() -> None:
    endpoint = serve({OIDC_URL: metadata()})
    async with endpoint.client() as client:
        source = ClientCredentials(
            issuer_url=ISSUER, client_id="svc", client_secret="svc-secret-1", http_client=client
        )
        cache = TokenCache(source, sources=source.for_key)
        await cache.get()
        await cache.get(TokenKey("read"))
        await cache.get(TokenKey("write"))
    gets = [request.url for request in endpoint.requests if request.method == "GET"]
    posts = [request.url for request in endpoint.requests if request.method == "POST"]
    assert gets == [OIDC_URL]
    assert posts == ["https://idp.example/tenant-1/oauth2/token"] * 3


@pytest.mark.anyio
@pytest.mark.server
async def test_real_server_metadata(oidc_server: OidcServer) -> None:
    found = await fetch_server_metadata(oidc_server.issuer)
    assert found.issuer == oidc_server.issuer
    assert found.token_endpoint == oidc_server.token_url
    assert found.grant_types_supported is not None
    assert "client_credentials" in found.grant_types_supported
    assert found.jwks_uri == f"{oidc_server.issuer}/jwks"
    assert found.raw["issuer"] == oidc_server.issuer
