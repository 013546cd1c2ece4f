"""Signing keys: every input form, the algorithm check at load time, and no key material shown."""

from __future__ import annotations

import base64
import json
import pickle
import pprint
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from tokenflight import (
    ConfigurationError,
    JwtSigner,
    SigningKey,
    load_signing_key,
    signing_key_from_env,
)
from tokenflight._keys import ALGORITHMS, infer_algorithm

VECTORS = Path(__file__).parent / "vectors" / "jose"
PASSPHRASE = b"correct horse battery staple"
HMAC_SECRET = b"k" * 64


def _vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keys(rsa_key: rsa.RSAPrivateKey) -> dict[str, Any]:
    """One private key per algorithm family and curve."""
    return {
        "RSA": rsa_key,
        "P-256": ec.generate_private_key(ec.SECP256R1()),
        "P-384": ec.generate_private_key(ec.SECP384R1()),
        "P-521": ec.generate_private_key(ec.SECP521R1()),
        "Ed25519": ed25519.Ed25519PrivateKey.generate(),
        "Ed448": ed448.Ed448PrivateKey.generate(),
    }


def _pem(key: Any, password: bytes | None = None, *, traditional: bool = False) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    private_format = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    data: bytes = key.private_bytes(serialization.Encoding.PEM, private_format, encryption)
    return data


def _public_pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def _verify(signing_key: SigningKey, public_key: Any) -> dict[str, Any]:
    """Sign a JWT with the key and return its claims as PyJWT verifies them."""
    token = JwtSigner(signing_key).sign({"sub": "key-test"}, lifetime=60)
    claims: dict[str, Any] = jwt.decode(
        token, public_key, algorithms=[signing_key.algorithm], options={"verify_aud": False}
    )
    return claims


# -- every algorithm ---------------------------------------------------------------------

ASYMMETRIC = [
    ("RS256", "RSA"),
    ("RS384", "RSA"),
    ("RS512", "RSA"),
    ("PS256", "RSA"),
    ("PS384", "RSA"),
    ("PS512", "RSA"),
    ("ES256", "P-256"),
    ("ES384", "P-384"),
    ("ES512", "P-521"),
    ("EdDSA", "Ed25519"),
    ("EdDSA", "Ed448"),
]


@pytest.mark.parametrize(("algorithm", "kind"), ASYMMETRIC)
def test_asymmetric_key_signs_verifiable_jwt(
    keys: dict[str, Any], algorithm: str, kind: str
) -> None:
    key = keys[kind]
    signing_key = load_signing_key(_pem(key), algorithm=algorithm)
    assert signing_key.algorithm == algorithm
    assert _verify(signing_key, key.public_key())["sub"] == "key-test"


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_hmac_key_signs_verifiable_jwt(algorithm: str) -> None:
    signing_key = load_signing_key(HMAC_SECRET, algorithm=algorithm)
    assert _verify(signing_key, HMAC_SECRET)["sub"] == "key-test"


def test_algorithm_list_complete() -> None:
    covered = {algorithm for algorithm, _ in ASYMMETRIC} | {"HS256", "HS384", "HS512"}
    assert covered == ALGORITHMS


# -- input forms -------------------------------------------------------------------------


def test_pem_forms_load(keys: dict[str, Any]) -> None:
    key = keys["P-256"]
    forms: list[Any] = [
        _pem(key),
        _pem(key, traditional=True),
        _pem(key).decode("ascii"),
        bytearray(_pem(key)),
        memoryview(_pem(key)),
    ]
    for form in forms:
        signing_key = load_signing_key(form, algorithm="ES256")
        assert _verify(signing_key, key.public_key())["sub"] == "key-test"


