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
    ├── ClockSkewError                the peer rejected a time claim; the clocks disagree
    ├── OAuth2Error                   a token endpoint's error response (RFC 6749 section 5.2)
    ├── SigningError                  a request cannot be signed as built; nothing was sent
    ├── SignatureVerificationError    a signed request failed verification; .reason names the check
    ├── RateLimitedError              every key of a pool is rate limited past the wait budget
    └── NoUsableKeyError              every key of a pool was rejected (401, 403) and removed

Messages name the value that failed and what to do next. They never contain a token,
a refresh token, a client secret or a key: the tests check that for every error class.
"""

from __future__ import annotations

__all__ = [
    "ClockSkewError",
    "ConfigurationError",
    "InvalidTokenError",
    "NoUsableKeyError",
    "OAuth2Error",
    "PermanentRefreshError",
    "RateLimitedError",
    "ReauthenticationRequired",
    "RefreshError",
    "RefreshTimeoutError",
    "SignatureVerificationError",
    "SigningError",
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


class OAuth2Error(TokenflightError):
    """A token endpoint's error response, as RFC 6749 section 5.2 defines it.

    OAuth2 token sources raise a :class:`RefreshError` subclass chosen from this response
    (``invalid_grant`` is :class:`ReauthenticationRequired`, 429 and 5xx are
    :class:`TransientRefreshError`, and so on) and chain an ``OAuth2Error`` to it as its
    ``__cause__``, so callers can read the server's own error code.

    :param status_code: the HTTP status of the response.
    :param error: the ``error`` code, for example ``"invalid_client"``, or ``None`` when
        the response had none.
    :param error_description: the server's ``error_description``, without control
        characters, shortened, and with any secret of the request replaced by ``***``.
    :param error_uri: the server's ``error_uri``, if any.
    """

    def __init__(
        self,
        status_code: int,
        error: str | None = None,
        error_description: str | None = None,
        error_uri: str | None = None,
    ) -> None:
        message = f"HTTP {status_code}"
        if error:
            message += f" {error}"
        if error_description:
            message += f": {error_description}"
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.error_description = error_description
        self.error_uri = error_uri

    def __reduce__(
        self,
    ) -> tuple[type[OAuth2Error], tuple[int, str | None, str | None, str | None]]:
        # The message is built from the fields, so copies and pickles rebuild it from them.
        return (
            type(self),
            (self.status_code, self.error, self.error_description, self.error_uri),
        )


class SigningError(TokenflightError):
    """A request cannot be signed as it was built; nothing was sent.

    For example, a streamed body larger than the signer's ``max_body_size``, or a stream
    that was already consumed, cannot be hashed for the signature.
    """


class SignatureVerificationError(TokenflightError):
    """A signed request failed verification on the receiving side.

    The message names the check that failed, never the expected signature or a secret.
    Respond to an untrusted sender with a generic 401 rather than this message.

    :param message: what failed, in words.
    :param reason: the check that failed: ``"missing_header"``, ``"malformed"``,
        ``"unknown_key"``, ``"timestamp"`` (outside the tolerance), ``"replayed"`` (a
        nonce seen before), ``"nonce_order"`` (a nonce not above the last one) or
        ``"signature"`` (the signature does not match).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_verification_error, (type(self), str(self), self.reason))


def _rebuild_verification_error(
    cls: type[SignatureVerificationError], message: str, reason: str
) -> SignatureVerificationError:
    return cls(message, reason=reason)


class RateLimitedError(TokenflightError):
    """Every key that could serve the request is rate limited past the caller's wait budget.

    :param message: what happened, including the earliest retry time.
    :param retry_at: Unix time at which the first key becomes usable again.
    :param retry_after: seconds from the moment of the error until ``retry_at``.
    :param response: the last 429 response, when the error followed one; its body has
        been read.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_at: float,
        retry_after: float,
        response: object | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_at = retry_at
        self.retry_after = retry_after
        self.response = response

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_rate_limited,
            (type(self), str(self), self.retry_at, self.retry_after, self.response),
        )


def _rebuild_rate_limited(
    cls: type[RateLimitedError],
    message: str,
    retry_at: float,
    retry_after: float,
    response: object | None,
) -> RateLimitedError:
    return cls(message, retry_at=retry_at, retry_after=retry_after, response=response)


class NoUsableKeyError(TokenflightError):
    """Every key of a key pool was removed after the server rejected it with 401 or 403.

    Add valid keys to the pool (or build a new pool) to continue.

    :param response: the last rejection, when the error followed one.
    """

    def __init__(self, message: str, *, response: object | None = None) -> None:
        super().__init__(message)
        self.response = response

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_no_usable_key, (type(self), str(self), self.response))


def _rebuild_no_usable_key(
    cls: type[NoUsableKeyError], message: str, response: object | None
) -> NoUsableKeyError:
    return cls(message, response=response)
