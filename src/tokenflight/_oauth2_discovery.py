"""Finding a token endpoint from an issuer's published metadata.

Two documents describe an authorization server: OpenID Connect Discovery's
``{issuer}/.well-known/openid-configuration`` and RFC 8414's
``{origin}/.well-known/oauth-authorization-server{issuer path}``. They are tried in that
order. The metadata must name the same ``issuer`` that was asked for (RFC 8414 section
3.3), so a document served elsewhere cannot redirect credentials to another endpoint.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._errors import PermanentRefreshError, TransientRefreshError
from ._oauth2_http import ClientSlot, check_endpoint_url, send_limited
from ._oauth2_response import DEFAULT_MAX_RESPONSE_SIZE, parse_retry_after

__all__ = ["ServerMetadata", "fetch_server_metadata", "metadata_urls"]

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


@dataclass(frozen=True)
class ServerMetadata:
    """An authorization server's published metadata (RFC 8414 section 2).

    :param issuer: the issuer identifier, equal to the requested one.
    :param token_endpoint: the token endpoint's URL, checked like a ``token_url``.
    :param jwks_uri: where the server's public keys are, if published.
    :param grant_types_supported: the grant types it lists, or ``None`` if it lists none.
    :param token_endpoint_auth_methods_supported: the client authentication methods it
        lists, or ``None``.
    :param document_url: the URL the metadata came from.
    :param raw: the whole metadata document, read-only.
    """

    issuer: str
    token_endpoint: str
    jwks_uri: str | None = None
    grant_types_supported: tuple[str, ...] | None = None
    token_endpoint_auth_methods_supported: tuple[str, ...] | None = None
    document_url: str = ""
    raw: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, repr=False)


def metadata_urls(issuer: str) -> tuple[str, str]:
    """Return the OpenID Connect and the RFC 8414 metadata URLs of ``issuer``, in that order."""
    url = httpx.URL(issuer)
    path = url.path.rstrip("/")
    origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
    return (
        f"{origin}{path}/.well-known/openid-configuration",
        f"{origin}/.well-known/oauth-authorization-server{path}",
    )


async def fetch_server_metadata(
    issuer: str,
    *,
    http_client: httpx.AsyncClient | None = None,
    unsafe_allow_http: bool = False,
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
) -> ServerMetadata:
    """Fetch an authorization server's metadata and check that it belongs to ``issuer``.

    :param issuer: the issuer identifier, an ``https://`` URL (``http://`` on loopback).
    :param http_client: a plain ``httpx.AsyncClient``; by default a temporary one is used.
    :param unsafe_allow_http: allow ``http://`` on hosts other than loopback.
    :param max_response_size: largest metadata document accepted, in bytes.
    :raises ConfigurationError: for an issuer URL that is not ``https://``.
    :raises TransientRefreshError: for connection errors, timeouts, 429 and 5xx.
    :raises PermanentRefreshError: when neither document exists, or the metadata is
        malformed, names another issuer or lists an unacceptable token endpoint.
    """
    check_endpoint_url(issuer, name="issuer_url", unsafe_allow_http=unsafe_allow_http)
    slot = ClientSlot(http_client)
    try:
        missing: list[str] = []
        for url in metadata_urls(issuer):
            reply = await send_limited(
                slot.get(),
                "GET",
                url,
                headers={"Accept": "application/json"},
                max_size=max_response_size,
                what=f"metadata request to {url}",
            )
            status = reply.status_code
            if status >= 500 or status == 429:
                retry_after = parse_retry_after(
                    reply.headers.get("Retry-After"), date=reply.headers.get("Date")
                )
                msg = f"metadata request to {url} answered HTTP {status}"
                raise TransientRefreshError(msg, retry_after=retry_after)
            if status != 200:
                missing.append(f"{url} (HTTP {status})")
                continue
            return _parse_metadata(reply.body, issuer, url, unsafe_allow_http)
    finally:
        await slot.aclose()
    msg = (
        f"no authorization server metadata for issuer {issuer!r}: {', '.join(missing)}; "
        "check issuer_url, or pass token_url instead"
    )
    raise PermanentRefreshError(msg)


def _parse_metadata(body: bytes, issuer: str, url: str, unsafe_allow_http: bool) -> ServerMetadata:
    try:
        document = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        msg = f"metadata at {url} is not valid JSON ({len(body)} bytes)"
        raise PermanentRefreshError(msg) from None
    if not isinstance(document, dict):
        msg = f"metadata at {url} is not a JSON object"
        raise PermanentRefreshError(msg)

    published = document.get("issuer")
    if not isinstance(published, str) or published.rstrip("/") != issuer.rstrip("/"):
        msg = (
            f"metadata at {url} names issuer {published!r}, not {issuer!r}; refusing it "
            "(RFC 8414 section 3.3), so check issuer_url"
        )
        raise PermanentRefreshError(msg)

    token_endpoint = document.get("token_endpoint")
    if not isinstance(token_endpoint, str) or not token_endpoint:
        msg = f"metadata at {url} has no token_endpoint; pass token_url instead"
        raise PermanentRefreshError(msg)
    try:
        check_endpoint_url(
            token_endpoint, name="token_endpoint", unsafe_allow_http=unsafe_allow_http
        )
    except ValueError as error:
        msg = f"metadata at {url} lists an unacceptable token endpoint: {error}"
        raise PermanentRefreshError(msg) from None

    jwks_uri = document.get("jwks_uri")
    return ServerMetadata(
        issuer=published,
        token_endpoint=token_endpoint,
        jwks_uri=jwks_uri if isinstance(jwks_uri, str) else None,
        grant_types_supported=_strings(document.get("grant_types_supported")),
        token_endpoint_auth_methods_supported=_strings(
            document.get("token_endpoint_auth_methods_supported")
        ),
        document_url=url,
        raw=types.MappingProxyType(document),
    )


def _strings(value: object) -> tuple[str, ...] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    return None
