"""Locally signed JWTs: the signer, the token source, presets and time checks.

:class:`JwtSigner` turns a claims template into a compact JWS (RFC 7515, RFC 7519) with
integer ``iat``/``nbf``/``exp``, ``iat`` and ``nbf`` backdated by the skew, a fresh
``jti`` and the key's ``kid`` in the header. :class:`JwtSource` wraps a signer as a
:class:`~tokenflight.TokenSource`, so a :class:`~tokenflight.TokenCache` signs once per
lifetime instead of once per request.

Every time reading goes through the signer's clock. Pass a
:class:`~tokenflight.ServerClock` to sign with the offset learned from the server's
``Date`` headers.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import types
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from ._clock import Clock, SystemClock
from ._errors import ClockSkewError, ConfigurationError, InvalidTokenError
from ._keys import KeyInput, SigningKey, load_signing_key
from ._token import Token, fingerprint

__all__ = [
    "JwtSigner",
    "JwtSource",
    "SignedJwt",
    "check_time_claims",
    "decode_unverified",
    "encode_jws",
]

_TIME_CLAIMS = frozenset({"iat", "nbf", "exp"})
_EMPTY: Mapping[str, Any] = types.MappingProxyType({})

# GitHub's "Generating a JSON Web Token (JWT) for a GitHub App" requires an exp no more
# than 10 minutes in the future and recommends an iat 60 s in the past against clock
# drift. Capping exp - iat at 600 s puts exp 9 minutes ahead, which leaves a margin for a
# local clock that runs fast.
GITHUB_APP_MAX_LIFETIME = 600.0
GITHUB_APP_SKEW = 60.0

# Apple's APNs documentation requires a new provider token at least once an hour, and
# APNs returns the error TooManyProviderTokenUpdates when tokens change more often than
# every 20 minutes.
APPLE_PROVIDER_TOKEN_LIFETIME = 3600.0


def _is_instance(value: object, kind: type) -> bool:
    # Checks arguments from callers that do not run a type checker.
    return isinstance(value, kind)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Mapping[str, Any], part: str) -> bytes:
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        msg = f"the JWT {part} cannot be serialized as JSON: {error}"
        raise ConfigurationError(msg) from None
    return text.encode("utf-8")


def encode_jws(key: SigningKey, payload: bytes, *, headers: Mapping[str, Any] | None = None) -> str:
    """Sign ``payload`` and return the JWS compact serialization (RFC 7515 section 7.1).

    The protected header starts as ``{"alg": key.algorithm}`` plus ``"kid"`` when the key
    has one, then takes ``headers`` in order; a header set to ``None`` is removed. The
    header is compact JSON in that order, so a given header and payload always give the
    same signing input.

    :param key: the signing key, which fixes ``alg``.
    :param payload: the bytes to sign, for a JWT the UTF-8 JSON of the claims.
    :param headers: extra protected header parameters, for example ``{"typ": "JWT"}``.
    :raises ConfigurationError: when ``headers`` sets ``alg`` to another algorithm than
        the key's, or cannot be serialized as JSON.
    """
    value, _ = _encode(key, payload, headers)
    return value


def _encode(
    key: SigningKey, payload: bytes, headers: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    if not _is_instance(key, SigningKey):
        msg = f"expected a SigningKey from load_signing_key(), not {type(key).__name__}"
        raise ConfigurationError(msg)
    header: dict[str, Any] = {"alg": key.algorithm}
    if key.kid is not None:
        header["kid"] = key.kid
    for name, value in (headers or {}).items():
        if name == "alg" and value != key.algorithm:
            msg = f"header alg {value!r} contradicts the key's algorithm {key.algorithm}"
            raise ConfigurationError(msg)
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    signing_input = f"{_b64url(_json(header, 'header'))}.{_b64url(payload)}"
    signature = key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{_b64url(signature)}", header


@dataclass(frozen=True, repr=False)
class SignedJwt:
    """A JWT as :meth:`JwtSigner.issue` produced it, with the claims it carries.

    ``value`` is a credential: ``repr()`` shows only its fingerprint.

    :param value: the compact serialization, ``header.payload.signature``.
    :param header: the protected header.
    :param claims: the claims, including those the signer added.
    :param expires_at: Unix seconds after which the peer rejects the JWT: its ``exp``,
        or, when the JWT has no ``exp``, the end of the lifetime the signer applied.
    :param signed_at: the signer's clock reading, in Unix seconds, when it signed.
    """

    value: str
    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    expires_at: int
    signed_at: float = field(default=0.0)

    def __repr__(self) -> str:
        return (
            f"SignedJwt(value=<redacted {fingerprint(self.value)}>, "
            f"header={dict(self.header)!r}, claims={dict(self.claims)!r})"
        )

    __str__ = __repr__


def _require_seconds(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"{name} must be a finite number of seconds, got {value!r}"
        raise ConfigurationError(msg)
    if positive and value <= 0:
        msg = f"{name} must be > 0 seconds, got {value!r}"
        raise ConfigurationError(msg)
    if value < 0:
        msg = f"{name} must be >= 0 seconds, got {value!r}"
        raise ConfigurationError(msg)
    return float(value)


class JwtSigner:
    """Sign JWTs with one key, reading time from one clock.

    Each :meth:`sign` adds what the claims leave out:

    * ``iat`` and ``nbf``: now minus ``skew``, so a peer whose clock is behind ours by up
      to ``skew`` seconds, or that steps its clock back, still accepts the JWT;
    * ``exp``: now plus ``lifetime``, clamped to ``iat + max_lifetime``;
    * ``jti``: 128 random bits, so no two JWTs share an id;
    * the header ``typ: JWT`` and the key's ``kid``.

    All three times are integer Unix seconds, rounded down (RFC 7519 allows fractions,
    but strict validators reject them). Claims given explicitly are kept as they are.

    :param key: a key from :func:`~tokenflight.load_signing_key`.
    :param clock: where "now" comes from; a :class:`~tokenflight.ServerClock` applies the
        server's clock offset. Defaults to the system clock.
    :param skew: seconds by which ``iat`` and ``nbf`` are backdated.
    :param max_lifetime: largest ``exp - iat`` a peer accepts, or ``None`` for no limit.
        A longer ``lifetime`` is shortened to fit.
    :param time_claims: which of ``iat``, ``nbf`` and ``exp`` to add.
    :param jti: whether to add a ``jti``.
    :param typ: the ``typ`` header, or ``None`` to leave it out.
    :raises ConfigurationError: for a key that is not a :class:`SigningKey`, a negative or
        non-finite ``skew`` or ``max_lifetime``, or an unknown time claim.
    """

    __slots__ = ("_clock", "_jti", "_key", "_max_lifetime", "_skew", "_time_claims", "_typ")

    def __init__(
        self,
        key: SigningKey,
        *,
        clock: Clock | None = None,
        skew: float = 60.0,
        max_lifetime: float | None = None,
        time_claims: Collection[str] = ("iat", "nbf", "exp"),
        jti: bool = True,
        typ: str | None = "JWT",
    ) -> None:
        if not _is_instance(key, SigningKey):
            msg = (
                f"JwtSigner needs a SigningKey, not {type(key).__name__}; "
                "build one with tokenflight.load_signing_key(..., algorithm=...)"
            )
            raise ConfigurationError(msg)
        unknown = set(time_claims) - _TIME_CLAIMS
        if isinstance(time_claims, str) or unknown:
            msg = f"time_claims must be a collection of 'iat', 'nbf' and 'exp', got {time_claims!r}"
            raise ConfigurationError(msg)
        self._key = key
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._skew = _require_seconds("skew", skew)
        self._max_lifetime = (
            None
            if max_lifetime is None
            else _require_seconds("max_lifetime", max_lifetime, positive=True)
        )
        self._time_claims = frozenset(time_claims)
        self._jti = bool(jti)
        self._typ = typ

    @property
    def key(self) -> SigningKey:
        """The signing key."""
        return self._key

    @property
    def clock(self) -> Clock:
        """The clock the signer reads "now" from."""
        return self._clock

    @property
    def skew(self) -> float:
        """Seconds by which ``iat`` and ``nbf`` are backdated."""
        return self._skew

    @property
    def max_lifetime(self) -> float | None:
        """Largest ``exp - iat`` in seconds, or ``None``."""
        return self._max_lifetime

    def sign(
        self,
        claims: Mapping[str, Any],
        *,
        lifetime: float,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Sign ``claims`` as a JWT valid for ``lifetime`` seconds from now.

        See :meth:`issue` for the parameters; this returns only the compact JWT.
        """
        return self.issue(claims, lifetime=lifetime, headers=headers).value

    def issue(
        self,
        claims: Mapping[str, Any],
        *,
        lifetime: float,
        headers: Mapping[str, Any] | None = None,
    ) -> SignedJwt:
        """Sign ``claims`` as a JWT and return it with the claims and expiry it carries.

        :param claims: the claims; ``iat``, ``nbf``, ``exp`` and ``jti`` given here are
            kept instead of generated, and time claims must then be integers.
        :param lifetime: seconds from now until ``exp`` (before the ``max_lifetime``
            clamp). Without an ``exp`` claim it still sets :attr:`SignedJwt.expires_at`.
        :param headers: extra header parameters; ``None`` as a value removes one.
        :raises ConfigurationError: for a lifetime that is not a positive number, a time
            claim that is not an integer, claims that are not JSON-serializable, or a
            ``max_lifetime`` shorter than ``skew``, which would put the generated ``exp``
            in the past. An ``exp`` given in ``claims`` is used as it is.
        """
        seconds = _require_seconds("lifetime", lifetime, positive=True)
        payload = dict(claims)
        for name in _TIME_CLAIMS & payload.keys():
            value = payload[name]
            if isinstance(value, bool) or not isinstance(value, int):
                msg = (
                    f"claim {name!r} must be an integer number of Unix seconds, "
                    f"got {type(value).__name__}; leave it out to let the signer set it"
                )
                raise ConfigurationError(msg)

        now = self._clock.time()
        issued = math.floor(now - self._skew)
        if "iat" in self._time_claims:
            payload.setdefault("iat", issued)
        if "nbf" in self._time_claims:
            payload.setdefault("nbf", issued)
        expires = math.floor(now + seconds)
        if self._max_lifetime is not None:
            start = payload.get("iat", issued)
            expires = min(expires, start + math.floor(self._max_lifetime))
        if "exp" not in payload and expires <= now:
            msg = (
                f"the JWT would expire at {expires}, not after now ({math.floor(now)}): "
                f"lifetime={lifetime!r}, skew={self._skew:g}, max_lifetime="
                f"{self._max_lifetime!r}; make max_lifetime longer than skew"
            )
            raise ConfigurationError(msg)
        if "exp" in self._time_claims:
            payload.setdefault("exp", expires)
        expires_at: int = payload.get("exp", expires)
        if self._jti and "jti" not in payload:
            payload["jti"] = secrets.token_urlsafe(16)

        header: dict[str, Any] = {}
        if self._typ is not None:
            header["typ"] = self._typ
        header.update(headers or {})
        value, full_header = _encode(self._key, _json(payload, "claims"), header)
        return SignedJwt(
            value=value,
            header=types.MappingProxyType(full_header),
            claims=types.MappingProxyType(payload),
            expires_at=expires_at,
            signed_at=now,
        )

    def __repr__(self) -> str:
        return (
            f"JwtSigner({self._key!r}, skew={self._skew:g}, "
            f"max_lifetime={self._max_lifetime!r}, clock={self._clock!r})"
        )