def test_pkcs1_rsa_pem_loads(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = _pem(rsa_key, traditional=True)
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    signing_key = load_signing_key(pem, algorithm="RS256")
    assert _verify(signing_key, rsa_key.public_key())["sub"] == "key-test"


def test_der_bytes_load(keys: dict[str, Any]) -> None:
    key = keys["P-384"]
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    signing_key = load_signing_key(der, algorithm="ES384")
    assert _verify(signing_key, key.public_key())["sub"] == "key-test"


def test_openssh_key_loads(keys: dict[str, Any]) -> None:
    key = keys["Ed25519"]
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    signing_key = load_signing_key(data, algorithm="EdDSA")
    assert _verify(signing_key, key.public_key())["sub"] == "key-test"


def test_key_file_by_path_and_str(tmp_path: Path, keys: dict[str, Any]) -> None:
    key = keys["P-256"]
    path = tmp_path / "key.pem"
    path.write_bytes(_pem(key))
    for source in (path, str(path)):
        signing_key = load_signing_key(source, algorithm="ES256")
        assert _verify(signing_key, key.public_key())["sub"] == "key-test"


def test_der_file_loads(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "key.der"
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    signing_key = load_signing_key(path, algorithm="PS256")
    assert _verify(signing_key, rsa_key.public_key())["sub"] == "key-test"


def test_hmac_file_drops_one_line_break(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(HMAC_SECRET + b"\n")
    signing_key = load_signing_key(path, algorithm="HS256")
    assert _verify(signing_key, HMAC_SECRET)["sub"] == "key-test"


def test_jwk_mapping_text_and_file(tmp_path: Path) -> None:
    vector = _vector("4_1.rsa_v15_signature.json")
    jwk = vector["input"]["key"]
    path = tmp_path / "key.json"
    path.write_text(json.dumps(jwk), encoding="utf-8")
    public = jwt.PyJWK({k: v for k, v in jwk.items() if k in ("kty", "n", "e")}, "RS256")
    for source in (jwk, json.dumps(jwk), path):
        signing_key = load_signing_key(source, algorithm="RS256")
        assert signing_key.kid == "bilbo.baggins@hobbiton.example"
        assert _verify(signing_key, public.key)["sub"] == "key-test"


def test_jwk_without_crt_members_signs_identically() -> None:
    jwk = _vector("4_1.rsa_v15_signature.json")["input"]["key"]
    minimal = {name: jwk[name] for name in ("kty", "n", "e", "d")}
    full_key = load_signing_key(jwk, algorithm="RS256")
    minimal_key = load_signing_key(minimal, algorithm="RS256")
    # RSASSA-PKCS1-v1_5 is deterministic, so the same key gives the same signature.
    assert minimal_key.sign(b"data") == full_key.sign(b"data")


def test_oct_jwk_loads() -> None:
    jwk = _vector("4_4.hmac-sha2_integrity_protection.json")["input"]["key"]
    signing_key = load_signing_key(jwk, algorithm="HS256")
    secret = base64.urlsafe_b64decode(jwk["k"] + "=")
    assert _verify(signing_key, secret)["sub"] == "key-test"


@pytest.mark.parametrize(("algorithm", "kind"), [("ES256", "P-256"), ("EdDSA", "Ed25519")])
def test_public_jwk_round_trip(keys: dict[str, Any], algorithm: str, kind: str) -> None:
    signing_key = load_signing_key(keys[kind], algorithm=algorithm, kid="k1")
    public = signing_key.public_jwk()
    assert "d" not in public
    assert public["kid"] == "k1"
    assert public["alg"] == algorithm
    token = JwtSigner(signing_key).sign({"sub": "x"}, lifetime=60)
    claims = jwt.decode(token, jwt.PyJWK(public).key, algorithms=[algorithm])
    assert claims["sub"] == "x"


def test_cryptography_object_loads(keys: dict[str, Any]) -> None:
    signing_key = load_signing_key(keys["Ed448"], algorithm="EdDSA", kid="ed")
    assert signing_key.kid == "ed"
    assert signing_key.key_type == "Ed448 private key"


def test_signing_key_reloads_same_algorithm(keys: dict[str, Any]) -> None:
    first = load_signing_key(keys["P-256"], algorithm="ES256", kid="a")
    again = load_signing_key(first, algorithm="ES256", kid="b")
    assert again.kid == "b"
    assert first.kid == "a"
    with pytest.raises(ConfigurationError, match="bound to ES256, not ES384"):
        load_signing_key(first, algorithm="ES384")


def test_thumbprint_matches_authlib(keys: dict[str, Any]) -> None:
    # Authlib 1.x warns on importing authlib.jose (it moves to another package), and
    # authlib.deprecate installs an "always" filter for that warning when imported, so it
    # is imported before the filter that silences the warning here.
    import authlib.deprecate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", authlib.deprecate.AuthlibDeprecationWarning)
        from authlib.jose import JsonWebKey

    for algorithm, kind in [("RS256", "RSA"), ("ES256", "P-256"), ("EdDSA", "Ed25519")]:
        signing_key = load_signing_key(keys[kind], algorithm=algorithm)
        reference = JsonWebKey.import_key(_public_pem(keys[kind])).thumbprint()
        assert signing_key.thumbprint() == reference


def test_hmac_key_has_no_public_jwk() -> None:
    signing_key = load_signing_key(HMAC_SECRET, algorithm="HS256")
    with pytest.raises(ConfigurationError, match="no public JWK"):
        signing_key.public_jwk()
    with pytest.raises(ConfigurationError, match="no JWK thumbprint"):
        signing_key.thumbprint()


# -- encrypted PEM -----------------------------------------------------------------------


def test_encrypted_pem_with_passphrase(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = _pem(rsa_key, PASSPHRASE)
    assert b"ENCRYPTED" in pem
    for password in (PASSPHRASE, PASSPHRASE.decode("ascii")):
        signing_key = load_signing_key(pem, algorithm="RS256", password=password)
        assert _verify(signing_key, rsa_key.public_key())["sub"] == "key-test"


def test_encrypted_pem_without_passphrase(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigurationError, match="encrypted; pass its passphrase"):
        load_signing_key(_pem(rsa_key, PASSPHRASE), algorithm="RS256")


def test_encrypted_pem_wrong_passphrase(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigurationError, match="check the passphrase"):
        load_signing_key(_pem(rsa_key, PASSPHRASE), algorithm="RS256", password=b"wrong")


def test_passphrase_for_plain_pem(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ConfigurationError, match="not encrypted; drop it"):
        load_signing_key(_pem(rsa_key), algorithm="RS256", password=PASSPHRASE)


# -- environment variables ---------------------------------------------------------------


def test_env_pem(monkeypatch: pytest.MonkeyPatch, keys: dict[str, Any]) -> None:
    key = keys["P-256"]
    monkeypatch.setenv("TEST_SIGNING_KEY", _pem(key).decode("ascii"))
    signing_key = signing_key_from_env("TEST_SIGNING_KEY", algorithm="ES256", kid="env")
    assert signing_key.kid == "env"
    assert _verify(signing_key, key.public_key())["sub"] == "key-test"


def test_env_pem_escaped_newlines(monkeypatch: pytest.MonkeyPatch, keys: dict[str, Any]) -> None:
    key = keys["P-256"]
    one_line = _pem(key).decode("ascii").strip().replace("\n", "\\n")
    monkeypatch.setenv("TEST_SIGNING_KEY", one_line)
    signing_key = signing_key_from_env("TEST_SIGNING_KEY", algorithm="ES256")
    assert _verify(signing_key, key.public_key())["sub"] == "key-test"


def test_env_encrypted_pem(monkeypatch: pytest.MonkeyPatch, rsa_key: rsa.RSAPrivateKey) -> None:
    monkeypatch.setenv("TEST_SIGNING_KEY", _pem(rsa_key, PASSPHRASE).decode("ascii"))
    signing_key = signing_key_from_env("TEST_SIGNING_KEY", algorithm="RS256", password=PASSPHRASE)
    assert _verify(signing_key, rsa_key.public_key())["sub"] == "key-test"


def test_env_hmac_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SIGNING_KEY", HMAC_SECRET.decode("ascii") + "\n")
    signing_key = signing_key_from_env("TEST_SIGNING_KEY", algorithm="HS256")
    assert _verify(signing_key, HMAC_SECRET)["sub"] == "key-test"


def test_env_jwk(monkeypatch: pytest.MonkeyPatch) -> None:
    jwk = _vector("4_4.hmac-sha2_integrity_protection.json")["input"]["key"]
    monkeypatch.setenv("TEST_SIGNING_KEY", json.dumps(jwk))
    signing_key = signing_key_from_env("TEST_SIGNING_KEY", algorithm="HS256")
    assert signing_key.kid == jwk["kid"]


def test_env_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_SIGNING_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="TEST_SIGNING_KEY is not set"):
        signing_key_from_env("TEST_SIGNING_KEY", algorithm="RS256")


# -- mismatches and bad input ------------------------------------------------------------

MISMATCHES: list[tuple[str, str, list[str]]] = [
    ("P-256", "RS256", ["RS256", "EC P-256", "use ES256"]),
    ("P-384", "ES256", ["ES256", "EC P-384", "use ES384"]),
    ("P-256", "ES384", ["ES384", "EC P-256"]),
    ("RSA", "ES256", ["ES256", "RSA 2048-bit", "use RS256"]),
    ("Ed25519", "ES256", ["ES256", "Ed25519"]),
    ("P-256", "EdDSA", ["EdDSA", "EC P-256"]),
    ("RSA", "HS256", ["HS256", "shared secret", "PEM"]),
]


@pytest.mark.parametrize(("kind", "algorithm", "expected"), MISMATCHES)
def test_mismatch_names_algorithm_and_key(
    keys: dict[str, Any], kind: str, algorithm: str, expected: list[str]
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(_pem(keys[kind]), algorithm=algorithm)
    message = str(caught.value)
    for part in expected:
        assert part in message


def test_small_rsa_key_rejected() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    with pytest.raises(ConfigurationError, match="at least 2048 bits, got an RSA 1024-bit"):
        load_signing_key(small, algorithm="RS256")


def test_short_hmac_secret_rejected() -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes, got a secret of 16 bytes"):
        load_signing_key(b"x" * 16, algorithm="HS256")
    with pytest.raises(ConfigurationError, match="at least 64 bytes"):
        load_signing_key(b"x" * 32, algorithm="HS512")


def test_hmac_rejects_pem(keys: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="HS256 needs a shared secret"):
        load_signing_key(_pem(keys["P-256"]).decode("ascii"), algorithm="HS256")


def test_public_keys_rejected(keys: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="public key; signing needs the private key"):
        load_signing_key(_public_pem(keys["P-256"]), algorithm="ES256")
    public_jwk = load_signing_key(keys["P-256"], algorithm="ES256").public_jwk()
    with pytest.raises(ConfigurationError, match="public key \\(no 'd' member\\)"):
        load_signing_key(public_jwk, algorithm="ES256")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"alg": "RS512"}, "declared for alg 'RS512', not RS256"),
        ({"use": "enc"}, "declared for use 'enc'"),
        ({"key_ops": ["verify"]}, "do not include 'sign'"),
        ({"kty": "XYZ"}, "unsupported JWK kty"),
        ({"n": "@@@"}, "not valid base64url"),
        ({"d": "AQAB"}, "not describe a valid private key"),
    ],
)
def test_bad_jwk_rejected(change: dict[str, Any], expected: str) -> None:
    jwk = dict(_vector("4_1.rsa_v15_signature.json")["input"]["key"])
    jwk.update(change)
    with pytest.raises(ConfigurationError, match=expected):
        load_signing_key(jwk, algorithm="RS256")


