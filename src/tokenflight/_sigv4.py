"""AWS Signature Version 4: header signing (an httpx auth) and presigned URLs.

The algorithm, as the AWS documentation and its official test suite define it:

1. canonical request: method, canonical path, canonical query, canonical headers (names
   lowercase and sorted, values trimmed, repeated headers joined with ``,``), the list
   of signed headers, and the hex SHA-256 of the payload (or ``UNSIGNED-PAYLOAD``);
2. string to sign: ``AWS4-HMAC-SHA256``, the ``YYYYMMDD'T'HHMMSS'Z'`` timestamp, the
   credential scope ``date/region/service/aws4_request``, and the hex SHA-256 of (1);
3. signing key: HMAC-SHA256 chained over date, region, service and ``aws4_request``,
   starting from ``"AWS4" + secret``; the signature is the hex HMAC of (2) with it.

Every service except S3 normalizes the path (removing ``.`` and ``..`` segments and
repeated slashes) and percent-encodes the already encoded path a second time; S3 does
neither. ``service="s3"`` selects S3's rules unless they are set explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import httpx

from ._clock import Clock, SystemClock
from ._credentials import Credentials
from ._errors import ConfigurationError, SigningError
from ._signing import (
    DEFAULT_MAX_BODY_SIZE,
    CredentialsInput,
    ResponseCheck,
    RetryPolicy,
    SigningAuth,
    uri_encode,
)

__all__ = ["SigV4Auth", "SigV4Signature", "presign_url"]

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Headers that proxies and HTTP stacks add, drop or rewrite in transit; signing them
# would break the signature. The list follows botocore's (1.44), plus Authorization.
_UNSIGNED_HEADERS = frozenset(
    {
        "authorization",
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)

# Error codes with which AWS services reject a request's time, as the AWS SDKs list them.
_SKEW_CODES = ("RequestTimeTooSkewed", "RequestExpired", "RequestInTheFuture", "Signature expired")
_EXPIRED_TOKEN_CODES = ("ExpiredToken", "TokenRefreshRequired", "ExpiredTokenException")


def is_clock_skew_error(response: httpx.Response) -> bool:
    """Tell whether an AWS error response rejected the request's timestamp."""
    return response.status_code in (400, 403) and any(code in response.text for code in _SKEW_CODES)


def is_expired_token_error(response: httpx.Response) -> bool:
    """Tell whether an AWS error response rejected an expired session token."""
    return response.status_code in (400, 403) and any(
        code in response.text for code in _EXPIRED_TOKEN_CODES
    )


