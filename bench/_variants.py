"""The clients compared: a static-header baseline, tokenflight, and the peers users pick.

Each variant opens an ``httpx.AsyncClient`` (or a subclass) that authenticates every
request to the API with a client-credentials token from ``Endpoint.token_url``, starting
with no token. The peers are imported by name at run time because they are installed
only in the benchmark environment, not as dependencies of tokenflight.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from tokenflight import AuthClient, ClientCredentials, TokenAuth, TokenCache

from ._harness import CLIENT_ID, CLIENT_SECRET, STATIC_TOKEN, Endpoint

__all__ = ["ALL_VARIANTS", "BASELINE", "Variant", "peer_versions", "token_source_name"]

Opener = Callable[
    [Endpoint, "httpx.AsyncBaseTransport | None", float],
    AbstractAsyncContextManager[httpx.AsyncClient],
]


@dataclass(frozen=True)
class Variant:
    """One client under test.

    ``open(endpoint, transport, early_expiry)`` yields a client for ``endpoint`` that uses
    ``transport`` for API requests (``None``: httpx's stock pool) and counts a token as
    expired ``early_expiry`` seconds before its end.
    """

    name: str
    open: Opener
    needs_token: bool = True


def _client_kwargs(
    endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"base_url": endpoint.base_url, "timeout": 60.0}
    if transport is not None:
        kwargs["transport"] = transport
    return kwargs


def _token_client(endpoint: Endpoint) -> httpx.AsyncClient:
    if endpoint.async_token_transport is not None:
        return httpx.AsyncClient(transport=endpoint.async_token_transport(), timeout=60.0)
    return httpx.AsyncClient(timeout=60.0)


# -- baseline ----------------------------------------------------------------


@asynccontextmanager
async def _open_static(
    endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None, early_expiry: float
) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {STATIC_TOKEN}"}
    async with httpx.AsyncClient(headers=headers, **_client_kwargs(endpoint, transport)) as client:
        yield client


BASELINE = Variant("httpx, static header (baseline)", _open_static, needs_token=False)


# -- tokenflight -------------------------------------------------------------


def token_source_name() -> str:
    """Name the token source the tokenflight variants use."""
    return "tokenflight.ClientCredentials (client_secret_basic)"


def _tokenflight_cache(
    endpoint: Endpoint, http_client: httpx.AsyncClient, skew: float
) -> TokenCache:
    source = ClientCredentials(
        endpoint.token_url, CLIENT_ID, client_secret=CLIENT_SECRET, http_client=http_client
    )
    return TokenCache(source, skew=skew)


@asynccontextmanager
async def _open_auth_client(
    endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None, early_expiry: float
) -> AsyncIterator[httpx.AsyncClient]:
    async with _token_client(endpoint) as token_client:
        cache = _tokenflight_cache(endpoint, token_client, early_expiry)
        async with AuthClient(cache, **_client_kwargs(endpoint, transport)) as client:
            yield client


@asynccontextmanager
async def _open_token_auth(
    endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None, early_expiry: float
) -> AsyncIterator[httpx.AsyncClient]:
    async with _token_client(endpoint) as token_client:
        cache = _tokenflight_cache(endpoint, token_client, early_expiry)
        async with (
            cache,
            httpx.AsyncClient(
                auth=TokenAuth(cache), **_client_kwargs(endpoint, transport)
            ) as client,
        ):
            yield client


@asynccontextmanager
async def _open_token_auth_not_entered(
    endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None, early_expiry: float
) -> AsyncIterator[httpx.AsyncClient]:
    # Without ``async with cache:``, the caller that finds no token runs the refresh.
    async with _token_client(endpoint) as token_client:
        cache = _tokenflight_cache(endpoint, token_client, early_expiry)
        auth = TokenAuth(cache)
        async with httpx.AsyncClient(auth=auth, **_client_kwargs(endpoint, transport)) as client:
            yield client


TOKENFLIGHT_AUTH_CLIENT = Variant("tokenflight AuthClient", _open_auth_client)
TOKENFLIGHT_TOKEN_AUTH = Variant("tokenflight TokenAuth on AsyncClient", _open_token_auth)
TOKENFLIGHT_NOT_ENTERED = Variant(
    "tokenflight TokenAuth, cache not entered", _open_token_auth_not_entered
)


# -- peers -------------------------------------------------------------------


def _import_peer(module: str) -> Any:
    with warnings.catch_warnings():
        # Authlib warns that plain httpx is deprecated in favour of httpx2.
        warnings.simplefilter("ignore", DeprecationWarning)
        return importlib.import_module(module)


@asynccontextmanager
async def _open_authlib(
    endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None, early_expiry: float
) -> AsyncIterator[httpx.AsyncClient]:
    authlib_httpx = _import_peer("authlib.integrations.httpx_client")
    # Authlib sends no request without a token, and fetches one by itself only to replace
    # an expired token, so the client starts with an expired placeholder. Its token
    # requests go through the client itself, and so through the same transport.
    placeholder = {"access_token": "expired-placeholder", "token_type": "Bearer", "expires_at": 1}
    client: httpx.AsyncClient = authlib_httpx.AsyncOAuth2Client(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_endpoint=endpoint.token_url,
        grant_type="client_credentials",
        token=placeholder,
        leeway=early_expiry,
        **_client_kwargs(endpoint, transport),
    )
    async with client:
        yield client


@asynccontextmanager
async def _open_httpx_auth(
    endpoint: Endpoint, transport: httpx.AsyncBaseTransport | None, early_expiry: float
) -> AsyncIterator[httpx.AsyncClient]:
    httpx_auth = _import_peer("httpx_auth")
    # Tokens live in a process-wide cache keyed by the credentials: start without one.
    httpx_auth.OAuth2.token_cache.clear()
    if endpoint.sync_token_transport is not None:
        token_client = httpx.Client(transport=endpoint.sync_token_transport())
    else:
        token_client = httpx.Client()
    auth = httpx_auth.OAuth2ClientCredentials(
        endpoint.token_url,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        early_expiry=early_expiry,
        client=token_client,
    )
    try:
        async with httpx.AsyncClient(auth=auth, **_client_kwargs(endpoint, transport)) as client:
            yield client
    finally:
        token_client.close()
        httpx_auth.OAuth2.token_cache.clear()


AUTHLIB = Variant("Authlib AsyncOAuth2Client", _open_authlib)
HTTPX_AUTH = Variant("httpx-auth OAuth2ClientCredentials", _open_httpx_auth)

ALL_VARIANTS = (BASELINE, TOKENFLIGHT_AUTH_CLIENT, TOKENFLIGHT_TOKEN_AUTH, AUTHLIB, HTTPX_AUTH)


def peer_versions() -> dict[str, str]:
    """Return the installed versions of the peers, or a note that one is missing."""
    from importlib import metadata

    versions: dict[str, str] = {}
    for distribution in ("Authlib", "httpx-auth"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = "not installed"
    return versions
