"""OAuth2 token sources: client credentials and the JWT-bearer grant, and what they share.

Each source is a :class:`~tokenflight.TokenSource`: ``fetch()`` sends one token request
(RFC 6749 section 4.4, RFC 7523 section 2.1) and returns a :class:`Token` or raises a
typed error (see ``_oauth2_response.py`` for the response rules). The cache owns retries,
backoff and single flight. The refresh-token grant lives in ``_oauth2_refresh.py``.

Client authentication (RFC 6749 section 2.3, RFC 7523 section 2.2):

=====================  ==================================================================
``auth_method``        what the request carries
=====================  ==================================================================
client_secret_basic    ``Authorization: Basic`` with the form-encoded id and secret
client_secret_post     ``client_id`` and ``client_secret`` in the form body
private_key_jwt        a client assertion signed with ``signing_key``: ``iss`` = ``sub``
                       = client id, ``aud`` = the token endpoint (or
                       ``assertion_audience``), integer ``iat``/``nbf`` backdated by the
                       signer's skew, ``exp``, and a fresh ``jti``
none                   ``client_id`` only, for public clients
=====================  ==================================================================
"""

from __future__ import annotations

import base64
import copy
import logging
import math
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from ._clock import Clock, SystemClock
from ._errors import ClockSkewError, ConfigurationError, RefreshError
from ._jwt import JwtSigner
from ._keys import SigningKey
from ._oauth2_discovery import ServerMetadata, fetch_server_metadata
from ._oauth2_http import ClientSlot, check_endpoint_url, send_limited
from ._oauth2_response import (
    DEFAULT_MAX_LIFETIME,
    DEFAULT_MAX_RESPONSE_SIZE,
    JWT_BEARER_GRANT_TYPE,
    parse_token_response,
)
from ._server_clock import ServerClock
from ._token import Token

__all__ = [
    "AuthMethod",
    "ClientCredentials",
    "JwtBearerGrant",
    "TokenKey",
]

logger = logging.getLogger("tokenflight")

AuthMethod = Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]

_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# Form fields a source sets itself; extra_params may not replace them.
_RESERVED_FIELDS = frozenset(
    {
        "grant_type",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "assertion",
        "refresh_token",
        "scope",
        "audience",
        "resource",
    }
)


# -- cache keys ------------------------------------------------------------------


def normalize_scope(scope: str | Iterable[str] | None, *, name: str = "scope") -> str | None:
    """Return ``scope`` as sorted, unique, space-separated scope tokens, or ``None``.

    Order and repetition do not change what an OAuth2 scope grants, so ``"b a"``,
    ``["a", "b"]`` and ``"a  b a"`` all become ``"a b"``.

    :raises ConfigurationError: for a scope token with a character RFC 6749 section 3.3
        does not allow (controls, space inside a token, ``"`` and ``\\``).
    """
    if scope is None:
        return None
    items: list[object] = list(scope.split() if isinstance(scope, str) else scope)
    tokens: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            msg = f"{name} must be a string or an iterable of strings, got {type(item).__name__}"
            raise ConfigurationError(msg)
        if not item or any(c <= " " or c in '"\\' or c >= "\x7f" for c in item):
            msg = f"{name} contains an invalid scope token {item!r} (RFC 6749 section 3.3)"
            raise ConfigurationError(msg)
        tokens.add(item)
    return " ".join(sorted(tokens)) or None


def _normalize_resources(resource: str | Iterable[str] | None) -> tuple[str, ...]:
    if resource is None:
        return ()
    items = [resource] if isinstance(resource, str) else list(resource)
    for item in items:
        if not isinstance(item, str) or not item or any(c <= " " or c == "\x7f" for c in item):
            msg = f"resource must be absolute URIs without spaces (RFC 8707), got {item!r}"
            raise ConfigurationError(msg)
    return tuple(sorted(set(items)))


def _check_text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        msg = f"{name} must be a non-empty string, got {value!r}"
        raise ConfigurationError(msg)
    if any(c < " " or c == "\x7f" for c in value):
        msg = f"{name} must not contain control characters"
        raise ConfigurationError(msg)
    return value


