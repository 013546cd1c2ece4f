"""Token sources: anything that can produce a fresh :class:`Token`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from ._token import Token

__all__ = ["CallableSource", "TokenSource"]


@runtime_checkable
class TokenSource(Protocol):
    """Anything with ``async fetch() -> Token``: an OAuth2 grant, a JWT signer, your code.

    ``fetch()`` performs one attempt and raises on failure; the cache owns retries,
    backoff, timeouts and single flight. To let the cache decide well, raise
    :class:`~tokenflight.TransientRefreshError` for failures that may pass (timeouts,
    connection errors, 5xx, 429) and :class:`~tokenflight.PermanentRefreshError` for
    those that will not (bad credentials). ``httpx.TransportError``, ``OSError`` and
    ``TimeoutError`` count as transient; any other exception is not retried within the
    refresh.

    ``fetch()`` may be cancelled, for example when its refresh times out or the cache
    closes; it should leave no state half-written when that happens.
    """

    async def fetch(self) -> Token:
        """Obtain a new token with one attempt."""
        ...


class CallableSource:
    """Adapt a plain ``async def`` with no arguments into a :class:`TokenSource`.

    >>> async def get_api_key() -> Token:
    ...     return Token(await vault.read("api-key"), expires_in=900)
    >>> cache = TokenCache(CallableSource(get_api_key))

    :class:`TokenCache` also accepts the function directly and wraps it for you.
    """

    __slots__ = ("_function",)

    def __init__(self, function: Callable[[], Awaitable[Token]]) -> None:
        checked: object = function  # checked at run time for untyped callers
        if not callable(checked):
            msg = f"CallableSource needs an async function, got {function!r}"
            raise TypeError(msg)
        self._function = function

    async def fetch(self) -> Token:
        token: object = await self._function()
        if not isinstance(token, Token):
            msg = (
                f"{self._function!r} returned {type(token).__name__}, expected a tokenflight.Token"
            )
            raise TypeError(msg)
        return token

    def __repr__(self) -> str:
        name = getattr(self._function, "__qualname__", repr(self._function))
        return f"CallableSource({name})"
