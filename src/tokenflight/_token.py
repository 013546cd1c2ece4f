"""The immutable credential that flows from a token source, through the cache, to a request."""

from __future__ import annotations

import hashlib
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._errors import InvalidTokenError

__all__ = ["Token", "fingerprint"]

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


def fingerprint(secret: str) -> str:
    """Return a short, stable, non-reversible label for a secret, for logs and reprs.

    It is the first 8 hex digits of the SHA-256 of the value: enough to tell tokens apart
    in a log, far too short to recover or brute-force a high-entropy token from.
    """
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _reject_unsafe(value: str, what: str) -> None:
    # A CR or LF in a header value could inject a header; any other control character
    # makes httpx raise an error that quotes the value. Both are rejected here, once,
    # with a message that does not quote the secret.
    if not value:
        msg = f"{what} is empty; a token source must return a non-empty value"
        raise InvalidTokenError(msg)
    for index, char in enumerate(value):
        if char < " " or char == "\x7f":
            msg = (
                f"{what} contains the control character {char!r} at index {index} "
                f"(fingerprint {fingerprint(value)}); strip whitespace in the token source"
            )
            raise InvalidTokenError(msg)
        if not char.isascii():
            msg = (
                f"{what} contains a non-ASCII character at index {index} "
                f"(fingerprint {fingerprint(value)}); HTTP header values must be ASCII"
            )
            raise InvalidTokenError(msg)


@dataclass(frozen=True, eq=False, repr=False)
class Token:
    """An immutable credential: the secret value and what is known about its life.

    ``value`` and ``refresh_token`` are secrets: ``repr()`` and ``str()`` show only a
    fingerprint (see :func:`fingerprint`). Tokens compare by identity, so the cache can
    tell the token a request used from a newer one with the same fields.

    The expiry is given in one of two forms:

    * ``expires_in``: lifetime in seconds, counted from the moment the token request was
      sent (OAuth2's ``expires_in``). The cache converts it with its monotonic clock, so
      wall-clock jumps never change it.
    * ``expires_at``: absolute expiry as Unix time in seconds (a JWT's ``exp``). The
      cache converts it with its wall clock when the token arrives.

    A token with neither lives for the cache's ``default_lifetime``.

    :param value: the secret sent to the server, for example an access token.
    :param token_type: the scheme, ``"Bearer"`` unless the server sent another.
    :param refresh_token: the OAuth2 refresh token that came with it, if any.
    :param scope: the scope the server granted, space-separated as in OAuth2.
    :param extra: the other fields of the token response, read-only.
    :raises InvalidTokenError: when ``value`` or ``refresh_token`` is empty, contains a
        control character (CR and LF included) or a non-ASCII character, or when an expiry
        is negative, infinite or not a number. The message never contains the secret.
    """

    # compare=False keeps tools that diff dataclass fields (pytest's assertion
    # explanation, for one) from printing the secrets; tokens compare by identity anyway.
    value: str = field(compare=False)
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret
    expires_in: float | None = None
    expires_at: float | None = None
    refresh_token: str | None = field(default=None, compare=False)
    scope: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        value: object = self.value  # checked at run time for untyped callers
        if not isinstance(value, str):
            msg = f"token value must be a str, not {type(value).__name__}"
            raise InvalidTokenError(msg)
        _reject_unsafe(self.value, "token value")
        if self.refresh_token is not None:
            _reject_unsafe(self.refresh_token, "refresh token")
        _reject_unsafe(self.token_type, "token type")
        for name in ("expires_in", "expires_at"):
            seconds = getattr(self, name)
            if seconds is None:
                continue
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                msg = f"{name} must be a number of seconds, not {type(seconds).__name__}"
                raise InvalidTokenError(msg)
            if not math.isfinite(seconds) or seconds < 0:
                msg = f"{name} must be a finite number >= 0, got {seconds!r}"
                raise InvalidTokenError(msg)
        if not isinstance(self.extra, types.MappingProxyType):
            object.__setattr__(self, "extra", types.MappingProxyType(dict(self.extra)))

    @property
    def fingerprint(self) -> str:
        """Short label of the value for logs: the first 8 hex digits of its SHA-256."""
        return fingerprint(self.value)

    @property
    def scopes(self) -> frozenset[str]:
        """The granted scope as a set of scope names (empty when the server sent none)."""
        return frozenset(self.scope.split()) if self.scope else frozenset()

    def __repr__(self) -> str:
        parts = [f"value=<redacted {self.fingerprint}>", f"token_type={self.token_type!r}"]
        if self.expires_in is not None:
            parts.append(f"expires_in={self.expires_in!r}")
        if self.expires_at is not None:
            parts.append(f"expires_at={self.expires_at!r}")
        if self.refresh_token is not None:
            parts.append(f"refresh_token=<redacted {fingerprint(self.refresh_token)}>")
        if self.scope is not None:
            parts.append(f"scope={self.scope!r}")
        if self.extra:
            parts.append(f"extra_keys={sorted(self.extra)!r}")
        return f"Token({', '.join(parts)})"

    __str__ = __repr__