def test_oct_jwk_for_rsa_rejected() -> None:
    jwk = _vector("4_4.hmac-sha2_integrity_protection.json")["input"]["key"]
    with pytest.raises(ConfigurationError, match=r"RS256 needs a private key.*kty 'oct'"):
        load_signing_key({k: v for k, v in jwk.items() if k != "alg"}, algorithm="RS256")


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [("none", "unsigned JWTs"), ("eddsa", "spelled 'EdDSA'"), ("RS1", "unsupported")],
)
def test_unknown_algorithm(algorithm: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        load_signing_key(HMAC_SECRET, algorithm=algorithm)


def test_garbage_bytes_rejected() -> None:
    with pytest.raises(ConfigurationError, match="neither PEM nor a DER private key"):
        load_signing_key(b"\x00\x01 not a key", algorithm="ES256")
    with pytest.raises(ConfigurationError, match="cannot parse the PEM"):
        load_signing_key(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", algorithm="ES256"
        )


def test_invalid_jwk_text() -> None:
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_signing_key("{not json", algorithm="ES256")


def test_missing_path_shown_for_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigurationError, match=r"nope\.pem' does not exist"):
        load_signing_key(missing, algorithm="ES256")


def test_missing_str_path_not_shown() -> None:
    secret = "probably-a-secret-value-passed-by-mistake"
    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(secret, algorithm="HS256")
    assert secret not in str(caught.value)
    assert "bytes for an HS* secret" in str(caught.value)