def amz_date(now: float) -> str:
    """Format Unix time ``now`` as SigV4's ``YYYYMMDD'T'HHMMSS'Z'`` timestamp."""
    return datetime.fromtimestamp(int(now), tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 section 5.2.4, and repeated slashes collapsed, as AWS services expect.
    segments: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    leading = "/" if path.startswith("/") else ""
    trailing = "/" if path.endswith("/") and segments else ""
    return leading + "/".join(segments) + trailing


def canonical_path(path: str, *, normalize: bool, double_encode: bool) -> str:
    """Return the canonical path of ``path`` as sent on the wire (already percent-encoded).

    :param normalize: remove dot segments and repeated slashes (all services but S3).
    :param double_encode: percent-encode the path again (all services but S3).
    """
    if normalize:
        path = _remove_dot_segments(path)
    if not path:
        path = "/"
    return uri_encode(path, keep_slash=True) if double_encode else path


def canonical_query_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """Return the canonical query of decoded ``(name, value)`` pairs."""
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_headers(headers: Iterable[tuple[str, str]]) -> tuple[str, str]:
    """Return the canonical headers block and the signed-headers list of ``headers``.

    Names are lowercased and sorted. Each value is trimmed, with its whitespace runs
    folded to one space. Repeated headers are joined with ``,`` in their order.
    """
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        grouped.setdefault(name.strip().lower(), []).append(" ".join(value.split()))
    names = sorted(grouped)
    block = "".join(f"{name}:{','.join(grouped[name])}\n" for name in names)
    return block, ";".join(names)


def _hmac_sha256(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


@dataclass(frozen=True)
class SigV4Signature:
    """One SigV4 signature with the intermediate strings, for debugging and tests.

    :param canonical_request: step 1 of the algorithm.
    :param string_to_sign: step 2.
    :param signature: the hex signature.
    :param signed_headers: the ``;``-separated names of the signed headers.
    :param credential_scope: ``date/region/service/aws4_request``.
    """

    canonical_request: str
    string_to_sign: str
    signature: str
    signed_headers: str
    credential_scope: str

    def __repr__(self) -> str:
        # The canonical request may hold a session token; show only the signature.
        return f"SigV4Signature(signature={self.signature!r}, scope={self.credential_scope!r})"


def compute_signature(
    *,
    credentials: Credentials,
    region: str,
    service: str,
    timestamp: str,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Iterable[tuple[str, str]],
    payload_hash: str,
    normalize_path: bool = True,
    double_encode: bool = True,
) -> SigV4Signature:
    """Compute a SigV4 signature from the parts of a request (no I/O, no clock).

    :param timestamp: the ``YYYYMMDD'T'HHMMSS'Z'`` timestamp the request carries.
    :param path: the path as sent on the wire, without the query.
    :param query: decoded ``(name, value)`` query pairs, auth parameters included for a
        presigned URL.
    :param headers: the headers to sign, ``host`` and ``x-amz-date`` included.
    :param payload_hash: hex SHA-256 of the body, or ``UNSIGNED-PAYLOAD``.
    """
    headers_block, signed_headers = canonical_headers(headers)
    canonical_request = "\n".join(
        [
            method.upper(),
            canonical_path(path, normalize=normalize_path, double_encode=double_encode),
            canonical_query_pairs(query),
            headers_block,
            signed_headers,
            payload_hash,
        ]
    )
    date = timestamp[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [ALGORITHM, timestamp, scope, hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()]
    )
    key = _hmac_sha256(b"AWS4" + credentials.secret_bytes, date)
    for part in (region, service, "aws4_request"):
        key = _hmac_sha256(key, part)
    signature = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()
    return SigV4Signature(canonical_request, string_to_sign, signature, signed_headers, scope)


def authorization_header(credentials: Credentials, signature: SigV4Signature) -> str:
    """Return the ``Authorization`` header value for ``signature``."""
    return (
        f"{ALGORITHM} Credential={credentials.key_id}/{signature.credential_scope}, "
        f"SignedHeaders={signature.signed_headers}, Signature={signature.signature}"
    )


def presign_parameters(
    credentials: Credentials,
    *,
    region: str,
    service: str,
    timestamp: str,
    expires: int,
    signed_headers: str,
    include_session_token: bool = True,
) -> list[tuple[str, str]]:
    """Return the ``X-Amz-*`` query parameters of a presigned URL, signature excluded."""
    scope = f"{credentials.key_id}/{timestamp[:8]}/{region}/{service}/aws4_request"
    parameters = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", scope),
        ("X-Amz-Date", timestamp),
        ("X-Amz-SignedHeaders", signed_headers),
        ("X-Amz-Expires", str(expires)),
    ]
    if include_session_token and credentials.session_token is not None:
        parameters.append(("X-Amz-Security-Token", credentials.session_token))
    return parameters


def _query_pairs(url: httpx.URL) -> list[tuple[str, str]]:
    return list(httpx.QueryParams(url.query.decode("ascii")).multi_items())


def _encode_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{uri_encode(name)}={uri_encode(value)}" for name, value in pairs)


def _check_scope_part(name: str, value: str) -> str:
    if not isinstance(value, str) or not value or "/" in value or not value.isascii():
        msg = f"{name} must be a non-empty ASCII string without '/', got {value!r}"
        raise ConfigurationError(msg)
    return value


def _require_key_id(credentials: Credentials) -> str:
    if credentials.key_id is None:
        msg = (
            f"SigV4 needs an access key id, but the credentials ({credentials.label}) have "
            "none; build them as Credentials(access_key_id, secret_access_key)"
        )
        raise SigningError(msg)
    return credentials.key_id


def _headers_to_sign(request: httpx.Request) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in request.headers.multi_items()
        if name.lower() not in _UNSIGNED_HEADERS
    ]


def _wire_path(url: httpx.URL) -> str:
    return url.raw_path.decode("ascii").partition("?")[0] or "/"


