"""A generic HMAC request-signing scheme: the signer (an httpx auth) and the verifier.

Both sides build the same canonical string from the request, by default::

    METHOD
    /raw/path/as/sent
    canonical query (decoded, re-encoded, sorted)
    key id (empty when the scheme sends none)
    timestamp (Unix seconds)
    nonce (empty when the scheme sends none)
    name:value of each signed header, in the scheme's order (empty value when absent)
    hex digest of the body

and compare an HMAC of it, SHA-256 or SHA-512, keyed with the shared secret. The path is
taken byte for byte as it went over the wire, so two spellings of one path never share
a signature. :class:`HmacScheme` fixes the header names, the algorithm, the signed
headers and, if needed, the whole canonical string, so the same class can follow an
existing webhook or service-to-service convention.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import httpx

from ._clock import Clock, SystemClock
from ._credentials import Credentials
from ._errors import ConfigurationError, SignatureVerificationError, SigningError
from ._nonce import PROCESS_NONCES, NonceGenerator
from ._signing import (
    DEFAULT_MAX_BODY_SIZE,
    CredentialsInput,
    ResponseCheck,
    RetryPolicy,
    SigningAuth,
    canonical_query,
    check_header_name,
    encode_query,
)

__all__ = ["HmacAuth", "HmacCanonicalRequest", "HmacScheme", "HmacVerifier", "VerifiedRequest"]

HmacAlgorithm = Literal["sha256", "sha512"]


@dataclass(frozen=True)
class HmacCanonicalRequest:
    """The parts of a request that an HMAC signature covers.

    :param method: the HTTP method, uppercase.
    :param path: the path as sent on the wire, percent-encoded, without the query.
    :param query: the canonical query string (see :func:`canonical_query`).
    :param headers: ``(name, value)`` of each signed header in the scheme's order, with
        lowercase names and whitespace runs folded to one space.
    :param key_id: the key id, or ``""`` when the scheme sends none.
    :param timestamp: the timestamp header's value.
    :param nonce: the nonce header's value, or ``""`` when the scheme sends none.
    :param body_hash: hex digest of the body with the scheme's algorithm.
    """

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    key_id: str
    timestamp: str
    nonce: str
    body_hash: str

    def to_string(self) -> str:
        """Return the default canonical string: one field per line, as the module shows."""
        lines = [self.method, self.path, self.query, self.key_id, self.timestamp, self.nonce]
        lines.extend(f"{name}:{value}" for name, value in self.headers)
        lines.append(self.body_hash)
        return "\n".join(lines)


def _default_canonical(request: HmacCanonicalRequest) -> str:
    return request.to_string()


@dataclass(frozen=True)
class HmacScheme:
    """The conventions an HMAC signer and its verifier agree on.

    :param algorithm: ``"sha256"`` or ``"sha512"``, for the HMAC and the body hash.
    :param signature_header: where the signature goes.
    :param key_id_header: where the key id goes, or ``None`` to send none (one shared
        secret, as most webhooks have).
    :param timestamp_header: where the timestamp (integer Unix seconds) goes.
    :param nonce_header: where the nonce goes, or ``None`` to send none. Without nonces,
        the verifier detects replays by the signature itself.
    :param content_hash_header: where to also send the body's hex digest, or ``None``.
    :param signed_headers: names of the request headers the signature covers.
    :param signature_prefix: text before the encoded signature, such as ``"sha256="``.
    :param encoding: ``"hex"`` or ``"base64"`` encoding of the signature.
    :param canonical: function that builds the string to sign from a
        :class:`HmacCanonicalRequest`; :meth:`HmacCanonicalRequest.to_string` by default.
    :raises ConfigurationError: for an unknown algorithm or encoding, or an invalid
        header name.
    """

    algorithm: HmacAlgorithm = "sha256"
    signature_header: str = "X-Signature"
    key_id_header: str | None = "X-Key-Id"
    timestamp_header: str = "X-Timestamp"
    nonce_header: str | None = "X-Nonce"
    content_hash_header: str | None = None
    signed_headers: tuple[str, ...] = ("host", "content-type")
    signature_prefix: str = ""
    encoding: Literal["hex", "base64"] = "hex"
    canonical: Callable[[HmacCanonicalRequest], str] = _default_canonical

    def __post_init__(self) -> None:
        if self.algorithm not in ("sha256", "sha512"):
            msg = f"algorithm must be 'sha256' or 'sha512', got {self.algorithm!r}"
            raise ConfigurationError(msg)
        if self.encoding not in ("hex", "base64"):
            msg = f"encoding must be 'hex' or 'base64', got {self.encoding!r}"
            raise ConfigurationError(msg)
        check_header_name(self.signature_header, "signature_header")
        check_header_name(self.timestamp_header, "timestamp_header")
        for name in ("key_id_header", "nonce_header", "content_hash_header"):
            value = getattr(self, name)
            if value is not None:
                check_header_name(value, name)
        signed: object = self.signed_headers  # checked at run time for untyped callers
        if isinstance(signed, str):
            msg = "signed_headers must be a tuple of header names, not a single string"
            raise ConfigurationError(msg)
        names = tuple(check_header_name(h, "signed_headers").lower() for h in self.signed_headers)
        object.__setattr__(self, "signed_headers", names)

    def digest(self, data: bytes) -> str:
        """Return the hex digest of ``data`` with the scheme's hash algorithm."""
        return hashlib.new(self.algorithm, data).hexdigest()

    def signature(self, secret: bytes, request: HmacCanonicalRequest) -> str:
        """Return the signature header value for ``request``: prefix and encoded HMAC."""
        mac = hmac.new(secret, self.canonical(request).encode("utf-8"), self.algorithm).digest()
        encoded = mac.hex() if self.encoding == "hex" else base64.b64encode(mac).decode("ascii")
        return self.signature_prefix + encoded


