"""The HTTP side of OAuth2 token sources: endpoint checks, the plain client, bounded reads.

A token source sends its requests with an ``httpx.AsyncClient`` that never carries
tokenflight's own auth, so a refresh can never ask the cache it is filling for a token.
It is the client the user passes, or one the source creates lazily in each event loop.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, cast

import anyio.lowlevel
import httpx

from ._errors import ConfigurationError, RefreshError, TransientRefreshError

__all__ = [
    "ALLOW_HTTP_HINT",
    "USERINFO_HINT",
    "ClientSlot",
    "Reply",
    "check_endpoint_url",
    "is_loopback",
    "send_limited",
]

# Timeouts of the client a source creates for itself, in seconds. The cache bounds the
# whole refresh with its own timeout; these bound each network step.
_DEFAULT_TIMEOUT = httpx.Timeout(15.0, connect=10.0)

# The end of the message for a plain http:// URL; the command line replaces it with
# the name of its option.
ALLOW_HTTP_HINT = "pass unsafe_allow_http=True for a test setup"
# The same for a URL with a user name or password in it.
USERINFO_HINT = "pass the client credentials as client_id and client_secret"


class _NoAuth(httpx.Auth):
    """An auth flow that sends the request as it is, overriding any auth of the client."""


_NO_AUTH = _NoAuth()


def is_loopback(host: str) -> bool:
    """Return whether ``host`` names this machine: ``localhost`` or a loopback address."""
    name = host.strip("[]").lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_endpoint_url(url: object, *, name: str, unsafe_allow_http: bool) -> str:
    """Validate the URL of an endpoint that receives credentials and return it as a string.

    It must be an absolute ``https://`` URL, or ``http://`` on a loopback host, without
    user info or a fragment. Plain HTTP to any other host needs ``unsafe_allow_http``.

    :param url: the URL to check.
    :param name: the parameter name, used in error messages.
    :param unsafe_allow_http: allow ``http://`` to hosts other than loopback.
    :raises ConfigurationError: when the URL does not qualify.
    """
    if not isinstance(url, str):
        msg = f"{name} must be a URL string, got {type(url).__name__}"
        raise ConfigurationError(msg)
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        msg = f"{name} is not a valid URL: {error}"
        raise ConfigurationError(msg) from None
    if parsed.scheme not in {"https", "http"} or not parsed.host:
        msg = f"{name} must be an absolute https:// URL, got {_safe_url(url)!r}"
        raise ConfigurationError(msg)
    if parsed.userinfo:
        msg = f"{name} must not contain a user name or password; {USERINFO_HINT}"
        raise ConfigurationError(msg)
    if parsed.fragment:
        msg = f"{name} must not contain a fragment (#...), got {_safe_url(url)!r}"
        raise ConfigurationError(msg)
    if parsed.scheme == "http" and not unsafe_allow_http and not is_loopback(parsed.host):
        msg = (
            f"{name} {_safe_url(url)!r} uses plain http:// to a host that is not loopback, so "
            f"credentials would cross the network unencrypted; use https://, or {ALLOW_HTTP_HINT}"
        )
        raise ConfigurationError(msg)
    return url


def _safe_url(url: str) -> str:
    # A URL shown in a message loses its query, which may carry secrets.
    return url.split("?", 1)[0]


def _carries_tokenflight_auth(client: httpx.AsyncClient) -> bool:
    for obj in (client, client.auth):
        if obj is None:
            continue
        for cls in type(obj).__mro__:
            if cls.__module__.split(".", 1)[0] == "tokenflight":
                return True
    return False


class ClientSlot:
    """The ``httpx.AsyncClient`` a source sends with: the user's, or its own per event loop.

    A client the source creates belongs to the event loop it was created in, so a new
    one is created when the source is used from another loop (a later ``asyncio.run()``
    or ``trio.run()``). The source closes its own client in :meth:`aclose`, never the
    user's.
    """

    __slots__ = ("_given", "_owned", "_owned_loop")

    def __init__(self, client: httpx.AsyncClient | None) -> None:
        if client is not None:
            if not isinstance(cast(object, client), httpx.AsyncClient):
                msg = f"http_client must be an httpx.AsyncClient, got {type(client).__name__}"
                raise ConfigurationError(msg)
            if _carries_tokenflight_auth(client):
                msg = (
                    "http_client carries tokenflight auth, so a refresh could ask the cache it "
                    "is filling for a token; pass a plain httpx.AsyncClient, or none"
                )
                raise ConfigurationError(msg)
        self._given = client
        self._owned: httpx.AsyncClient | None = None
        self._owned_loop: object = None

    def get(self) -> httpx.AsyncClient:
        """Return the client to use in the running event loop."""
        if self._given is not None:
            return self._given
        loop = anyio.lowlevel.current_token().native_token
        if self._owned is None or self._owned_loop is not loop:
            # A client left over from another loop cannot be closed from this one; its
            # connections died with that loop, so it is simply dropped.
            self._owned = httpx.AsyncClient(timeout=_DEFAULT_TIMEOUT, follow_redirects=False)
            self._owned_loop = loop
        return self._owned

    async def aclose(self) -> None:
        """Close the client the source created in this event loop, if any."""
        owned, self._owned = self._owned, None
        loop, self._owned_loop = self._owned_loop, None
        if owned is not None and loop is anyio.lowlevel.current_token().native_token:
            await owned.aclose()


@dataclass(frozen=True)
class Reply:
    """A response read in full: status, headers and a body no longer than the limit."""

    status_code: int
    headers: httpx.Headers
    body: bytes


async def send_limited(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    form: Sequence[tuple[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
    max_size: int,
    what: str,
) -> Reply:
    """Send one request without following redirects and read at most ``max_size`` bytes.

    :param form: form fields sent as ``application/x-www-form-urlencoded``; a name may
        repeat.
    :param what: a short description of the request for error messages, for example
        ``"token request to https://idp.example/token"``.
    :raises TransientRefreshError: on a timeout or a connection error.
    :raises RefreshError: when the body is larger than ``max_size`` or cannot be decoded.
    """
    request_headers = dict(headers or {})
    content: bytes | None = None
    if form is not None:
        content = urllib.parse.urlencode(list(form)).encode("ascii")
        request_headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        async with client.stream(
            method,
            url,
            content=content,
            headers=request_headers,
            auth=_NO_AUTH,
            follow_redirects=False,
        ) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_size:
                _raise_too_large(what, max_size)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_size:
                    _raise_too_large(what, max_size)
                chunks.append(chunk)
            return Reply(response.status_code, response.headers, b"".join(chunks))
    except httpx.TimeoutException as error:
        msg = f"{what} timed out ({type(error).__name__}); the outcome is unknown"
        raise TransientRefreshError(msg) from error
    except httpx.TransportError as error:
        msg = f"{what} failed: {type(error).__name__}: {_short(str(error))}"
        raise TransientRefreshError(msg) from error
    except httpx.DecodingError as error:
        msg = f"{what} returned a body that cannot be decoded ({type(error).__name__})"
        raise RefreshError(msg) from error


def _raise_too_large(what: str, max_size: int) -> NoReturn:
    msg = (
        f"{what} returned a body larger than {max_size} bytes; a token response is a few "
        "kilobytes, so check the URL (or raise max_response_size)"
    )
    raise RefreshError(msg)


def _short(text: str) -> str:
    cleaned = "".join(char if char.isprintable() else " " for char in text)
    return cleaned if len(cleaned) <= 200 else cleaned[:197] + "..."
