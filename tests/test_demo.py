"""The `tokenflight demo` command: small real runs on both backends, options, errors.

These runs start hypercorn on 127.0.0.1 and send real requests, so they take real time;
they assert on counts only, never on durations.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from secret_guard import SecretGuard
from servers.fixtures import OidcServer
from tokenflight import ConfigurationError
from tokenflight import _demo as demo_module
from tokenflight._cli import CLIENT_SECRET_ENV, _demo_options, build_parser, main
from tokenflight._demo import DemoError, DemoOptions, run_demo
from tokenflight._demo._servers import TokenEndpoint, TokenRegistry, serve
from tokenflight._demo._summary import DemoSummary, percentile

SECRET = "demo-client-secret-Hq5wPz8k"


# -- real runs -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_small_run_all_succeed(anyio_backend: str) -> None:
    # Tokens outlive the run, so the one revocation is the only reason for a 401.
    options = DemoOptions(
        backend=anyio_backend,
        requests=300,
        concurrency=60,
        token_lifetime=120.0,
        revoke_at=150,
        progress=False,
    )
    summary = await run_demo(options)
    assert summary.ok
    assert summary.successes == 300
    assert summary.token_fetches == 2
    assert summary.revoked_at is not None
    assert summary.revoked_at >= 150
    assert summary.rejections >= 1
    assert summary.retries == summary.rejections
    assert summary.statuses == {}
    assert summary.errors == {}
    assert summary.embedded


@pytest.mark.anyio
async def test_progress_bar_drawn(anyio_backend: str) -> None:
    stream = io.StringIO()
    options = DemoOptions(
        backend=anyio_backend, requests=40, concurrency=8, revoke_at=0, progress=True
    )
    summary = await run_demo(options, stream=stream)
    assert summary.ok
    assert summary.rejections == 0
    assert "40/40 requests" in stream.getvalue()
    assert stream.getvalue().endswith("\n")


@pytest.mark.anyio
async def test_external_endpoint_used(anyio_backend: str, secret_guard: SecretGuard) -> None:
    secret_guard.register(SECRET)
    endpoint = TokenEndpoint(
        TokenRegistry(), client_id="external-client", client_secret=SECRET, lifetime=60.0
    )
    async with serve([endpoint], backend=anyio_backend) as urls:
        options = DemoOptions(
            backend=anyio_backend,
            requests=120,
            concurrency=30,
            revoke_at=60,
            token_url=f"{urls[0]}/token",
            client_id="external-client",
            client_secret=SECRET,
            progress=False,
        )
        summary = await run_demo(options)
    assert summary.ok
    assert not summary.embedded
    assert summary.token_url == f"{urls[0]}/token"
    assert summary.token_lifetime == 60.0
    assert endpoint.requests == summary.token_fetches == 2
    assert summary.retries == summary.rejections >= 1


@pytest.mark.anyio
async def test_wrong_secret_one_error(anyio_backend: str, secret_guard: SecretGuard) -> None:
    secret_guard.register(SECRET, SECRET[::-1])
    endpoint = TokenEndpoint(
        TokenRegistry(), client_id="external-client", client_secret=SECRET, lifetime=60.0
    )
    async with serve([endpoint], backend=anyio_backend) as urls:
        options = DemoOptions(
            backend=anyio_backend,
            requests=50,
            concurrency=10,
            token_url=f"{urls[0]}/token",
            client_id="external-client",
            client_secret="not-the-secret-" + SECRET[::-1],
            progress=False,
        )
        with pytest.raises(DemoError, match="could not get a token from") as caught:
            await run_demo(options)
    assert endpoint.rejected >= 1
    assert SECRET[::-1] not in str(caught.value)


@pytest.mark.anyio
async def test_external_url_checked_first(anyio_backend: str) -> None:
    options = DemoOptions(
        backend=anyio_backend,
        token_url="http://login.example.com/token",
        client_id="c",
        client_secret=SECRET,
    )
    with pytest.raises(ConfigurationError, match="https"):
        await run_demo(options)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_command_prints_summary(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["demo", "--backend", backend, "--requests", "120", "--concurrency", "20", "--no-progress"]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    assert f"tokenflight demo on {backend}: 120 requests from 20 concurrent tasks" in out
    for label in ("successes", "token fetches", "fetches per expiry", "401s", "retries"):
        assert f"  {label} " in out
    assert "p50" in out
    assert "p99" in out
    assert err == ""


def test_console_script_runs() -> None:
    script = Path(sys.executable).with_name("tokenflight")
    completed = subprocess.run(
        [str(script), "demo", "--requests", "60", "--concurrency", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "successes           60 (100.0 %)" in completed.stdout


@pytest.mark.server
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_command_against_oidc_provider(
    backend: str,
    oidc_server: OidcServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = oidc_server.client("demo")
    assert client.client_secret is not None
    secret_file = tmp_path / "demo.secret"
    secret_file.write_text(client.client_secret + "\n")
    before = len(oidc_server.token_requests("demo"))

    status = main(
        [
            "demo",
            "--backend",
            backend,
            "--requests",
            "200",
            "--concurrency",
            "40",
            "--token-url",
            oidc_server.token_url,
            "--client-id",
            "demo",
            "--client-secret-file",
            str(secret_file),
            "--scope",
            "read",
            "--no-progress",
        ]
    )
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "successes           200 (100.0 %)" in out
    assert f"token endpoint      {oidc_server.token_url} (external; token lifetime 5 s)" in out
    fetches = int(out.split("token fetches")[1].split()[0])
    assert len(oidc_server.token_requests("demo")) - before == fetches
    assert client.client_secret not in out + err


# -- options ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--requests", "0"], "--requests: must be at least 1"),
        (["--requests", "many"], "--requests: expected a whole number"),
        (["--concurrency", "-5"], "--concurrency: must be at least 1"),
        (["--token-lifetime", "0.5"], "--token-lifetime: must be between 1 and 86400"),
        (["--backend", "curio"], "--backend: invalid choice"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--secret=hunter2-value", "stray"], "--secret, 1 value(s) that belong to no option"),
        (["--client-id", "abc"], "--client-id applies only with --token-url"),
        (["--token-url", "http://127.0.0.1:9/token"], "--token-url needs --client-id"),
        (
            ["--token-url", "http://127.0.0.1:9/token", "--client-id", "c"],
            f"pass --client-secret-file PATH or set {CLIENT_SECRET_ENV}",
        ),
        (
            [
                "--token-url",
                "http://127.0.0.1:9/token",
                "--client-id",
                "c",
                "--token-lifetime",
                "5",
            ],
            "drop --token-lifetime",
        ),
        (["--client-secret", SECRET], "put the secret in a file"),
        (["--unsafe-allow-http"], "--unsafe-allow-http applies only with --token-url"),
        (
            [
                *("--token-url", "https://login.example.com/token", "--client-id", "c"),
                *("--client-secret-file", f"{SECRET}-pasted"),
            ],
            "cannot read the --client-secret-file file: No such file or directory",
        ),
    ],
)
def test_bad_option_one_line(
    arguments: list[str],
    expected: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(CLIENT_SECRET_ENV, raising=False)
    status = main(["demo", *arguments])
    out, err = capsys.readouterr()
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("tokenflight demo: error: ")
    assert expected in err
    assert "Traceback" not in err
    assert SECRET not in err
    assert "hunter2" not in err


def test_plain_http_token_url_rejected(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CLIENT_SECRET_ENV, SECRET)
    status = main(["demo", "--token-url", "http://login.example.com/token", "--client-id", "c"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith("tokenflight demo: error: --token-url 'http://login.example.com/token'")
    assert "use https://, or pass --unsafe-allow-http for a test setup" in err
    assert "unsafe_allow_http=True" not in err
    assert SECRET not in err


def test_unsafe_allow_http_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLIENT_SECRET_ENV, SECRET)
    argv = ["demo", "--token-url", "http://login.example.com/token", "--client-id", "c"]

    options = _demo_options(build_parser().parse_args([*argv, "--unsafe-allow-http"]))

    assert options.unsafe_allow_http is True
    assert options.token_url == "http://login.example.com/token"


@pytest.mark.anyio
async def test_unsafe_allow_http_reaches_source(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The source is built before any server starts. This stand-in records its arguments
    # and stops the run there, so nothing is sent to the external host.
    received: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_client_credentials(*args: object, **kwargs: object) -> None:
        received.update(kwargs)
        raise Stop

    monkeypatch.setattr(demo_module, "ClientCredentials", fake_client_credentials)
    options = DemoOptions(
        backend=anyio_backend,
        token_url="http://login.example.com/token",
        client_id="c",
        client_secret=SECRET,
        unsafe_allow_http=True,
    )
    with pytest.raises(Stop):
        await run_demo(options)

    assert received["unsafe_allow_http"] is True


def test_no_command_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = main([])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith("tokenflight: error: ")


def test_missing_hypercorn_names_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "hypercorn", None)
    status = main(["demo", "--requests", "10"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert "pip install 'tokenflight[demo]'" in err


def test_secret_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLIENT_SECRET_ENV, "from-the-environment")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    args = build_parser().parse_args(
        [
            "demo",
            "--token-url",
            "https://login.example.com/token",
            "--client-id",
            "c",
            "--client-secret-file",
            str(secret_file),
            "--scope",
            "items:read",
        ]
    )
    options = _demo_options(args)
    assert options.client_secret == SECRET
    assert options.scope == "items:read"
    assert SECRET not in repr(options)


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CLIENT_SECRET_ENV, f"  {SECRET}\n")
    args = build_parser().parse_args(
        ["demo", "--token-url", "https://login.example.com/token", "--client-id", "c"]
    )
    assert _demo_options(args).client_secret == SECRET


@pytest.mark.parametrize("content", [None, "  \n"], ids=["missing", "empty"])
def test_bad_secret_file_one_line(
    content: str | None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file = tmp_path / "secret"
    if content is not None:
        secret_file.write_text(content)
    status = main(
        [
            "demo",
            "--token-url",
            "https://login.example.com/token",
            "--client-id",
            "c",
            "--client-secret-file",
            str(secret_file),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1
    assert "--client-secret-file" in err
    assert str(secret_file) not in err


# -- the summary -----------------------------------------------------------------------


def make_summary(**changes: object) -> DemoSummary:
    fields: dict[str, object] = {
        "backend": "trio",
        "requests": 10_000,
        "concurrency": 1_000,
        "in_flight": 100,
        "successes": 10_000,
        "token_fetches": 9,
        "token_lifetime": 2.0,
        "renewal_interval": 1.5,
        "duration": 12.0,
        "rejections": 100,
        "retries": 100,
        "revoked_at": 5_000,
        "latency_p50": 0.041,
        "latency_p99": 0.1523,
        "token_url": "http://127.0.0.1:1/token",
        "embedded": True,
        "api_url": "http://127.0.0.1:2",
    }
    fields.update(changes)
    return DemoSummary(**fields)  # type: ignore[arg-type]


def test_summary_lines() -> None:
    text = make_summary().format()
    assert "tokenflight demo on trio: 10,000 requests from 1,000 concurrent tasks" in text
    assert "  successes           10,000 (100.0 %)" in text
    assert "  token fetches       9" in text
    assert (
        "  fetches per expiry  1.00 (9 fetches: the first, then 8.0 expiries of a token "
        "renewed every 1.50 s)" in text
    )
    assert (
        "  401s                100 (the API revoked the token in use after request 5,000)" in text
    )
    assert "  retries             100" in text
    assert "  latency             p50 41.0 ms, p99 152.3 ms" in text


def test_summary_no_expiry() -> None:
    summary = make_summary(duration=1.0, revoked_at=None)
    assert summary.fetches_per_expiry is None
    text = summary.format()
    assert "fetches per expiry  n/a (no token expired: 1.0 s run, 2 s tokens)" in text
    assert "revoked" not in text


def test_summary_failures_listed() -> None:
    summary = make_summary(
        successes=9_990,
        statuses={503: 4},
        errors={"ReadTimeout": (6, "timed out")},
    )
    assert not summary.ok
    text = summary.format()
    assert "status 503" in text
    assert "ReadTimeout: 6 (first: timed out)" in text


@pytest.mark.parametrize(
    ("values", "share", "expected"),
    [
        ([3.0, 1.0, 2.0], 0.5, 2.0),
        ([float(n) for n in range(1, 101)], 0.99, 99.0),
        ([float(n) for n in range(1, 101)], 0.5, 50.0),
        ([7.0], 0.99, 7.0),
    ],
)
def test_percentile_nearest_rank(values: list[float], share: float, expected: float) -> None:
    assert percentile(values, share) == expected
