"""JWT signing: RFC 7520 vectors, claims and times, presets, the source behind a cache."""

from __future__ import annotations

import base64
import itertools
import json
import math
import pprint
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokenflight import (
    ClockSkewError,
    ConfigurationError,
    InvalidTokenError,
    JwtSigner,
    JwtSource,
    ServerClock,
    SignedJwt,
    TokenCache,
    check_time_claims,
    decode_unverified,
    encode_jws,
    load_signing_key,
)
from tokenflight.testing import FakeClock

VECTORS = Path(__file__).parent / "vectors" / "jose"
WALL = 1_700_000_000.0
# PyJWT checks the signature only; the tests check times against their own clock.
NO_TIME_CHECKS = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
}


def _vector(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


def _payload_json(token: str) -> str:
    segment = token.split(".")[1]
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode("utf-8")


def _reject_float(text: str) -> float:
    raise AssertionError(f"the JWT claims contain a non-integer number: {text}")


def strict_check(token: str, public_key: Any, algorithm: str, server_now: float) -> dict[str, Any]:
    """Verify like a strict peer with no leeway: a valid signature, integer times only,
    iat and nbf not after the peer's now, exp after it. Raises ValueError on rejection."""
    jwt.decode(
        token,
        public_key,
        algorithms=[algorithm],
        options={
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": False,
        },
    )
    claims: dict[str, Any] = json.loads(_payload_json(token), parse_float=_reject_float)
    for name in ("iat", "nbf", "exp"):
        if name in claims and type(claims[name]) is not int:
            raise ValueError(f"{name} is not an integer")
    if claims.get("iat", -math.inf) > server_now:
        raise ValueError("iat is in the future")
    if claims.get("nbf", -math.inf) > server_now:
        raise ValueError("token used before nbf")
    if "exp" in claims and claims["exp"] <= server_now:
        raise ValueError("token expired")
    return claims


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- RFC 7520 ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "algorithm"),
    [("4_1.rsa_v15_signature.json", "RS256"), ("4_4.hmac-sha2_integrity_protection.json", "HS256")],
)
def test_rfc7520_byte_for_byte(name: str, algorithm: str) -> None:
    vector = _vector(name)
    key = load_signing_key(vector["input"]["key"], algorithm=algorithm)
    compact = encode_jws(key, vector["input"]["payload"].encode("utf-8"))
    assert compact == vector["output"]["compact"]
    assert compact.split(".")[0] == vector["signing"]["protected_b64u"]


@pytest.mark.parametrize(
    ("name", "algorithm"),
    [("4_2.rsa-pss_signature.json", "PS384"), ("4_3.ecdsa_signature.json", "ES512")],
)
def test_rfc7520_randomized_verify(name: str, algorithm: str) -> None:
    vector = _vector(name)
    jwk = vector["input"]["key"]
    public = jwt.PyJWK({k: v for k, v in jwk.items() if k != "d"}, algorithm).key
    payload = vector["input"]["payload"].encode("utf-8")

    # The published signature verifies with the published key.
    published = jwt.api_jws.PyJWS().decode_complete(
        vector["output"]["compact"], public, algorithms=[algorithm]
    )
    assert published["payload"] == payload

    # A signature made here, over the same input, verifies too.
    key = load_signing_key(jwk, algorithm=algorithm)
    compact = encode_jws(key, payload)
    assert compact.split(".")[:2] == vector["output"]["compact"].split(".")[:2]
    ours = jwt.api_jws.PyJWS().decode_complete(compact, public, algorithms=[algorithm])
    assert ours["payload"] == payload


def test_rfc7520_keys_sign_jwts() -> None:
    for name in ("4_1.rsa_v15_signature.json", "4_2.rsa-pss_signature.json"):
        vector = _vector(name)
        jwk = vector["input"]["key"]
        public = jwt.PyJWK({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]}, "PS256").key
        key = load_signing_key(jwk, algorithm="PS256")
        token = JwtSigner(key).sign({"sub": "frodo"}, lifetime=60)
        assert jwt.decode(token, public, algorithms=["PS256"])["sub"] == "frodo"
        assert jwt.get_unverified_header(token)["kid"] == "bilbo.baggins@hobbiton.example"


