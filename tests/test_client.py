"""AuthClient: origin scoping, redirects, the cache's lifetime, and re-entry."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio
import httpx
import pytest

from tokenflight import AuthClient, ConfigurationError, RefreshError, Token, TokenCache
from tokenflight.testing import FakeClock

API = "https://api.example.com"
OTHER = "https://other.example.net"
SECRET_TAIL = "Jk2vNc8sLq"


class CountingSource:
    """Issues tok-1-…, tok-2-…, one per fetch, each valid for an hour."""

    def __init__(self) -> None:
        self.fetches = 0

    async def fetch(self) -> Token:
        self.fetches += 1
        return Token(f"tok-{self.fetches}-{SECRET_TAIL}", expires_in=3600)

    def value(self, number: int) -> str:
        return f"tok-{number}-{SECRET_TAIL}"


@dataclass(frozen=True)
class Call:
    """One request as a server saw it, copied when it arrived."""

    url: str
    headers: list[tuple[str, str]]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class Network(httpx.AsyncBaseTransport):
    """Several fake origins behind one transport.

    ``redirects`` maps a full URL to the Location its server redirects to, with
    ``status`` (302 by default). ``respond`` handles every other URL (200 by default).
    """

    redirects: dict[str, str] = field(default_factory=dict)
    respond: Callable[[httpx.Request], httpx.Response] | None = None
    status: int = 302
    calls: list[Call] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.calls.append(Call(url, list(request.headers.multi_items())))
        if url in self.redirects:
            return httpx.Response(self.status, headers={"Location": self.redirects[url]})
        if self.respond is not None:
            return self.respond(request)
        return httpx.Response(200, text=url)

    def by_url(self, url: str) -> list[Call]:
        return [call for call in self.calls if call.url == url]


def cache_lookups(cache: TokenCache) -> int:
    statistics = cache.statistics()
    return statistics.hits + statistics.misses


# -- origins ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_base_url_origin_only() -> None:
    network, source = Network(), CountingSource()
    async with AuthClient(source, base_url=f"{API}/v1", transport=network) as client:
        await client.get("/orders")
        lookups = cache_lookups(client.cache)
        await client.get(f"{OTHER}/orders")
        await client.get("https://api.example.com:8443/orders")
        await client.get("http://api.example.com/orders")
        assert cache_lookups(client.cache) == lookups
    assert network.calls[0].values("authorization") == [f"Bearer {source.value(1)}"]
    for call in network.calls[1:]:
        assert call.values("authorization") == [], call.url


@pytest.mark.anyio
async def test_default_port_same_origin() -> None:
    network, source = Network(), CountingSource()
    async with AuthClient(source, base_url="https://API.example.com:443", transport=network) as c:
        await c.get("https://api.example.com/a")
        await c.get("https://user:password@api.example.com:443/b")
    assert [len(call.values("authorization")) for call in network.calls] == [1, 1]


@pytest.mark.anyio
async def test_allowed_origins_replace_default() -> None:
    network, source = Network(), CountingSource()
    client = AuthClient(
        source,
        base_url=API,
        allowed_origins=[OTHER, "http://127.0.0.1:8080"],
        transport=network,
    )
    async with client:
        await client.get("/a")
        await client.get(f"{OTHER}/b")
        await client.get("http://127.0.0.1:8080/c")
    assert [len(call.values("authorization")) for call in network.calls] == [0, 1, 1]
    assert {str(origin) for origin in client.allowed_origins} == {
        OTHER,
        "http://127.0.0.1:8080",
    }


@pytest.mark.anyio
async def test_async_function_source() -> None:
    async def fetch() -> Token:
        return Token("from-a-function-" + SECRET_TAIL)

    network = Network()
    async with AuthClient(fetch, base_url=API, transport=network) as client:
        await client.get("/")
    assert network.calls[0].values("authorization") == ["Bearer from-a-function-" + SECRET_TAIL]


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"base_url": API, "auth": ("user", "pass")}, "sets auth= itself"),
        ({}, "needs base_url= or allowed_origins="),
        ({"base_url": "/relative"}, "needs base_url= or allowed_origins="),
        ({"allowed_origins": []}, "allowed_origins is empty"),
        ({"allowed_origins": ["/v1"]}, "not an absolute URL"),
        ({"allowed_origins": ["ftp://files.example.com"]}, "no default port"),
        ({"base_url": API, "header": "X Api"}, "header must be"),
    ],
)
def test_bad_arguments_rejected(arguments: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        AuthClient(CountingSource(), **arguments)  # type: ignore[arg-type]


# -- redirects -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_redirect_other_origin_no_token() -> None:
    network, source = Network(redirects={f"{API}/start": f"{OTHER}/landing"}), CountingSource()
    async with AuthClient(source, base_url=API, transport=network, follow_redirects=True) as client:
        response = await client.get("/start")
    assert response.status_code == 200
    assert response.url == f"{OTHER}/landing"
    assert network.by_url(f"{API}/start")[0].values("authorization") == [
        f"Bearer {source.value(1)}"
    ]
    assert network.by_url(f"{OTHER}/landing")[0].values("authorization") == []
    # The other origin's hop never asked the cache for a token.
    assert cache_lookups(client.cache) == 1


@pytest.mark.anyio
async def test_redirect_same_origin_keeps_token() -> None:
    network, source = Network(redirects={f"{API}/a": "/b"}), CountingSource()
    async with AuthClient(source, base_url=API, transport=network, follow_redirects=True) as client:
        response = await client.get("/a")
    assert [call.url for call in network.calls] == [f"{API}/a", f"{API}/b"]
    assert network.calls[1].values("authorization") == [f"Bearer {source.value(1)}"]
    assert [r.status_code for r in response.history] == [302]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("https://api.example.com/a", "http://api.example.com/b"),
        ("http://api.example.com/a", "https://api.example.com/b"),
        ("https://api.example.com/a", "https://api.example.com:8443/b"),
        ("https://api.example.com/a", "https://api.example.com./b"),
    ],
)
async def test_redirect_scheme_or_port_change_drops_token(start: str, target: str) -> None:
    network, source = Network(redirects={start: target}), CountingSource()
    async with AuthClient(
        source,
        base_url=start,
        transport=network,
        follow_redirects=True,
        unsafe_allow_http=start.startswith("http://"),
    ) as client:
        await client.get(start)
    assert len(network.calls[0].values("authorization")) == 1
    assert network.calls[1].url == target
    assert network.calls[1].values("authorization") == []


@pytest.mark.anyio
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_custom_header_not_redirected(status: int) -> None:
    network = Network(redirects={f"{API}/start": f"{OTHER}/landing"}, status=status)
    source = CountingSource()
    client = AuthClient(
        source,
        base_url=API,
        header="X-Api-Key",
        scheme=None,
        transport=network,
        follow_redirects=True,
    )
    async with client:
        await client.post("/start", content=b"payload")
    assert network.calls[0].values("x-api-key") == [source.value(1)]
    assert network.calls[1].url == f"{OTHER}/landing"
    assert network.calls[1].values("x-api-key") == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("back_to", "allowed", "expected"),
    [
        (f"{API}/a2", [API], 1),
        ("https://api.example.com:8443/a2", [API], 0),
        ("https://api.example.com:8443/a2", [API, "https://api.example.com:8443"], 1),
    ],
)
async def test_chain_back_to_origin(back_to: str, allowed: list[str], expected: int) -> None:
    # A1 -> B -> A2: the token leaves at B and comes back at A2 only if A2 is allowed.
    network = Network(redirects={f"{API}/a1": f"{OTHER}/b", f"{OTHER}/b": back_to})
    source = CountingSource()
    client = AuthClient(
        source,
        allowed_origins=allowed,
        header="X-Api-Key",
        scheme=None,
        transport=network,
        follow_redirects=True,
    )
    async with client:
        response = await client.get(f"{API}/a1")
    assert [call.url for call in network.calls] == [f"{API}/a1", f"{OTHER}/b", back_to]
    assert [len(call.values("x-api-key")) for call in network.calls] == [1, 0, expected]
    assert len(response.history) == 2


@pytest.mark.anyio
async def test_manual_redirect_carries_no_token() -> None:
    network = Network(redirects={f"{API}/a": f"{OTHER}/b", f"{API}/c": f"{API}/d"})
    source = CountingSource()
    client = AuthClient(source, base_url=API, header="X-Api-Key", scheme=None, transport=network)
    async with client:
        response = await client.get("/a")
        assert response.status_code == 302
        assert response.next_request is not None
        assert "x-api-key" not in response.next_request.headers
        await client.send(response.next_request)

        same_origin = await client.get("/c")
        assert same_origin.next_request is not None
        assert "x-api-key" not in same_origin.next_request.headers
        await client.send(same_origin.next_request)
    assert network.by_url(f"{OTHER}/b")[0].values("x-api-key") == []
    assert network.by_url(f"{API}/d")[0].values("x-api-key") == [source.value(1)]


@pytest.mark.anyio
async def test_explicit_header_stops_at_other_origin() -> None:
    network = Network(
        redirects={f"{API}/a": f"{API}/b", f"{API}/b": f"{OTHER}/c"},
    )
    source = CountingSource()
    client = AuthClient(
        source,
        base_url=API,
        header="X-Api-Key",
        scheme=None,
        transport=network,
        follow_redirects=True,
    )
    async with client:
        await client.get("/a", headers={"X-Api-Key": "caller-key"})
    assert [call.values("x-api-key") for call in network.calls] == [
        ["caller-key"],
        ["caller-key"],
        [],
    ]
    assert source.fetches == 0


@pytest.mark.anyio
async def test_request_hook_sees_every_hop() -> None:
    network = Network(redirects={f"{API}/a": f"{OTHER}/b"})
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(str(request.url))

    client = AuthClient(
        CountingSource(),
        base_url=API,
        transport=network,
        follow_redirects=True,
        event_hooks={"request": [hook]},
    )
    async with client:
        await client.get("/a")
    assert seen == [f"{API}/a", f"{OTHER}/b"]


@pytest.mark.anyio
async def test_rejection_after_redirect_retried_at_hop() -> None:
    source = CountingSource()

    def respond(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == f"Bearer {source.value(1)}":
            return httpx.Response(401)
        return httpx.Response(200)

    network = Network(redirects={f"{API}/a": f"{API}/b"}, respond=respond)
    async with AuthClient(source, base_url=API, transport=network, follow_redirects=True) as client:
        response = await client.get("/a")
    assert response.status_code == 200
    assert [call.url for call in network.calls] == [f"{API}/a", f"{API}/b", f"{API}/b"]
    assert network.calls[2].values("authorization") == [f"Bearer {source.value(2)}"]
    assert [r.status_code for r in response.history] == [302, 401]


@pytest.mark.anyio
async def test_too_many_redirects_raised() -> None:
    network = Network(redirects={f"{API}/a": "/b", f"{API}/b": "/c", f"{API}/c": "/d"})
    async with AuthClient(
        CountingSource(), base_url=API, transport=network, follow_redirects=True, max_redirects=2
    ) as client:
        with pytest.raises(httpx.TooManyRedirects):
            await client.get("/a")
        response = await client.get("/b")
    assert [r.url.path for r in response.history] == ["/b", "/c"]
    assert response.url.path == "/d"


@pytest.mark.anyio
async def test_streamed_response_after_redirect() -> None:
    started = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal started
        started = True
        yield b"streamed"

    network = Network(
        redirects={f"{API}/a": "/b"}, respond=lambda request: httpx.Response(200, content=body())
    )
    async with (
        AuthClient(
            CountingSource(), base_url=API, transport=network, follow_redirects=True
        ) as client,
        client.stream("GET", "/a") as response,
    ):
        assert not started
        assert await response.aread() == b"streamed"
    assert len(response.history) == 1


@pytest.mark.anyio
async def test_block_exception_not_wrapped() -> None:
    response = httpx.Response(503, request=httpx.Request("GET", API))
    with pytest.raises(httpx.HTTPStatusError):
        async with AuthClient(CountingSource(), base_url=API, transport=Network()):
            response.raise_for_status()


# -- lifetime --------------------------------------------------------------------------


@pytest.mark.anyio
async def test_exit_cancels_background_refresh() -> None:
    clock = FakeClock()
    second_fetch_started = anyio.Event()
    cancelled = False

    class SlowSecondSource:
        fetches = 0

        async def fetch(self) -> Token:
            nonlocal cancelled
            self.fetches += 1
            if self.fetches == 1:
                return Token("first-" + SECRET_TAIL, expires_in=100)
            second_fetch_started.set()
            try:
                await anyio.sleep_forever()
            finally:
                cancelled = True
            raise AssertionError("unreachable")

    cache = TokenCache(SlowSecondSource(), clock=clock, random=lambda: 0.0)
    network = Network()
    async with AuthClient(cache, base_url=API, transport=network) as client:
        await client.get("/")
        # 50 s into a 100 s token: inside the refresh-ahead window, still usable.
        await clock.advance(50)
        response = await client.get("/")
        assert response.status_code == 200
        await second_fetch_started.wait()
    assert cancelled
    assert client.is_closed
    assert [call.values("authorization") for call in network.calls] == [
        ["Bearer first-" + SECRET_TAIL]
    ] * 2


@pytest.mark.anyio
async def test_shared_cache_stays_entered() -> None:
    clock = FakeClock()
    release = anyio.Event()

    class BlockingSecondSource:
        fetches = 0

        async def fetch(self) -> Token:
            self.fetches += 1
            if self.fetches > 1:
                await release.wait()
            return Token(f"tok-{self.fetches}-{SECRET_TAIL}", expires_in=100)

    source = BlockingSecondSource()
    cache = TokenCache(source, clock=clock, random=lambda: 0.0)
    async with cache:
        async with AuthClient(cache, base_url=API, transport=Network()) as client:
            await client.get("/")
        await clock.advance(50)
        # The cache is still entered, so the refresh ahead of expiry runs in its task
        # group and get() returns the current token without waiting for it. A cache left
        # without its task group would run the refresh inline and block here.
        with anyio.fail_after(5):
            token = await cache.get()
        assert token.value == f"tok-1-{SECRET_TAIL}"
        release.set()
    assert source.fetches == 2


@pytest.mark.anyio
async def test_usable_without_async_with() -> None:
    network, source = Network(), CountingSource()
    client = AuthClient(source, base_url=API, transport=network)
    try:
        response = await client.get("/")
    finally:
        await client.aclose()
    assert response.status_code == 200
    assert network.calls[0].values("authorization") == [f"Bearer {source.value(1)}"]


@pytest.mark.anyio
async def test_owned_source_closed() -> None:
    class ClosableSource(CountingSource):
        closed = 0

        async def aclose(self) -> None:
            self.closed += 1

    owned, shared = ClosableSource(), ClosableSource()
    async with AuthClient(owned, base_url=API, transport=Network()) as client:
        await client.get("/")
    async with AuthClient(TokenCache(shared), base_url=API, transport=Network()) as client:
        await client.get("/")
    manual = AuthClient(owned, base_url=API, transport=Network())
    await manual.aclose()
    assert owned.closed == 2
    assert shared.closed == 0


# -- re-entry --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("entered", [True, False], ids=["entered", "not-entered"])
async def test_source_through_same_client_no_deadlock(entered: bool) -> None:
    # The token source calls the API through the very client it authenticates, and that
    # call needs a new token: the cache detects the re-entry and fails the refresh.
    class ReentrantSource:
        client: AuthClient | None = None
        fetches = 0

        async def fetch(self) -> Token:
            self.fetches += 1
            if self.fetches > 1:
                assert self.client is not None
                await self.client.get("/whoami")
            return Token(f"tok-{self.fetches}-{SECRET_TAIL}")

    source = ReentrantSource()

    def respond(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == f"Bearer tok-1-{SECRET_TAIL}":
            return httpx.Response(401)
        return httpx.Response(200)

    client = AuthClient(source, base_url=API, transport=Network(respond=respond))
    source.client = client
    with anyio.fail_after(5):
        if entered:
            async with client:
                with pytest.raises(RefreshError) as caught:
                    await client.get("/data")
        else:
            try:
                with pytest.raises(RefreshError) as caught:
                    await client.get("/data")
            finally:
                await client.aclose()
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "without tokenflight auth" in str(caught.value.__cause__)


@pytest.mark.anyio
async def test_source_with_plain_client_succeeds() -> None:
    network = Network()

    class PlainClientSource:
        fetches = 0

        async def fetch(self) -> Token:
            self.fetches += 1
            async with httpx.AsyncClient(transport=network) as plain:
                await plain.get(f"{API}/whoami")
            return Token(f"tok-{self.fetches}-{SECRET_TAIL}")

    source = PlainClientSource()
    network.respond = lambda request: httpx.Response(
        401 if request.headers.get("authorization") == f"Bearer tok-1-{SECRET_TAIL}" else 200
    )
    with anyio.fail_after(5):
        async with AuthClient(source, base_url=API, transport=network) as client:
            await client.cache.get()
            response = await client.get("/data")
    assert response.status_code == 200
    assert source.fetches == 2


def test_repr_has_no_secret() -> None:
    client = AuthClient(CountingSource(), base_url=API)
    assert "https://api.example.com" in repr(client)
    assert SECRET_TAIL not in repr(client)


@pytest.mark.parametrize(
    "origin",
    ["http://api.example.com", "http://10.0.0.7:8080", "HTTP://Api.Example.com."],
)
def test_plain_http_origin_rejected(origin: str) -> None:
    with pytest.raises(ConfigurationError, match="plain http://"):
        AuthClient(CountingSource(), base_url=origin)
    with pytest.raises(ConfigurationError, match="unsafe_allow_http=True"):
        AuthClient(CountingSource(), allowed_origins=[origin])


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:8000", "http://localhost", "http://[::1]:9000", "http://127.5.0.1"]
)
def test_plain_http_loopback_allowed(origin: str) -> None:
    client = AuthClient(CountingSource(), base_url=origin)
    assert len(client.allowed_origins) == 1


def test_plain_http_allowed_when_unsafe() -> None:
    client = AuthClient(CountingSource(), base_url="http://api.example.com", unsafe_allow_http=True)
    assert [str(origin) for origin in client.allowed_origins] == ["http://api.example.com"]
