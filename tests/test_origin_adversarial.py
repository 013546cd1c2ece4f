"""Origin scoping under adversarial URLs, through the real AuthClient.

Each request goes through :class:`tokenflight.AuthClient` to an
:class:`httpx.MockTransport` that records what arrived where. A credential may arrive
only at an allowed origin (scheme, host and port, with default ports equal to no port),
and a request to any other origin must not even ask the cache for a token. Doubtful
spellings fail closed: a URL that reaches the allowed server under another spelling
(a trailing dot, ``127.1``, a long IPv6 form) gets no credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from tokenflight import AuthClient, Token, TokenCache

TOKEN = "origin-test-token-5f4e3d2c"


@dataclass(frozen=True)
class Arrival:
    """One request as the transport saw it."""

    url: httpx.URL
    authorization: str | None
    api_key: str | None


class Recorder:
    """A transport that records every request and replies with a redirect from its table, or 200."""

    def __init__(self, redirects: dict[str, tuple[int, str]] | None = None) -> None:
        self.arrivals: list[Arrival] = []
        self.redirects = redirects or {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.arrivals.append(
            Arrival(
                request.url,
                request.headers.get("authorization"),
                request.headers.get("x-api-key"),
            )
        )
        key = f"{request.url.host}{request.url.path}"
        if key in self.redirects:
            status, location = self.redirects[key]
            return httpx.Response(status, headers={"location": location})
        return httpx.Response(200, text="ok")

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)


class CountingSource:
    """A token source that counts its fetches."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self) -> Token:
        self.fetches += 1
        return Token(TOKEN, expires_in=3600)


def _client(
    recorder: Recorder,
    base_url: str,
    *,
    allowed: list[str] | None = None,
    header: str = "Authorization",
    scheme: str | None = "Bearer",
) -> tuple[AuthClient, CountingSource]:
    source = CountingSource()
    client = AuthClient(
        TokenCache(source),
        base_url=base_url,
        allowed_origins=allowed,
        header=header,
        scheme=scheme,
        transport=recorder.transport,
        follow_redirects=True,
    )
    return client, source


ALLOWED = "https://api.example.com"

# (request URL, whether it may carry the token)
SPELLINGS = [
    ("https://api.example.com/v1", True),
    ("https://API.Example.COM/v1", True),
    ("HTTPS://api.example.com/v1", True),
    ("https://api.example.com:443/v1", True),
    ("https://api.example.com:0443/v1", True),
    ("https://user:password@api.example.com/v1", True),
    ("https://api.example.com./v1", False),
    ("http://api.example.com/v1", False),
    ("https://api.example.com:8443/v1", False),
    ("https://api.example.com@evil.example/v1", False),
    ("https://api.example.com\\@evil.example/v1", False),
    ("https://api.example.com.evil.example/v1", False),
    ("https://evil.example/api.example.com", False),
    ("https://evil.example/?next=https://api.example.com/", False),
    ("https://evil.example/#https://api.example.com", False),
    ("https://api%2Eexample.com/v1", False),
    ("https://api.example.com%00.evil.example/v1", False),
    ("https://xn--pi-6kc.example.com/v1", False),
    ("https://\u0430pi.example.com/v1", False),
    ("wss://api.example.com/v1", False),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("url", "carries"), SPELLINGS)
async def test_spelling_decides_credentials(url: str, carries: bool) -> None:
    recorder = Recorder()
    client, source = _client(recorder, ALLOWED)
    async with client:
        await client.get(url)

    [arrival] = recorder.arrivals
    if carries:
        assert arrival.authorization == f"Bearer {TOKEN}"
        assert source.fetches == 1
    else:
        assert arrival.authorization is None
        assert source.fetches == 0


IDNA_CASES = [
    ("https://bücher.example/x", True),
    ("https://BÜCHER.example/x", True),
    ("https://xn--bcher-kva.example/x", True),
    ("https://bucher.example/x", False),
    ("https://xn--bcher-kva.example./x", False),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("url", "carries"), IDNA_CASES)
async def test_idna_host_decides_credentials(url: str, carries: bool) -> None:
    recorder = Recorder()
    client, _ = _client(recorder, "https://bücher.example")
    async with client:
        await client.get(url)

    [arrival] = recorder.arrivals
    assert (arrival.authorization is not None) is carries


ADDRESS_CASES = [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/x", True),
    ("http://127.0.0.1:8080", "http://127.1:8080/x", False),
    ("http://127.0.0.1:8080", "http://2130706433:8080/x", False),
    ("http://127.0.0.1:8080", "http://0x7f.0.0.1:8080/x", False),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8081/x", False),
    ("http://127.0.0.1:8080", "http://localhost:8080/x", False),
    ("https://[::1]:8443", "https://[::1]:8443/x", True),
    ("https://[::1]:8443", "https://[0:0:0:0:0:0:0:1]:8443/x", False),
    ("https://[::1]:8443", "https://[::1]/x", False),
    ("https://[::1]:8443", "https://[::2]:8443/x", False),
    ("https://[::1]:8443", "https://[::ffff:127.0.0.1]:8443/x", False),
    ("https://[::1]", "https://[::1]:443/x", True),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("allowed", "url", "carries"), ADDRESS_CASES)
