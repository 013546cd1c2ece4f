"""Origin scoping: credentials only for allowed origins, however a URL is spelled.

The property tests build URLs from parts, so the expected origin comes from the parts
themselves (a table of hosts with their IDNA form, the scheme's default port), not from
the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenflight import AuthClient, ConfigurationError, Token
from tokenflight._origin import AllowedOrigins, Origin, origin_of, same_origin

# Each host with the ASCII form an origin compares, and the other spellings of it.
HOSTS: dict[str, list[str]] = {
    "api.example.com": ["api.example.com"],
    # A trailing dot names the same DNS host, but it is another origin: no credentials.
    "api.example.com.": ["api.example.com."],
    "other.example.net": ["other.example.net"],
    "xn--bcher-kva.example": ["xn--bcher-kva.example", "bücher.example", "BÜCHER.example"],
    "xn--mnchen-3ya.example": ["xn--mnchen-3ya.example", "münchen.example"],
    "127.0.0.1": ["127.0.0.1"],
    "::1": ["[::1]"],
}
DEFAULT_PORT = {"http": 80, "https": 443}
SECRET = "origin-test-token-Vb7xKe3"


@dataclass(frozen=True)
class Place:
    """An origin as parts: scheme, ASCII host, and port (``None`` for the default)."""

    scheme: str
    host: str
    port: int | None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port or DEFAULT_PORT[self.scheme])

    def origin_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port else ""
        return f"{self.scheme}://{host}{port}"


places = st.builds(
    Place,
    scheme=st.sampled_from(["http", "https"]),
    host=st.sampled_from(sorted(HOSTS)),
    port=st.sampled_from([None, 8080, 8443]),
)


@st.composite
def spellings(draw: st.DrawFn, place: Place, path: str = "/") -> str:
    """Write a URL for ``place`` in one of the many ways that mean the same origin."""
    scheme = draw(st.sampled_from([place.scheme, place.scheme.upper()]))
    host = draw(st.sampled_from(HOSTS[place.host]))
    if draw(st.booleans()):
        host = "".join(
            char.upper() if draw(st.booleans()) and char.isascii() else char for char in host
        )
    port = place.port
    if port is None:
        default = DEFAULT_PORT[place.scheme]
        port_text = draw(st.sampled_from(["", f":{default}", f":0{default}"]))
    else:
        port_text = f":{port}"
    userinfo = draw(
        st.sampled_from(["", "user@", "user:password@", "api.example.com:443@", "%40evil@"])
    )
    query = draw(st.sampled_from(["", "?q=1", "?next=https://other.example.net/", "#top"]))
    return f"{scheme}://{userinfo}{host}{port_text}{path}{query}"


# -- unit cases ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://API.Example.COM/v1", Origin("https", "api.example.com", 443)),
        ("https://api.example.com:443", Origin("https", "api.example.com", 443)),
        ("http://api.example.com:8080/x?y#z", Origin("http", "api.example.com", 8080)),
        ("https://u:p@api.example.com/", Origin("https", "api.example.com", 443)),
        ("https://bücher.example/", Origin("https", "xn--bcher-kva.example", 443)),
        ("https://api.example.com./", Origin("https", "api.example.com.", 443)),
        ("http://[::1]:9000/", Origin("http", "::1", 9000)),
        ("wss://stream.example.com", Origin("wss", "stream.example.com", 443)),
    ],
)
def test_origin_of_normalises(url: str, expected: Origin) -> None:
    assert origin_of(url) == expected


@pytest.mark.parametrize(
    ("origin", "text"),
    [
        (Origin("https", "api.example.com", 443), "https://api.example.com"),
        (Origin("http", "api.example.com", 443), "http://api.example.com:443"),
        (Origin("http", "::1", 8080), "http://[::1]:8080"),
    ],
)
def test_origin_str(origin: Origin, text: str) -> None:
    assert str(origin) == text


@pytest.mark.parametrize("url", ["/v1/orders", "", "api.example.com", "ftp://files.example.com"])
def test_origin_of_rejects(url: str) -> None:
    with pytest.raises(ConfigurationError):
        origin_of(url)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("https://a.example/x", "https://A.EXAMPLE:443/y", True),
        ("http://a.example/", "http://a.example:80/", True),
        ("https://a.example/", "http://a.example/", False),
        ("https://a.example/", "https://a.example:8443/", False),
        ("https://a.example/", "https://a.example./", False),
        ("https://a.example/", "https://b.example/", False),
    ],
)
def test_same_origin_table(first: str, second: str, expected: bool) -> None:
    assert same_origin(httpx.URL(first), httpx.URL(second)) is expected


def test_allowed_origins_contains() -> None:
    allowed = AllowedOrigins(["https://api.example.com/v1", Origin("http", "localhost", 8000)])
    assert "https://api.example.com:443/other" in allowed
    assert "http://localhost:8000/" in allowed
    assert "http://api.example.com/" not in allowed
    assert 42 not in allowed
    assert "https://api.example.com/x" in AllowedOrigins("https://api.example.com")
    assert "https://api.example.com" in repr(allowed)


# -- properties ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(data=st.data(), allowed=st.lists(places, min_size=1, max_size=3), target=places)
def test_allows_exactly_allowed_origins(
    data: st.DataObject, allowed: list[Place], target: Place
) -> None:
    allowed_set = AllowedOrigins(
        [
            data.draw(spellings(place, path=data.draw(st.sampled_from(["", "/v1"]))))
            for place in allowed
        ]
    )
    url = httpx.URL(data.draw(spellings(target, path="/orders")))
    expected = target.key in {place.key for place in allowed}
    assert allowed_set.allows(url) is expected


class Hops(httpx.AsyncBaseTransport):
    """Redirects ``/hop/<i>`` to hop i + 1, and responds 200 to the last hop.

    It records the credential header each hop arrived with.
    """

    def __init__(self, urls: list[str], header: str, status: int) -> None:
        self.urls = urls
        self.header = header
        self.status = status
        self.seen: list[list[str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = int(request.url.path.rsplit("/", 1)[1])
        assert index == len(self.seen)
        self.seen.append(request.headers.get_list(self.header))
        if index + 1 < len(self.urls):
            # Sent as UTF-8 bytes, as some servers do, to keep the spelling as drawn.
            location = self.urls[index + 1].encode("utf-8")
            return httpx.Response(self.status, headers=[(b"Location", location)])
        return httpx.Response(200)


@pytest.mark.anyio
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.data(),
    allowed=st.lists(places, min_size=1, max_size=3),
    chain=st.lists(places, min_size=1, max_size=4),
    header=st.sampled_from(["Authorization", "X-Api-Key"]),
    status=st.sampled_from([301, 302, 303, 307, 308]),
)
async def test_redirect_chain_credentials_only_where_allowed(
    data: st.DataObject,
    allowed: list[Place],
    chain: list[Place],
    header: str,
    status: int,
) -> None:
    urls = [data.draw(spellings(place, path=f"/hop/{index}")) for index, place in enumerate(chain)]
    transport = Hops(urls, header, status)

    async def fetch() -> Token:
        return Token(SECRET)

    client = AuthClient(
        fetch,
        allowed_origins=[place.origin_url() for place in allowed],
        header=header,
        scheme=None,
        transport=transport,
        follow_redirects=True,
        unsafe_allow_http=True,  # the generated origins include plain http:// ones
    )
    async with client:
        response = await client.get(urls[0])

    assert response.status_code == 200
    allowed_keys = {place.key for place in allowed}
    expected = [[SECRET] if place.key in allowed_keys else [] for place in chain]
    assert transport.seen == expected
