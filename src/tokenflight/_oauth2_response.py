"""Reading a token endpoint's response: a :class:`Token`, or a typed error.

The parser trusts nothing in the response. Each field the server may send wrongly has
one rule, and the rules are the contract the tests check:

====================  ===================================================================
field                 rule
====================  ===================================================================
body                  JSON object (or form-encoded when the Content-Type is); an
                      HTML page, other text or a JSON non-object is an error
``access_token``      required, a non-empty string
``token_type``        missing or empty: ``"Bearer"``; any case of ``bearer``: ``"Bearer"``;
                      another string is kept as sent; a non-string is an error
``expires_in``        an int, a float or a decimal string such as ``"3600"``; missing:
                      ``None``, which leaves the lifetime to the cache's
                      ``default_lifetime``; zero, negative or malformed: an error; above
                      ``max_lifetime`` (a number too large for a float included):
                      clamped to it, with a warning
``refresh_token``     a non-empty string, or missing, ``null`` or ``""`` (no refresh token)
``scope``             a string, or a list of strings joined with spaces; other types are
                      ignored
other fields          kept in :attr:`Token.extra`
====================  ===================================================================

Errors, from the HTTP status and RFC 6749 section 5.2's ``error`` code:

* :class:`TransientRefreshError` for 408, 425, 429, 5xx, ``temporarily_unavailable``,
  ``server_error`` and ``slow_down``, with ``retry_after`` from a ``Retry-After`` header;
* :class:`ReauthenticationRequired` for ``invalid_grant`` (except in the JWT-bearer
  grant, where it means the assertion was rejected) and for a bare 401 to a refresh;
* :class:`PermanentRefreshError` for the other 4xx answers and for redirects;
* :class:`RefreshError` for a malformed successful answer: the cache does not retry it
  within the refresh but spaces the next attempts by its backoff, so a broken endpoint
  sees a few requests, not one per call.

The server's error code and description travel as an :class:`OAuth2Error`, the
``__cause__`` of the raised error. A rejection of a JWT the client signed whose
description mentions time claims is reported as suspected clock skew, with a
:class:`ClockSkewError` in the chain.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from ._errors import (
    ClockSkewError,
    InvalidTokenError,
    OAuth2Error,
    PermanentRefreshError,
    ReauthenticationRequired,
    RefreshError,
    TransientRefreshError,
)
from ._server_clock import looks_like_clock_skew
from ._token import Token

__all__ = [
    "DEFAULT_MAX_LIFETIME",
    "DEFAULT_MAX_RESPONSE_SIZE",
    "MAX_RETRY_AFTER",
    "parse_retry_after",
    "parse_token_response",
]

logger = logging.getLogger("tokenflight")

DEFAULT_MAX_RESPONSE_SIZE = 256 * 1024
"""Maximum size of a token-endpoint response body, in bytes (after decompression).

Token responses are a few kilobytes even with JWT access and ID tokens. The limit keeps a
misconfigured URL that serves a large file, or a compression bomb, out of memory.
"""

DEFAULT_MAX_LIFETIME = 24 * 3600.0
"""Maximum lifetime, in seconds, taken from an ``expires_in``; longer ones are clamped.