@dataclass(frozen=True, init=False)
class TokenKey:
    """A cache key naming what a token is for: its scope, audience and resources.

    Tokens for different scopes, audiences or resource indicators (RFC 8707) are
    different credentials, so they need different cache keys. A ``TokenKey`` normalizes
    its fields, so keys that ask for the same thing are equal::

        cache = TokenCache(source, sources=source.for_key)
        token = await cache.get(TokenKey("read write", audience="https://api.example"))

    Fields left ``None`` (or empty) keep the source's own setting.

    :param scope: scope tokens, space-separated or as an iterable.
    :param audience: the ``audience`` request parameter some servers use.
    :param resource: one resource URI or several (RFC 8707).
    :raises ConfigurationError: for an invalid scope token or resource.
    """

    scope: str | None
    audience: str | None
    resource: tuple[str, ...]

    def __init__(
        self,
        scope: str | Iterable[str] | None = None,
        *,
        audience: str | None = None,
        resource: str | Iterable[str] | None = None,
    ) -> None:
        object.__setattr__(self, "scope", normalize_scope(scope))
        if audience is not None:
            _check_text(audience, "audience")
        object.__setattr__(self, "audience", audience)
        object.__setattr__(self, "resource", _normalize_resources(resource))


# -- client authentication -------------------------------------------------------


class ClientAuthentication:
    """The client authentication a source adds to its token requests.

    Contains the client secret or the assertion signer, and ``repr()`` shows neither.
    """

    __slots__ = (
        "_assertion_audience",
        "_assertion_lifetime",
        "_secret",
        "_signer",
        "client_id",
        "method",
    )

    def __init__(
        self,
        client_id: str | None,
        method: str | None,
        *,
        client_secret: str | None,
        signing_key: SigningKey | JwtSigner | None,
        clock: Clock,
        assertion_audience: str | None,
        assertion_lifetime: float,
        required: bool,
    ) -> None:
        if client_id is not None:
            _check_text(client_id, "client_id")
        if client_secret is not None:
            _check_text(client_secret, "client_secret")
        if method is None:
            if client_secret is not None:
                method = "client_secret_basic"
            elif signing_key is not None:
                method = "private_key_jwt"
            elif client_id is not None:
                method = "none"
        if method is None:
            if required:
                msg = "a client_id is required; pass client_id= and a client_secret or signing_key"
                raise ConfigurationError(msg)
        elif method not in _AUTH_METHODS:
            msg = f"auth_method must be one of {', '.join(_AUTH_METHODS)}, got {method!r}"
            raise ConfigurationError(msg)
        elif client_id is None:
            msg = f"auth_method={method!r} needs a client_id"
            raise ConfigurationError(msg)
        if method in {"client_secret_basic", "client_secret_post"} and client_secret is None:
            msg = (
                f"auth_method={method!r} needs a client_secret; read it from a file or an "
                "environment variable rather than the source code"
            )
            raise ConfigurationError(msg)
        if method != "private_key_jwt" and signing_key is not None:
            msg = f"signing_key is used only with auth_method='private_key_jwt', not {method!r}"
            raise ConfigurationError(msg)
        if method in {"private_key_jwt", "none"} and client_secret is not None:
            msg = f"client_secret is not used with auth_method={method!r}; leave it out"
            raise ConfigurationError(msg)

        self.client_id = client_id
        self.method = method
        self._secret = client_secret
        self._signer: JwtSigner | None = None
        if method == "private_key_jwt":
            self._signer = _make_signer(signing_key, clock, "signing_key")
        if assertion_audience is not None:
            _check_text(assertion_audience, "assertion_audience")
        self._assertion_audience = assertion_audience
        self._assertion_lifetime = _positive_seconds(assertion_lifetime, "assertion_lifetime")

    @property
    def signs_assertion(self) -> bool:
        """Whether the request carries a JWT this client signed."""
        return self._signer is not None

    def apply(
        self, form: list[tuple[str, str]], headers: dict[str, str], token_url: str
    ) -> tuple[str, ...]:
        """Add the client's credentials to a token request; return the secrets it used."""
        method = self.method
        client_id = self.client_id
        if method is None or client_id is None:
            return ()
        if method == "client_secret_basic" and self._secret is not None:
            # RFC 6749 section 2.3.1: the id and secret are form-encoded, then joined.
            pair = f"{_form_encode(client_id)}:{_form_encode(self._secret)}"
            credentials = base64.b64encode(pair.encode()).decode()
            headers["Authorization"] = "Basic " + credentials
            # A server that echoes the request echoes the header, not the secret itself.
            return (self._secret, credentials)
        if method == "client_secret_post" and self._secret is not None:
            form += [("client_id", client_id), ("client_secret", self._secret)]
            return (self._secret,)
        if method == "private_key_jwt" and self._signer is not None:
            claims = {
                "iss": client_id,
                "sub": client_id,
                "aud": self._assertion_audience or token_url,
            }
            assertion = self._signer.sign(claims, lifetime=self._assertion_lifetime)
            form += [
                ("client_id", client_id),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", assertion),
            ]
            return (assertion,)
        form.append(("client_id", client_id))
        return ()

    def __repr__(self) -> str:
        return f"ClientAuthentication(client_id={self.client_id!r}, method={self.method!r})"