# -- claims and header -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "make_key"),
    [
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("PS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("ES384", lambda: ec.generate_private_key(ec.SECP384R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate),
    ],
)
def test_signed_jwt_verifies(algorithm: str, make_key: Any) -> None:
    private = make_key()
    key = load_signing_key(private, algorithm=algorithm, kid="key-1")
    clock = FakeClock(wall_start=WALL)
    token = JwtSigner(key, clock=clock, skew=60).sign(
        {"iss": "me", "sub": "svc", "aud": "https://api.example"}, lifetime=300
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": algorithm, "kid": "key-1", "typ": "JWT"}
    claims = strict_check(token, private.public_key(), algorithm, WALL)
    assert claims["iss"] == "me"
    assert claims["iat"] == int(WALL) - 60
    assert claims["nbf"] == int(WALL) - 60
    assert claims["exp"] == int(WALL) + 300


def test_hs256_jwt_verifies() -> None:
    secret = b"s" * 32
    token = JwtSigner(load_signing_key(secret, algorithm="HS256")).sign({"sub": "a"}, lifetime=60)
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"] == "a"


def test_float_clock_gives_integer_times(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """A clock at 1700000000.7 gives integer times, rounded down, with no decimal point."""
    clock = FakeClock(wall_start=1_700_000_000.7)
    key = load_signing_key(ec_key, algorithm="ES256")
    token = JwtSigner(key, clock=clock, skew=0).sign({"sub": "x"}, lifetime=299.9)
    text = _payload_json(token)
    assert '"iat":1700000000,' in text
    assert '"nbf":1700000000,' in text
    assert '"exp":1700000300,' in text
    for name in ("iat", "nbf", "exp"):
        value = json.loads(text)[name]
        assert type(value) is int
    claims = strict_check(token, ec_key.public_key(), "ES256", 1_700_000_000.7)
    assert claims["exp"] - claims["iat"] == 300


def test_float_clock_backdated_integer(ec_key: ec.EllipticCurvePrivateKey) -> None:
    clock = FakeClock(wall_start=1_700_000_000.7)
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"), clock=clock, skew=30)
    claims = json.loads(_payload_json(signer.sign({}, lifetime=60)), parse_float=_reject_float)
    assert claims["iat"] == 1_699_999_970
    assert claims["exp"] == 1_700_000_060


def test_given_claims_kept(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"), clock=FakeClock())
    signed = signer.issue({"iat": 123, "jti": "fixed", "exp": 2_000_000_000}, lifetime=60)
    assert signed.claims["iat"] == 123
    assert signed.claims["jti"] == "fixed"
    assert signed.claims["exp"] == 2_000_000_000
    assert signed.expires_at == 2_000_000_000


@pytest.mark.parametrize("value", [1.5, "1700000000", True])
def test_non_integer_time_claim_rejected(ec_key: ec.EllipticCurvePrivateKey, value: Any) -> None:
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"))
    with pytest.raises(ConfigurationError, match="claim 'iat' must be an integer"):
        signer.sign({"iat": value}, lifetime=60)


def test_jti_fresh_each_time(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"), clock=FakeClock())
    ids = {signer.issue({}, lifetime=60).claims["jti"] for _ in range(1000)}
    assert len(ids) == 1000


def test_max_lifetime_clamps_exp(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """Exp - iat never exceeds max_lifetime, with iat backdated by the skew."""
    clock = FakeClock(wall_start=WALL)
    signer = JwtSigner(
        load_signing_key(ec_key, algorithm="ES256"), clock=clock, skew=60, max_lifetime=3600
    )
    claims = signer.issue({}, lifetime=7200).claims
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["exp"] == int(WALL) + 3540
    short = signer.issue({}, lifetime=600).claims
    assert short["exp"] == int(WALL) + 600


def test_max_lifetime_below_skew_rejected(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"), skew=60, max_lifetime=30)
    with pytest.raises(ConfigurationError, match="make max_lifetime longer than skew"):
        signer.sign({}, lifetime=300)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"skew": -1}, "skew must be >= 0"),
        ({"skew": math.nan}, "skew must be a finite number"),
        ({"max_lifetime": 0}, "max_lifetime must be > 0"),
        ({"time_claims": ("iat", "iss")}, "time_claims must be"),
        ({"time_claims": "iat"}, "time_claims must be"),
    ],
)
def test_signer_options_checked(
    ec_key: ec.EllipticCurvePrivateKey, arguments: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected):
        JwtSigner(load_signing_key(ec_key, algorithm="ES256"), **arguments)


@pytest.mark.parametrize("lifetime", [0, -5, math.inf, "60"])
def test_bad_lifetime_rejected(ec_key: ec.EllipticCurvePrivateKey, lifetime: Any) -> None:
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"))
    with pytest.raises(ConfigurationError, match="lifetime must be"):
        signer.sign({}, lifetime=lifetime)


@pytest.mark.parametrize(("lifetime", "shown"), [(0, "0"), (-5, "-5"), (-0.5, "-0.5")])
def test_lifetime_message_consistent(
    ec_key: ec.EllipticCurvePrivateKey, lifetime: float, shown: str
) -> None:
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"))
    expected = f"lifetime must be > 0 seconds, got {shown}"
    with pytest.raises(ConfigurationError) as from_sign:
        signer.sign({}, lifetime=lifetime)
    with pytest.raises(ConfigurationError) as from_source:
        JwtSource(signer, lifetime=lifetime)
    with pytest.raises(ConfigurationError) as from_max:
        JwtSigner(signer.key, max_lifetime=lifetime)

    assert str(from_sign.value) == expected
    assert str(from_source.value) == expected
    assert str(from_max.value) == f"max_{expected}"


def test_signer_needs_signing_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ConfigurationError, match="load_signing_key"):
        JwtSigner(ec_key)  # type: ignore[arg-type]


def test_headers_added_and_removed(ec_key: ec.EllipticCurvePrivateKey) -> None:
    key = load_signing_key(ec_key, algorithm="ES256", kid="k")
    signed = JwtSigner(key).issue({}, lifetime=60, headers={"typ": None, "x5t": "abc"})
    assert jwt.get_unverified_header(signed.value) == {"alg": "ES256", "kid": "k", "x5t": "abc"}
    assert dict(signed.header) == {"alg": "ES256", "kid": "k", "x5t": "abc"}
    with pytest.raises(ConfigurationError, match="contradicts the key's algorithm ES256"):
        JwtSigner(key).sign({}, lifetime=60, headers={"alg": "none"})


def test_unserializable_claim_rejected(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"))
    with pytest.raises(ConfigurationError, match="cannot be serialized as JSON"):
        signer.sign({"when": object()}, lifetime=60)
    with pytest.raises(ConfigurationError, match="cannot be serialized as JSON"):
        signer.sign({"ratio": math.nan}, lifetime=60)


def test_signed_jwt_repr_redacts(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signed = JwtSigner(load_signing_key(ec_key, algorithm="ES256")).issue({"sub": "s"}, lifetime=9)
    signature = signed.value.split(".")[2]
    for text in (repr(signed), str(signed), pprint.pformat(signed), f"{signed}"):
        assert signed.value not in text
        assert signature[:12] not in text
        assert "redacted" in text
    assert isinstance(signed, SignedJwt)


# -- clock skew when signing -------------------------------------------------------------


def _github_peer_accepts(token: str, public_key: Any, server_now: float) -> bool:
    """A peer that, like GitHub, rejects iat > now and exp > now + 600."""
    claims = strict_check(token, public_key, "RS256", server_now)
    return bool(claims["exp"] <= server_now + 600)


def test_local_clock_ahead_backdated(rsa_key: rsa.RSAPrivateKey) -> None:
    """The local clock is 45 s ahead; backdating iat by 60 s keeps the JWT valid."""
    server_now = WALL
    local = FakeClock(wall_start=server_now + 45)
    source = JwtSource.github_app(12345, rsa_key, clock=local)
    token = source.issue().value
    assert _github_peer_accepts(token, rsa_key.public_key(), server_now)


def test_local_clock_ahead_small_skew(rsa_key: rsa.RSAPrivateKey) -> None:
    """With skew = 10 s, the same 45 s lead puts iat in the peer's future."""
    server_now = WALL
    local = FakeClock(wall_start=server_now + 45)
    source = JwtSource.github_app(12345, rsa_key, clock=local, skew=10)
    token = source.issue().value
    with pytest.raises(ValueError, match="iat is in the future"):
        _github_peer_accepts(token, rsa_key.public_key(), server_now)


def test_backward_step_nbf_backdated(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """The clock steps back 1 s between minting and the check; nbf = now - skew passes."""
    clock = FakeClock(wall_start=WALL)
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"), clock=clock, skew=60)
    token = signer.sign({}, lifetime=300)
    clock.jump_wall(-1)
    claims = strict_check(token, ec_key.public_key(), "ES256", clock.time())
    assert claims["nbf"] == int(WALL) - 60


def test_backward_step_without_skew(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """With skew = 0, nbf = now and the 1 s step back rejects the JWT."""
    clock = FakeClock(wall_start=WALL)
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"), clock=clock, skew=0)
    token = signer.sign({}, lifetime=300)
    clock.jump_wall(-1)
    with pytest.raises(ValueError, match="iat is in the future"):
        strict_check(token, ec_key.public_key(), "ES256", clock.time())


def test_nbf_can_be_left_out(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = JwtSigner(
        load_signing_key(ec_key, algorithm="ES256"), time_claims=("iat", "exp"), jti=False
    )
    claims = signer.issue({"sub": "s"}, lifetime=60).claims
    assert set(claims) == {"sub", "iat", "exp"}


def test_server_clock_offset_applied(ec_key: ec.EllipticCurvePrivateKey) -> None:
    local = FakeClock(wall_start=WALL)
    server_clock = ServerClock(local)
    server_clock.observe("Tue, 14 Nov 2023 22:23:20 GMT", WALL, WALL)  # WALL + 600
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"), clock=server_clock, skew=60)
    claims = signer.issue({}, lifetime=300).claims
    assert abs(claims["iat"] - (WALL + 600 - 60)) <= 1
    assert abs(claims["exp"] - (WALL + 600 + 300)) <= 1


# -- presets -----------------------------------------------------------------------------


def test_github_app_claims(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall_start=WALL)
    source = JwtSource.github_app("Iv1.abc123", rsa_key, clock=clock)
    signed = source.issue()
    assert dict(signed.header) == {"alg": "RS256", "typ": "JWT"}
    assert set(signed.claims) == {"iss", "iat", "exp"}
    assert signed.claims["iss"] == "Iv1.abc123"
    assert signed.claims["iat"] == int(WALL) - 60
    assert signed.claims["exp"] - signed.claims["iat"] <= 600
    assert signed.claims["exp"] <= WALL + 600
    claims = jwt.decode(
        signed.value, rsa_key.public_key(), algorithms=["RS256"], options={"verify_exp": False}
    )
    assert claims == dict(signed.claims)


def test_github_app_numeric_id(rsa_key: rsa.RSAPrivateKey) -> None:
    claims = JwtSource.github_app(12345, rsa_key).issue().claims
    assert claims["iss"] == 12345


def test_github_app_lifetime_clamped(rsa_key: rsa.RSAPrivateKey) -> None:
    clock = FakeClock(wall_start=WALL)
    claims = JwtSource.github_app(1, rsa_key, clock=clock, lifetime=3600).issue().claims
    assert claims["exp"] - claims["iat"] == 600


def test_github_app_rejects_ec_key(ec_key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ConfigurationError, match="RS256 needs an RSA private key, got an EC P-256"):
        JwtSource.github_app(1, ec_key)


def test_apple_token_shape(ec_key: ec.EllipticCurvePrivateKey) -> None:
    clock = FakeClock(wall_start=WALL)
    source = JwtSource.apple_provider_token("TEAM123456", "KEY1234567", ec_key, clock=clock)
    signed = source.issue()
    assert jwt.get_unverified_header(signed.value) == {"alg": "ES256", "kid": "KEY1234567"}
    assert dict(signed.claims) == {"iss": "TEAM123456", "iat": int(WALL) - 60}
    assert signed.expires_at == signed.claims["iat"] + 3600
    claims = jwt.decode(signed.value, ec_key.public_key(), algorithms=["ES256"])
    assert claims["iss"] == "TEAM123456"


def test_apple_token_rejects_p384() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(
        ConfigurationError, match="ES256 needs an EC P-256 private key, got an EC P-384"
    ):
        JwtSource.apple_provider_token("TEAM", "KEY", key)


@pytest.mark.anyio
async def test_apple_token_reused_for_lifetime(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """One provider token serves for most of its hour. New tokens come at least 20 min
    apart, and no request carries a token more than an hour past its iat."""
    clock = FakeClock(wall_start=WALL)
    source = JwtSource.apple_provider_token("TEAM", "KEY", ec_key, clock=clock)
    cache = TokenCache(source, clock=clock, random=lambda: 0.5)
    issued: dict[str, int] = {}
    for _ in range(120):  # one request a minute for two hours
        token = await cache.get()
        iat = decode_unverified(token.value)[1]["iat"]
        issued.setdefault(token.value, iat)
        assert clock.time() - iat < 3600
        await clock.advance(60)
    times = sorted(issued.values())
    assert len(times) == 3
    assert all(later - earlier >= 1200 for earlier, later in itertools.pairwise(times))


# -- the source behind a cache -----------------------------------------------------------


class CountingSource(JwtSource):
    """A JwtSource that counts its signatures."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signatures = 0

    def issue(self) -> SignedJwt:
        self.signatures += 1
        return super().issue()


def _counting_source(
    key: ec.EllipticCurvePrivateKey, clock: Any, lifetime: float
) -> CountingSource:
    signer = JwtSigner(load_signing_key(key, algorithm="ES256"), clock=clock, skew=60)
    return CountingSource(
        signer, issuer="svc", subject="svc", audience="https://api.example", lifetime=lifetime
    )


@pytest.mark.anyio
async def test_token_carries_exp(ec_key: ec.EllipticCurvePrivateKey) -> None:
    clock = FakeClock(wall_start=WALL)
    token = await _counting_source(ec_key, clock, 300).fetch()
    claims = decode_unverified(token.value)[1]
    assert token.expires_at == claims["exp"]
    assert token.expires_in == pytest.approx(claims["exp"] - WALL)
    assert token.token_type == "Bearer"
    assert claims["aud"] == "https://api.example"


@pytest.mark.anyio
async def test_cache_signs_once_per_lifetime(ec_key: ec.EllipticCurvePrivateKey) -> None:
    clock = FakeClock(wall_start=WALL)
    source = _counting_source(ec_key, clock, 600)
    cache = TokenCache(source, clock=clock, skew=30, refresh_ahead=60, random=lambda: 0.0)
    results: list[str] = []

    async def call() -> None:
        results.append((await cache.get()).value)

    async with anyio.create_task_group() as group:
        for _ in range(100):
            group.start_soon(call)
    assert source.signatures == 1
    assert len(set(results)) == 1

    for _ in range(50):
        await cache.get()
        await clock.advance(10)  # 500 s: inside the lifetime, before the refresh window
    assert source.signatures == 1

    await clock.advance(100)  # past exp
    token = await cache.get()
    assert source.signatures == 2
    assert token.value not in results


@pytest.mark.anyio
async def test_cache_ignores_wall_step(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """Cache expiry runs on the monotonic clock, so wall-clock steps change nothing."""
    clock = FakeClock(wall_start=WALL)
    source = _counting_source(ec_key, clock, 600)
    cache = TokenCache(source, clock=clock, random=lambda: 0.0)
    first = await cache.get()
    clock.jump_wall(-1)
    assert await cache.get() is first
    clock.jump_wall(+7200)
    assert await cache.get() is first
    assert source.signatures == 1


@pytest.mark.anyio
async def test_server_clock_signer_plain_cache(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """The cache keeps a JWT for its real lifetime even when only the signer uses the
    server's offset: expires_in is measured on the signer's clock."""
    clock = FakeClock(wall_start=WALL)
    server_clock = ServerClock(clock)
    server_clock.observe("Tue, 14 Nov 2023 22:23:20 GMT", WALL, WALL)  # 600 s ahead
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"), clock=server_clock)
    source = CountingSource(signer, lifetime=300)
    cache = TokenCache(source, clock=clock, skew=30, refresh_ahead=0, random=lambda: 0.0)
    first = await cache.get()
    assert first.expires_in == pytest.approx(300, abs=1)
    await clock.advance(250)
    assert await cache.get() is first
    await clock.advance(50)
    assert await cache.get() is not first
    assert source.signatures == 2


def test_source_options_checked(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"))
    with pytest.raises(ConfigurationError, match="lifetime must be > 0"):
        JwtSource(signer, lifetime=0)
    with pytest.raises(ConfigurationError, match="JwtSource needs a JwtSigner"):
        JwtSource(object(), lifetime=60)  # type: ignore[arg-type]


def test_source_claims_template(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signer = JwtSigner(load_signing_key(ec_key, algorithm="ES256"))
    source = JwtSource(
        signer,
        issuer="i",
        subject="s",
        audience=["a", "b"],
        lifetime=60,
        claims={"scope": "read"},
        headers={"cty": "x"},
    )
    signed = source.issue()
    assert signed.claims["aud"] == ["a", "b"]
    assert signed.claims["scope"] == "read"
    assert signed.header["cty"] == "x"
    assert "iss" in repr(source)
    assert signed.value not in repr(source)


# -- reading JWTs ------------------------------------------------------------------------


def test_decode_unverified_round_trip(ec_key: ec.EllipticCurvePrivateKey) -> None:
    signed = JwtSigner(load_signing_key(ec_key, algorithm="ES256", kid="k")).issue(
        {"sub": "é"}, lifetime=60
    )
    header, claims = decode_unverified(signed.value)
    assert header == dict(signed.header)
    assert claims == dict(signed.claims)


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("a.b", "three dot-separated parts, this token has 2"),
        ("a.b.c.d.e", "encrypted JWT"),
        ("!!!.e30.sig", "header is not base64url-encoded JSON"),
        ("W10.e30.sig", "header is JSON but not an object"),
        ("e30.bm90IGpzb24.sig", "claims is not base64url-encoded JSON"),
    ],
)
def test_decode_unverified_malformed(token: str, expected: str) -> None:
    with pytest.raises(InvalidTokenError, match=expected) as caught:
        decode_unverified(token)
    assert token not in str(caught.value)


def test_received_iat_slightly_ahead_accepted() -> None:
    """A received JWT issued 1 s in the local future passes the default leeway."""
    clock = FakeClock(wall_start=WALL)
    check_time_claims({"iat": int(WALL) + 1, "exp": int(WALL) + 3600}, clock=clock)


def test_received_iat_far_ahead_rejected() -> None:
    """Issued 5 minutes in the local future: an error that points at the clock."""
    clock = FakeClock(wall_start=WALL)
    with pytest.raises(ClockSkewError) as caught:
        check_time_claims({"iat": int(WALL) + 300, "exp": int(WALL) + 3600}, clock=clock)
    message = str(caught.value)
    assert "300 s ahead" in message
    assert "clock" in message
    assert "NTP" in message


def test_received_nbf_ahead_rejected() -> None:
    clock = FakeClock(wall_start=WALL)
    with pytest.raises(ClockSkewError, match="nbf is 120 s ahead"):
        check_time_claims({"nbf": int(WALL) + 120}, clock=clock, leeway=10)


def test_received_expired_rejected() -> None:
    clock = FakeClock(wall_start=WALL)
    check_time_claims({"exp": int(WALL) - 20}, clock=clock)
    with pytest.raises(InvalidTokenError, match="expired 100 s ago"):
        check_time_claims({"exp": int(WALL) - 100}, clock=clock)


def test_received_bad_time_claim() -> None:
    with pytest.raises(InvalidTokenError, match="'exp' must be a number"):
        check_time_claims({"exp": "soon"})