class JwtSource:
    """A :class:`~tokenflight.TokenSource` that signs a JWT on each :meth:`fetch`.

    Put it behind a :class:`~tokenflight.TokenCache`: the cache then reuses one JWT until
    shortly before it expires, so signing happens once per lifetime, not once per request.

    Each token carries the JWT's expiry twice: ``expires_at`` is the ``exp`` (Unix
    seconds on the signer's clock) and ``expires_in`` the seconds from signing to
    ``exp`` on that same clock. The cache uses ``expires_in``, so its expiry stays right
    even when the signer's clock is a :class:`~tokenflight.ServerClock` and the cache's
    is not.

    :param signer: the signer, which holds the key, clock, skew and lifetime limit.
    :param issuer: the ``iss`` claim, or ``None`` to leave it out.
    :param subject: the ``sub`` claim, or ``None``.
    :param audience: the ``aud`` claim: one string, a list of strings, or ``None``.
    :param lifetime: seconds from signing to ``exp``, clamped by the signer's
        ``max_lifetime``.
    :param claims: further claims copied into every JWT.
    :param headers: further header parameters for every JWT.
    :raises ConfigurationError: for a ``lifetime`` that is not a positive number, or a
        signer that is not a :class:`JwtSigner`.
    """

    __slots__ = ("_claims", "_headers", "_lifetime", "_signer")

    def __init__(
        self,
        signer: JwtSigner,
        *,
        issuer: str | int | None = None,
        subject: str | None = None,
        audience: str | Collection[str] | None = None,
        lifetime: float,
        claims: Mapping[str, Any] = _EMPTY,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        if not _is_instance(signer, JwtSigner):
            msg = f"JwtSource needs a JwtSigner, not {type(signer).__name__}"
            raise ConfigurationError(msg)
        seconds = _require_seconds("lifetime", lifetime, positive=True)
        template: dict[str, Any] = {}
        if issuer is not None:
            template["iss"] = issuer
        if subject is not None:
            template["sub"] = subject
        if audience is not None:
            template["aud"] = audience if isinstance(audience, str) else list(audience)
        template.update(claims)
        self._signer = signer
        self._lifetime = seconds
        self._claims = types.MappingProxyType(template)
        self._headers = types.MappingProxyType(dict(headers or {}))

    @classmethod
    def github_app(
        cls,
        app_id: str | int,
        key: KeyInput,
        *,
        clock: Clock | None = None,
        lifetime: float = 540.0,
        skew: float = GITHUB_APP_SKEW,
        password: bytes | str | None = None,
    ) -> JwtSource:
        """Build the source of GitHub App JWTs (RS256, ``iss`` = the app's id).

        Each JWT has ``iat`` 60 s in the past, ``exp`` at most 10 minutes after ``iat``
        (so at most 9 minutes after now) and ``iss``, and nothing else. GitHub documents
        these claims for authenticating as an app.

        :param app_id: the app's client ID (a str) or its numeric app ID.
        :param key: the app's private key (the PEM GitHub generates), in any form
            :func:`~tokenflight.load_signing_key` accepts.
        :param clock: the clock to sign with, for example a ServerClock.
        :param lifetime: seconds from now until ``exp``; 540 keeps ``exp - iat`` at 600.
        :param skew: seconds by which ``iat`` is backdated.
        :param password: the passphrase of an encrypted PEM key.
        :raises ConfigurationError: for a key that is not an RSA private key of 2048 bits
            or more.
        """
        signing_key = load_signing_key(key, algorithm="RS256", password=password)
        signer = JwtSigner(
            signing_key,
            clock=clock,
            skew=skew,
            max_lifetime=GITHUB_APP_MAX_LIFETIME,
            time_claims=("iat", "exp"),
            jti=False,
        )
        return cls(signer, issuer=app_id, lifetime=lifetime)

    @classmethod
    def apple_provider_token(
        cls,
        team_id: str,
        key_id: str,
        key: KeyInput,
        *,
        clock: Clock | None = None,
        skew: float = 60.0,
        password: bytes | str | None = None,
    ) -> JwtSource:
        """Build the source of Apple-style ES256 provider tokens (APNs and similar).

        Each JWT has the header ``{"alg": "ES256", "kid": key_id}`` and the claims ``iss``
        (the team id) and ``iat`` only. Apple requires a new token at least once an hour,
        so the token's expiry is ``iat + 3600``. A cache reuses the token until shortly
        before then, which also keeps new tokens at least 20 minutes apart, as Apple
        requires.

        :param team_id: the developer team id, the ``iss`` claim.
        :param key_id: the key's id, the ``kid`` header.
        :param key: the P-256 private key (the ``.p8`` file), in any form
            :func:`~tokenflight.load_signing_key` accepts.
        :param clock: the clock to sign with.
        :param skew: seconds by which ``iat`` is backdated.
        :param password: the passphrase of an encrypted PEM key.
        :raises ConfigurationError: for a key that is not an EC P-256 private key.
        """
        signing_key = load_signing_key(key, algorithm="ES256", password=password, kid=key_id)
        signer = JwtSigner(
            signing_key,
            clock=clock,
            skew=skew,
            max_lifetime=APPLE_PROVIDER_TOKEN_LIFETIME,
            time_claims=("iat",),
            jti=False,
            typ=None,
        )
        return cls(signer, issuer=team_id, lifetime=APPLE_PROVIDER_TOKEN_LIFETIME)

    @property
    def signer(self) -> JwtSigner:
        """The signer this source uses."""
        return self._signer

    @property
    def claims(self) -> Mapping[str, Any]:
        """The claims copied into every JWT (before the signer adds times and ``jti``)."""
        return self._claims

    def issue(self) -> SignedJwt:
        """Sign a new JWT now, without going through a cache."""
        return self._signer.issue(self._claims, lifetime=self._lifetime, headers=self._headers)

    async def fetch(self) -> Token:
        """Sign a new JWT and return it as a Bearer :class:`~tokenflight.Token`.

        Signing happens in the calling task and does not wait on I/O. A fetch cancelled
        at its checkpoint signs nothing.
        """
        await anyio.lowlevel.checkpoint()
        signed = self.issue()
        return Token(
            signed.value,
            expires_at=float(signed.expires_at),
            expires_in=max(0.0, signed.expires_at - signed.signed_at),
            extra={"jwt_claims": signed.claims},
        )

    def __repr__(self) -> str:
        return f"JwtSource({self._signer!r}, claims={sorted(self._claims)!r})"


# -- reading JWTs ------------------------------------------------------------------------


def _b64url_json(segment: str, part: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        msg = f"the JWT {part} is not base64url-encoded JSON"
        raise InvalidTokenError(msg) from None
    if not isinstance(value, dict):
        msg = f"the JWT {part} is JSON but not an object"
        raise InvalidTokenError(msg)
    return value


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the header and the claims of a compact JWT, without checking its signature.

    Use it to look at a JWT (for logs, the ``inspect`` command, time checks), never to
    trust one.

    :raises InvalidTokenError: when ``token`` is not three base64url parts whose first
        two are JSON objects. The message does not contain the token.
    """
    parts = token.strip().split(".")
    if len(parts) == 5:
        msg = "the token is an encrypted JWT (JWE, five parts); it cannot be read without the key"
        raise InvalidTokenError(msg)
    if len(parts) != 3:
        msg = f"a JWT has three dot-separated parts, this token has {len(parts)}"
        raise InvalidTokenError(msg)
    return _b64url_json(parts[0], "header"), _b64url_json(parts[1], "claims")


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        msg = f"the JWT claim {name!r} must be a number of Unix seconds, got {value!r}"
        raise InvalidTokenError(msg)
    return float(value)


def check_time_claims(
    claims: Mapping[str, Any], *, clock: Clock | None = None, leeway: float = 30.0
) -> None:
    """Check a received JWT's ``iat``, ``nbf`` and ``exp`` against this machine's clock.

    A JWT issued up to ``leeway`` seconds in the local future, or expired up to
    ``leeway`` seconds ago, passes: clocks a few seconds apart are normal.

    :param claims: the JWT's claims, for example from :func:`decode_unverified`.
    :param clock: the clock to compare with; a ServerClock applies the learned offset.
    :param leeway: seconds of disagreement between the clocks to tolerate.
    :raises ClockSkewError: when ``iat`` or ``nbf`` is more than ``leeway`` seconds in the
        future, which means the issuer's clock and this one disagree.
    :raises InvalidTokenError: when the JWT expired more than ``leeway`` seconds ago, or a
        time claim is not a number.
    """
    margin = _require_seconds("leeway", leeway)
    now = (clock if clock is not None else SystemClock()).time()
    for name in ("iat", "nbf"):
        value = _numeric_date(claims, name)
        if value is not None and value > now + margin:
            msg = (
                f"the JWT's {name} is {value - now:.0f} s ahead of this machine's clock "
                f"(leeway {margin:g} s): this clock is slow or the issuer's is fast; "
                "synchronise this machine's clock (NTP), or compare against a "
                "ServerClock that learns the offset"
            )
            raise ClockSkewError(msg)
    expires = _numeric_date(claims, "exp")
    if expires is not None and expires < now - margin:
        msg = (
            f"the JWT expired {now - expires:.0f} s ago (leeway {margin:g} s); "
            "if it was issued just now, this machine's clock is fast"
        )
        raise InvalidTokenError(msg)
