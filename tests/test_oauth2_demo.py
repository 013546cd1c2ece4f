"""`tokenflight demo` against a real authorization server: oidc-provider's 5-second tokens.

The demo sends its load through one AuthClient while the tokens expire. The server counts
the token requests it receives. They must be exactly the fetches the demo's summary
reports, which shows that no concurrent caller started a token request of its own.
"""

from __future__ import annotations

import re

import pytest

from servers.fixtures import OidcServer
from tokenflight._cli import main

pytestmark = pytest.mark.server

# At 20 concurrent tasks, latency stays far below the tokens' lifetime even on a busy
# machine, so the run measures expiries rather than requests that outlive their token.
REQUESTS = 6000
CONCURRENCY = 20


def summary_number(summary: str, label: str) -> float:
    found = re.search(rf"^\s*{label}\s+([0-9][0-9,.]*)", summary, re.MULTILINE)
    assert found is not None, f"no {label!r} line in:\n{summary}"
    return float(found.group(1).replace(",", ""))


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_one_request_per_expiry(
    oidc_server: OidcServer,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TOKENFLIGHT_CLIENT_SECRET", oidc_server.client("demo").client_secret or "")
    before = len(oidc_server.token_requests("demo"))
    status = main(
        [
            "demo",
            "--backend",
            backend,
            "--token-url",
            oidc_server.token_url,
            "--client-id",
            "demo",
            "--requests",
            str(REQUESTS),
            "--concurrency",
            str(CONCURRENCY),
            "--revoke-at",
            "0",
            "--no-progress",
        ]
    )
    summary, errors = capsys.readouterr()
    print(summary)  # shown when the test fails

    assert status == 0, errors
    assert "(external; token lifetime 5 s)" in summary
    assert summary_number(summary, "successes") == REQUESTS

    records = oidc_server.token_requests("demo")[before:]
    fetches = summary_number(summary, "token fetches")
    assert len(records) == fetches
    assert all(record["status"] == 200 for record in records)

    if "n/a (no token expired" in summary:
        # A fast machine finished before the first renewal: one token served it all, plus
        # at most the one renewed ahead of its expiry.
        assert fetches <= 2
        return
    # One fetch per expiry is single flight; a fetch per caller would give 20 or more.
    per_expiry = summary_number(summary, "fetches per expiry")
    assert 0.5 <= per_expiry <= 1.5
