"""Signing keys for locally signed JWTs: loaded once, checked against their algorithm.

:func:`load_signing_key` accepts PEM or DER bytes, PEM text, a file, a JWK (a mapping or
its JSON text), a key object from ``cryptography``, or, through :func:`signing_key_from_env`,
an environment variable. It parses the key once and checks it against the JWS algorithm
(RFC 7518) at load time, so a wrong key fails with a :class:`ConfigurationError` before
the first request rather than at the first signature.

A :class:`SigningKey` never shows key material: ``repr()`` and ``str()`` name the
algorithm, the ``kid`` and the key type only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeAlias, Union

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ._errors import ConfigurationError

__all__ = ["ALGORITHMS", "SigningKey", "load_signing_key", "signing_key_from_env"]

PrivateKey: TypeAlias = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}

# JWS algorithm -> EC curve name (RFC 7518 section 3.4).
_EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
_CURVE_LABELS = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_JWK_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}

# Stands for "any asymmetric algorithm" while a key is parsed before its algorithm is known.
_ANY_ASYMMETRIC = "*"

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

# The end of the message for an encrypted key loaded without its passphrase; the
# command line replaces it with the names of its passphrase options.
PASSPHRASE_HINT = "pass its passphrase as password"  # noqa: S105 - message text

# RFC 7518 sections 3.3 and 3.5: RSA keys of 2048 bits or larger.
_MIN_RSA_BITS = 2048

ALGORITHMS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "HS256",
        "HS384",
        "HS512",
    }
)
"""The JWS algorithms a :class:`SigningKey` can sign with."""


class SigningKey:
    """A private or shared key bound to one JWS algorithm, ready to sign.

    Build it with :func:`load_signing_key` or :func:`signing_key_from_env`, which parse
    the key once and check it against the algorithm. Signing reuses the parsed key.

    ``repr()`` and ``str()`` show the algorithm, the ``kid`` and the key type, never key
    material.
    """

    __slots__ = ("_algorithm", "_description", "_key", "_kid")

    _algorithm: str
    _kid: str | None
    _key: PrivateKey | bytes
    _description: str

    def __init__(self, *args: object, **kwargs: object) -> None:
        msg = "build a SigningKey with tokenflight.load_signing_key() or signing_key_from_env()"
        raise TypeError(msg)

    @classmethod
    def _create(
        cls, key: PrivateKey | bytes, algorithm: str, kid: str | None, description: str
    ) -> SigningKey:
        self = object.__new__(cls)
        self._key = key
        self._algorithm = algorithm
        self._kid = kid
        self._description = description
        return self

    @property
    def algorithm(self) -> str:
        """The JWS ``alg`` this key signs with, for example ``"ES256"``."""
        return self._algorithm

    @property
    def kid(self) -> str | None:
        """The key id put in the JWT header as ``kid``, or ``None`` for no ``kid``."""
        return self._kid

    @property
    def key_type(self) -> str:
        """A description of the key without its material, for example ``"EC P-256 private key"``."""
        return self._description

    def sign(self, data: bytes) -> bytes:
        """Sign ``data`` and return the signature in JWS form (RFC 7518).

        ECDSA signatures are the fixed-length ``R || S`` concatenation, not DER.
        """
        key = self._key
        if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
            return key.sign(data)
        digest = _HASHES[self._algorithm[2:]]()
        if isinstance(key, bytes):
            return hmac.new(key, data, digest.name).digest()
        if isinstance(key, rsa.RSAPrivateKey):
            if self._algorithm.startswith("PS"):
                # RFC 7518 section 3.5: the salt is as long as the hash output.
                pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
                return key.sign(data, pss, digest)
            return key.sign(data, padding.PKCS1v15(), digest)
        der = key.sign(data, ec.ECDSA(digest))
        r, s = decode_dss_signature(der)
        size = (key.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    def public_jwk(self) -> dict[str, str]:
        """Return the public half as a JWK, with ``kid``, ``alg`` and ``use: sig``.

        This is what an authorization server needs registered for ``private_key_jwt``.

        :raises ConfigurationError: for an HMAC key, which has no public half.
        """
        key = self._key
        if isinstance(key, bytes):
            msg = f"{self._algorithm} uses a shared secret, which has no public JWK"
            raise ConfigurationError(msg)
        jwk = _public_jwk_members(key)
        jwk["alg"] = self._algorithm
        jwk["use"] = "sig"
        if self._kid is not None:
            jwk["kid"] = self._kid
        return jwk

    def thumbprint(self) -> str:
        """Return the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key.

        :raises ConfigurationError: for an HMAC key, which has no public half.
        """
        key = self._key
        if isinstance(key, bytes):
            msg = f"{self._algorithm} uses a shared secret, which has no JWK thumbprint"
            raise ConfigurationError(msg)
        members = _public_jwk_members(key)
        canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
        return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def __repr__(self) -> str:
        return (
            f"SigningKey(algorithm={self._algorithm!r}, kid={self._kid!r}, "
            f"key=<{self._description}>)"
        )

    __str__ = __repr__

    def __reduce__(self) -> Any:
        # Pickling would write the private key to wherever the pickle goes.
        msg = "a SigningKey cannot be pickled; load it again from its source instead"
        raise TypeError(msg)


KeyInput: TypeAlias = Union[
    bytes,
    bytearray,
    memoryview,
    str,
    "os.PathLike[str]",
    Mapping[str, Any],
    PrivateKey,
    SigningKey,
]
"""Everything :func:`load_signing_key` accepts as a key."""


def load_signing_key(
    source: KeyInput,
    *,
    algorithm: str,
    password: bytes | str | None = None,
    kid: str | None = None,
) -> SigningKey:
    """Load a signing key once and check that it fits ``algorithm``.

    ``source`` may be:

    * ``bytes``: PEM or DER for the asymmetric algorithms, the shared secret itself for
      ``HS*``;
    * ``str``: PEM text, a JWK as JSON text (starting with ``{``), or the path of a file;
    * an :class:`os.PathLike` such as :class:`pathlib.Path`: a file with PEM, DER or a JWK
      (for ``HS*``, the secret itself, without one trailing line break);
    * a mapping: a JWK (RFC 7517), private RSA, EC or OKP members, or ``oct`` for ``HS*``;
    * a ``cryptography`` private key object, or a :class:`SigningKey` (checked again).

    PEM may be PKCS#1, SEC 1, PKCS#8 (encrypted with ``password`` or not) or OpenSSH.

    :param algorithm: the JWS algorithm, one of :data:`ALGORITHMS`.
    :param password: the passphrase of an encrypted PEM key.
    :param kid: the key id for the JWT header; defaults to the JWK's ``kid``, if any.
    :raises ConfigurationError: when the key cannot be read, is a public key, or is
        encrypted and the password is missing or wrong. Also when the key does not fit
        ``algorithm``: for example an RSA key or a P-384 key for ES256, an RSA key under
        2048 bits, or an HMAC secret shorter than the hash output. The message names the
        algorithm and the key type and never contains key material.
    """
    _check_algorithm(algorithm)
    if isinstance(source, SigningKey):
        if source.algorithm != algorithm:
            msg = (
                f"the SigningKey is bound to {source.algorithm}, not {algorithm}; "
                "load the key again for the other algorithm"
            )
            raise ConfigurationError(msg)
        return SigningKey._create(
            source._key, algorithm, kid if kid is not None else source.kid, source.key_type
        )

    key, jwk_kid = _parse(source, algorithm, password)
    return _bind(key, algorithm, kid if kid is not None else jwk_kid)


def signing_key_from_env(
    variable: str,
    *,
    algorithm: str,
    password: bytes | str | None = None,
    kid: str | None = None,
) -> SigningKey:
    """Load a signing key from the environment variable ``variable``.

    The value is PEM text, a JWK as JSON, or for ``HS*`` the secret itself (UTF-8
    encoded), unless it starts with ``{`` and so is read as a JWK. PEM stored
    on one line with literal ``\\n`` sequences, as some deployment tools write it, is
    accepted too. One trailing line break is removed from an ``HS*`` secret.

    :raises ConfigurationError: when the variable is not set or is empty, or for any
        reason :func:`load_signing_key` gives.
    """
    _check_algorithm(algorithm)
    value = os.environ.get(variable)
    if not value:
        msg = f"environment variable {variable} is not set or empty; put the signing key in it"
        raise ConfigurationError(msg)
    stripped = value.strip()
    if algorithm.startswith("HS") and not stripped.startswith("{"):
        return _bind(_strip_line_break(value.encode("utf-8")), algorithm, kid)
    if stripped.startswith("-----BEGIN") and "\n" not in stripped and "\\n" in stripped:
        stripped = stripped.replace("\\n", "\n")
    return load_signing_key(stripped, algorithm=algorithm, password=password, kid=kid)


def infer_algorithm(key: PrivateKey) -> str:
    """Return the usual JWS algorithm for a private key object.

    RSA gives RS256, EC keys the ES algorithm of their curve, Ed25519 and Ed448 EdDSA.

    :raises ConfigurationError: for a curve that no JWS algorithm uses.
    """
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        for algorithm, curve in _EC_CURVES.items():
            if key.curve.name == curve:
                return algorithm
        msg = f"no JWS algorithm uses the EC curve {key.curve.name}; use P-256, P-384 or P-521"
        raise ConfigurationError(msg)
    return "EdDSA"


def default_algorithm(source: KeyInput, password: bytes | str | None = None) -> str:
    """Return the JWS algorithm to use with a key when none is given.

    A JWK's own ``alg`` comes first; otherwise :func:`infer_algorithm` decides from the
    parsed key. The command line uses it when ``--algorithm`` is left out.

    :raises ConfigurationError: when the key cannot be parsed, or is a shared secret,
        whose algorithm must be given.
    """
    jwk = _jwk_from(source)
    if jwk is not None and isinstance(jwk.get("alg"), str):
        declared: str = jwk["alg"]
        return declared
    key, _ = _parse(source, _ANY_ASYMMETRIC, password)
    if isinstance(key, bytes):
        msg = "the key is a shared secret; give HS256, HS384 or HS512 as its algorithm"
        raise ConfigurationError(msg)
    return infer_algorithm(key)


def _jwk_from(source: KeyInput) -> Mapping[str, Any] | None:
    """Return ``source`` as a JWK mapping if it is one (or JSON text, or a JSON file)."""
    if isinstance(source, Mapping):
        return source
    text: str | None = None
    if isinstance(source, str) and source.lstrip().startswith("{"):
        text = source
    elif isinstance(source, os.PathLike):
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError):
            return None
    if text is None or not text.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- parsing -----------------------------------------------------------------------------


def _check_algorithm(algorithm: object) -> None:
    if algorithm not in ALGORITHMS:
        if isinstance(algorithm, str) and algorithm.upper() == "EDDSA":
            hint = "; the JWS name is spelled 'EdDSA'"
        elif algorithm == "none":
            hint = "; unsigned JWTs are not supported"
        else:
            hint = ""
        msg = f"unsupported JWS algorithm {algorithm!r}{hint}; use one of {sorted(ALGORITHMS)}"
        raise ConfigurationError(msg)


def _parse(
    source: KeyInput, algorithm: str, password: bytes | str | None
) -> tuple[PrivateKey | bytes, str | None]:
    """Turn any accepted input into a key object (or an HMAC secret) and the JWK's kid."""
    if isinstance(source, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        return source, None
    if isinstance(source, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return source, None
    if isinstance(source, Mapping):
        return _from_jwk(source, algorithm)
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)
    if isinstance(source, bytes):
        if algorithm.startswith("HS"):
            if source.lstrip().startswith(b"-----BEGIN"):
                msg = f"{algorithm} needs a shared secret, but the key is PEM"
                raise ConfigurationError(msg)
            return source, None
        return _from_bytes(source, password), None
    if isinstance(source, str):
        text = source.strip()
        if text.startswith("-----BEGIN"):
            if algorithm.startswith("HS"):
                msg = f"{algorithm} needs a shared secret, but the key is PEM text"
                raise ConfigurationError(msg)
            return _from_bytes(text.encode("ascii", "replace"), password), None
        if text.startswith("{"):
            return _from_jwk(_json_object(text, "the JWK text"), algorithm)
        return _from_file(Path(source), algorithm, password, show_path=False)
    if isinstance(source, os.PathLike):
        return _from_file(Path(source), algorithm, password, show_path=True)
    msg = (
        "a signing key must be bytes, PEM or JWK text, a path, a JWK mapping or a "
        f"cryptography private key, not {type(source).__name__}"
    )
    raise ConfigurationError(msg)


def _from_file(
    path: Path, algorithm: str, password: bytes | str | None, *, show_path: bool
) -> tuple[PrivateKey | bytes, str | None]:
    # A str that is neither PEM nor JSON is read as a path. It may also be a secret passed
    # by mistake, so its value appears in messages only when the caller passed a Path.
    where = f"key file {str(path)!r}" if show_path else "the key file"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if show_path:
            msg = f"{where} does not exist"
        else:
            msg = (
                "the key is neither PEM text, a JWK as JSON, nor the path of an existing "
                "file (the value is not shown in case it is a secret); pass a pathlib.Path "
                "to see the path in this message, or bytes for an HS* secret"
            )
        raise ConfigurationError(msg) from None
    except OSError as error:
        msg = f"cannot read {where}: {error.strerror or type(error).__name__}"
        raise ConfigurationError(msg) from None
    if algorithm.startswith("HS"):
        stripped = data.strip()
        if stripped.startswith(b"{"):
            return _from_jwk(_json_object(stripped.decode("utf-8", "replace"), where), algorithm)
        if stripped.startswith(b"-----BEGIN"):
            msg = f"{algorithm} needs a shared secret, but {where} holds PEM"
            raise ConfigurationError(msg)
        return _strip_line_break(data), None
    if data.lstrip().startswith(b"{"):
        return _from_jwk(_json_object(data.decode("utf-8", "replace"), where), algorithm)
    return _from_bytes(data, password), None


def _strip_line_break(data: bytes) -> bytes:
    if data.endswith(b"\r\n"):
        return data[:-2]
    if data.endswith(b"\n"):
        return data[:-1]
    return data


def _json_object(text: str, label: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        msg = f"{label} starts with '{{' but is not valid JSON; a JWK must be a JSON object"
        raise ConfigurationError(msg) from None
    if not isinstance(value, dict):
        msg = f"{label} is JSON but not an object; a JWK must be a JSON object"
        raise ConfigurationError(msg)
    return value


def _password_bytes(password: bytes | str | None) -> bytes | None:
    if password is None or isinstance(password, bytes):
        return password
    return password.encode("utf-8")


def _from_bytes(data: bytes, password: bytes | str | None) -> PrivateKey:
    secret = _password_bytes(password)
    is_pem = data.lstrip().startswith(b"-----BEGIN")
    if is_pem and b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        msg = "the PEM holds a public key; signing needs the private key"
        raise ConfigurationError(msg)
    if is_pem and b"CERTIFICATE-----" in data and b"PRIVATE KEY-----" not in data:
        msg = "the PEM holds a certificate; signing needs the private key"
        raise ConfigurationError(msg)
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data:
            key: Any = serialization.load_ssh_private_key(data, password=secret)
        elif is_pem:
            key = serialization.load_pem_private_key(data, password=secret)
        else:
            key = serialization.load_der_private_key(data, password=secret)
    except TypeError as error:
        # cryptography raises TypeError for a missing or an unneeded password.
        if "not encrypted" in str(error):
            msg = "a password was given, but the private key is not encrypted; drop it"
        else:
            msg = f"the private key is encrypted; {PASSPHRASE_HINT}"
        raise ConfigurationError(msg) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        text = str(error).lower()
        if secret is not None and ("decrypt" in text or "password" in text):
            msg = "cannot decrypt the private key; check the passphrase"
        elif is_pem:
            msg = "cannot parse the PEM private key; expected PKCS#1, SEC 1, PKCS#8 or OpenSSH"
        else:
            msg = "cannot parse the key: it is neither PEM nor a DER private key"
        raise ConfigurationError(msg) from None
    if not isinstance(
        key,
        (
            rsa.RSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
        ),
    ):
        msg = f"{type(key).__name__} keys cannot sign JWTs; use an RSA, EC or Ed25519 key"
        raise ConfigurationError(msg)
    return key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: object, member: str) -> bytes:
    if not isinstance(value, str):
        msg = f"JWK member {member!r} must be a base64url string"
        raise ConfigurationError(msg)
    if not _BASE64URL.fullmatch(value):
        msg = f"JWK member {member!r} is not valid base64url"
        raise ConfigurationError(msg)
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        msg = f"JWK member {member!r} is not valid base64url"
        raise ConfigurationError(msg) from None


def _jwk_int(jwk: Mapping[str, Any], member: str) -> int:
    if member not in jwk:
        msg = f"the JWK has no {member!r} member"
        raise ConfigurationError(msg)
    return int.from_bytes(_b64url_decode(jwk[member], member), "big")


def _from_jwk(jwk: Mapping[str, Any], algorithm: str) -> tuple[PrivateKey | bytes, str | None]:
    kty = jwk.get("kty")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        msg = "JWK member 'kid' must be a string"
        raise ConfigurationError(msg)
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm and algorithm != _ANY_ASYMMETRIC:
        msg = f"the JWK is declared for alg {declared!r}, not {algorithm}"
        raise ConfigurationError(msg)
    use = jwk.get("use")
    if use is not None and use != "sig":
        msg = f"the JWK is declared for use {use!r}; signing needs 'sig'"
        raise ConfigurationError(msg)
    key_ops = jwk.get("key_ops")
    if key_ops is not None and "sign" not in key_ops:
        msg = f"the JWK's key_ops {key_ops!r} do not include 'sign'"
        raise ConfigurationError(msg)

    if kty == "oct":
        if algorithm == _ANY_ASYMMETRIC:
            return _b64url_decode(jwk.get("k"), "k"), kid
        if not algorithm.startswith("HS"):
            msg = f"{algorithm} needs a private key, but the JWK is a shared secret (kty 'oct')"
            raise ConfigurationError(msg)
        return _b64url_decode(jwk.get("k"), "k"), kid
    if algorithm.startswith("HS"):
        msg = f"{algorithm} needs a shared secret (kty 'oct'), but the JWK has kty {kty!r}"
        raise ConfigurationError(msg)
    if kty in ("RSA", "EC", "OKP") and "d" not in jwk:
        msg = f"the {kty} JWK is a public key (no 'd' member); signing needs the private key"
        raise ConfigurationError(msg)

    try:
        if kty == "RSA":
            return _rsa_from_jwk(jwk), kid
        if kty == "EC":
            curve_name = jwk.get("crv")
            curve = _JWK_CURVES.get(curve_name) if isinstance(curve_name, str) else None
            if curve is None:
                msg = f"unsupported EC curve {curve_name!r}; use P-256, P-384 or P-521"
                raise ConfigurationError(msg)
            public = ec.EllipticCurvePublicNumbers(_jwk_int(jwk, "x"), _jwk_int(jwk, "y"), curve())
            return ec.EllipticCurvePrivateNumbers(_jwk_int(jwk, "d"), public).private_key(), kid
        if kty == "OKP":
            crv = jwk.get("crv")
            d = _b64url_decode(jwk.get("d"), "d")
            if crv == "Ed25519":
                return ed25519.Ed25519PrivateKey.from_private_bytes(d), kid
            if crv == "Ed448":
                return ed448.Ed448PrivateKey.from_private_bytes(d), kid
            msg = f"unsupported OKP curve {crv!r}; EdDSA uses Ed25519 or Ed448"
            raise ConfigurationError(msg)
    except ValueError as error:
        if isinstance(error, ConfigurationError):
            raise
        msg = f"the {kty} JWK does not describe a valid private key"
        raise ConfigurationError(msg) from None
    msg = f"unsupported JWK kty {kty!r}; use RSA, EC, OKP or oct"
    raise ConfigurationError(msg)


def _rsa_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPrivateKey:
    n = _jwk_int(jwk, "n")
    e = _jwk_int(jwk, "e")
    d = _jwk_int(jwk, "d")
    if all(member in jwk for member in ("p", "q", "dp", "dq", "qi")):
        p = _jwk_int(jwk, "p")
        q = _jwk_int(jwk, "q")
        dmp1 = _jwk_int(jwk, "dp")
        dmq1 = _jwk_int(jwk, "dq")
        iqmp = _jwk_int(jwk, "qi")
    else:
        # RFC 7518 section 6.3.2 lets a JWK carry only n, e and d.
        p, q = rsa.rsa_recover_prime_factors(n, e, d)
        dmp1 = rsa.rsa_crt_dmp1(d, p)
        dmq1 = rsa.rsa_crt_dmq1(d, q)
        iqmp = rsa.rsa_crt_iqmp(p, q)
    public = rsa.RSAPublicNumbers(e, n)
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, public).private_key()


# -- checking against the algorithm ----------------------------------------------------


def _describe(key: PrivateKey | bytes) -> str:
    if isinstance(key, bytes):
        return f"shared secret of {len(key)} bytes"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"RSA {key.key_size}-bit private key"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        label = _CURVE_LABELS.get(key.curve.name, key.curve.name)
        return f"EC {label} private key"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519 private key"
    return "Ed448 private key"


def _with_article(description: str) -> str:
    # Every description starts with RSA, EC, Ed25519, Ed448 or "shared".
    return f"a {description}" if description.startswith("shared") else f"an {description}"


def _suggest(key: PrivateKey | bytes) -> str:
    if isinstance(key, bytes):
        return "; use HS256, HS384 or HS512 with a shared secret"
    try:
        return f"; use {infer_algorithm(key)} with this key, or load a matching key"
    except ConfigurationError:
        return ""


def _bind(key: PrivateKey | bytes, algorithm: str, kid: str | None) -> SigningKey:
    description = _describe(key)
    got = _with_article(description)
    family = algorithm[:2]
    if family == "HS":
        if not isinstance(key, bytes):
            msg = f"{algorithm} needs a shared secret (bytes), got {got}{_suggest(key)}"
            raise ConfigurationError(msg)
        minimum = int(algorithm[2:]) // 8
        if len(key) < minimum:
            # RFC 7518 section 3.2: the key must be at least as long as the hash output.
            msg = (
                f"{algorithm} needs a secret of at least {minimum} bytes, got a "
                f"secret of {len(key)} bytes; use a longer random secret"
            )
            raise ConfigurationError(msg)
    elif family in ("RS", "PS"):
        if not isinstance(key, rsa.RSAPrivateKey):
            msg = f"{algorithm} needs an RSA private key, got {got}{_suggest(key)}"
            raise ConfigurationError(msg)
        if key.key_size < _MIN_RSA_BITS:
            msg = (
                f"{algorithm} needs an RSA key of at least {_MIN_RSA_BITS} bits, got "
                f"{got}; generate a larger key"
            )
            raise ConfigurationError(msg)
    elif family == "ES":
        expected = _CURVE_LABELS[_EC_CURVES[algorithm]]
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            msg = f"{algorithm} needs an EC {expected} private key, got {got}{_suggest(key)}"
            raise ConfigurationError(msg)
        if key.curve.name != _EC_CURVES[algorithm]:
            msg = f"{algorithm} needs an EC {expected} private key, got {got}{_suggest(key)}"
            raise ConfigurationError(msg)
    elif not isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        msg = f"EdDSA needs an Ed25519 or Ed448 private key, got {got}{_suggest(key)}"
        raise ConfigurationError(msg)
    return SigningKey._create(key, algorithm, kid, description)


def _public_jwk_members(key: PrivateKey) -> dict[str, str]:
    """Return the required public members of a JWK, as RFC 7638 lists them."""
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {
            "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "kty": "RSA",
            "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        }
    if isinstance(key, ec.EllipticCurvePrivateKey):
        point = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        return {
            "crv": _CURVE_LABELS[key.curve.name],
            "kty": "EC",
            "x": _b64url(point.x.to_bytes(size, "big")),
            "y": _b64url(point.y.to_bytes(size, "big")),
        }
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    crv = "Ed25519" if isinstance(key, ed25519.Ed25519PrivateKey) else "Ed448"
    return {"crv": crv, "kty": "OKP", "x": _b64url(raw)}
