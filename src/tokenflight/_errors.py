"""The exceptions tokenflight raises.

Every error the library raises on purpose derives from :class:`TokenflightError`::

    TokenflightError
    ├── ConfigurationError            (also ValueError) an argument or option is invalid
    ├── InvalidTokenError             (also ValueError) a credential cannot be used as given
    ├── RefreshError                  a refresh failed; the source's exception is the __cause__
    │   ├── TransientRefreshError     may succeed later: connection errors, timeouts, 5xx, 429
    │   │   └── RefreshTimeoutError   (also TimeoutError) the refresh ran out of its time budget
    │   └── PermanentRefreshError     will not succeed until the credentials change
    │       └── ReauthenticationRequired   the grant itself is gone (revoked, rotated, expired)
    └── ClockSkewError                the peer rejected a time claim; the clocks disagree

Messages name the value that failed and what to do next. They never contain a token,
a refresh token, a client secret or a key: the tests check that for every error class.
"""

from __future__ import annotations

__all__ = [
    "ClockSkewError",
    "ConfigurationError",
    "InvalidTokenError",
    "PermanentRefreshError",
    "ReauthenticationRequired",
    "RefreshError",
    "RefreshTimeoutError",
    "TokenflightError",
    "TransientRefreshError",
]


class TokenflightError(Exception):
    """Base class of every error tokenflight raises on purpose."""


class ConfigurationError(TokenflightError, ValueError):
    """An argument or option is invalid; the message names it and the accepted values."""


class InvalidTokenError(TokenflightError, ValueError):
    """A credential cannot be used as given, for example a value containing a line break.

    The message describes the problem without quoting the credential.
    """


class RefreshError(TokenflightError):
    """A refresh failed.

    Every caller waiting on the same refresh gets an error of the same class, with the
    same message and the same ``__cause__`` (the exception the token source raised).

    Raise this class directly from a token source only when the failure is neither
    clearly transient nor clearly permanent: the cache does not retry it within the
    refresh, but it does space the next attempt by its backoff.
    """


class TransientRefreshError(RefreshError):
    """A refresh failed in a way that may succeed later.

    Token sources raise it for connection errors, timeouts, 5xx answers and 429. The
    cache retries it with backoff inside the refresh's time budget.

    :param retry_after: seconds the server asked the client to wait, if it said so.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RefreshTimeoutError(TransientRefreshError, TimeoutError):
    """A refresh, with its retries, did not finish within its time budget."""


class PermanentRefreshError(RefreshError):
    """A refresh failed in a way that will not change until the configuration does.

    Examples: ``invalid_client``, a key that does not match its algorithm. The cache
    never retries it; callers get this error until the cache's backoff allows a new
    attempt.
    """


class ReauthenticationRequired(PermanentRefreshError):
    """The grant is gone (``invalid_grant``: a revoked, rotated or expired refresh token).

    A user or operator must supply new credentials; retrying cannot help.
    """


class ClockSkewError(TokenflightError):
    """A peer rejected a time claim (``iat``, ``nbf``, ``exp`` or a signature timestamp).

    The local clock and the peer's clock most likely disagree. The message includes the
    peer's own explanation when it sent one, and the offset tokenflight measured if any.
    """