A token is then fetched again at least once a day, whatever the server claimed.
"""

MAX_RETRY_AFTER = 600.0
"""Maximum ``Retry-After`` honoured, in seconds, so a bogus value cannot stall refreshes."""

# Maximum length of server-supplied text quoted in an error message.
_MAX_DESCRIPTION = 300

# RFC 6749 section 5.2 codes for a request that may succeed later. The last three
# are defined for other endpoints, but some servers send them from the token endpoint.
_TRANSIENT_CODES = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})

_HINTS = {
    "invalid_client": "check the client id, the client secret or key, and auth_method",
    "invalid_grant": "the grant is no longer valid; obtain new credentials",
    "invalid_scope": "check the requested scope against the client's registration",
    "invalid_target": "check the requested resource and audience",
    "unauthorized_client": "the client is not registered for this grant type",
    "unsupported_grant_type": "the server does not support this grant type",
    "invalid_request": "the server rejected the request's parameters",
}

_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")

JWT_BEARER_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_Fail = Callable[[str], NoReturn]


def parse_token_response(
    status_code: int,
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    grant_type: str | None = None,
    endpoint: str | None = None,
    max_lifetime: float = DEFAULT_MAX_LIFETIME,
    signed_assertion: bool = False,
    redact: Iterable[str] = (),
    now: float | None = None,
) -> Token:
    """Turn a token endpoint's response into a :class:`Token`, or raise a typed error.

    The module docstring lists the rule for each field and each error.

    :param status_code: the HTTP status of the response.
    :param body: the response body, already limited in size by the caller.
    :param headers: the response headers; ``Content-Type``, ``Retry-After``, ``Date``
        and ``Location`` are read.
    :param grant_type: the request's ``grant_type``. With ``"refresh_token"``, a bare 401
        means that the grant is gone. With the JWT-bearer grant type, ``invalid_grant`` is
        a :class:`PermanentRefreshError` rather than :class:`ReauthenticationRequired`.
    :param endpoint: the token endpoint's URL, named in error messages (without its query).
    :param max_lifetime: longest lifetime accepted from ``expires_in``, in seconds.
    :param signed_assertion: whether the request carried a JWT the client signed, so
        that a rejection mentioning time claims is reported as suspected clock skew.
    :param redact: secrets of the request (client secret, refresh token, assertion), replaced
        by ``***`` wherever the server's error description quotes them.
    :param now: the current Unix time, to convert a ``Retry-After`` date when the response
        has no ``Date`` header.
    :raises TransientRefreshError: for a response that may change on a later attempt.
    :raises PermanentRefreshError: for a rejection that only new credentials or settings
        can fix (:class:`ReauthenticationRequired` when the grant itself is gone).
    :raises RefreshError: for a successful status with a body that is not a usable token
        response.
    """
    header_map = _lower_keys(headers)
    where = _describe_endpoint(endpoint)
    secrets = _secret_spellings(redact)

    if 300 <= status_code < 400:
        location = _strip_query(header_map.get("location", ""))
        target = f" to {location}" if location else ""
        msg = (
            f"token endpoint{where} answered HTTP {status_code}, a redirect{target}; "
            "set the token URL to the final endpoint (token requests never follow redirects)"
        )
        raise PermanentRefreshError(msg)

    fields: Mapping[str, Any] | None = None
    decode_problem: str | None = None
    try:
        fields = _decode_body(body, header_map.get("content-type", ""))
    except _BodyError as problem:
        decode_problem = str(problem)

    if 200 <= status_code < 300:
        if fields is None:
            msg = f"token endpoint{where} answered HTTP {status_code} with {decode_problem}"
            raise RefreshError(msg)
        if "error" in fields and "access_token" not in fields:
            # A few servers report errors with a 200 status.
            _raise_error_response(
                status_code, fields, header_map, grant_type, where, signed_assertion, secrets, now
            )
        return _build_token(fields, status_code, where, max_lifetime)

    _raise_error_response(
        status_code,
        fields or {},
        header_map,
        grant_type,
        where,
        signed_assertion,
        secrets,
        now,
        body_note=decode_problem,
    )


def parse_retry_after(
    value: str | None, *, date: str | None = None, now: float | None = None
) -> float | None:
    """Return the delay in seconds a ``Retry-After`` header requests, or ``None`` when unusable.

    The header is a number of seconds or an HTTP date. A date is measured against the
    response's ``Date`` header when there is one (so the local clock's error cancels out),
    else against ``now``. The result is clamped to ``[0, MAX_RETRY_AFTER]``.

    :param value: the ``Retry-After`` header, or ``None``.
    :param date: the response's ``Date`` header, or ``None``.
    :param now: the current Unix time, for a date with no ``Date`` header to measure against.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    seconds: float | None = None
    # str.isdigit() also accepts characters such as "²" that float() rejects.
    if text.isascii() and text.isdigit():
        seconds = float(text[:12])
    else:
        retry_at = _http_date(text)
        reference = _http_date(date) if date is not None else None
        if reference is None:
            reference = now
        if retry_at is None or reference is None:
            return None
        seconds = retry_at - reference
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# -- decoding --------------------------------------------------------------------


class _BodyError(Exception):
    """The body is not a JSON object; the message describes it without quoting it."""


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(name)


