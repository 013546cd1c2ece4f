"""Signing credentials: a key id, its secret and an optional session token, read as one value.

A request signer reads these three fields together. Read one at a time from a store
that a refresh rewrites, they can come from two versions: the request then carries the
key id of one credential set and a signature made with the secret of the next. So every
signer here takes one immutable :class:`Credentials` per attempt and signs the whole
attempt with it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ._errors import InvalidTokenError
from ._token import Token, fingerprint

__all__ = ["Credentials"]


def _secret_fingerprint(secret: str | bytes) -> str:
    if isinstance(secret, str):
        return fingerprint(secret)
    return hashlib.sha256(secret).hexdigest()[:8]


def check_header_value(value: str, what: str, *, secret: bool) -> None:
    """Raise :class:`InvalidTokenError` unless ``value`` can be sent in an HTTP header.

    The value must be non-empty printable ASCII: a CR or LF could inject a header, and
    httpx encodes header values as ASCII and fails on other characters with an error
    that quotes the value.

    :param what: how the message names the value, such as ``"key id"``.
    :param secret: show only the value's fingerprint in the message, not the character
        that failed. A control character is still shown, because it points to the fix.
    """
    if not value:
        msg = f"{what} is empty"
        raise InvalidTokenError(msg)
    for index, char in enumerate(value):
        if char < " " or char == "\x7f":
            problem = f"the control character {char!r}"
        elif not char.isascii():
            problem = "a non-ASCII character" if secret else f"the non-ASCII character {char!r}"
        else:
            continue
        label = f" (fingerprint {fingerprint(value)})" if secret else ""
        msg = (
            f"{what} contains {problem} at index {index}{label}; HTTP header values must "
            "be printable ASCII"
        )
        raise InvalidTokenError(msg)


@dataclass(frozen=True, eq=False, repr=False)
class Credentials:
    """One consistent set of signing credentials: key id, secret and session token.

    ``secret`` and ``session_token`` are secrets: ``repr()`` and ``str()`` show only their
    fingerprints. Instances compare by identity, like :class:`~tokenflight.Token`.

    :param key_id: the public identifier of the key (an AWS access key id, an API key
        name), or ``None`` for schemes that send none, such as most webhooks.
    :param secret: the signing secret. Signers that need bytes encode a ``str`` as UTF-8.
    :param session_token: a temporary session token sent along with the signature, as
        AWS STS credentials have.
    :raises InvalidTokenError: when the secret is empty, or when the key id or the
        session token is empty or contains a control character or a non-ASCII character,
        which an HTTP header cannot carry. The message never contains the secret or the
        session token.
    """

    key_id: str | None
    secret: str | bytes
    session_token: str | None = None

    def __post_init__(self) -> None:
        secret: object = self.secret  # checked at run time for untyped callers
        if not isinstance(secret, str | bytes):
            msg = f"secret must be str or bytes, not {type(secret).__name__}"
            raise InvalidTokenError(msg)
        if not secret:
            msg = "secret is empty; pass the signing secret"
            raise InvalidTokenError(msg)
        if self.key_id is not None:
            if not isinstance(self.key_id, str) or not self.key_id:
                msg = f"key_id must be a non-empty str or None, got {self.key_id!r}"
                raise InvalidTokenError(msg)
            check_header_value(self.key_id, "key id", secret=False)
        if self.session_token is not None:
            if not isinstance(self.session_token, str) or not self.session_token:
                msg = "session_token must be a non-empty str or None"
                raise InvalidTokenError(msg)
            check_header_value(self.session_token, "session token", secret=True)

    @classmethod
    def from_token(cls, token: Token) -> Credentials:
        """Build credentials from a cached :class:`~tokenflight.Token`.

        The token's ``value`` is the secret; ``extra["key_id"]`` and
        ``extra["session_token"]`` carry the other two fields when present. A token
        source for a :class:`~tokenflight.TokenCache` that serves signing credentials
        returns tokens of this shape, with the credentials' expiry as ``expires_at``.

        :raises InvalidTokenError: when ``key_id`` or ``session_token`` in ``extra`` is
            not a non-empty string.
        """
        key_id = token.extra.get("key_id")
        session_token = token.extra.get("session_token")
        if key_id is not None and not isinstance(key_id, str):
            msg = f"token extra 'key_id' must be a str, not {type(key_id).__name__}"
            raise InvalidTokenError(msg)
        if session_token is not None and not isinstance(session_token, str):
            msg = f"token extra 'session_token' must be a str, not {type(session_token).__name__}"
            raise InvalidTokenError(msg)
        return cls(key_id, token.value, session_token)

    @property
    def secret_bytes(self) -> bytes:
        """The secret as bytes (UTF-8 for a ``str`` secret)."""
        return self.secret.encode("utf-8") if isinstance(self.secret, str) else self.secret

    @property
    def fingerprint(self) -> str:
        """Short label of the secret for logs: the first 8 hex digits of its SHA-256."""
        return _secret_fingerprint(self.secret)

    @property
    def label(self) -> str:
        """How logs and messages name these credentials: the key id, else the fingerprint."""
        return self.key_id if self.key_id is not None else f"fingerprint {self.fingerprint}"

    def __repr__(self) -> str:
        parts = [f"key_id={self.key_id!r}", f"secret=<redacted {self.fingerprint}>"]
        if self.session_token is not None:
            parts.append(f"session_token=<redacted {fingerprint(self.session_token)}>")
        return f"Credentials({', '.join(parts)})"

    __str__ = __repr__