async def test_address_literal_decides_credentials(allowed: str, url: str, carries: bool) -> None:
    recorder = Recorder()
    client, _ = _client(recorder, allowed)
    async with client:
        await client.get(url)

    [arrival] = recorder.arrivals
    assert (arrival.authorization is not None) is carries


@pytest.mark.anyio
async def test_userinfo_adds_no_second_header() -> None:
    recorder = Recorder()
    client, _ = _client(recorder, ALLOWED)
    async with client:
        response = await client.get("https://user:password@api.example.com/v1")

    assert response.request.headers.get_list("authorization") == [f"Bearer {TOKEN}"]


@dataclass(frozen=True)
class Chain:
    """A redirect chain from the first URL, and which hops may carry the credential."""

    redirects: dict[str, tuple[int, str]]
    start: str
    expected: list[tuple[str, bool]]


CHAINS: dict[str, Chain] = {
    "away and back": Chain(
        {
            "api.example.com/a": (302, "https://evil.example/b"),
            "evil.example/b": (307, "https://api.example.com/c"),
        },
        "https://api.example.com/a",
        [("api.example.com", True), ("evil.example", False), ("api.example.com", True)],
    ),
    "lookalike host": Chain(
        {"api.example.com/a": (301, "https://api.example.com.evil.example/b")},
        "https://api.example.com/a",
        [("api.example.com", True), ("api.example.com.evil.example", False)],
    ),
    "userinfo trick": Chain(
        {"api.example.com/a": (308, "https://api.example.com@evil.example/b")},
        "https://api.example.com/a",
        [("api.example.com", True), ("evil.example", False)],
    ),
    "scheme-relative": Chain(
        {"api.example.com/a": (302, "//evil.example/b")},
        "https://api.example.com/a",
        [("api.example.com", True), ("evil.example", False)],
    ),
    "downgrade to http": Chain(
        {"api.example.com/a": (301, "http://api.example.com/b")},
        "https://api.example.com/a",
        [("api.example.com", True), ("api.example.com", False)],
    ),
    "other port": Chain(
        {"api.example.com/a": (303, "https://api.example.com:8443/b")},
        "https://api.example.com/a",
        [("api.example.com", True), ("api.example.com", False)],
    ),
    "explicit default port": Chain(
        {"api.example.com/a": (302, "https://api.example.com:443/b")},
        "https://api.example.com/a",
        [("api.example.com", True), ("api.example.com", True)],
    ),
    "trailing dot": Chain(
        {"api.example.com/a": (302, "https://api.example.com./b")},
        "https://api.example.com/a",
        [("api.example.com", True), ("api.example.com.", False)],
    ),
    "relative path": Chain(
        {"api.example.com/a": (302, "/b")},
        "https://api.example.com/a",
        [("api.example.com", True), ("api.example.com", True)],
    ),
    "in from elsewhere": Chain(
        {"evil.example/a": (302, "https://api.example.com/b")},
        "https://evil.example/a",
        [("evil.example", False), ("api.example.com", True)],
    ),
    "ping-pong": Chain(
        {
            "api.example.com/1": (302, "https://evil.example/2"),
            "evil.example/2": (302, "https://api.example.com/3"),
            "api.example.com/3": (302, "https://evil.example/4"),
            "evil.example/4": (302, "https://api.example.com/5"),
        },
        "https://api.example.com/1",
        [
            ("api.example.com", True),
            ("evil.example", False),
            ("api.example.com", True),
            ("evil.example", False),
            ("api.example.com", True),
        ],
    ),
}

HEADERS: dict[str, Callable[[Arrival], str | None]] = {
    "Authorization": lambda arrival: arrival.authorization,
    "X-Api-Key": lambda arrival: arrival.api_key,
}


@pytest.mark.anyio
@pytest.mark.parametrize("header", sorted(HEADERS))
@pytest.mark.parametrize("name", sorted(CHAINS))
async def test_redirect_chain_scoped(name: str, header: str) -> None:
    chain = CHAINS[name]
    recorder = Recorder(chain.redirects)
    scheme = "Bearer" if header == "Authorization" else None
    client, _ = _client(recorder, ALLOWED, header=header, scheme=scheme)
    async with client:
        response = await client.get(chain.start)

    assert response.status_code == 200
    read = HEADERS[header]
    seen = [(arrival.url.host, read(arrival) is not None) for arrival in recorder.arrivals]
    assert seen == chain.expected
    for arrival in recorder.arrivals:
        value = read(arrival)
        assert value is None or TOKEN in value


@pytest.mark.anyio
async def test_second_allowed_origin_gets_token() -> None:
    recorder = Recorder({"api.example.com/a": (302, "https://files.example.com/b")})
    client, _ = _client(recorder, ALLOWED, allowed=[ALLOWED, "https://files.example.com"])
    async with client:
        await client.get("https://api.example.com/a")

    assert [arrival.authorization is not None for arrival in recorder.arrivals] == [True, True]


@pytest.mark.anyio
async def test_explicit_header_not_carried_away() -> None:
    # A header the caller set is kept at the allowed origin, and httpx's redirect to
    # another origin must not carry it either.
    recorder = Recorder({"api.example.com/a": (302, "https://evil.example/b")})
    client, source = _client(recorder, ALLOWED)
    async with client:
        await client.get("https://api.example.com/a", headers={"Authorization": "Bearer mine"})

    assert [arrival.authorization for arrival in recorder.arrivals] == ["Bearer mine", None]
    assert source.fetches == 0
