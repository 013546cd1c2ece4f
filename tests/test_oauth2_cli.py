"""The `tokenflight token` command, against the real authorization servers."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secret_guard import register_secret
from servers.fixtures import JwtBearerServer, OidcServer
from tokenflight import ClientCredentials
from tokenflight._cli import UNSAFE_ALLOW_HTTP_HELP
from tokenflight._cli_token import _build_source, register

pytestmark = pytest.mark.server


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tokenflight")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    status: int = args.run(args)
    return status


@pytest.fixture
def secret_file(tmp_path: Path, oidc_server: OidcServer) -> Path:
    path = tmp_path / "client.secret"
    path.write_text(f"{oidc_server.client('cc-basic').client_secret}\n", encoding="utf-8")
    return path


def test_prints_token_from_secret_file(
    oidc_server: OidcServer, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run(
        [
            "token",
            "--token-url",
            oidc_server.token_url,
            "--client-id",
            "cc-basic",
            "--client-secret-file",
            str(secret_file),
            "--scope",
            "read",
        ]
    )
    out, err = capsys.readouterr()
    register_secret(out.strip())
    assert status == 0
    assert err == ""
    assert len(out.strip()) >= 20
    assert out.count("\n") == 1


@pytest.mark.parametrize("output", ["header", "json"])
def test_output_formats(
    oidc_server: OidcServer,
    secret_file: Path,
    output: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["token", "--token-url", oidc_server.token_url, "--client-id", "cc-basic"]
    argv += ["--client-secret-file", str(secret_file), "--scope", "read", "--output", output]
    status = run(argv)
    out = capsys.readouterr().out.strip()
    assert status == 0
    if output == "header":
        scheme_and_token = out.removeprefix("Authorization: ")
        assert scheme_and_token.startswith("Bearer ")
        register_secret(scheme_and_token.split()[1])
    else:
        document = json.loads(out)
        register_secret(document["access_token"])
        assert document["token_type"] == "Bearer"
        assert document["expires_in"] == 300
        assert document["scope"] == "read"
        assert "refresh_token" not in document


def test_settings_from_environment(
    oidc_server: OidcServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENFLIGHT_TOKEN_URL", oidc_server.token_url)
    monkeypatch.setenv("TOKENFLIGHT_CLIENT_ID", "cc-post")
    monkeypatch.setenv(
        "TOKENFLIGHT_CLIENT_SECRET", oidc_server.client("cc-post").client_secret or ""
    )
    status = run(["token", "--auth-method", "client_secret_post"])
    out = capsys.readouterr().out.strip()
    register_secret(out)
    assert status == 0
    assert out


def test_private_key_file(
    oidc_server: OidcServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = oidc_server.client("cc-ec")
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(client.private_key_pem or b"")
    argv = ["token", "--issuer-url", oidc_server.issuer, "--client-id", "cc-ec"]
    argv += ["--key-file", str(key_file), "--algorithm", "ES256", "--key-id", "ec-1"]
    status = run(argv)
    out = capsys.readouterr().out.strip()
    register_secret(out)
    assert status == 0
    assert out


def test_refresh_token_file_rotated(
    oidc_server: OidcServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = oidc_server.first_refresh_token("rt-app")
    token_file = tmp_path / "refresh.token"
    token_file.write_text(first, encoding="utf-8")
    secret_file = tmp_path / "client.secret"
    secret_file.write_text(oidc_server.client("rt-app").client_secret or "", encoding="utf-8")
    argv = ["token", "--grant", "refresh_token", "--token-url", oidc_server.token_url]
    argv += ["--client-id", "rt-app", "--client-secret-file", str(secret_file)]
    argv += ["--refresh-token-file", str(token_file)]

    assert run(argv) == 0
    rotated = token_file.read_text(encoding="utf-8").strip()
    register_secret(rotated)
    assert rotated != first
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert run(argv) == 0  # the rotated token works; the first one would be rejected
    assert token_file.read_text(encoding="utf-8").strip() != rotated
    out = capsys.readouterr().out.split()
    register_secret(*out)
    assert len(out) == 2


def test_jwt_bearer_grant(
    jwt_bearer_server: JwtBearerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "robot.pem"
    key_file.write_bytes(jwt_bearer_server.private_key_pem)
    argv = ["token", "--grant", "jwt_bearer", "--token-url", jwt_bearer_server.token_url]
    argv += ["--issuer", jwt_bearer_server.issuer, "--key-file", str(key_file)]
    argv += ["--algorithm", "ES256", "--scope", "read"]
    status = run(argv)
    out = capsys.readouterr().out.strip()
    register_secret(out)
    assert status == 0
    assert out


def test_wrong_secret_fails_without_leaking(
    oidc_server: OidcServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = "wrong-secret-value-123"
    register_secret(wrong)
    secret_file = tmp_path / "client.secret"
    secret_file.write_text(wrong, encoding="utf-8")
    before = len(oidc_server.token_requests("cc-basic"))
    status = run(
        [
            "token",
            "--token-url",
            oidc_server.token_url,
            "--client-id",
            "cc-basic",
            "--client-secret-file",
            str(secret_file),
        ]
    )
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.startswith("tokenflight token: error: ")
    assert "invalid_client" in err
    assert wrong not in err
    assert len(oidc_server.token_requests("cc-basic")) == before + 1


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--client-id", "svc"], "--token-url"),
        (["--token-url", "https://idp.example/token"], "--client-id"),
        (["--token-url", "https://idp.example/token", "--client-id", "svc"], "secret"),
        (
            ["--token-url", "http://idp.example/token", "--client-id", "svc"],
            "--unsafe-allow-http",
        ),
        (
            [
                *("--token-url", "https://idp.example/token", "--client-id", "svc"),
                *("--grant", "refresh_token"),
            ],
            "--refresh-token-file",
        ),
        (["--grant", "jwt_bearer", "--token-url", "https://idp.example/token"], "--issuer"),
        (
            [
                *("--token-url", "https://idp.example/token", "--client-id", "svc"),
                *("--key-file", "/nonexistent/key.pem"),
            ],
            "cannot read the --key-file file",
        ),
    ],
)
def test_bad_options_exit_2(
    argv: list[str],
    problem: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("TOKEN_URL", "CLIENT_ID", "CLIENT_SECRET", "JWT_KEY"):
        monkeypatch.delenv(f"TOKENFLIGHT_{name}", raising=False)
    if "--unsafe-allow-http" in problem:
        monkeypatch.setenv("TOKENFLIGHT_CLIENT_SECRET", "some-secret-value")
    status = run(["token", *argv])
    err = capsys.readouterr().err
    assert status == 2
    assert problem in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("option", ["--client-secret", "--refresh-token"])
def test_secret_not_accepted_on_command_line(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        run(["token", option, "visible-to-everyone"])
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert "visible-to-everyone" not in err
    assert "-file PATH" in err


def test_option_abbreviation_not_read_as_file(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        run(["token", "--client-secret-f", "client.secret"])
    assert caught.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_private_key_algorithm_inferred(
    oidc_server: OidcServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An EC P-256 key signs with ES256 without --algorithm, as `tokenflight jwt` infers it.
    client = oidc_server.client("cc-ec")
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(client.private_key_pem or b"")
    argv = ["token", "--issuer-url", oidc_server.issuer, "--client-id", "cc-ec"]
    argv += ["--key-file", str(key_file), "--key-id", "ec-1"]
    status = run(argv)
    out, err = capsys.readouterr()
    register_secret(out.strip())
    assert err == ""
    assert status == 0


def test_jwt_bearer_algorithm_inferred(
    jwt_bearer_server: JwtBearerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "robot.pem"
    key_file.write_bytes(jwt_bearer_server.private_key_pem)
    argv = ["token", "--grant", "jwt_bearer", "--token-url", jwt_bearer_server.token_url]
    argv += ["--issuer", jwt_bearer_server.issuer, "--key-file", str(key_file)]
    status = run([*argv, "--scope", "read"])
    out, err = capsys.readouterr()
    register_secret(out.strip())
    assert err == ""
    assert status == 0


def _clear_token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TOKEN_URL", "CLIENT_ID", "CLIENT_SECRET", "JWT_KEY", "KEY_PASSPHRASE"):
        monkeypatch.delenv(f"TOKENFLIGHT_{name}", raising=False)


def test_token_url_and_issuer_url_exclusive(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clear_token_env(monkeypatch)
    monkeypatch.setenv("TOKENFLIGHT_CLIENT_SECRET", "some-secret-value")
    # Loopback URLs on a closed port: were both accepted, nothing would leave the machine.
    argv = ["token", "--token-url", "https://127.0.0.1:9/token"]
    argv += ["--issuer-url", "https://127.0.0.1:9", "--client-id", "svc", "--timeout", "1"]
    status = run(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("tokenflight token: error: ")
    assert "--token-url or --issuer-url, not both" in err
    assert err.count("\n") == 1


def test_unsafe_allow_http_option(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_token_env(monkeypatch)
    monkeypatch.setenv("TOKENFLIGHT_CLIENT_SECRET", "some-secret-value")
    parser = argparse.ArgumentParser(prog="tokenflight")
    register(parser.add_subparsers(required=True))
    argv = ["token", "--token-url", "http://idp.example/token", "--client-id", "svc"]

    # The source accepts the plain http:// URL only with unsafe_allow_http=True.
    source = _build_source(parser.parse_args([*argv, "--unsafe-allow-http"]))

    assert isinstance(source, ClientCredentials)
    assert source.token_url == "http://idp.example/token"
    assert "plain http://" in UNSAFE_ALLOW_HTTP_HELP
    assert "unencrypted" in UNSAFE_ALLOW_HTTP_HELP


@pytest.mark.parametrize(
    ("url_option", "name"),
    [("--token-url", "--token-url"), ("--issuer-url", "--issuer-url"), (None, "TOKENFLIGHT")],
)
def test_plain_http_names_cli_option(
    url_option: str | None,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _clear_token_env(monkeypatch)
    monkeypatch.setenv("TOKENFLIGHT_CLIENT_SECRET", "some-secret-value")
    argv = ["token", "--client-id", "svc"]
    if url_option is None:
        monkeypatch.setenv("TOKENFLIGHT_TOKEN_URL", "http://idp.example/token")
    else:
        argv += [url_option, "http://idp.example/token"]
    status = run(argv)
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith(f"tokenflight token: error: {name}")
    assert "pass --unsafe-allow-http for a test setup" in err
    assert "unsafe_allow_http=True" not in err
    assert err.count("\n") == 1


def test_encrypted_key_names_passphrase_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _clear_token_env(monkeypatch)
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"open sesame"),
        )
    )
    argv = ["token", "--token-url", "https://idp.example/token", "--client-id", "svc"]
    status = run([*argv, "--key-file", str(key_file)])
    err = capsys.readouterr().err
    assert status == 2
    assert "the private key is encrypted; pass it with --passphrase-file PATH" in err
    assert "TOKENFLIGHT_KEY_PASSPHRASE" in err
    assert "as password" not in err
    assert "--algorithm" not in err


# A path that is really a secret pasted in the wrong place.
PASTED = "pasted-secret-value-0123456789"


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--client-secret-file", PASTED], "--client-secret-file"),
        (["--key-file", PASTED], "--key-file"),
        (["--key-file", "KEY", "--passphrase-file", PASTED], "--passphrase-file"),
        (
            [
                *("--client-secret-file", "SECRET", "--grant", "refresh_token"),
                *("--refresh-token-file", PASTED),
            ],
            "--refresh-token-file",
        ),
    ],
)
def test_unreadable_file_path_not_shown(
    extra: list[str],
    option: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _clear_token_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    Path("SECRET").write_text("client-secret-value\n", encoding="utf-8")
    Path("KEY").write_bytes(b"not read: the passphrase comes first")
    argv = ["token", "--token-url", "https://idp.example/token", "--client-id", "svc"]
    status = run([*argv, *extra])
    err = capsys.readouterr().err
    assert status == 2
    assert f"cannot read the {option} file: No such file or directory" in err
    assert PASTED not in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("content", "problem"), [(b"\xff\xfe", "not UTF-8"), (b" \n", "empty")])
def test_bad_secret_file_path_not_shown(
    content: bytes,
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _clear_token_env(monkeypatch)
    secret_file = tmp_path / PASTED
    secret_file.write_bytes(content)
    argv = ["token", "--token-url", "https://idp.example/token", "--client-id", "svc"]
    status = run([*argv, "--client-secret-file", str(secret_file)])
    err = capsys.readouterr().err
    assert status == 2
    assert f"the --client-secret-file file is {problem}" in err
    assert PASTED not in err