def _decode_body(body: bytes, content_type: str) -> Mapping[str, Any]:
    media_type = content_type.split(";", 1)[0].strip().lower()
    size = f"{len(body)} bytes"
    if media_type == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            msg = f"a form-encoded body that cannot be decoded ({size})"
            raise _BodyError(msg) from None
        return dict(pairs)

    stripped = body.lstrip()
    if not stripped:
        msg = "an empty body, not a JSON token response"
        raise _BodyError(msg)
    if media_type in {"text/html", "application/xhtml+xml"} or stripped[:1] == b"<":
        msg = (
            f"an HTML or XML page ({size}, Content-Type {media_type or 'missing'}), not a JSON "
            "token response; check that the token URL points at the token endpoint"
        )
        raise _BodyError(msg)
    try:
        value = json.loads(body.decode("utf-8-sig"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        msg = (
            f"a body that is not valid JSON ({size}, Content-Type {media_type or 'missing'}); "
            "check that the token URL points at the token endpoint"
        )
        raise _BodyError(msg) from None
    if not isinstance(value, dict):
        msg = f"a JSON {_json_kind(value)}, not the JSON object of a token response"
        raise _BodyError(msg)
    return value


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


# -- success ---------------------------------------------------------------------


def _build_token(
    fields: Mapping[str, Any], status_code: int, where: str, max_lifetime: float
) -> Token:
    def fail(problem: str) -> NoReturn:
        msg = f"token endpoint{where} answered HTTP {status_code} with {problem}"
        raise RefreshError(msg)

    access_token = fields.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        if "access_token" not in fields:
            fail(f"no access_token (fields present: {_field_names(fields)})")
        fail(f"an access_token that is {_kind_of(access_token)}, not a non-empty string")

    token_type = _token_type(fields.get("token_type"), fail)
    expires_in = _expires_in(fields.get("expires_in"), fail, max_lifetime, where)

    refresh_token = fields.get("refresh_token")
    if refresh_token == "":
        refresh_token = None
    if refresh_token is not None and not isinstance(refresh_token, str):
        fail(f"a refresh_token that is {_kind_of(refresh_token)}, not a string")

    scope = _scope(fields.get("scope"))
    known = {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    extra = {name: value for name, value in fields.items() if name not in known}
    try:
        return Token(
            access_token,
            token_type=token_type,
            expires_in=expires_in,
            refresh_token=refresh_token,
            scope=scope,
            extra=extra,
        )
    except InvalidTokenError as error:
        msg = f"token endpoint{where} answered HTTP {status_code} with an unusable token: {error}"
        raise RefreshError(msg) from error


def _token_type(value: object, fail: _Fail) -> str:
    if value is None or value == "":
        return "Bearer"
    if not isinstance(value, str):
        fail(f"a token_type that is {_kind_of(value)}, not a string")
    if value.lower() == "bearer":
        return "Bearer"
    return value


def _expires_in(value: object, fail: _Fail, max_lifetime: float, where: str) -> float | None:
    if value is None:
        return None
    seconds: float
    if isinstance(value, bool):
        fail(f"expires_in as a boolean ({value}), not a number of seconds")
    if isinstance(value, int):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.copysign(math.inf, value)
    elif isinstance(value, float):
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > 400 or not _DECIMAL.fullmatch(text):
            fail(f"expires_in as a string that is not a number of seconds ({_preview(text)})")
        seconds = float(text)
    else:
        fail(f"expires_in as {_kind_of(value)}, not a number of seconds")
    if math.isnan(seconds) or seconds <= 0:
        fail(f"expires_in={_preview(str(value))}; a lifetime must be a positive number of seconds")
    # An absurdly large value, even one beyond the float range, is clamped below.
    if seconds > max_lifetime:
        logger.warning(
            "token endpoint%s sent expires_in=%.0f s; keeping the token for at most %.0f s",
            where,
            seconds,
            max_lifetime,
        )
        seconds = max_lifetime
    return seconds


def _scope(value: object) -> str | None:
    if isinstance(value, str):
        return value or None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return " ".join(value) or None
    # Anything else is informational noise the token can do without.
    return None


# -- errors ----------------------------------------------------------------------


def _raise_error_response(
    status_code: int,
    fields: Mapping[str, Any],
    headers: Mapping[str, str],
    grant_type: str | None,
    where: str,
    signed_assertion: bool,
    secrets: tuple[re.Pattern[str], ...],
    now: float | None,
    *,
    body_note: str | None = None,
) -> NoReturn:
    code = _clean_text(fields.get("error"), secrets, limit=80)
    description = _clean_text(fields.get("error_description"), secrets, limit=_MAX_DESCRIPTION)
    error_uri = _clean_text(fields.get("error_uri"), secrets, limit=_MAX_DESCRIPTION)
    cause = OAuth2Error(status_code, code, description, error_uri)
    retry_after = parse_retry_after(headers.get("retry-after"), date=headers.get("date"), now=now)

    what = f"the {grant_type} request" if grant_type else "the token request"
    summary = f"token endpoint{where} rejected {what}: {cause}"
    if body_note is not None:
        # Proxies and gateways send HTML error pages, so the message names what came back.
        summary += f" with {body_note.split(';', 1)[0]}"

    if _is_transient(status_code, code):
        wait = f"; retry after {retry_after:g} s" if retry_after is not None else ""
        raise TransientRefreshError(summary + wait, retry_after=retry_after) from cause

    if signed_assertion and _rejects_assertion(code, grant_type) and _mentions_time(description):
        msg = (
            f"{summary}. Clock skew suspected: the server rejected the time claims of the "
            "JWT this client signed; check the local clock or increase the skew"
        )
        skew = ClockSkewError(f"the server rejected a JWT's time claims: {cause}")
        skew.__cause__ = cause
        raise RefreshError(msg) from skew

    hint = _HINTS.get(code or "")
    kind: type[RefreshError] = RefreshError
    if code == "invalid_grant" and grant_type == JWT_BEARER_GRANT_TYPE:
        kind = PermanentRefreshError
        hint = "the server rejected the assertion; check its issuer, subject and key"
    elif code == "invalid_grant":
        kind = ReauthenticationRequired
    elif status_code == 401 and code is None and grant_type == "refresh_token":
        kind = ReauthenticationRequired
        hint = "the refresh token was not accepted; obtain new credentials"
    elif 400 <= status_code < 500:
        kind = PermanentRefreshError
    msg = f"{summary}; {hint}" if hint else summary
    raise kind(msg) from cause


def _is_transient(status_code: int, code: str | None) -> bool:
    if status_code >= 500 or status_code in _TRANSIENT_STATUSES:
        return True
    return code in _TRANSIENT_CODES


def _rejects_assertion(code: str | None, grant_type: str | None) -> bool:
    # A client assertion fails client authentication; a JWT-bearer grant's assertion is
    # the grant itself. An invalid_grant to a refresh is about the refresh token instead.
    return code == "invalid_client" or grant_type == JWT_BEARER_GRANT_TYPE


def _mentions_time(description: str | None) -> bool:
    return description is not None and looks_like_clock_skew(description)


def _secret_spellings(redact: Iterable[str]) -> tuple[re.Pattern[str], ...]:
    """Return patterns for each secret as sent and as a server may echo it back.

    A server that quotes the request in its error text quotes the form-encoded body
    (``quote_plus``) or a URL (``quote``), with either case of percent escapes.
    """
    patterns: list[re.Pattern[str]] = []
    for secret in redact:
        if not secret:
            continue
        spellings = {secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret, safe="")}
        alternatives = "|".join(
            re.escape(spelling) for spelling in sorted(spellings, key=len)[::-1]
        )
        patterns.append(re.compile(alternatives, re.IGNORECASE))
    return tuple(patterns)


def _clean_text(value: object, secrets: tuple[re.Pattern[str], ...], *, limit: int) -> str | None:
    """Return server-supplied text safe for a message: printable, short, secrets removed."""
    if not isinstance(value, str):
        return None
    text: str = value
    for secret in secrets:
        text = secret.sub("***", text)
    text = "".join(char if char.isprintable() else " " for char in text).strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text if text else None


# -- small helpers ---------------------------------------------------------------


def _lower_keys(headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    return {name.lower(): value for name, value in headers.items()}


def _describe_endpoint(endpoint: str | None) -> str:
    return f" {_strip_query(endpoint)}" if endpoint else ""


def _strip_query(url: str) -> str:
    # Queries and fragments can carry secrets; messages name the endpoint without them.
    return url.split("?", 1)[0].split("#", 1)[0]


def _http_date(value: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def _field_names(fields: Mapping[str, Any]) -> str:
    names = sorted(_preview(str(name)) for name in fields)
    shown = ", ".join(names[:20])
    if len(names) > 20:
        shown += f", and {len(names) - 20} more"
    return shown or "none"


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return f"a JSON {_json_kind(value)}"


def _preview(text: str) -> str:
    # Field names and malformed numbers are not secrets, but keep them short and printable.
    cleaned = "".join(char if char.isprintable() else "?" for char in text)
    return repr(cleaned if len(cleaned) <= 40 else cleaned[:37] + "...")