class SigV4Auth(SigningAuth):
    """Sign requests with AWS Signature Version 4, afresh for every attempt.

    Each attempt gets ``X-Amz-Date`` from ``clock`` (pass a ServerClock to sign with the
    server's time), the session token if the credentials carry one, and the
    ``Authorization`` header. With ``presign=True`` the same go into the query string
    instead, as for a presigned URL. The query string is re-encoded in canonical form,
    keeping its order.

    The payload is hashed in full: a streamed body is read into memory first, up to
    ``max_body_size`` bytes, or the request fails with :class:`~tokenflight.SigningError`
    before anything is sent. Services that accept it (S3 among them) can skip the hash
    with ``unsigned_payload="streaming"`` (streamed bodies only) or ``"always"``: the
    payload hash is then ``UNSIGNED-PAYLOAD`` and the stream is sent as it is. Such a
    request cannot be sent again, so it is never retried.

    :param credentials: a fixed :class:`~tokenflight.Credentials` (access key id, secret
        access key, session token), a :class:`~tokenflight.TokenCache` of credential
        tokens (see :meth:`Credentials.from_token`), a :class:`~tokenflight.KeyPool`, or
        an async function returning Credentials.
    :param region: the AWS region, such as ``"eu-west-1"``.
    :param service: the signing name of the service, such as ``"s3"`` or ``"execute-api"``.
    :param presign: sign in the query string instead of the headers.
    :param expires: lifetime of a query signature in seconds (``X-Amz-Expires``), 1 to
        604800.
    :param unsigned_payload: ``"never"``, ``"streaming"`` or ``"always"``; see above.
    :param content_sha256_header: send ``X-Amz-Content-SHA256``, as S3 requires. Default:
        only for S3.
    :param normalize_path: remove dot segments and repeated slashes before signing.
        Default: all services but S3.
    :param double_encode: percent-encode the path a second time. Default: all services
        but S3.
    :param sign_session_token: include the session token in the signature. A few
        services (IoT WebSocket URLs) want it added after signing: pass ``False``.
    :param clock_skew: returns whether a response rejected the signing time; by default
        the AWS codes ``RequestTimeTooSkewed``, ``RequestExpired``, ``RequestInTheFuture``
        and "Signature expired".
    :param credentials_rejected: returns whether a response rejected the session token as
        expired (by default the codes ``ExpiredToken``, ``ExpiredTokenException`` and
        ``TokenRefreshRequired``). Credentials from a TokenCache are then invalidated
        and the request is signed once more.

    :class:`SigningAuth` documents the other parameters: ``key``, ``clock``, ``retry``,
    ``max_body_size``, ``replace_existing``, ``ordered`` and ``random``.

    :raises ConfigurationError: for an invalid region, service, expiry or mode.
    """

    def __init__(
        self,
        credentials: CredentialsInput,
        *,
        region: str,
        service: str,
        presign: bool = False,
        expires: int = 3600,
        unsigned_payload: Literal["never", "streaming", "always"] = "never",
        content_sha256_header: bool | None = None,
        normalize_path: bool | None = None,
        double_encode: bool | None = None,
        sign_session_token: bool = True,
        key: Hashable = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        replace_existing: bool = False,
        ordered: bool = False,
        clock_skew: ResponseCheck | None = is_clock_skew_error,
        credentials_rejected: ResponseCheck | None = is_expired_token_error,
        random: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            credentials,
            key=key,
            clock=clock,
            retry=retry,
            max_body_size=max_body_size,
            replace_existing=replace_existing,
            ordered=ordered,
            clock_skew=clock_skew,
            credentials_rejected=credentials_rejected,
            random=random,
        )

        self.region = _check_scope_part("region", region)
        self.service = _check_scope_part("service", service)
        if isinstance(expires, bool) or not isinstance(expires, int) or not 1 <= expires <= 604800:
            msg = f"expires must be an int from 1 to 604800 seconds (7 days), got {expires!r}"
            raise ConfigurationError(msg)
        if unsigned_payload not in ("never", "streaming", "always"):
            msg = (
                "unsigned_payload must be 'never', 'streaming' or 'always', "
                f"got {unsigned_payload!r}"
            )
            raise ConfigurationError(msg)

        s3 = service == "s3"
        self.presign = presign
        self.expires = expires
        self.unsigned_payload = unsigned_payload
        self.content_sha256_header = s3 if content_sha256_header is None else content_sha256_header
        self.normalize_path = not s3 if normalize_path is None else normalize_path
        self.double_encode = not s3 if double_encode is None else double_encode
        self.sign_session_token = sign_session_token
        self.signature_header = "X-Amz-Signature" if presign else "Authorization"

    def _caller_signed(self, request: httpx.Request) -> bool:
        if self.presign:
            presigned = "X-Amz-Signature" in httpx.QueryParams(request.url.query.decode("ascii"))
            return not self._replace_existing and presigned
        return super()._caller_signed(request)

    def _wants_body(self, request: httpx.Request) -> bool:
        if self.unsigned_payload == "always":
            return False
        if self.unsigned_payload == "streaming":
            try:
                request.content  # noqa: B018 - raises RequestNotRead for a stream
            except httpx.RequestNotRead:
                return False
        return True

    def _sign(
        self, request: httpx.Request, credentials: Credentials, body: bytes | None, now: float
    ) -> None:
        _require_key_id(credentials)
        timestamp = amz_date(now)
        if body is None or self.unsigned_payload == "always":
            payload_hash = UNSIGNED_PAYLOAD
        else:
            payload_hash = hashlib.sha256(body).hexdigest()
        query = [
            (name, value)
            for name, value in _query_pairs(request.url)
            if not (self.presign and name.startswith("X-Amz-"))
        ]
        token = credentials.session_token

        if self.presign:
            signed_headers = canonical_headers(_headers_to_sign(request))[1]
            parameters = presign_parameters(
                credentials,
                region=self.region,
                service=self.service,
                timestamp=timestamp,
                expires=self.expires,
                signed_headers=signed_headers,
                include_session_token=self.sign_session_token,
            )
            signature = compute_signature(
                credentials=credentials,
                region=self.region,
                service=self.service,
                timestamp=timestamp,
                method=request.method,
                path=_wire_path(request.url),
                query=query + parameters,
                headers=_headers_to_sign(request),
                payload_hash=payload_hash,
                normalize_path=self.normalize_path,
                double_encode=self.double_encode,
            )
            if token is not None and not self.sign_session_token:
                parameters.append(("X-Amz-Security-Token", token))
            parameters.append(("X-Amz-Signature", signature.signature))
            encoded = _encode_pairs(query + parameters)
            request.url = request.url.copy_with(query=encoded.encode("ascii"))
            return

        if query:
            request.url = request.url.copy_with(query=_encode_pairs(query).encode("ascii"))
        for name in ("X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256"):
            request.headers.pop(name, None)
        request.headers["X-Amz-Date"] = timestamp
        if token is not None and self.sign_session_token:
            request.headers["X-Amz-Security-Token"] = token
        if self.content_sha256_header:
            request.headers["X-Amz-Content-SHA256"] = payload_hash
        signature = compute_signature(
            credentials=credentials,
            region=self.region,
            service=self.service,
            timestamp=timestamp,
            method=request.method,
            path=_wire_path(request.url),
            query=query,
            headers=_headers_to_sign(request),
            payload_hash=payload_hash,
            normalize_path=self.normalize_path,
            double_encode=self.double_encode,
        )
        request.headers["Authorization"] = authorization_header(credentials, signature)
        if token is not None and not self.sign_session_token:
            request.headers["X-Amz-Security-Token"] = token

    def _credential_headers(self) -> tuple[str, ...]:
        return ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256")

    def __repr__(self) -> str:
        return (
            f"SigV4Auth(credentials={self._lender!r}, region={self.region!r}, "
            f"service={self.service!r}, presign={self.presign})"
        )


