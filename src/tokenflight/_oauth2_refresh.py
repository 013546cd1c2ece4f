"""The refresh-token grant (RFC 6749 section 6), with rotation and persistence.

Servers that rotate refresh tokens accept each one once: the response carries the next
one, and reusing a replaced token fails (often revoking the whole grant). Losing that
response, or sending the same refresh token twice, means that a user must sign in again.
The rules here prevent both:

* One refresh at a time per grant. The cache already runs one fetch per key; a lock
  held across load, exchange and save also covers several keys (or caches) sharing
  one grant.
* The exchange and the bookkeeping after it run in a cancel scope shielded from the
  caller, with their own time limit. Once the request is sent, a caller's timeout or
  cancellation cannot drop the response: the new refresh token is adopted and saved.
* The new refresh token replaces the old one in memory, then ``save`` receives the
  access token and the refresh token together, in one call.
* A response without a refresh token keeps the current one.
* The grant never goes back to a refresh token it has replaced: one that comes back in
  a response or from the store is ignored, with a warning.
* With ``load``, the store is read before each refresh, so a token another process
  rotated or refreshed is used rather than the stale one held here. After an
  ``invalid_grant``, the store is read once more: if it contains a newer refresh token, the
  refresh is retried with it rather than failing.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from ._clock import Clock
from ._errors import ConfigurationError, ReauthenticationRequired, TransientRefreshError
from ._jwt import JwtSigner
from ._keys import SigningKey
from ._oauth2 import (
    AuthMethod,
    ClientAuthentication,
    TokenEndpoint,
    _check_text,
    _GrantSource,
)
from ._oauth2_response import DEFAULT_MAX_LIFETIME, DEFAULT_MAX_RESPONSE_SIZE
from ._server_clock import ServerClock
from ._token import Token

__all__ = ["LoadHook", "RefreshTokenGrant", "SaveHook"]

logger = logging.getLogger("tokenflight")

SaveHook = Callable[[Token], "Awaitable[None] | None"]
LoadHook = Callable[[], "Awaitable[Token | None] | Token | None"]

# Upper bound, in seconds of real time, on one exchange plus save. The exchange is
# shielded from cancellation, so it needs a limit of its own; it matches the cache's
# default refresh timeout, so a hung endpoint holds waiters at most that long again.
EXCHANGE_TIME_LIMIT = 30.0

# Seconds of life a token found in the store needs to be used instead of refreshing,
# because a nearly expired one would be refreshed again at once.
STORED_TOKEN_MIN_REMAINING = 60.0

# How many replaced refresh tokens (as SHA-256 digests) are remembered.
_REPLACED_HISTORY = 64


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class _GrantState:
    """The refresh token and its history, shared by a grant and its ``for_key`` copies."""

    __slots__ = (
        "_lock",
        "_lock_loop",
        "generation",
        "last_access_digest",
        "load",
        "refresh_token",
        "replaced",
        "save",
    )

    def __init__(
        self, refresh_token: str | None, save: SaveHook | None, load: LoadHook | None
    ) -> None:
        self.refresh_token = refresh_token
        self.generation = 0
        # Digests of refresh tokens this grant replaced, oldest first.
        self.replaced: OrderedDict[str, int] = OrderedDict()
        self.last_access_digest: str | None = None
        self.save = save
        self.load = load
        self._lock: anyio.Lock | None = None
        self._lock_loop: object = None

    def lock(self) -> anyio.Lock:
        """Return the lock for the running event loop, created on first use there."""
        loop = anyio.lowlevel.current_token().native_token
        if self._lock is None or self._lock_loop is not loop:
            self._lock = anyio.Lock()
            self._lock_loop = loop
        return self._lock

    def was_replaced(self, refresh_token: str) -> bool:
        return _digest(refresh_token) in self.replaced

    def adopt(self, refresh_token: str) -> None:
        """Make ``refresh_token`` the current one and remember the one it replaces."""
        if refresh_token == self.refresh_token:
            return
        if self.refresh_token is not None:
            self.replaced[_digest(self.refresh_token)] = self.generation
            while len(self.replaced) > _REPLACED_HISTORY:
                self.replaced.popitem(last=False)
        self.refresh_token = refresh_token
        self.generation += 1


class RefreshTokenGrant(_GrantSource):
    """The refresh-token grant (RFC 6749 section 6), safe with rotating refresh tokens.

    Each :meth:`fetch` trades the current refresh token for a new access token. When the
    server rotates refresh tokens, the new one replaces the old one here and is handed to
    ``save`` together with the access token. The module docstring lists the rules that
    keep a rotation from being lost or repeated.

    >>> async def save(token: Token) -> None:
    ...     await vault.write("idp-tokens", token.value, token.refresh_token, token.expires_at)
    >>> source = RefreshTokenGrant(
    ...     "https://idp.example/oauth2/token", "my-app",
    ...     refresh_token=stored_refresh_token, client_secret=secret, save=save,
    ... )

    Cancellation: once the request is sent, the exchange and ``save`` finish even if
    the caller is cancelled or its refresh times out, within a limit of 30 s. If the
    transport times out, whether the server rotated the token is unknown; the error is
    transient, and the next attempt reads the store (with ``load``) before reusing the
    refresh token held here.

    :param token_url: the token endpoint (see :class:`ClientCredentials`).
    :param client_id: the client's id; with neither secret nor key it is sent in the
        form, as public clients do.
    :param refresh_token: the refresh token to start from, or ``None`` to take it from
        ``load``.
    :param client_secret: the client's secret, for confidential clients.
    :param auth_method: as for :class:`ClientCredentials`, inferred by default.
    :param signing_key: for ``private_key_jwt``.
    :param scope: a narrower scope to request (RFC 6749 section 6), or ``None`` for the
        scope originally granted.
    :param resource: resource indicators (RFC 8707).
    :param extra_params: further form fields.
    :param save: called, and awaited if it returns an awaitable, with each new
        :class:`Token`: the access token and the current refresh token together, with
        ``expires_at`` (Unix seconds) set when the server sent a lifetime. It runs before
        ``fetch`` returns; if it raises, the error is logged and the token still returned,
        because the refresh itself succeeded and the new refresh token is kept in memory.
    :param load: called, and awaited if needed, before each refresh; returns the token
        ``save`` last stored (by this process or another) or ``None``.
    :param assertion_audience: for ``private_key_jwt`` (see :class:`ClientCredentials`).
    :param assertion_lifetime: for ``private_key_jwt``.
    :param issuer_url: the issuer, to discover ``token_url``.
    :param http_client: a plain ``httpx.AsyncClient`` (see :class:`ClientCredentials`).
    :param clock: the wall clock for ``expires_at`` and assertions; a
        :class:`ServerClock` applies the server's offset.
    :param unsafe_allow_http: allow ``http://`` endpoints on hosts other than loopback.
    :param max_response_size: largest response body accepted, in bytes.
    :param max_lifetime: longest lifetime accepted from ``expires_in``, in seconds.
    :raises ConfigurationError: for missing or contradictory options.
    """

    _grant_type = "refresh_token"

    def __init__(
        self,
        token_url: str | None = None,
        client_id: str | None = None,
        *,
        refresh_token: str | None = None,
        client_secret: str | None = None,
        auth_method: AuthMethod | None = None,
        signing_key: SigningKey | JwtSigner | None = None,
        scope: str | Iterable[str] | None = None,
        resource: str | Iterable[str] | None = None,
        extra_params: Mapping[str, str] | None = None,
        save: SaveHook | None = None,
        load: LoadHook | None = None,
        assertion_audience: str | None = None,
        assertion_lifetime: float = 60.0,
        issuer_url: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        unsafe_allow_http: bool = False,
        max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
    ) -> None:
        if refresh_token is not None:
            _check_text(refresh_token, "refresh_token")
        elif load is None:
            msg = "RefreshTokenGrant needs a refresh_token, or a load function that returns one"
            raise ConfigurationError(msg)
        hooks: tuple[tuple[object, str], ...] = ((save, "save"), (load, "load"))
        for hook, name in hooks:
            if hook is not None and not callable(hook):
                msg = f"{name} must be a function, got {type(hook).__name__}"
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
        super().__init__(
            endpoint,
            auth,
            scope=scope,
            audience=None,
            resource=resource,
            extra_params=extra_params,
        )
        self._state = _GrantState(refresh_token, save, load)

    @property
    def generation(self) -> int:
        """How many times the refresh token has been replaced since the grant was built."""
        return self._state.generation

    async def fetch(self) -> Token:
        """Refresh the access token, with one exchange (two after a rotation elsewhere).

        :raises ReauthenticationRequired: when the server rejects the refresh token
            (``invalid_grant``, or a bare 401) and the store contains no newer one, or when
            there is no refresh token at all.
        :raises TransientRefreshError: for timeouts, connection errors, 429 and 5xx.
        :raises PermanentRefreshError: when the server rejects the client or the request.
        :raises RefreshError: when the response is not a usable token response.
        """
        state = self._state
        async with state.lock():
            stored = await self._read_store()
            if stored is not None:
                return stored
            try:
                return await self._exchange_shielded()
            except ReauthenticationRequired:
                used = state.refresh_token
                stored = await self._read_store()
                if stored is not None:
                    return stored
                if state.refresh_token == used:
                    raise
                logger.info("refresh token rejected, but the store contains a newer one; retrying")
            return await self._exchange_shielded()

    async def _read_store(self) -> Token | None:
        """Adopt the store's refresh token if it is newer; return its access token if usable."""
        state = self._state
        if state.load is None:
            return None
        stored = await _maybe_await(state.load())
        if stored is None:
            return None
        if not isinstance(stored, Token):
            msg = f"load() returned {type(stored).__name__}, expected a tokenflight.Token or None"
            raise ConfigurationError(msg)
        refresh_token = stored.refresh_token
        if refresh_token is not None:
            if state.was_replaced(refresh_token):
                logger.warning(
                    "the store contains a refresh token this grant already replaced "
                    "(generation %d); ignoring it",
                    state.generation,
                )
                return None
            state.adopt(refresh_token)
        if state.refresh_token is None:
            msg = "no refresh token: none was given and load() returned a token without one"
            raise ReauthenticationRequired(msg)

        digest = _digest(stored.value)
        if digest == state.last_access_digest or stored.expires_at is None:
            return None
        remaining = stored.expires_at - self._endpoint.clock.time()
        if remaining < STORED_TOKEN_MIN_REMAINING:
            return None
        logger.info(
            "using the access token another process stored (fingerprint %s, %.0f s left)",
            stored.fingerprint,
            remaining,
        )
        state.last_access_digest = digest
        return Token(
            stored.value,
            token_type=stored.token_type,
            expires_at=stored.expires_at,
            refresh_token=state.refresh_token,
            scope=stored.scope,
            extra=stored.extra,
        )

    async def _exchange_shielded(self) -> Token:
        state = self._state
        refresh_token = state.refresh_token
        if refresh_token is None:
            msg = "no refresh token to refresh with; sign in again to obtain one"
            raise ReauthenticationRequired(msg)
        result: Token | None = None
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + EXCHANGE_TIME_LIMIT
            result = await self._exchange(refresh_token)
        if result is None:
            msg = (
                f"refresh token exchange did not finish within {EXCHANGE_TIME_LIMIT:g} s; "
                "whether the server rotated the refresh token is unknown"
            )
            raise TransientRefreshError(msg)
        return result

    async def _exchange(self, refresh_token: str) -> Token:
        """Send the refresh request, adopt the response's tokens and save them.

        The caller runs it in a shielded cancel scope.
        """
        state = self._state
        fields = self._request_fields()
        fields.insert(1, ("refresh_token", refresh_token))
        issued, sent_at = await self._endpoint.request_token(
            fields, self._auth, grant_type=self._grant_type, redact=(refresh_token,)
        )

        offered = issued.refresh_token
        if offered is not None and offered != refresh_token:
            if state.was_replaced(offered):
                logger.warning(
                    "token endpoint returned a refresh token this grant already replaced; "
                    "keeping the current one (generation %d)",
                    state.generation,
                )
            else:
                state.adopt(offered)
                logger.info("refresh token rotated (generation %d)", state.generation)

        clock = self._endpoint.clock
        expires_at = None
        if issued.expires_in is not None:
            offset = clock.offset if isinstance(clock, ServerClock) else 0.0
            expires_at = sent_at + offset + issued.expires_in
        token = Token(
            issued.value,
            token_type=issued.token_type,
            expires_in=issued.expires_in,
            expires_at=expires_at,
            refresh_token=state.refresh_token,
            scope=issued.scope if issued.scope is not None else self._scope,
            extra=issued.extra,
        )
        state.last_access_digest = _digest(token.value)
        if state.save is not None:
            try:
                await _maybe_await(state.save(token))
            except Exception as error:  # noqa: BLE001 - any failure of the user's hook
                logger.error(  # noqa: TRY400 - the traceback could show the token's fields
                    "save() failed with %s; the new refresh token is kept in memory only "
                    "(generation %d)",
                    type(error).__name__,
                    state.generation,
                )
        return token

    def for_key(self, key: object) -> RefreshTokenGrant:
        """Return this grant adjusted to a cache key; the copy shares the refresh token.

        The key's scope, audience and resource are sent with the refresh request.
        """
        variant: RefreshTokenGrant = super().for_key(key)
        return variant

    async def __aenter__(self) -> RefreshTokenGrant:
        return self

    def _describe(self) -> str:
        return f"{super()._describe()}, generation={self._state.generation}"
