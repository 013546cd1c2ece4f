"""The `tokenflight jwt` and `tokenflight inspect` commands."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tokenflight import JwtSigner, load_signing_key
from tokenflight._cli_jwt import register
from tokenflight.testing import FakeClock

WALL = 1_700_000_000.0
# PyJWT checks the signature only; the tests check times against their own clock.
NO_TIME_CHECKS = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
}
HMAC_SECRET = "an-hmac-secret-of-at-least-32-bytes!"
PASSPHRASE = "open sesame"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenflight")
    register(parser.add_subparsers(required=True))
    return parser


def run(argv: list[str], *, stdin: str | None = None) -> int:
    args = _parser().parse_args(argv)
    clock = FakeClock(wall_start=WALL)
    if argv[0] == "inspect":
        status: int = args.run(args, clock=clock, stdin=io.StringIO(stdin or ""))
    else:
        status = args.run(args, clock=clock)
    return status


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_pem(path: Path, key: Any, passphrase: str | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return path


def _decode(token: str, key: Any, algorithm: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[algorithm],
        options={
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "verify_aud": False,
        },
    )
    return claims


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENFLIGHT_JWT_KEY", raising=False)
    monkeypatch.delenv("TOKENFLIGHT_KEY_PASSPHRASE", raising=False)


# -- tokenflight jwt ---------------------------------------------------------------------


def test_jwt_from_key_file(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = _write_pem(tmp_path / "key.pem", ec_key)
    status = run(
        [
            "jwt",
            "--key-file",
            str(key_file),
            "--kid",
            "k1",
            "--iss",
            "me",
            "--sub",
            "svc",
            "--aud",
            "a",
            "--aud",
            "b",
            "--claim",
            "scope=read",
            "--claim",
            "level=3",
            "--lifetime",
            "120",
        ]
    )
    assert status == 0

    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "k1", "typ": "JWT"}
    claims = _decode(token, ec_key.public_key(), "ES256")
    assert claims["iss"] == "me"
    assert claims["aud"] == ["a", "b"]
    assert claims["scope"] == "read"
    assert claims["level"] == 3
    assert claims["iat"] == int(WALL) - 60
    assert claims["exp"] == int(WALL) + 120
    assert "jti" in claims


def test_jwt_algorithm_inferred(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    key_file = _write_pem(tmp_path / "key.pem", key)
    assert run(["jwt", "--key-file", str(key_file)]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "ES384"
    assert "sub" not in _decode(token, key.public_key(), "ES384")


def test_jwt_algorithm_from_jwk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = load_signing_key(key, algorithm="PS256").public_jwk()
    numbers = key.private_numbers()
    jwk["d"] = (
        base64.urlsafe_b64encode(numbers.d.to_bytes((numbers.d.bit_length() + 7) // 8, "big"))
        .decode()
        .rstrip("=")
    )
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(jwk))
    assert run(["jwt", "--key-file", str(key_file)]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "PS256"
    _decode(token, key.public_key(), "PS256")


def test_jwt_hmac_jwk_needs_algorithm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "key.json"
    secret = base64.urlsafe_b64encode(HMAC_SECRET.encode()).decode().rstrip("=")
    key_file.write_text(json.dumps({"kty": "oct", "k": secret}))
    assert run(["jwt", "--key-file", str(key_file)]) == 2
    err = capsys.readouterr().err
    assert "shared secret; give HS256, HS384 or HS512" in err
    assert secret not in err
    assert run(["jwt", "--key-file", str(key_file), "--algorithm", "HS256"]) == 0


def test_jwt_hmac_from_default_env(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENFLIGHT_JWT_KEY", HMAC_SECRET)
    assert run(["jwt", "--algorithm", "HS256", "--sub", "svc", "--no-nbf", "--no-jti"]) == 0
    token = capsys.readouterr().out.strip()
    claims = _decode(token, HMAC_SECRET.encode(), "HS256")
    assert set(claims) == {"sub", "iat", "exp"}


def test_jwt_named_env(
    monkeypatch: pytest.MonkeyPatch,
    ec_key: ec.EllipticCurvePrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    monkeypatch.setenv("MY_KEY", pem.strip().replace("\n", "\\n"))
    assert run(["jwt", "--key-env", "MY_KEY", "--sub", "svc"]) == 0
    token = capsys.readouterr().out.strip()
    assert _decode(token, ec_key.public_key(), "ES256")["sub"] == "svc"


def test_jwt_encrypted_key_passphrase_file(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = _write_pem(tmp_path / "key.pem", rsa_key, PASSPHRASE)
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    argv = ["jwt", "--key-file", str(key_file), "--passphrase-file", str(passphrase_file)]
    assert run(argv) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    _decode(token, rsa_key.public_key(), "RS256")


def test_jwt_encrypted_key_passphrase_env(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_file = _write_pem(tmp_path / "key.pem", rsa_key, PASSPHRASE)
    monkeypatch.setenv("TOKENFLIGHT_KEY_PASSPHRASE", PASSPHRASE)
    assert run(["jwt", "--key-file", str(key_file), "--algorithm", "PS256"]) == 0
    token = capsys.readouterr().out.strip()
    _decode(token, rsa_key.public_key(), "PS256")


def test_jwt_wrong_passphrase(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_file = _write_pem(tmp_path / "key.pem", rsa_key, PASSPHRASE)
    monkeypatch.setenv("TOKENFLIGHT_KEY_PASSPHRASE", "wrong passphrase")
    assert run(["jwt", "--key-file", str(key_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "check the passphrase" in captured.err
    assert "wrong passphrase" not in captured.err
    assert key_file.read_text()[40:80] not in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_jwt_github_preset(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = _write_pem(tmp_path / "app.pem", rsa_key)
    assert run(["jwt", "--key-file", str(key_file), "--preset", "github-app", "--iss", "42"]) == 0
    token = capsys.readouterr().out.strip()
    claims = _decode(token, rsa_key.public_key(), "RS256")
    assert claims == {"iss": 42, "iat": int(WALL) - 60, "exp": int(WALL) + 540}


def test_jwt_apple_preset(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = _write_pem(tmp_path / "AuthKey.p8", ec_key)
    argv = ["jwt", "--key-file", str(key_file), "--preset", "apple", "--iss", "T1", "--kid", "K1"]
    assert run(argv) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "K1"}
    assert _decode(token, ec_key.public_key(), "ES256") == {"iss": "T1", "iat": int(WALL) - 60}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--preset", "github-app"], "needs --iss"),
        (["--preset", "apple", "--iss", "T"], "needs --iss with the team id and --kid"),
        (["--preset", "github-app", "--iss", "1", "--sub", "x"], "drop --sub"),
        (["--claim", "novalue"], "--claim expects NAME=VALUE"),
        (["--algorithm", "RS256"], "RS256 needs an RSA private key, got an EC P-256"),
        (["--lifetime", "-5"], "lifetime must be > 0 seconds, got -5.0"),
        (
            ["--preset", "apple", "--iss", "T", "--kid", "K", "--algorithm", "ES384"],
            "drop --algorithm",
        ),
        (["--skew", "nan"], "skew must be a finite number"),
    ],
)
def test_jwt_bad_options(
    tmp_path: Path,
    ec_key: ec.EllipticCurvePrivateKey,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    key_file = _write_pem(tmp_path / "key.pem", ec_key)
    assert run(["jwt", "--key-file", str(key_file), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert expected in captured.err
    assert captured.err.startswith("tokenflight jwt: error: ")
    assert len(captured.err.strip().splitlines()) == 1


def test_jwt_without_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["jwt", "--sub", "svc"]) == 2
    assert "pass --key-file PATH, or put the key in" in capsys.readouterr().err


def test_jwt_missing_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["jwt", "--key-file", str(tmp_path / "missing.pem")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the --key-file file: No such file or directory" in err
    assert "missing.pem" not in err


# A path that is really a secret pasted in the wrong place.
PASTED = "pasted-secret-value-0123456789"


@pytest.mark.parametrize(
    "argv",
    [
        ["jwt", "--key-file", PASTED],
        ["jwt", "--key-file", "key.pem", "--passphrase-file", PASTED],
        ["jwt", "--key-file", "key.pem", "--claims-file", PASTED],
        ["inspect", "--token-file", PASTED],
    ],
    ids=["key-file", "passphrase-file", "claims-file", "token-file"],
)
def test_unreadable_file_path_not_shown(
    argv: list[str],
    tmp_path: Path,
    ec_key: ec.EllipticCurvePrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    _write_pem(tmp_path / "key.pem", ec_key)
    assert run(argv) == 2
    err = capsys.readouterr().err
    option = argv[argv.index(PASTED) - 1]
    assert f"cannot read the {option} file: No such file or directory" in err
    assert PASTED not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_claims_file_path_not_shown(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = _write_pem(tmp_path / "key.pem", ec_key)
    claims_file = tmp_path / PASTED
    claims_file.write_text("{not json")
    assert run(["jwt", "--key-file", str(key_file), "--claims-file", str(claims_file)]) == 2
    err = capsys.readouterr().err
    assert "the --claims-file file is not valid JSON" in err
    assert PASTED not in err


def test_jwt_encrypted_key_names_options(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = _write_pem(tmp_path / "key.pem", rsa_key, PASSPHRASE)
    for argv in (
        ["jwt", "--key-file", str(key_file)],
        ["jwt", "--key-file", str(key_file), "--algorithm", "RS256"],
    ):
        assert run(argv) == 2
        err = capsys.readouterr().err
        assert "the private key is encrypted; pass it with --passphrase-file PATH" in err
        assert "as password" not in err
        assert "--algorithm" not in err


def test_jwt_algorithm_hint_only_for_secrets(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    public_file = tmp_path / "public.pem"
    public_file.write_bytes(
        rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    encrypted_file = _write_pem(tmp_path / "encrypted.pem", rsa_key, PASSPHRASE)
    monkeypatch.setenv("TOKENFLIGHT_KEY_PASSPHRASE", "wrong passphrase")
    unrelated = {
        "public key": ["jwt", "--key-file", str(public_file)],
        "wrong passphrase": ["jwt", "--key-file", str(encrypted_file)],
    }
    for case, argv in unrelated.items():
        assert run(argv) == 2, case
        assert "--algorithm" not in capsys.readouterr().err, case

    monkeypatch.delenv("TOKENFLIGHT_KEY_PASSPHRASE")
    monkeypatch.setenv("TOKENFLIGHT_JWT_KEY", HMAC_SECRET)
    assert run(["jwt"]) == 2
    assert "for an HMAC secret, pass --algorithm HS256" in capsys.readouterr().err


def test_jwt_env_key_never_read_as_path(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A value that is neither PEM nor a JWK is not taken as a file path.
    monkeypatch.setenv("TOKENFLIGHT_JWT_KEY", PASTED)
    assert run(["jwt", "--algorithm", "RS256"]) == 2
    err = capsys.readouterr().err
    assert "cannot parse the key" in err
    assert "pathlib" not in err
    assert PASTED not in err


@pytest.mark.parametrize(
    ("preset", "key_type", "expected"),
    [
        (
            "github-app",
            "ec",
            "GitHub Apps sign their JWTs with RS256, so they need an RSA private key, got an "
            "EC P-256 private key; use the private key generated in the app's settings",
        ),
        ("apple", "rsa", "need an EC P-256 private key, got an RSA 2048-bit private key"),
    ],
)
def test_jwt_preset_wrong_key_type(
    preset: str,
    key_type: str,
    expected: str,
    tmp_path: Path,
    ec_key: ec.EllipticCurvePrivateKey,
    rsa_key: rsa.RSAPrivateKey,
    capsys: pytest.CaptureFixture[str],
) -> None:
    key_file = _write_pem(tmp_path / "key.pem", ec_key if key_type == "ec" else rsa_key)
    argv = ["jwt", "--key-file", str(key_file), "--preset", preset, "--iss", "1", "--kid", "K"]
    if preset == "github-app":
        argv = argv[:-2]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "use ES256" not in err
    assert "use RS256" not in err
    assert len(err.strip().splitlines()) == 1


def test_jwt_hmac_needs_algorithm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENFLIGHT_JWT_KEY", HMAC_SECRET)
    assert run(["jwt"]) == 2
    err = capsys.readouterr().err
    assert "pass --algorithm" in err
    assert HMAC_SECRET not in err


def test_jwt_claims_file(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = _write_pem(tmp_path / "key.pem", ec_key)
    claims_file = tmp_path / "claims.json"
    claims_file.write_text(json.dumps({"tenant": "t1", "roles": ["a"]}))
    argv = ["jwt", "--key-file", str(key_file), "--claims-file", str(claims_file)]
    assert run([*argv, "--header", "cty=x"]) == 0
    token = capsys.readouterr().out.strip()
    claims = _decode(token, ec_key.public_key(), "ES256")
    assert claims["tenant"] == "t1"
    assert claims["roles"] == ["a"]
    assert jwt.get_unverified_header(token)["cty"] == "x"
    claims_file.write_text("[1, 2]")
    assert run(argv) == 2
    assert "must hold a JSON object" in capsys.readouterr().err


def test_no_secret_taken_as_value() -> None:
    """Keys, passphrases and tokens are read from files or the environment only."""
    parser = _parser()
    subparsers = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    for name in ("jwt", "inspect"):
        for action in subparsers.choices[name]._actions:
            for option in action.option_strings:
                if any(word in option for word in ("key", "passphrase", "token", "secret")):
                    assert option.endswith(("-file", "-env")), option
        positionals = [a for a in subparsers.choices[name]._actions if not a.option_strings]
        assert positionals == []


# -- tokenflight inspect -----------------------------------------------------------------


def _token(key: ec.EllipticCurvePrivateKey, claims: dict[str, Any], lifetime: float = 300) -> str:
    signer = JwtSigner(
        load_signing_key(key, algorithm="ES256", kid="k1"), clock=FakeClock(wall_start=WALL)
    )
    return signer.sign(claims, lifetime=lifetime)


def test_inspect_valid(
    ec_key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _token(ec_key, {"sub": "svc"})
    assert run(["inspect"], stdin=token + "\n") == 0
    out = capsys.readouterr().out
    assert '  alg  "ES256"' in out
    assert '  sub  "svc"' in out
    assert "2023-11-14 22:12:20 UTC  (1 min ago)" in out
    assert "2023-11-14 22:18:20 UTC  (in 5 min)" in out
    assert "lifetime   360 s (exp - iat)" in out
    assert "status     valid: expires in 5 min (skew 30 s)" in out
    assert "signature  not verified" in out
    assert token not in out


def test_inspect_expired(
    ec_key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _token(ec_key, {"iat": int(WALL) - 900, "exp": int(WALL) - 300})
    assert run(["inspect"], stdin=token) == 1
    assert "status     expired: expired 5 min ago" in capsys.readouterr().out


def test_inspect_issued_in_future(
    ec_key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _token(ec_key, {"iat": int(WALL) + 300, "nbf": int(WALL) + 300})
    assert run(["inspect"], stdin=token) == 1
    out = capsys.readouterr().out
    assert "not yet valid: nbf is 5 min ahead of this clock, beyond the 30 s skew" in out
    assert "the issuer's clock and this one disagree" in out
    assert run(["inspect", "--skew", "600"], stdin=token) == 0


def test_inspect_within_skew(
    ec_key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _token(ec_key, {"exp": int(WALL) + 20})
    assert run(["inspect"], stdin=token) == 0
    assert "expires in 20 s, within the 30 s skew: a cache would renew it now" in (
        capsys.readouterr().out
    )


def test_inspect_flags_float_times(capsys: pytest.CaptureFixture[str]) -> None:
    header = "eyJhbGciOiJub25lIn0"  # {"alg":"none"}
    claims = base64.urlsafe_b64encode(json.dumps({"iat": WALL + 0.5}).encode()).decode().rstrip("=")
    assert run(["inspect"], stdin=f"{header}.{claims}.") == 0
    assert "[not an integer: strict validators reject it]" in capsys.readouterr().out


def test_inspect_json(
    ec_key: ec.EllipticCurvePrivateKey, capsys: pytest.CaptureFixture[str]
) -> None:
    token = _token(ec_key, {"sub": "svc"})
    assert run(["inspect", "--json"], stdin=token) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["status"] == "valid"
    assert document["header"]["kid"] == "k1"
    assert document["claims"]["sub"] == "svc"
    assert document["times"]["exp"]["seconds_from_now"] == 300
    assert document["signature_verified"] is False


def test_inspect_file_env_and_bearer(
    tmp_path: Path,
    ec_key: ec.EllipticCurvePrivateKey,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = _token(ec_key, {"sub": "svc"})
    token_file = tmp_path / "token"
    token_file.write_text(f"Bearer {token}\n")
    assert run(["inspect", "--token-file", str(token_file)]) == 0
    monkeypatch.setenv("MY_TOKEN", token)
    assert run(["inspect", "--token-env", "MY_TOKEN"]) == 0
    assert capsys.readouterr().out.count('  sub  "svc"') == 2


def test_inspect_malformed(capsys: pytest.CaptureFixture[str]) -> None:
    secretish = "abc.def"
    assert run(["inspect"], stdin=secretish) == 1
    err = capsys.readouterr().err
    assert "three dot-separated parts" in err
    assert secretish not in err


def test_inspect_empty_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect"], stdin="  \n") == 2
    assert "the JWT is empty" in capsys.readouterr().err


def test_inspect_terminal_stdin(capsys: pytest.CaptureFixture[str]) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    args = _parser().parse_args(["inspect"])
    assert args.run(args, clock=FakeClock(), stdin=Terminal()) == 2
    assert "pipe the JWT on standard input" in capsys.readouterr().err


def test_inspect_escapes_unprintable() -> None:
    header = "eyJhbGciOiJub25lIn0"  # {"alg":"none"}
    document = b'{"sub": "a\\ud800b", "x\\u001b[31my": "c\\u009bd", "ok": "caf\\u00e9"}'
    claims = base64.urlsafe_b64encode(document).decode().rstrip("=")
    for as_json in (False, True):
        stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        args = _parser().parse_args(["inspect", *(["--json"] if as_json else [])])
        with contextlib.redirect_stdout(stdout):
            args.run(args, clock=FakeClock(), stdin=io.StringIO(f"{header}.{claims}."))
        stdout.flush()
        out = stdout.buffer.getvalue().decode("utf-8")

        assert "a\\ud800b" in out
        assert "c\\u009bd" in out
        assert "x\\u001b[31my" in out
        assert "caf\u00e9" in out
        assert "\x1b" not in out
        if as_json:
            assert json.loads(out)["claims"]["sub"] == "a\ud800b"


def test_inspect_missing_env(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect", "--token-env", "NO_SUCH_VARIABLE_HERE"]) == 2
    assert "NO_SUCH_VARIABLE_HERE is not set" in capsys.readouterr().err