def _fold(value: str) -> str:
    return " ".join(value.split())


def _split_target(target: str) -> tuple[str, str]:
    path, _, query = target.partition("?")
    return path or "/", query


class HmacAuth(SigningAuth):
    """Sign every request, and every retry of it, with an HMAC over its content.

    Each attempt gets a new timestamp (integer Unix seconds from ``clock``) and a new
    nonce (strictly increasing per key). The body is hashed in full, so a streamed body
    is read into memory first, up to ``max_body_size`` bytes. A larger one fails with
    :class:`~tokenflight.SigningError` before anything is sent. The query string is
    re-encoded in canonical form, keeping its order, so both sides read the same bytes.

    >>> auth = HmacAuth(Credentials("key-1", "shared-secret"))
    >>> client = httpx.AsyncClient(auth=auth)  # doctest: +SKIP

    :param credentials: a fixed :class:`~tokenflight.Credentials`, a
        :class:`~tokenflight.TokenCache` of credential tokens, a
        :class:`~tokenflight.KeyPool`, or an async function returning Credentials.
    :param scheme: header names, algorithm and canonical string; see :class:`HmacScheme`.
    :param nonces: the nonce generator. By default every signer of the process shares
        one sequence per key, seeded from each signer's ``clock``, so two signers of one
        key never issue the same nonce.
    :param credentials_rejected: returns whether a response rejected the credentials
        themselves. Credentials from a TokenCache are then invalidated and the request
        is signed once more with fresh ones. By default any 401 does.

    :class:`SigningAuth` documents the other parameters: ``key``, ``clock``, ``retry``,
    ``max_body_size``, ``replace_existing``, ``ordered``, ``clock_skew`` and ``random``.

    :raises ConfigurationError: for invalid settings.
    """

    def __init__(
        self,
        credentials: CredentialsInput,
        *,
        scheme: HmacScheme | None = None,
        nonces: NonceGenerator | None = None,
        key: Hashable = None,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        replace_existing: bool = False,
        ordered: bool = False,
        clock_skew: ResponseCheck | None = None,
        credentials_rejected: ResponseCheck | None = lambda response: response.status_code == 401,
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
        self.scheme = scheme if scheme is not None else HmacScheme()
        self.signature_header = self.scheme.signature_header
        self._nonces = nonces

    def _sign(
        self, request: httpx.Request, credentials: Credentials, body: bytes | None, now: float
    ) -> None:
        scheme = self.scheme
        if scheme.key_id_header is not None and credentials.key_id is None:
            msg = (
                f"the HMAC scheme sends a key id in {scheme.key_id_header}, but the credentials "
                f"({credentials.label}) have none; set key_id, or key_id_header=None"
            )
            raise SigningError(msg)
        query = request.url.query.decode("ascii")
        if query:
            request.url = request.url.copy_with(query=encode_query(query).encode("ascii"))

        timestamp = str(int(now))
        nonce = ""
        if scheme.nonce_header is not None:
            key = self._ordering_key(credentials)
            if self._nonces is None:
                nonce = str(PROCESS_NONCES.next(key, now=now))
            else:
                nonce = str(self._nonces.next(key))
            request.headers[scheme.nonce_header] = nonce
        if scheme.key_id_header is not None and credentials.key_id is not None:
            request.headers[scheme.key_id_header] = credentials.key_id
        request.headers[scheme.timestamp_header] = timestamp
        body_hash = scheme.digest(body or b"")
        if scheme.content_hash_header is not None:
            request.headers[scheme.content_hash_header] = body_hash

        path, _ = _split_target(request.url.raw_path.decode("ascii"))
        canonical = HmacCanonicalRequest(
            method=request.method.upper(),
            path=path,
            query=canonical_query(request.url.query.decode("ascii")),
            headers=tuple(
                (name, _fold(request.headers.get(name, ""))) for name in scheme.signed_headers
            ),
            key_id=credentials.key_id or "",
            timestamp=timestamp,
            nonce=nonce,
            body_hash=body_hash,
        )
        request.headers[scheme.signature_header] = scheme.signature(
            credentials.secret_bytes, canonical
        )

    def _credential_headers(self) -> tuple[str, ...]:
        scheme = self.scheme
        names = (
            scheme.signature_header,
            scheme.key_id_header,
            scheme.timestamp_header,
            scheme.nonce_header,
            scheme.content_hash_header,
        )
        return tuple(name for name in names if name is not None)

    def __repr__(self) -> str:
        return f"HmacAuth(credentials={self._lender!r}, algorithm={self.scheme.algorithm!r})"


# -- the receiving side ---------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedRequest:
    """The facts a successful verification established about a request.

    :param key_id: the key id the request was signed with (``None`` for schemes that
        send none).
    :param timestamp: the signed timestamp, Unix seconds.
    :param nonce: the signed nonce, or ``None`` for schemes that send none.
    """

    key_id: str | None
    timestamp: int
    nonce: str | None


KeyLookup = Mapping[str, str | bytes] | Callable[[str | None], str | bytes | None]
HeadersInput = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


def _as_text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _header_map(headers: HeadersInput) -> dict[str, str]:
    if isinstance(headers, httpx.Headers):
        return {name: value for name, value in headers.items()}
    items: Iterable[tuple[str | bytes, str | bytes]]
    items = headers.items() if isinstance(headers, Mapping) else headers
    merged: dict[str, str] = {}
    for raw_name, raw_value in items:
        name = _as_text(raw_name).lower()
        value = _as_text(raw_value)
        # Repeated headers join with ", ", as httpx joins them on the sending side.
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    return merged


class HmacVerifier:
    """Verify requests signed with :class:`HmacAuth` (or by anyone following the scheme).

    The checks, in this order:

    1. the headers are present and well formed;
    2. the key id is known;
    3. the timestamp is within ``tolerance`` seconds of ``clock.time()``;
    4. the body hash header matches the body, if the scheme sends one;
    5. the signature matches, compared in constant time;
    6. the nonce was not seen before, and exceeds the key's last nonce when
       ``increasing_nonces`` is set.

    Nonces are recorded only once the signature is valid, so forged requests cannot fill
    the replay memory.

    A nonce is remembered until its timestamp leaves the tolerance window, after which
    the timestamp check rejects a replay anyway. When ``max_nonces`` are held, the
    oldest is dropped and requests not newer than its timestamp are rejected as stale,
    so a full memory fails closed instead of accepting replays.

    The verifier is thread-safe and does no I/O, so it can run inside any web framework.

    :param keys: the secrets by key id, as a mapping or a function returning the secret
        or ``None``. For a scheme without key ids, the function receives ``None``; a
        mapping is looked up under ``""``.
    :param scheme: the conventions shared with the signer.
    :param tolerance: largest accepted difference between the signed timestamp and
        ``clock.time()``, in seconds.
    :param max_nonces: how many nonces (or signatures) to remember for replay detection.
    :param increasing_nonces: reject a nonce that is not above the last one accepted for
        its key, for APIs that require ordered nonces. Nonces must then be integers.
    :param clock: time source.
    :raises ConfigurationError: for a negative tolerance or a ``max_nonces`` below 1.
    """

    def __init__(
        self,
        keys: KeyLookup,
        *,
        scheme: HmacScheme | None = None,
        tolerance: float = 300.0,
        max_nonces: int = 100_000,
        increasing_nonces: bool = False,
        clock: Clock | None = None,
    ) -> None:
        if not tolerance >= 0:
            msg = f"tolerance must be >= 0 seconds, got {tolerance!r}"
            raise ConfigurationError(msg)
        if isinstance(max_nonces, bool) or not isinstance(max_nonces, int) or max_nonces < 1:
            msg = f"max_nonces must be an int >= 1, got {max_nonces!r}"
            raise ConfigurationError(msg)
        self.scheme = scheme if scheme is not None else HmacScheme()
        self._keys = keys
        self._tolerance = float(tolerance)
        self._max_nonces = max_nonces
        self._increasing = increasing_nonces
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        # (key id, nonce or signature) -> signed timestamp; a heap orders them for expiry.
        self._seen: dict[tuple[str, str], int] = {}
        self._expiry: list[tuple[int, tuple[str, str]]] = []
        self._floor = -1
        self._last_nonce: dict[str, int] = {}

    def verify(
        self, method: str, target: str | bytes, headers: HeadersInput, body: bytes = b""
    ) -> VerifiedRequest:
        """Verify one request; return what it proved, or raise.

        :param method: the request method.
        :param target: the request target as received: the raw path and, after ``?``,
            the raw query. In ASGI that is ``scope["raw_path"]`` plus ``b"?"`` and
            ``scope["query_string"]`` when the query is not empty.
        :param headers: the request headers, as a mapping or a list of pairs (ASGI's
            ``scope["headers"]`` works as is).
        :param body: the request body, complete.
        :raises SignatureVerificationError: naming the check that failed in ``reason``.
        """
        scheme = self.scheme
        fields = _header_map(headers)

        def required(name: str) -> str:
            value = fields.get(name.lower())
            if value is None:
                msg = f"the request has no {name} header"
                raise SignatureVerificationError(msg, reason="missing_header")
            return value

        signature = required(scheme.signature_header)
        timestamp_text = required(scheme.timestamp_header)
        key_id = required(scheme.key_id_header) if scheme.key_id_header is not None else None
        nonce = required(scheme.nonce_header) if scheme.nonce_header is not None else None

        if not timestamp_text.isascii() or not timestamp_text.isdigit():
            msg = f"the {scheme.timestamp_header} header is not an integer Unix time"
            raise SignatureVerificationError(msg, reason="malformed")
        timestamp = int(timestamp_text)
        secret = self._secret(key_id)

        now = self._clock.time()
        offset = timestamp - now
        if abs(offset) > self._tolerance:
            direction = "ahead of" if offset > 0 else "behind"
            msg = (
                f"the signed timestamp {timestamp} is {abs(offset):.0f} s {direction} the "
                f"verifier's clock, beyond the tolerance of {self._tolerance:g} s"
            )
            raise SignatureVerificationError(msg, reason="timestamp")
        if timestamp <= self._floor:
            msg = (
                f"the signed timestamp {timestamp} is not after {self._floor}, the newest "
                "timestamp whose nonces the full replay memory (max_nonces) has dropped, so "
                "a replay cannot be ruled out; sign the request again"
            )
            raise SignatureVerificationError(msg, reason="timestamp")

        body_hash = scheme.digest(body)
        if scheme.content_hash_header is not None:
            sent_hash = required(scheme.content_hash_header)
            if not hmac.compare_digest(sent_hash.encode("latin-1"), body_hash.encode("ascii")):
                msg = f"the {scheme.content_hash_header} header does not match the body"
                raise SignatureVerificationError(msg, reason="signature")

        path, query = _split_target(_as_text(target))
        canonical = HmacCanonicalRequest(
            method=method.upper(),
            path=path,
            query=canonical_query(query),
            headers=tuple((name, _fold(fields.get(name, ""))) for name in scheme.signed_headers),
            key_id=key_id or "",
            timestamp=timestamp_text,
            nonce=nonce or "",
            body_hash=body_hash,
        )
        expected = scheme.signature(secret, canonical)
        if not hmac.compare_digest(expected.encode("ascii"), signature.encode("latin-1")):
            msg = "the signature does not match the request"
            raise SignatureVerificationError(msg, reason="signature")

        self._remember(key_id or "", nonce if nonce is not None else signature, timestamp)
        return VerifiedRequest(key_id, timestamp, nonce)

    def _secret(self, key_id: str | None) -> bytes:
        keys = self._keys
        if isinstance(keys, Mapping):
            secret = keys.get(key_id if key_id is not None else "")
        else:
            secret = keys(key_id)
        if secret is None:
            msg = f"unknown key id {key_id!r}" if key_id is not None else "no key configured"
            raise SignatureVerificationError(msg, reason="unknown_key")
        return secret.encode("utf-8") if isinstance(secret, str) else secret

    def _remember(self, key_id: str, nonce: str, timestamp: int) -> None:
        entry = (key_id, nonce)
        now = self._clock.time()
        with self._lock:
            while self._expiry and self._expiry[0][0] + self._tolerance < now:
                _, old = heapq.heappop(self._expiry)
                self._seen.pop(old, None)
            if entry in self._seen:
                msg = f"the nonce of key {key_id!r} was already used"
                raise SignatureVerificationError(msg, reason="replayed")
            if self._increasing:
                if not nonce.isascii() or not nonce.isdigit():
                    msg = "the nonce must be an integer when nonces must increase"
                    raise SignatureVerificationError(msg, reason="malformed")
                value = int(nonce)
                last = self._last_nonce.get(key_id)
                if last is not None and value <= last:
                    msg = f"the nonce of key {key_id!r} is not above the last accepted nonce"
                    raise SignatureVerificationError(msg, reason="nonce_order")
                self._last_nonce[key_id] = value
            while len(self._seen) >= self._max_nonces and self._expiry:
                dropped_at, old = heapq.heappop(self._expiry)
                if self._seen.pop(old, None) is not None:
                    self._floor = max(self._floor, dropped_at)
            self._seen[entry] = timestamp
            heapq.heappush(self._expiry, (timestamp, entry))

    def __repr__(self) -> str:
        return (
            f"HmacVerifier(algorithm={self.scheme.algorithm!r}, tolerance={self._tolerance:g}, "
            f"remembered={len(self._seen)})"
        )
