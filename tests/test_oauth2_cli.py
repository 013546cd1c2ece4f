"""The `tokenflight token` command, against the real authorization servers."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from secret_guard import register_secret
from servers.fixtures import JwtBearerServer, OidcServer
from tokenflight._cli_token import register

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
            "unsafe_allow_http",
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
            "cannot read the key file",
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
    if "unsafe_allow_http" in problem:
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