def _form_encode(value: str) -> str:
    # Percent-encoding every reserved character, space included, is a valid form
    # encoding that servers decode with either a form or a URI-component decoder.
    return urllib.parse.quote(value, safe="")


def _make_signer(
    key: object,
    clock: Clock,
    name: str,
    *,
    skew: float = 60.0,
    max_lifetime: float | None = None,
) -> JwtSigner:
    if isinstance(key, JwtSigner):
        return key
    if isinstance(key, SigningKey):
        if key.algorithm.startswith("HS"):
            msg = (
                f"{name} is an HMAC key ({key.algorithm}); private_key_jwt and the JWT-bearer "
                "grant sign with a private key (RS*, PS*, ES* or EdDSA)"
            )
            raise ConfigurationError(msg)
        return JwtSigner(key, clock=clock, skew=skew, max_lifetime=max_lifetime)
    msg = (
        f"{name} must be a SigningKey from tokenflight.load_signing_key() or a JwtSigner, "
        f"got {type(key).__name__}"
    )
    raise ConfigurationError(msg)


def _positive_seconds(value: object, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        msg = f"{name} must be a positive, finite number of seconds, got {value!r}"
        raise ConfigurationError(msg)
    return float(value)


# -- the endpoint ----------------------------------------------------------------


class TokenEndpoint:
    """The token endpoint of a source, shared by the source's :meth:`for_key` copies.

    Contains the token URL (or the issuer to discover it from), the HTTP client, the
    clock and the response limits.
    """

    __slots__ = (
        "_metadata",
        "_token_url",
        "clock",
        "issuer_url",
        "max_lifetime",
        "max_response_size",
        "slot",
        "unsafe_allow_http",
    )

    def __init__(
        self,
        token_url: str | None,
        *,
        issuer_url: str | None,
        http_client: httpx.AsyncClient | None,
        clock: Clock | None,
        unsafe_allow_http: bool,
        max_response_size: int,
        max_lifetime: float,
    ) -> None:
        if token_url is None and issuer_url is None:
            msg = "pass token_url, or issuer_url to discover the token endpoint from"
            raise ConfigurationError(msg)
        self.unsafe_allow_http = bool(unsafe_allow_http)
        self._token_url = (
            None
            if token_url is None
            else check_endpoint_url(
                token_url, name="token_url", unsafe_allow_http=self.unsafe_allow_http
            )
        )
        self.issuer_url = (
            None
            if issuer_url is None
            else check_endpoint_url(
                issuer_url, name="issuer_url", unsafe_allow_http=self.unsafe_allow_http
            )
        )
        if isinstance(max_response_size, bool) or not isinstance(max_response_size, int):
            msg = f"max_response_size must be an int number of bytes, got {max_response_size!r}"
            raise ConfigurationError(msg)
        if max_response_size < 1024:
            msg = f"max_response_size must be at least 1024 bytes, got {max_response_size}"
            raise ConfigurationError(msg)
        self.max_response_size = max_response_size
        self.max_lifetime = _positive_seconds(max_lifetime, "max_lifetime")
        self.slot = ClientSlot(http_client)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._metadata: ServerMetadata | None = None

    @property
    def token_url(self) -> str | None:
        """The token endpoint's URL, or ``None`` until discovery has found it."""
        return self._token_url

    async def resolve(self) -> str:
        """Return the token URL, discovering it from the issuer's metadata the first time."""
        if self._token_url is not None:
            return self._token_url
        assert self.issuer_url is not None  # checked in __init__
        metadata = await fetch_server_metadata(
            self.issuer_url,
            http_client=self.slot.get(),
            unsafe_allow_http=self.unsafe_allow_http,
            max_response_size=self.max_response_size,
        )
        self._metadata = metadata
        self._token_url = metadata.token_endpoint
        return metadata.token_endpoint

    @property
    def metadata(self) -> ServerMetadata | None:
        """The discovered server metadata, once discovery has run."""
        return self._metadata

    async def request_token(
        self,
        form: list[tuple[str, str]],
        auth: ClientAuthentication,
        *,
        grant_type: str,
        grant_assertion: Callable[[str], str] | None = None,
        redact: tuple[str, ...] = (),
    ) -> tuple[Token, float]:
        """Send a token request and parse the response; return the token and the send time.

        The send time is Unix seconds on the local wall clock. When the clock is a
        :class:`ServerClock`, it learns from the response's ``Date``, and a rejection
        that looks like clock skew is retried once if that changed the offset.

        :param grant_assertion: for the JWT-bearer grant, a function from the token URL to
            a freshly signed assertion, sent as the ``assertion`` field.
        :param redact: further secrets the server's error description must not show.
        """
        clock = self.clock
        offset_before = clock.offset if isinstance(clock, ServerClock) else None
        try:
            return await self._attempt(form, auth, grant_type, grant_assertion, redact)
        except RefreshError as error:
            if not isinstance(clock, ServerClock) or not _suspects_skew(error):
                raise
            if clock.offset == offset_before:
                raise
            logger.info(
                "token request rejected on time claims; re-signing once with the server "
                "clock offset %+.1f s",
                clock.offset,
            )
        return await self._attempt(form, auth, grant_type, grant_assertion, redact)

    async def _attempt(
        self,
        form: list[tuple[str, str]],
        auth: ClientAuthentication,
        grant_type: str,
        grant_assertion: Callable[[str], str] | None,
        redact: tuple[str, ...],
    ) -> tuple[Token, float]:
        url = await self.resolve()
        fields = list(form)
        headers = {"Accept": "application/json"}
        secrets = auth.apply(fields, headers, url)
        if grant_assertion is not None:
            assertion = grant_assertion(url)
            fields.append(("assertion", assertion))
            secrets = (*secrets, assertion)

        local = self.clock.local_clock if isinstance(self.clock, ServerClock) else self.clock
        sent_at = local.time()
        reply = await send_limited(
            self.slot.get(),
            "POST",
            url,
            form=fields,
            headers=headers,
            max_size=self.max_response_size,
            what=f"{grant_type} token request to {url.split('?', 1)[0]}",
        )
        received_at = local.time()
        if isinstance(self.clock, ServerClock):
            self.clock.observe(reply.headers.get("Date"), sent_at, received_at)

        token = parse_token_response(
            reply.status_code,
            reply.body,
            headers=reply.headers,
            grant_type=grant_type,
            endpoint=url,
            max_lifetime=self.max_lifetime,
            signed_assertion=grant_assertion is not None or auth.signs_assertion,
            redact=(*secrets, *redact),
            now=received_at,
        )
        return token, sent_at

    async def aclose(self) -> None:
        """Close the HTTP client the endpoint created, if any."""
        await self.slot.aclose()


def _suspects_skew(error: BaseException) -> bool:
    cause = error.__cause__
    return isinstance(cause, ClockSkewError)


# -- the sources -----------------------------------------------------------------


class _GrantSource:
    """What every OAuth2 source shares: endpoint, client authentication, request options."""

    _grant_type = ""

    def __init__(
        self,
        endpoint: TokenEndpoint,
        auth: ClientAuthentication,
        *,
        scope: str | Iterable[str] | None,
        audience: str | None,
        resource: str | Iterable[str] | None,
        extra_params: Mapping[str, str] | None,
    ) -> None:
        self._endpoint = endpoint
        self._auth = auth
        self._scope = normalize_scope(scope)
        if audience is not None:
            _check_text(audience, "audience")
        self._audience = audience
        self._resource = _normalize_resources(resource)
        self._extra: tuple[tuple[str, str], ...] = ()
        if extra_params:
            for name, value in extra_params.items():
                if name in _RESERVED_FIELDS:
                    msg = f"extra_params cannot set {name!r}; the source sets it, use its option"
                    raise ConfigurationError(msg)
                _check_text(value, f"extra_params[{name!r}]")
            self._extra = tuple(extra_params.items())

    @property
    def token_url(self) -> str | None:
        """The token endpoint's URL (``None`` until discovery has found it)."""
        return self._endpoint.token_url

    @property
    def scope(self) -> str | None:
        """The requested scope, normalized, or ``None``."""
        return self._scope

    @property
    def audience(self) -> str | None:
        """The requested ``audience``, or ``None``."""
        return self._audience

    @property
    def resource(self) -> tuple[str, ...]:
        """The requested resource indicators (RFC 8707)."""
        return self._resource

    def for_key(self, key: object) -> Any:
        """Return this source adjusted to a cache key; pass it as ``TokenCache(sources=...)``.

        ``None`` gives this source; a string is a scope; a :class:`TokenKey` overrides
        the scope, audience and resource it sets. The copy shares this source's
        endpoint, HTTP client and credentials.

        :raises ConfigurationError: for a key of another type.
        """
        if key is None:
            return self
        if isinstance(key, str):
            key = TokenKey(key)
        if not isinstance(key, TokenKey):
            msg = (
                f"a key for {type(self).__name__} must be None, a scope string or a "
                f"TokenKey, got {type(key).__name__}"
            )
            raise ConfigurationError(msg)
        variant = copy.copy(self)
        if key.scope is not None:
            variant._scope = key.scope
        if key.audience is not None:
            variant._audience = key.audience
        if key.resource:
            variant._resource = key.resource
        return variant

    def _request_fields(self) -> list[tuple[str, str]]:
        fields = [("grant_type", self._grant_type)]
        if self._scope is not None:
            fields.append(("scope", self._scope))
        if self._audience is not None:
            fields.append(("audience", self._audience))
        fields.extend(("resource", resource) for resource in self._resource)
        fields.extend(self._extra)
        return fields

    async def aclose(self) -> None:
        """Close the HTTP client the source created; a client you passed stays open."""
        await self._endpoint.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _describe(self) -> str:
        endpoint = self._endpoint
        where = (
            f"token_url={endpoint.token_url!r}"
            if endpoint.token_url is not None
            else f"issuer_url={endpoint.issuer_url!r}"
        )
        parts = [where]
        if self._auth.client_id is not None:
            parts.append(f"client_id={self._auth.client_id!r}")
        if self._auth.method is not None:
            parts.append(f"auth_method={self._auth.method!r}")
        if self._scope is not None:
            parts.append(f"scope={self._scope!r}")
        if self._audience is not None:
            parts.append(f"audience={self._audience!r}")
        if self._resource:
            parts.append(f"resource={list(self._resource)!r}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"


class ClientCredentials(_GrantSource):
    """The client credentials grant (RFC 6749 section 4.4): a service's own token.

    >>> source = ClientCredentials(
    ...     "https://idp.example/oauth2/token",
    ...     "my-service",
    ...     client_secret=os.environ["CLIENT_SECRET"],
    ...     scope="read write",
    ... )
    >>> cache = TokenCache(source, sources=source.for_key)

    Each :meth:`fetch` sends one token request; put the source behind a
    :class:`~tokenflight.TokenCache`, which sends one per token lifetime however many
    tasks need the token. The module docstring lists the ``auth_method`` values.

    :param token_url: the token endpoint, ``https://`` (``http://`` only on loopback, or
        with ``unsafe_allow_http``). Leave it ``None`` to discover it from ``issuer_url``.
    :param client_id: the client's id.
    :param client_secret: the client's secret, for the ``client_secret_*`` methods.
    :param auth_method: ``client_secret_basic`` (the default with a secret),
        ``client_secret_post``, ``private_key_jwt`` (the default with a key) or ``none``.
    :param signing_key: for ``private_key_jwt``: a :class:`SigningKey` from
        :func:`~tokenflight.load_signing_key`, or a :class:`JwtSigner` to choose its skew.
    :param scope: the scope to request, space-separated or as an iterable.
    :param audience: the non-standard ``audience`` parameter some servers require.
    :param resource: resource indicators (RFC 8707), one URI or several.
    :param extra_params: further form fields of the token request.
    :param assertion_audience: the client assertion's ``aud``; the token endpoint's URL
        by default. Some servers want their issuer identifier instead.
    :param assertion_lifetime: seconds from signing to the client assertion's ``exp``.
    :param issuer_url: the authorization server's issuer, to discover ``token_url`` from
        its metadata (OpenID Connect discovery, then RFC 8414) on the first fetch.
    :param http_client: a plain ``httpx.AsyncClient`` to send with; by default the source
        creates one per event loop and closes it in :meth:`aclose`.
    :param clock: the clock for assertion times; pass a :class:`ServerClock` to learn the
        server's clock offset from its ``Date`` headers.
    :param unsafe_allow_http: allow ``http://`` token endpoints on hosts other than
        loopback, which sends credentials unencrypted.
    :param max_response_size: largest response body accepted, in bytes.
    :param max_lifetime: longest lifetime accepted from ``expires_in``, in seconds.
    :raises ConfigurationError: for a missing or contradictory option, or an endpoint that
        is not ``https://``.
    """

    _grant_type = "client_credentials"

    def __init__(
        self,
        token_url: str | None = None,
        client_id: str | None = None,
        *,
        client_secret: str | None = None,
        auth_method: AuthMethod | None = None,
        signing_key: SigningKey | JwtSigner | None = None,
        scope: str | Iterable[str] | None = None,
        audience: str | None = None,
        resource: str | Iterable[str] | None = None,
        extra_params: Mapping[str, str] | None = None,
        assertion_audience: str | None = None,
        assertion_lifetime: float = 60.0,
        issuer_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        unsafe_allow_http: bool = False,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
    ) -> None:
        if client_id is None:
            msg = "ClientCredentials needs a client_id"
            raise ConfigurationError(msg)
        endpoint = TokenEndpoint(
            token_url,
            issuer_url=issuer_url,
            http_client=http_client,
            clock=clock,
            unsafe_allow_http=unsafe_allow_http,
            max_response_size=max_response_size,
            max_lifetime=max_lifetime,
        )
        auth = ClientAuthentication(
            client_id,
            auth_method,
            client_secret=client_secret,
            signing_key=signing_key,
            clock=endpoint.clock,
            assertion_audience=assertion_audience,
            assertion_lifetime=assertion_lifetime,
            required=True,
        )
        if auth.method == "none":
            msg = (
                "the client credentials grant needs client authentication; pass a "
                "client_secret or a signing_key"
            )
            raise ConfigurationError(msg)
        super().__init__(
            endpoint,
            auth,
            scope=scope,
            audience=audience,
            resource=resource,
            extra_params=extra_params,
        )

    async def fetch(self) -> Token:
        """Request a token with one attempt.

        :raises TransientRefreshError: for timeouts, connection errors, 429 and 5xx.
        :raises PermanentRefreshError: when the server rejects the client or the request.
        :raises RefreshError: when the response is not a usable token response.
        """
        token, _ = await self._endpoint.request_token(
            self._request_fields(), self._auth, grant_type=self._grant_type
        )
        return token

    def for_key(self, key: object) -> ClientCredentials:
        """Return this source adjusted to a cache key (see :meth:`_GrantSource.for_key`)."""
        variant: ClientCredentials = super().for_key(key)
        return variant

    async def __aenter__(self) -> ClientCredentials:
        return self


class JwtBearerGrant(_GrantSource):
    """The JWT-bearer grant (RFC 7523 section 2.1): trade a signed assertion for a token.

    This is how service accounts get tokens: each :meth:`fetch` signs a fresh assertion
    (``iss``, ``sub``, ``aud``, integer ``iat``/``nbf`` backdated by the skew, ``exp`` and
    a ``jti``) and sends it as the grant. When the server rejects the assertion's times,
    the error says that clock skew is suspected and quotes the server; with a
    :class:`ServerClock` as ``clock``, the offset learned from the rejection's ``Date`` is
    applied and the request is signed and sent once more.

    :param token_url: the token endpoint (see :class:`ClientCredentials`).
    :param signing_key: the key the assertion is signed with: a :class:`SigningKey` or a
        :class:`JwtSigner` (whose skew and ``max_lifetime`` then apply).
    :param issuer: the assertion's ``iss``, for example a service account's e-mail.
    :param subject: the assertion's ``sub``: the user acted for, or ``None`` to use
        ``issuer``.
    :param audience: the assertion's ``aud``; the token endpoint's URL by default.
    :param scope: the scope to request, sent as the ``scope`` form field.
    :param claims: further claims of every assertion, for example ``{"scope": ...}`` for
        servers that read the scope from the assertion.
    :param assertion_lifetime: seconds from signing to ``exp``. With the default signer,
        ``exp - iat`` is this plus the 60-second skew, and never more than 3600.
    :param skew: seconds by which the default signer backdates ``iat`` and ``nbf``.
    :param client_id: the client's id, when the server also wants client authentication.
    :param client_secret: the client's secret, for that authentication.
    :param auth_method: the client authentication method, inferred as in
        :class:`ClientCredentials`; none when there is no ``client_id``.
    :param resource: resource indicators (RFC 8707).
    :param extra_params: further form fields.
    :param issuer_url: the authorization server's issuer, to discover ``token_url``.
    :param http_client: a plain ``httpx.AsyncClient`` (see :class:`ClientCredentials`).
    :param clock: the clock the assertion's times are read from.
    :param unsafe_allow_http: allow ``http://`` endpoints on hosts other than loopback.
    :param max_response_size: largest response body accepted, in bytes.
    :param max_lifetime: longest lifetime accepted from ``expires_in``, in seconds.
    :raises ConfigurationError: for a missing or contradictory option.
    """

    _grant_type = JWT_BEARER_GRANT_TYPE

    # Servers commonly refuse assertions whose exp is more than an hour after iat.
    MAX_ASSERTION_LIFETIME = 3600.0

    def __init__(
        self,
        token_url: str | None = None,
        *,
        signing_key: SigningKey | JwtSigner,
        issuer: str,
        subject: str | None = None,
        audience: str | None = None,
        scope: str | Iterable[str] | None = None,
        claims: Mapping[str, Any] | None = None,
        assertion_lifetime: float = 300.0,
        skew: float = 60.0,
        client_id: str | None = None,
        client_secret: str | None = None,
        auth_method: AuthMethod | None = None,
        resource: str | Iterable[str] | None = None,
        extra_params: Mapping[str, str] | None = None,
        issuer_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        unsafe_allow_http: bool = False,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
    ) -> None:
        endpoint = TokenEndpoint(
            token_url,
            issuer_url=issuer_url,
            http_client=http_client,
            clock=clock,
            unsafe_allow_http=unsafe_allow_http,
            max_response_size=max_response_size,
            max_lifetime=max_lifetime,
        )
        auth = ClientAuthentication(
            client_id,
            auth_method,
            client_secret=client_secret,
            signing_key=None,
            clock=endpoint.clock,
            assertion_audience=None,
            assertion_lifetime=60.0,
            required=False,
        )
        if auth.method == "private_key_jwt":
            msg = (
                "JwtBearerGrant authenticates with its assertion; for a separate client "
                "assertion use a client_secret or no client authentication"
            )
            raise ConfigurationError(msg)
        super().__init__(
            endpoint,
            auth,
            scope=scope,
            audience=None,
            resource=resource,
            extra_params=extra_params,
        )
        self._signer = _make_signer(
            signing_key,
            endpoint.clock,
            "signing_key",
            skew=skew,
            max_lifetime=self.MAX_ASSERTION_LIFETIME,
        )
        self._issuer = _check_text(issuer, "issuer")
        self._subject = _check_text(subject, "subject") if subject is not None else issuer
        self._assertion_audience = (
            _check_text(audience, "audience") if audience is not None else None
        )
        self._claims = dict(claims or {})
        self._assertion_lifetime = _positive_seconds(assertion_lifetime, "assertion_lifetime")

    async def fetch(self) -> Token:
        """Sign an assertion and exchange it for a token, with one attempt.

        :raises TransientRefreshError: for timeouts, connection errors, 429 and 5xx.
        :raises PermanentRefreshError: when the server rejects the assertion or client.
        :raises RefreshError: when the response is not a usable token response, or when the
            server rejected the assertion's times (the ``__cause__`` is then a
            :class:`ClockSkewError` that quotes the server).
        """
        token, _ = await self._endpoint.request_token(
            self._request_fields(),
            self._auth,
            grant_type=self._grant_type,
            grant_assertion=self._sign_assertion,
        )
        return token

    def _sign_assertion(self, token_url: str) -> str:
        # Called per attempt, so a retry after learning the server's clock offset signs
        # fresh times.
        claims = dict(self._claims)
        claims.update(
            {
                "iss": self._issuer,
                "sub": self._subject,
                "aud": self._assertion_audience or token_url,
            }
        )
        return self._signer.sign(claims, lifetime=self._assertion_lifetime)

    def for_key(self, key: object) -> JwtBearerGrant:
        """Return this source adjusted to a cache key (see :class:`TokenKey`)."""
        variant: JwtBearerGrant = super().for_key(key)
        return variant

    async def __aenter__(self) -> JwtBearerGrant:
        return self

    def _describe(self) -> str:
        return f"{super()._describe()}, issuer={self._issuer!r}, subject={self._subject!r}"
