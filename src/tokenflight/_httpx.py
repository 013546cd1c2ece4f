"""The httpx adapters: :class:`TokenAuth` puts cached tokens on requests, and
:class:`AuthClient` scopes them to allowed origins and owns the cache's lifetime.

Redirects decide where credentials can leak. httpx runs an auth flow once around the
whole redirect chain and copies every header to the next hop, stripping only
``Authorization`` when the origin changes. So :class:`AuthClient` follows redirects
itself, one hop per :meth:`httpx.AsyncClient.send` call, and the flow decides afresh
on each hop: credentials go on a hop whose origin is allowed and on no other. The flow
also removes the header it set from ``response.next_request``, so a caller who follows
redirects by hand does not carry it to the next hop either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Hashable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import httpx

from ._cache import TokenCache
from ._errors import ConfigurationError
from ._oauth2_http import is_loopback
from ._origin import AllowedOrigins, Origin, origin_of, same_origin
from ._source import TokenSource
from ._token import Token

__all__ = ["AuthClient", "AuthStatistics", "TokenAuth"]

logger = logging.getLogger("tokenflight")

_AuthClientT = TypeVar("_AuthClientT", bound="AuthClient")

# RFC 9110 token characters: what a header field name and an auth scheme may contain.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # noqa: S105 - a regular expression, not a secret
_TOKEN_RE = re.compile(_TOKEN)
_HEADER_NAME_RE = re.compile(rf"^{_TOKEN}\Z")
_AUTH_PARAM_RE = re.compile(rf'({_TOKEN})[ \t]*=[ \t]*("(?:[^"\\]|\\.)*"|{_TOKEN})')
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_SPACES_RE = re.compile(r"[ \t]+")
_QUOTED_PAIR_RE = re.compile(r"\\(.)")


def parse_challenges(header: str) -> list[tuple[str, dict[str, str]]]:
    """Parse a ``WWW-Authenticate`` value into ``(scheme, params)`` pairs.

    Schemes and parameter names are lowercased; quoted values are unquoted. Parsing
    stops at the first malformed part and returns what came before it.
    """
    challenges: list[tuple[str, dict[str, str]]] = []
    position = 0
    length = len(header)
    while position < length:
        while position < length and header[position] in " \t,":
            position += 1
        if position >= length:
            break

        param = _AUTH_PARAM_RE.match(header, position)
        if param is not None and challenges:
            name, raw = param.groups()
            if raw.startswith('"'):
                raw = _QUOTED_PAIR_RE.sub(r"\1", raw[1:-1])
            challenges[-1][1][name.lower()] = raw
            position = param.end()
            continue

        scheme = _TOKEN_RE.match(header, position)
        if scheme is None:
            break
        challenges.append((scheme.group().lower(), {}))
        position = scheme.end()

        # A token68 (for example a Basic or Negotiate blob) may follow the scheme.
        spaces = _SPACES_RE.match(header, position)
        if spaces is None:
            continue
        position = spaces.end()
        token68 = _TOKEN68_RE.match(header, position)
        if (
            token68 is not None
            and _AUTH_PARAM_RE.match(header, position) is None
            and (token68.end() == length or header[token68.end()] in " \t,")
        ):
            position = token68.end()
    return challenges


def _reports_invalid_token(response: httpx.Response, scheme: str | None) -> bool:
    header = response.headers.get("www-authenticate")
    if not header:
        return False
    schemes = {"bearer", scheme.lower()} if scheme else {"bearer"}
    for challenge, params in parse_challenges(header):
        if challenge in schemes and params.get("error") == "invalid_token":
            return True
    return False


def _can_resend(request: httpx.Request) -> bool:
    # httpx keeps bytes, str, JSON and form bodies (and any body already read with
    # aread()) in a ByteStream, which can be iterated again. Generators, file uploads and
    # multipart bodies are read as they are sent and may be gone after the first try.
    return isinstance(request.stream, httpx.ByteStream)


def _header_list_layout_ok() -> bool:
    # httpx.Headers keeps its entries in ``_list`` as (name as given, lowercase name,
    # value) byte triples. Scanning and appending to that list directly skips the header
    # encoding detection that ``in`` and item assignment run on every request. The layout
    # is private, so it is checked once here; if it ever changes, TokenAuth uses the
    # public mapping methods instead.
    try:
        probe = httpx.Headers({"X-Probe": "1"})
        entries = getattr(probe, "_list", None)
        if entries != [(b"X-Probe", b"x-probe", b"1")]:
            return False
        entries.append((b"X-Added", b"x-added", b"2"))
        return probe.get("x-added") == "2" and probe.raw == [(b"X-Probe", b"1"), (b"X-Added", b"2")]
    except (AttributeError, TypeError, ValueError, KeyError):
        return False


# Whether TokenAuth may use httpx.Headers' internal entry list; tests switch it off.
_RAW_HEADER_LIST = _header_list_layout_ok()


def _check_token_chars(name: str, value: object) -> str:
    if not isinstance(value, str) or _HEADER_NAME_RE.match(value) is None:
        message = (
            f"{name} must be a non-empty HTTP token (letters, digits and !#$%&'*+-.^_`|~), "
            f"got {value!r}"
        )
        raise ConfigurationError(message)
    return value


@dataclass(frozen=True)
class AuthStatistics:
    """A snapshot of what a :class:`TokenAuth` did after the server rejected its tokens.

    :param rejected: responses that rejected a token this auth attached: a 401, or a
        ``WWW-Authenticate`` challenge with ``error="invalid_token"``.
    :param retried: requests sent again with a different token after a rejection.
    :param not_resent: rejections returned to the caller because the request body could
        not be sent again (a streaming body) or no different token was available.
    """

    rejected: int
    retried: int
    not_resent: int


class TokenAuth(httpx.Auth):
    """An :class:`httpx.Auth` that puts a token from a :class:`TokenCache` on each request.

    For each request it takes the cache's token for ``key`` and sets the header
    ``{header}: {scheme} {token}``, which is ``Authorization: Bearer …`` by default.
    With ``scheme=None`` the header carries the bare token, as ``X-API-Key: …`` needs.
    Other headers are never touched, and the header it sets replaces any copy, so
    exactly one reaches the wire.

    **Explicit headers.** When the request already carries ``header`` (set on the
    request, or among the client's default headers), that value is kept and no token is
    taken, unless ``replace_existing=True``. Generated SDKs that always send their own
    ``Authorization`` need ``replace_existing=True``.

    **Rejections.** When the response is a 401, or carries ``WWW-Authenticate: Bearer
    error="invalid_token"``, the token this request used is invalidated with
    compare-and-invalidate: however many requests it rejects at once, the cache fetches
    one new token. The request is then sent once more with the new token if its body
    can be sent again (bytes, text, JSON, forms). A streaming body is not re-sent: the
    401 goes back to the caller and the caller's next request gets the new token. A
    second rejection is returned as it is, so a request is sent at most twice. If
    fetching the new token fails, its :class:`~tokenflight.RefreshError` propagates.

    **Origins.** On its own, TokenAuth sends the token wherever the client sends the
    request. httpx removes ``Authorization`` on a redirect to another origin but copies
    every other header, so with a custom ``header`` and ``follow_redirects=True`` the
    token would follow the redirect. :class:`AuthClient` checks the origin of every hop;
    use it whenever a client may reach more than one origin.

    The flow holds no lock; it awaits only the cache, whose fresh-token path returns
    without a checkpoint. TokenAuth is async-only: a synchronous :class:`httpx.Client`
    gets a :class:`~tokenflight.ConfigurationError` on its first request.

    :param cache: the cache the tokens come from.
    :param key: the cache key to use; ``None`` is the cache's default source.
    :param header: the header field to set.
    :param scheme: the authentication scheme written before the token, or ``None`` to
        send the token alone.
    :param replace_existing: replace a ``header`` the request already carries instead
        of keeping it.
    :raises ConfigurationError: when ``cache`` is not a :class:`TokenCache`, or ``header``
        or ``scheme`` is not a valid HTTP token.
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self,
        cache: TokenCache,
        *,
        key: Hashable = None,
        header: str = "Authorization",
        scheme: str | None = "Bearer",
        replace_existing: bool = False,
    ) -> None:
        candidate: object = cache  # checked at run time: a token source is a common mix-up
        if not isinstance(candidate, TokenCache):
            message = (
                f"TokenAuth needs a tokenflight.TokenCache, got {type(candidate).__name__}; "
                "wrap a token source with TokenCache(source)"
            )
            raise ConfigurationError(message)
        self._cache = cache
        self._key = key
        self._header = _check_token_chars("header", header)
        self._header_raw = header.encode("ascii")
        self._header_lower = self._header_raw.lower()
        self._scheme = None if scheme is None else _check_token_chars("scheme", scheme)
        self._prefix = "" if scheme is None else f"{scheme} "
        self._replace = bool(replace_existing)
        # Set by AuthClient: requests to any other origin get no credentials.
        self._origins: AllowedOrigins | None = None
        # The header value built for the latest token, as text and as bytes, so a fresh
        # token costs no string building or encoding per request. One tuple, so a reader
        # never pairs a token with another token's value.
        self._last: tuple[Token, str, bytes] | None = None
        self._rejected = 0
        self._retried = 0
        self._not_resent = 0

    @property
    def cache(self) -> TokenCache:
        """The cache the tokens come from."""
        return self._cache

    @property
    def key(self) -> Hashable:
        """The cache key used for every request."""
        return self._key

    @property
    def header(self) -> str:
        """The header field that carries the token."""
        return self._header

    def statistics(self) -> AuthStatistics:
        """Return a snapshot of the rejection counters."""
        return AuthStatistics(self._rejected, self._retried, self._not_resent)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """Reject synchronous clients: TokenAuth works with :class:`httpx.AsyncClient` only.

        :raises ConfigurationError: always.
        """
        message = (
            "TokenAuth is async-only for now: use it with httpx.AsyncClient or "
            "tokenflight.AuthClient, not with httpx.Client"
        )
        raise ConfigurationError(message)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Set the token on ``request``, and resend it once after a rejection."""
        origins = self._origins
        if origins is not None and not origins.allows(request.url):
            response = yield request
            self._clean_next_request(request, response, attached=False)
            return

        entries = request.headers._list if _RAW_HEADER_LIST else None
        if entries is not None:
            present = self._header_lower in [entry[1] for entry in entries]
        else:
            present = self._header in request.headers
        if present and not self._replace:
            response = yield request
            self._clean_next_request(request, response, attached=False)
            return

        token = await self._cache.get(self._key)
        self._attach(request, token, None if present else entries)
        response = yield request

        status = response.status_code
        if status == 401 or (
            400 <= status < 500 and _reports_invalid_token(response, self._scheme)
        ):
            self._rejected += 1
            self._cache.invalidate(token, self._key)
            if not _can_resend(request):
                self._not_resent += 1
                logger.debug(
                    "token rejected with %d by %s; the body cannot be sent again, so the "
                    "response goes back to the caller: fingerprint=%s",
                    status,
                    _origin_label(request.url),
                    token.fingerprint,
                )
                self._clean_next_request(request, response, attached=True)
                return

            # httpx reads the rejected response only after the flow returns the next
            # request. Reading it now returns its connection to the pool, so other
            # requests do not wait behind this one while the new token is fetched.
            await response.aread()
            new_token = await self._cache.get(self._key)
            if new_token is token or new_token.value == token.value:
                self._not_resent += 1
                logger.debug(
                    "token rejected with %d by %s, and the cache returned the same value "
                    "again; not resending: fingerprint=%s",
                    status,
                    _origin_label(request.url),
                    token.fingerprint,
                )
                self._clean_next_request(request, response, attached=True)
                return

            self._retried += 1
            logger.debug(
                "token rejected with %d by %s; resending once with a new token: old=%s new=%s",
                status,
                _origin_label(request.url),
                token.fingerprint,
                new_token.fingerprint,
            )
            self._attach(request, new_token, None)
            response = yield request
            # A brand-new token that is rejected too usually points at something a
            # refresh cannot fix (audience, scope, a disabled client). It stays cached,
            # so a server that rejects every token costs one fetch per request, not two.
            status = response.status_code
            if status == 401 or (
                400 <= status < 500 and _reports_invalid_token(response, self._scheme)
            ):
                self._rejected += 1

        self._clean_next_request(request, response, attached=True)

    def _attach(
        self,
        request: httpx.Request,
        token: Token,
        entries: list[tuple[bytes, bytes, bytes]] | None,
    ) -> None:
        # ``entries`` is the request's raw header list when the header is known to be
        # absent from it. Otherwise the header is set through the public mapping, which
        # also removes every copy already there.
        last = self._last
        if last is None or last[0] is not token:
            value = self._prefix + token.value if self._prefix else token.value
            last = self._last = (token, value, value.encode("ascii"))
        if entries is not None:
            entries.append((self._header_raw, self._header_lower, last[2]))
        else:
            request.headers[self._header] = last[1]

    def _clean_next_request(
        self, request: httpx.Request, response: httpx.Response, *, attached: bool
    ) -> None:
        # With follow_redirects=False, httpx leaves the next hop in response.next_request
        # with a copy of every header. A header this flow set is removed, so that request,
        # when AuthClient or the caller sends it, gets credentials only from a flow that
        # checks the new URL. A header the caller set is kept only while the
        # origin stays the same, as httpx does for Authorization.
        next_request = response.next_request
        if next_request is None:
            return
        if attached or not same_origin(next_request.url, request.url):
            next_request.headers.pop(self._header, None)

    def __repr__(self) -> str:
        return (
            f"TokenAuth(key={self._key!r}, header={self._header!r}, "
            f"scheme={self._scheme!r}, replace_existing={self._replace})"
        )


def _origin_label(url: httpx.URL) -> str:
    # Logs name the origin only: paths and queries may carry identifiers or secrets.
    try:
        return str(origin_of(url))
    except ConfigurationError:
        return "<relative URL>"


class AuthClient(httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` that sends tokens from a cache to allowed origins only.

    Use it wherever an :class:`httpx.AsyncClient` is expected, for example as the
    ``httpx_client=`` of a generated SDK. Every request to an allowed origin carries a
    token through a :class:`TokenAuth`; requests to any other origin carry none.

    **Origins.** An origin is a scheme, host and port, with default ports equal to no
    port (``https://api.example.com`` is ``https://api.example.com:443``). By default the
    only allowed origin is that of ``base_url``. Redirects are followed one hop at a time,
    and each hop gets credentials only if its own origin is allowed. So a redirect to
    another origin never carries the token, whatever the header is called, and a chain
    that comes back to an allowed origin gets a token there again.

    **Lifetime.** ``async with AuthClient(...)`` also enters the cache (unless it is
    entered already), so its background refreshes run in the cache's task group. Leaving
    the block cancels them and then closes the connections. A client built from a token
    source (not from a cache) owns that source as well: leaving the block, or
    :meth:`aclose`, calls the source's ``aclose()`` if it has one, which closes the HTTP
    client an OAuth2 source created for itself. To share a source, share a cache.

    :param cache_or_source: a :class:`TokenCache`, or a token source (an object with
        ``async fetch()``, or an async function returning a :class:`Token`) for which
        the client creates a cache with default settings.
    :param key: the cache key to use.
    :param allowed_origins: origins (absolute URLs) that may receive credentials. The
        default is the origin of ``base_url``; when given, it replaces that default.
    :param header: the header field to set, as for :class:`TokenAuth`.
    :param scheme: the scheme before the token, or ``None`` for the token alone.
    :param replace_existing: replace a ``header`` the request already carries.
    :param unsafe_allow_http: allow credentials on plain ``http://`` origins other than
        loopback (``localhost``, 127.0.0.0/8, ``::1``), where they travel unencrypted.
    :param kwargs: any other :class:`httpx.AsyncClient` argument except ``auth``.
    :raises ConfigurationError: when ``auth`` is passed, when there is neither
        ``base_url`` nor ``allowed_origins``, when an origin is not an absolute URL, or
        when an origin is plain ``http://`` to a host other than loopback and
        ``unsafe_allow_http`` is not set.
    """

    def __init__(
        self,
        cache_or_source: TokenCache | TokenSource | Callable[[], Awaitable[Token]],
        *,
        key: Hashable = None,
        allowed_origins: Iterable[str | httpx.URL | Origin] | str | httpx.URL | None = None,
        header: str = "Authorization",
        scheme: str | None = "Bearer",
        replace_existing: bool = False,
        unsafe_allow_http: bool = False,
        **kwargs: Any,
    ) -> None:
        if "auth" in kwargs:
            message = (
                "AuthClient sets auth= itself; pass a TokenCache or token source as its "
                "first argument, or use httpx.AsyncClient for another auth"
            )
            raise ConfigurationError(message)
        cache = (
            cache_or_source
            if isinstance(cache_or_source, TokenCache)
            else TokenCache(cache_or_source)
        )
        if allowed_origins is None:
            base_url = httpx.URL(kwargs.get("base_url", ""))
            if not base_url.raw_host:
                message = (
                    "AuthClient needs base_url= or allowed_origins= to know where it may "
                    "send credentials"
                )
                raise ConfigurationError(message)
            allowed_origins = [base_url]
        origins = AllowedOrigins(allowed_origins)
        for origin in origins.origins:
            if origin.scheme == "http" and not unsafe_allow_http and not is_loopback(origin.host):
                message = (
                    f"AuthClient would send credentials over plain http:// to {origin}, where "
                    "anyone on the path can read them; use https://, or pass "
                    "unsafe_allow_http=True if the network is trusted"
                )
                raise ConfigurationError(message)
        auth = TokenAuth(
            cache, key=key, header=header, scheme=scheme, replace_existing=replace_existing
        )
        auth._origins = origins
        super().__init__(auth=auth, **kwargs)
        self._token_auth = auth
        self._allowed_origins = origins
        self._cache_entered = False
        self._owned_source: object = (
            None if isinstance(cache_or_source, TokenCache) else cache_or_source
        )

    @property
    def cache(self) -> TokenCache:
        """The cache the tokens come from."""
        return self._token_auth.cache

    @property
    def token_auth(self) -> TokenAuth:
        """The :class:`TokenAuth` this client applies; ``statistics()`` counts rejections."""
        return self._token_auth

    @property
    def allowed_origins(self) -> frozenset[Origin]:
        """The origins that may receive credentials."""
        return self._allowed_origins.origins

    async def __aenter__(self: _AuthClientT) -> _AuthClientT:
        await super().__aenter__()
        cache = self._token_auth.cache
        # A cache shared with another client may be entered already; then that client owns
        # its background work, and this one only uses it.
        if not cache.entered:
            try:
                await cache.__aenter__()
            except BaseException:
                await super().__aexit__(None, None, None)
                raise
            self._cache_entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        try:
            if self._cache_entered:
                self._cache_entered = False
                # The block's own exception is not handed to the cache's task group,
                # which would wrap it in an ExceptionGroup; it propagates unchanged.
                await self._token_auth.cache.aclose()
        finally:
            try:
                await super().__aexit__(exc_type, exc_value, traceback)
            finally:
                await self._close_source()

    async def aclose(self) -> None:
        """Close the connections, and the token source if the client owns it."""
        try:
            await super().aclose()
        finally:
            await self._close_source()

    async def _close_source(self) -> None:
        source, self._owned_source = self._owned_source, None
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        """Send ``request``, following redirects one hop at a time if asked to.

        Parameters and return value are those of :meth:`httpx.AsyncClient.send`. Each
        hop goes through the auth flow on its own, so credentials are decided by the
        origin of that hop.
        """
        follow = (
            self.follow_redirects
            if follow_redirects is httpx.USE_CLIENT_DEFAULT
            else follow_redirects
        )
        if not follow:
            return await super().send(request, stream=stream, auth=auth, follow_redirects=False)

        response = await super().send(request, stream=True, auth=auth, follow_redirects=False)
        while response.next_request is not None:
            next_request = response.next_request
            await _read_or_close(response)
            # As in httpx, the history contains every earlier response: redirects, and any
            # 401 after which the auth flow sent a hop again.
            history = [*response.history, response]
            if len(history) > self.max_redirects:
                message = "Exceeded maximum allowed redirects."
                raise httpx.TooManyRedirects(message, request=next_request)
            response = await super().send(
                next_request, stream=True, auth=auth, follow_redirects=False
            )
            response.history = [*history, *response.history]
        if not stream:
            await _read_or_close(response)
        return response

    def __repr__(self) -> str:
        return (
            f"AuthClient(base_url={str(self.base_url)!r}, "
            f"allowed_origins={sorted(str(origin) for origin in self.allowed_origins)!r}, "
            f"auth={self._token_auth!r})"
        )


async def _read_or_close(response: httpx.Response) -> None:
    try:
        await response.aread()
    except BaseException:
        await response.aclose()
        raise