def presign_url(
    method: str,
    url: str | httpx.URL,
    credentials: Credentials,
    *,
    region: str,
    service: str,
    expires: int = 3600,
    headers: dict[str, str] | None = None,
    clock: Clock | None = None,
) -> httpx.URL:
    """Return ``url`` presigned with SigV4, for a request sent later by anyone.

    The payload is ``UNSIGNED-PAYLOAD`` for S3 and the hash of an empty body otherwise,
    as the services expect. Headers in ``headers`` (besides ``host``, always signed) must
    then be sent with the request exactly as given.

    >>> presign_url("GET", "https://bucket.s3.amazonaws.com/report.csv", credentials,
    ...             region="eu-west-1", service="s3", expires=900)  # doctest: +SKIP

    :param clock: time source of the signature's date; a ServerClock applies the
        server's offset.
    :raises ConfigurationError: for an invalid region, service or expiry.
    :raises SigningError: when the credentials have no access key id.
    """
    request = httpx.Request(method, url, headers=headers)
    unsigned: Literal["always", "never"] = "always" if service == "s3" else "never"
    auth = SigV4Auth(
        credentials,
        region=region,
        service=service,
        presign=True,
        expires=expires,
        unsigned_payload=unsigned,
        clock=clock if clock is not None else SystemClock(),
        replace_existing=True,
    )
    auth._sign(request, credentials, b"", auth.clock.time())
    return request.url