def test_infer_algorithm(keys: dict[str, Any]) -> None:
    assert infer_algorithm(keys["RSA"]) == "RS256"
    assert infer_algorithm(keys["P-256"]) == "ES256"
    assert infer_algorithm(keys["P-384"]) == "ES384"
    assert infer_algorithm(keys["P-521"]) == "ES512"
    assert infer_algorithm(keys["Ed25519"]) == "EdDSA"
    with pytest.raises(ConfigurationError, match="no JWS algorithm uses the EC curve"):
        infer_algorithm(ec.generate_private_key(ec.SECP256K1()))


def test_direct_construction_refused() -> None:
    with pytest.raises(TypeError, match="load_signing_key"):
        SigningKey()


# -- no key material shown ---------------------------------------------------------------


def _renderings(value: object) -> list[str]:
    return [repr(value), str(value), f"{value}", f"{value!r}", pprint.pformat(value)]


def test_repr_hides_rsa_material(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = _pem(rsa_key)
    signing_key = load_signing_key(pem, algorithm="RS256", kid="kid-1")
    body = b"".join(pem.splitlines()[1:-1]).decode("ascii")
    numbers = rsa_key.private_numbers()
    for text in _renderings(signing_key):
        assert "RS256" in text
        assert "kid-1" in text
        assert body[:40] not in text
        assert str(numbers.d)[:20] not in text
        assert "PRIVATE" not in text


def test_repr_hides_jwk_material() -> None:
    jwk = _vector("4_1.rsa_v15_signature.json")["input"]["key"]
    signing_key = load_signing_key(jwk, algorithm="RS256")
    for text in _renderings(signing_key):
        for member in ("d", "p", "q", "dp", "dq", "qi"):
            assert jwk[member][:16] not in text


def test_repr_hides_hmac_secret() -> None:
    secret = b"super-secret-hmac-key-0123456789abcdef"
    signing_key = load_signing_key(secret, algorithm="HS256")
    encoded = base64.urlsafe_b64encode(secret).decode("ascii").rstrip("=")
    for text in _renderings(signing_key):
        assert "super-secret" not in text
        assert encoded[:16] not in text
        assert secret.hex()[:16] not in text
    assert "shared secret of 38 bytes" in repr(signing_key)


def test_signer_repr_hides_key() -> None:
    secret = b"super-secret-hmac-key-0123456789abcdef"
    signer = JwtSigner(load_signing_key(secret, algorithm="HS256"))
    assert "super-secret" not in repr(signer)
    assert "HS256" in repr(signer)


def test_pickle_refused(keys: dict[str, Any]) -> None:
    signing_key = load_signing_key(keys["P-256"], algorithm="ES256")
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(signing_key)


def test_errors_hide_key_material(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = _pem(rsa_key)
    body = b"".join(pem.splitlines()[1:-1]).decode("ascii")
    attempts: list[Callable[[], object]] = [
        lambda: load_signing_key(pem, algorithm="ES256"),
        lambda: load_signing_key(pem, algorithm="RS256", password=b"x"),
        lambda: load_signing_key(pem.decode("ascii"), algorithm="HS256"),
        lambda: load_signing_key(pem[:200], algorithm="RS256"),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigurationError) as caught:
            attempt()
        assert body[:24] not in str(caught.value)
        assert body[64:88] not in str(caught.value)
