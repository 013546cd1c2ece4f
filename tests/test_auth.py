"""TokenAuth on a plain httpx.AsyncClient: headers, explicit headers, 401s, bodies."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest

from secret_guard import SecretGuard
from tokenflight import (
    ConfigurationError,
    PermanentRefreshError,
    Token,
    TokenAuth,
    TokenCache,
)
from tokenflight._httpx import parse_challenges
from tokenflight.testing import FakeClock

API = "https://api.example.com"
# Every token value ends with this, so a test can search any text for a leaked token.
SECRET_TAIL = "Xw4rTq9mZp"


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
    """One request as the server saw it, copied when it arrived."""

    url: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


Handler = Callable[[httpx.Request, list[Call]], Awaitable[httpx.Response]]


class Api(httpx.AsyncBaseTransport):
    """A transport that records each request and responds through ``respond``.

    It reads the body by iterating the request's stream, as a network transport does.
    httpx.MockTransport calls ``request.aread()`` instead, which swaps in a replayable
    copy of the body and would hide what the client could really send a second time.
    """

    def __init__(self, respond: Handler | None = None) -> None:
        self.calls: list[Call] = []
        self._respond = respond

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        body = b"".join([chunk async for chunk in request.stream])
        self.calls.append(Call(str(request.url), list(request.headers.multi_items()), body))
        if self._respond is None:
            return httpx.Response(200)
        return await self._respond(request, self.calls)

    def transport(self) -> httpx.AsyncBaseTransport:
        return self


def reject_token(value: str, **headers: str) -> Handler:
    """Return a handler that responds 401 to ``Bearer value`` and 200 to other requests."""

    async def respond(request: httpx.Request, calls: list[Call]) -> httpx.Response:
        if request.headers.get("authorization") == f"Bearer {value}":
            return httpx.Response(401, headers=headers)
        return httpx.Response(200)

    return respond


def make_client(
    api: Api, source: CountingSource, **auth_options: object
) -> tuple[httpx.AsyncClient, TokenAuth]:
    cache = TokenCache(source, clock=FakeClock())
    auth = TokenAuth(cache, **auth_options)  # type: ignore[arg-type]
    return httpx.AsyncClient(auth=auth, transport=api.transport(), base_url=API), auth


# -- the header ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sets_bearer_header() -> None:
    api, source = Api(), CountingSource()
    client, _ = make_client(api, source)
    async with client:
        response = await client.get("/orders", headers={"X-Request-Id": "r-1"})
    assert response.status_code == 200
    assert api.calls[0].values("authorization") == [f"Bearer {source.value(1)}"]
    assert api.calls[0].values("x-request-id") == ["r-1"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("header", "scheme", "expected"),
    [
        ("Authorization", "Token", "Token {}"),
        ("X-API-Key", None, "{}"),
        ("X-Auth", "Bearer", "Bearer {}"),
    ],
)
async def test_header_and_scheme_configurable(
    header: str, scheme: str | None, expected: str
) -> None:
    api, source = Api(), CountingSource()
    client, _ = make_client(api, source, header=header, scheme=scheme)
    async with client:
        await client.get("/")
    assert api.calls[0].values(header) == [expected.format(source.value(1))]
    if header != "Authorization":
        assert api.calls[0].values("authorization") == []


@pytest.mark.anyio
async def test_fresh_token_one_fetch() -> None:
    api, source = Api(), CountingSource()
    client, _ = make_client(api, source)
    async with client:
        for _ in range(100):
            await client.get("/")
    assert source.fetches == 1
    assert {call.values("authorization")[0] for call in api.calls} == {f"Bearer {source.value(1)}"}


# -- explicit headers ------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["Authorization", "authorization", "AUTHORIZATION"])
async def test_explicit_header_kept(name: str) -> None:
    api, source = Api(), CountingSource()
    client, _ = make_client(api, source)
    async with client:
        await client.get("/", headers={name: "Basic dXNlcjpwYXNz"})
    assert api.calls[0].values("authorization") == ["Basic dXNlcjpwYXNz"]
    assert source.fetches == 0


@pytest.mark.anyio
async def test_client_default_header_counts_as_explicit() -> None:
    api, source = Api(), CountingSource()
    cache = TokenCache(source, clock=FakeClock())
    client = httpx.AsyncClient(
        auth=TokenAuth(cache),
        transport=api.transport(),
        headers={"Authorization": "Bearer sdk-static-key"},
    )
    async with client:
        await client.get(API)
    assert api.calls[0].values("authorization") == ["Bearer sdk-static-key"]
    assert source.fetches == 0


@pytest.mark.anyio
async def test_replace_existing_one_header() -> None:
    api, source = Api(), CountingSource()
    client, _ = make_client(api, source, replace_existing=True)
    async with client:
        await client.get(
            "/",
            headers=[
                ("Authorization", "Bearer sdk-static-key"),
                ("authorization", "Bearer second-copy"),
                ("X-Trace", "t-1"),
            ],
        )
    assert api.calls[0].values("authorization") == [f"Bearer {source.value(1)}"]
    assert api.calls[0].values("x-trace") == ["t-1"]


@pytest.mark.anyio
async def test_netrc_and_userinfo_never_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.example.com login netrc-user password netrc-pass\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    api, source = Api(), CountingSource()
    cache = TokenCache(source, clock=FakeClock())
    client = httpx.AsyncClient(auth=TokenAuth(cache), transport=api.transport(), trust_env=True)
    async with client:
        await client.get(f"{API}/")
        await client.get("https://url-user:url-pass@api.example.com/")
        await client.get(f"{API}/", headers={"Authorization": "Basic explicit"})
    assert api.calls[0].values("authorization") == [f"Bearer {source.value(1)}"]
    assert api.calls[1].values("authorization") == [f"Bearer {source.value(1)}"]
    assert api.calls[2].values("authorization") == ["Basic explicit"]


# -- rejections ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_inflight_rejections_one_refresh() -> None:
    source = CountingSource()
    arrived = 0
    all_arrived = anyio.Event()

    async def respond(request: httpx.Request, calls: list[Call]) -> httpx.Response:
        nonlocal arrived
        if request.headers["authorization"] == f"Bearer {source.value(1)}":
            # Hold every request with token 1 until all 20 are in flight, then reject them.
            arrived += 1
            if arrived == 20:
                all_arrived.set()
            await all_arrived.wait()
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(200)

    api = Api(respond)
    client, auth = make_client(api, source)
    statuses: list[int] = []

    async def one_request() -> None:
        response = await client.get("/")
        statuses.append(response.status_code)

    async with client:
        await auth.cache.get()
        async with anyio.create_task_group() as task_group:
            for _ in range(20):
                task_group.start_soon(one_request)

    assert statuses == [200] * 20
    assert source.fetches == 2
    assert len(api.calls) == 40
    retried = [call.values("authorization") for call in api.calls[20:]]
    assert retried == [[f"Bearer {source.value(2)}"]] * 20
    assert auth.statistics().rejected == 20
    assert auth.statistics().retried == 20


@pytest.mark.anyio
async def test_rejected_old_token_keeps_new() -> None:
    # A request still carrying token 1 is rejected after token 2 replaced it: the 401
    # must not invalidate token 2 (generation check), and the retry uses token 2.
    source = CountingSource()
    release = anyio.Event()
    first_arrived = anyio.Event()

    async def respond(request: httpx.Request, calls: list[Call]) -> httpx.Response:
        if request.headers["authorization"] == f"Bearer {source.value(1)}":
            first_arrived.set()
            await release.wait()
            return httpx.Response(401)
        return httpx.Response(200)

    api = Api(respond)
    client, auth = make_client(api, source)
    async with client, anyio.create_task_group() as task_group:
        token_1 = await auth.cache.get()
        task_group.start_soon(client.get, "/")
        await first_arrived.wait()
        assert auth.cache.invalidate(token_1)
        token_2 = await auth.cache.get()
        release.set()

    assert source.fetches == 2
    assert api.calls[1].values("authorization") == [f"Bearer {token_2.value}"]
    assert auth.cache.peek() is token_2


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 403])
async def test_invalid_token_challenge_retried(status: int) -> None:
    source = CountingSource()

    async def respond(request: httpx.Request, calls: list[Call]) -> httpx.Response:
        if request.headers["authorization"] == f"Bearer {source.value(1)}":
            challenge = 'Bearer realm="api", error="invalid_token", error_description="expired"'
            return httpx.Response(status, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200)

    api = Api(respond)
    client, _ = make_client(api, source)
    async with client:
        response = await client.get("/")
    assert response.status_code == 200
    assert len(api.calls) == 2
    assert source.fetches == 2


@pytest.mark.anyio
async def test_insufficient_scope_not_retried() -> None:
    async def respond(request: httpx.Request, calls: list[Call]) -> httpx.Response:
        challenge = 'Bearer error="insufficient_scope", scope="orders:write"'
        return httpx.Response(403, headers={"WWW-Authenticate": challenge})

    api, source = Api(respond), CountingSource()
    client, auth = make_client(api, source)
    async with client:
        response = await client.get("/")
    assert response.status_code == 403
    assert len(api.calls) == 1
    assert source.fetches == 1
    assert auth.statistics().rejected == 0


@pytest.mark.anyio
async def test_second_rejection_returned() -> None:
    async def respond(request: httpx.Request, calls: list[Call]) -> httpx.Response:
        return httpx.Response(401)

    api, source = Api(respond), CountingSource()
    client, auth = make_client(api, source)
    async with client:
        for _ in range(5):
            response = await client.get("/")
            assert response.status_code == 401
            assert len(response.history) == 1
    # Each request goes out at most twice: once with the cached token, once with a new one.
    assert len(api.calls) == 10
    assert source.fetches == 6
    assert auth.statistics().rejected == 10
    assert auth.statistics().retried == 5


@pytest.mark.anyio
async def test_same_value_not_resent() -> None:
    class ConstantSource:
        fetches = 0

        async def fetch(self) -> Token:
            self.fetches += 1
            return Token("always-the-same-" + SECRET_TAIL)

    async def respond(request: httpx.Request, calls: list[Call]) -> httpx.Response:
        return httpx.Response(401)

    api, source = Api(respond), ConstantSource()
    cache = TokenCache(source, clock=FakeClock())
    auth = TokenAuth(cache)
    async with httpx.AsyncClient(auth=auth, transport=api.transport()) as client:
        response = await client.get(API)
    assert response.status_code == 401
    assert len(api.calls) == 1
    assert source.fetches == 2
    assert auth.statistics().not_resent == 1


@pytest.mark.anyio
async def test_refresh_error_after_rejection_raised() -> None:
    class FailingSecondSource(CountingSource):
        async def fetch(self) -> Token:
            if self.fetches == 1:
                self.fetches += 1
                raise PermanentRefreshError("invalid_client")
            return await super().fetch()

    source = FailingSecondSource()
    api = Api(reject_token(source.value(1)))
    client, _ = make_client(api, source)
    async with client:
        with pytest.raises(PermanentRefreshError, match="invalid_client"):
            await client.get("/")
    assert len(api.calls) == 1


# -- bodies ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bytes_body_resent_identical() -> None:
    source = CountingSource()
    api = Api(reject_token(source.value(1)))
    client, _ = make_client(api, source)
    payload = b'{"order": 42, "note": "caf\xc3\xa9"}'
    async with client:
        response = await client.post("/orders", content=payload)
        json_response = await client.put("/orders/1", json={"a": 1})
    assert response.status_code == 200
    assert [call.body for call in api.calls[:2]] == [payload, payload]
    assert json_response.status_code == 200
    assert api.calls[2].body == b'{"a":1}'


@pytest.mark.anyio
async def test_streaming_body_not_resent() -> None:
    source = CountingSource()
    api = Api(reject_token(source.value(1)))
    client, auth = make_client(api, source)
    started = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal started
        started += 1
        yield b"part-1,"
        yield b"part-2"

    async with client:
        response = await client.post("/upload", content=body())
        assert response.status_code == 401
        assert len(api.calls) == 1
        assert api.calls[0].body == b"part-1,part-2"
        assert started == 1
        assert auth.statistics().not_resent == 1
        # The rejected token is gone, so the caller's own retry gets a new one.
        retry = await client.post("/upload", content=body())

    assert retry.status_code == 200
    assert source.fetches == 2
    assert api.calls[1].body == b"part-1,part-2"
    assert api.calls[1].values("authorization") == [f"Bearer {source.value(2)}"]


@pytest.mark.anyio
async def test_partial_body_never_sent() -> None:
    # A body that would come out shorter on a second pass (a generator that was partly
    # consumed, a socket) must never go out again after a 401.
    source = CountingSource()
    api = Api(reject_token(source.value(1)))
    client, _ = make_client(api, source)
    chunks = [b"alpha,", b"beta,", b"gamma"]

    async def draining_body() -> AsyncIterator[bytes]:
        while chunks:
            yield chunks.pop(0)

    async with client:
        response = await client.post("/upload", content=draining_body())
        files_response = await client.post("/files", files={"file": ("a.txt", b"payload")})
    assert response.status_code == 401
    assert [call.body for call in api.calls[:1]] == [b"alpha,beta,gamma"]
    # Multipart bodies are sent once as well; this one used token 2 and succeeded.
    assert files_response.status_code == 200
    assert len(api.calls) == 2
    assert b"payload" in api.calls[1].body


@pytest.mark.anyio
async def test_body_read_before_send_resent() -> None:
    source = CountingSource()
    api = Api(reject_token(source.value(1)))
    client, _ = make_client(api, source)

    async def body() -> AsyncIterator[bytes]:
        yield b"read-up-front"

    async with client:
        request = client.build_request("POST", "/upload", content=body())
        await request.aread()
        response = await client.send(request)
    assert response.status_code == 200
    assert [call.body for call in api.calls] == [b"read-up-front", b"read-up-front"]


# -- misuse, parsing, secrets ----------------------------------------------------------


def test_sync_client_rejected() -> None:
    cache = TokenCache(CountingSource())
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    with (
        httpx.Client(auth=TokenAuth(cache), transport=transport) as client,
        pytest.raises(ConfigurationError, match="async-only"),
    ):
        client.get(API)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"header": "X Api Key"}, "header must be"),
        ({"header": ""}, "header must be"),
        ({"scheme": "Bearer\r\nX-Injected: 1"}, "scheme must be"),
    ],
)
def test_bad_options_rejected(options: dict[str, str], match: str) -> None:
    cache = TokenCache(CountingSource())
    with pytest.raises(ConfigurationError, match=match):
        TokenAuth(cache, **options)  # type: ignore[arg-type]


def test_source_instead_of_cache_rejected() -> None:
    with pytest.raises(ConfigurationError, match="TokenCache"):
        TokenAuth(CountingSource())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="example", error="invalid_token", error_description="a, b"',
            [
                (
                    "bearer",
                    {"realm": "example", "error": "invalid_token", "error_description": "a, b"},
                )
            ],
        ),
        (
            'Basic realm="x", Bearer error=invalid_token',
            [("basic", {"realm": "x"}), ("bearer", {"error": "invalid_token"})],
        ),
        (
            'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
            [
                ("newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}),
                ("basic", {"realm": "simple"}),
            ],
        ),
        ("Negotiate YIIBhw==, Bearer", [("negotiate", {}), ("bearer", {})]),
        ("", []),
    ],
)
def test_challenges_parsed(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    assert parse_challenges(header) == expected


@pytest.mark.anyio
async def test_token_absent_from_logs_and_repr(
    caplog: pytest.LogCaptureFixture, secret_guard: SecretGuard
) -> None:
    caplog.set_level(logging.DEBUG)
    source = CountingSource()
    secret_guard.register(source.value(1), source.value(2))
    api = Api(reject_token(source.value(1)))
    client, auth = make_client(api, source)
    async with client:
        await client.get("/")
        async with httpx.AsyncClient(auth=auth, transport=api.transport()) as other:
            await other.post(API, content=b"x")
    assert any("rejected" in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        assert SECRET_TAIL not in record.getMessage()
        assert SECRET_TAIL not in repr(record.args)
    assert SECRET_TAIL not in repr(auth)
    assert SECRET_TAIL not in str(auth.statistics())


@pytest.mark.anyio
async def test_public_header_path_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # TokenAuth writes to httpx.Headers' internal list when its layout is the expected
    # one; with that switched off, the public mapping methods give the same requests.
    monkeypatch.setattr("tokenflight._httpx._RAW_HEADER_LIST", False)
    api, source = Api(), CountingSource()
    client, _ = make_client(api, source)
    replacing, _ = make_client(api, source, replace_existing=True)
    async with client, replacing:
        await client.get("/")
        await client.get("/", headers={"Authorization": "Basic explicit"})
        await replacing.get("/", headers=[("Authorization", "a"), ("authorization", "b")])
    assert [call.values("authorization") for call in api.calls] == [
        [f"Bearer {source.value(1)}"],
        ["Basic explicit"],
        [f"Bearer {source.value(2)}"],
    ]


def test_raw_header_list_layout_detected() -> None:
    from tokenflight._httpx import _header_list_layout_ok

    assert _header_list_layout_ok()


class _TrackedBody(httpx.AsyncByteStream):
    """A response body that records whether it has been read."""

    def __init__(self) -> None:
        self.read = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.read = True
        yield b'{"error": "invalid_token"}'


@pytest.mark.anyio
async def test_rejected_response_read_before_refetch() -> None:
    """The 401's body is read, releasing its connection, before the new token is awaited."""
    bodies: list[_TrackedBody] = []
    read_when_refetched: list[bool] = []
    fetches = 0

    async def fetch() -> Token:
        nonlocal fetches
        fetches += 1
        if fetches > 1:
            read_when_refetched.append(bodies[0].read)
        return Token(f"token-{fetches}", expires_in=3600)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == "Bearer token-1":
            bodies.append(_TrackedBody())
            return httpx.Response(401, stream=bodies[-1])
        return httpx.Response(200)

    cache = TokenCache(fetch)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(handler), auth=TokenAuth(cache)
    ) as client:
        response = await client.get("https://api.example.com/")

    assert response.status_code == 200
    assert read_when_refetched == [True]
