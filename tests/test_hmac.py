"""HMAC request signing: the signer, the verifier, and an independent computation."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import logging
import pickle
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import httpx
import pytest

from tokenflight import (
    ConfigurationError,
    Credentials,
    HmacAuth,
    HmacCanonicalRequest,
    HmacScheme,
    HmacVerifier,
    InvalidTokenError,
    RetryPolicy,
    ServerClock,
    SignatureVerificationError,
    SigningError,
    Token,
    TokenCache,
)
from tokenflight.testing import FakeClock

SECRET = "hmac-secret-do-not-log"
CREDENTIALS = Credentials("key-1", SECRET)


async def send(
    auth: httpx.Auth,
    method: str,
    url: str,
    *,
    content: bytes | AsyncIterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Request:
    """Send one request through ``auth`` to a mock server; return what the server got."""
    received: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        await request.aread()
        received.append(request)
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await client.request(method, url, content=content, headers=headers, auth=auth)
    assert len(received) == 1
    return received[0]


def verify(verifier: HmacVerifier, request: httpx.Request) -> tuple[str | None, int, str | None]:
    result = verifier.verify(request.method, request.url.raw_path, request.headers, request.content)
    return result.key_id, result.timestamp, result.nonce


# -- an independent computation of the documented scheme -------------------------------


def expected_signature(request: httpx.Request, secret: str, algorithm: str = "sha256") -> str:
    """Recompute the signature from the scheme's documentation, without tokenflight."""
    path, _, query = request.url.raw_path.decode("ascii").partition("?")
    pairs = []
    for part in query.split("&") if query else []:
        name, _, value = part.partition("=")
        pairs.append((name, value))
    # The signer sends the query already in canonical encoding, so sorting is enough.
    canonical_query = "&".join(f"{n}={v}" for n, v in sorted(pairs))
    body_hash = hashlib.new(algorithm, request.content).hexdigest()
    lines = [
        request.method,
        path,
        canonical_query,
        request.headers["X-Key-Id"],
        request.headers["X-Timestamp"],
        request.headers["X-Nonce"],
        f"host:{request.headers['host']}",
        f"content-type:{request.headers.get('content-type', '')}",
        body_hash,
    ]
    text = "\n".join(lines).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), text, algorithm).hexdigest()


@pytest.mark.anyio
@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "https://api.example.com/items?b=2&a=1&a=0", None),
        ("GET", "https://api.example.com/a%20b/%C3%BC?q=x y&e", None),
        ("POST", "https://api.example.com:8443/v1/run", b'{"n": 1}'),
        ("DELETE", "https://api.example.com/", None),
    ],
)
async def test_signature_independent(
    algorithm: str, method: str, url: str, body: bytes | None
) -> None:
    clock = FakeClock()
    scheme = HmacScheme(algorithm="sha512" if algorithm == "sha512" else "sha256")
    auth = HmacAuth(CREDENTIALS, scheme=scheme, clock=clock)

    request = await send(auth, method, url, content=body, headers={"Content-Type": "text/plain"})

    assert request.headers["X-Signature"] == expected_signature(request, SECRET, algorithm)
    assert request.headers["X-Timestamp"] == str(int(clock.time()))
    verifier = HmacVerifier({"key-1": SECRET}, scheme=scheme, clock=clock)
    assert verify(verifier, request)[0] == "key-1"


@pytest.mark.anyio
async def test_base64_prefix_and_custom_headers() -> None:
    clock = FakeClock()
    scheme = HmacScheme(
        signature_header="X-Hub-Signature-256",
        key_id_header=None,
        nonce_header=None,
        timestamp_header="X-Hub-Timestamp",
        content_hash_header="X-Content-SHA256",
        signed_headers=("Host", "X-Event"),
        signature_prefix="sha256=",
        encoding="base64",
    )
    auth = HmacAuth(Credentials(None, SECRET), scheme=scheme, clock=clock)
    request = await send(
        auth, "POST", "https://hooks.example.com/in", content=b"{}", headers={"X-Event": "push"}
    )

    canonical = HmacCanonicalRequest(
        method="POST",
        path="/in",
        query="",
        headers=(("host", "hooks.example.com"), ("x-event", "push")),
        key_id="",
        timestamp=request.headers["X-Hub-Timestamp"],
        nonce="",
        body_hash=hashlib.sha256(b"{}").hexdigest(),
    )
    mac = hmac.new(SECRET.encode(), canonical.to_string().encode(), "sha256").digest()
    assert request.headers["X-Hub-Signature-256"] == "sha256=" + base64.b64encode(mac).decode()
    assert request.headers["X-Content-SHA256"] == hashlib.sha256(b"{}").hexdigest()
    assert "X-Key-Id" not in request.headers
    assert "X-Nonce" not in request.headers

    verifier = HmacVerifier({"": SECRET}, scheme=scheme, clock=clock)
    assert verify(verifier, request) == (None, int(clock.time()), None)
    # Without nonces, a replay is recognised by its signature.
    with pytest.raises(SignatureVerificationError) as replay:
        verify(verifier, request)
    assert replay.value.reason == "replayed"


@pytest.mark.anyio
async def test_custom_canonical_string() -> None:
    def method_and_path(parts: HmacCanonicalRequest) -> str:
        return f"{parts.method} {parts.path} {parts.timestamp}"

    clock = FakeClock()
    scheme = HmacScheme(canonical=method_and_path, nonce_header=None)
    request = await send(
        HmacAuth(CREDENTIALS, scheme=scheme, clock=clock), "GET", "https://a.example/x"
    )

    text = f"GET /x {int(clock.time())}".encode()
    assert request.headers["X-Signature"] == hmac.new(SECRET.encode(), text, "sha256").hexdigest()
    assert verify(HmacVerifier({"key-1": SECRET}, scheme=scheme, clock=clock), request)


# -- the verifier's checks -------------------------------------------------------------


@pytest.mark.anyio
async def test_verifier_rejections() -> None:
    clock = FakeClock()
    request = await send(
        HmacAuth(CREDENTIALS, clock=clock), "POST", "https://api.example.com/p?a=1", content=b"body"
    )
    verifier = HmacVerifier({"key-1": SECRET}, clock=clock)
    headers = dict(request.headers)
    target = request.url.raw_path

    def reason(method: str, target: bytes, headers: dict[str, str], body: bytes) -> str:
        with pytest.raises(SignatureVerificationError) as raised:
            HmacVerifier({"key-1": SECRET}, clock=clock).verify(method, target, headers, body)
        assert SECRET not in str(raised.value)
        assert headers.get("x-signature", "-") not in str(raised.value)
        return raised.value.reason

    assert reason("POST", target, headers, b"BODY") == "signature"
    assert reason("PUT", target, headers, b"body") == "signature"
    assert reason("POST", b"/p?a=2", headers, b"body") == "signature"
    assert reason("POST", b"/q?a=1", headers, b"body") == "signature"
    assert reason("POST", target, {**headers, "host": "evil.example"}, b"body") == "signature"
    assert reason("POST", target, {**headers, "x-key-id": "key-2"}, b"body") == "unknown_key"
    assert reason("POST", target, {**headers, "x-timestamp": "12a"}, b"body") == "malformed"
    missing = {k: v for k, v in headers.items() if k != "x-nonce"}
    assert reason("POST", target, missing, b"body") == "missing_header"
    wrong_secret = HmacVerifier({"key-1": "other"}, clock=clock)
    with pytest.raises(SignatureVerificationError):
        wrong_secret.verify("POST", target, headers, b"body")

    assert verify(verifier, request)[0] == "key-1"
    with pytest.raises(SignatureVerificationError) as replay:
        verify(verifier, request)
    assert replay.value.reason == "replayed"


@pytest.mark.anyio
async def test_verifier_timestamp_tolerance() -> None:
    clock = FakeClock()
    request = await send(HmacAuth(CREDENTIALS, clock=clock), "GET", "https://api.example.com/")
    late = HmacVerifier({"key-1": SECRET}, tolerance=300, clock=clock)
    early_clock = FakeClock(wall_start=clock.time() - 301)
    early = HmacVerifier({"key-1": SECRET}, tolerance=300, clock=early_clock)

    await clock.advance(300)
    assert verify(late, request)[0] == "key-1"
    await clock.advance(1)
    for verifier in (HmacVerifier({"key-1": SECRET}, tolerance=300, clock=clock), early):
        with pytest.raises(SignatureVerificationError) as raised:
            verify(verifier, request)
        assert raised.value.reason == "timestamp"


@pytest.mark.anyio
async def test_verifier_memory_fails_closed() -> None:
    clock = FakeClock()
    auth = HmacAuth(CREDENTIALS, clock=clock)
    verifier = HmacVerifier({"key-1": SECRET}, max_nonces=2, clock=clock)
    first = await send(auth, "GET", "https://api.example.com/")
    await clock.advance(1)
    second = await send(auth, "GET", "https://api.example.com/")
    await clock.advance(1)
    third = await send(auth, "GET", "https://api.example.com/")
    for request in (first, second, third):
        verify(verifier, request)

    # The first nonce was dropped to make room, so its replay is refused as stale.
    with pytest.raises(SignatureVerificationError) as raised:
        verify(verifier, first)
    assert raised.value.reason == "timestamp"
    assert "a replay cannot be ruled out" in str(raised.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (-1_796_421_052, "is 1796421052 s behind the verifier's clock"),
        (301, "is 301 s ahead of the verifier's clock"),
    ],
    ids=["past", "future"],
)
async def test_verifier_timestamp_direction(offset: int, expected: str) -> None:
    clock = FakeClock()
    request = await send(HmacAuth(CREDENTIALS, clock=clock), "GET", "https://api.example.com/")
    verifier_clock = FakeClock(wall_start=clock.time() - offset)
    verifier = HmacVerifier({"key-1": SECRET}, tolerance=300, clock=verifier_clock)

    with pytest.raises(SignatureVerificationError) as raised:
        verify(verifier, request)

    assert raised.value.reason == "timestamp"
    assert expected in str(raised.value)
    assert "+" not in str(raised.value)


def test_verifier_error_pickles() -> None:
    error = SignatureVerificationError("the signature does not match", reason="signature")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object
    assert copy.reason == "signature"
    assert str(copy) == "the signature does not match"


def test_scheme_validation() -> None:
    with pytest.raises(ConfigurationError):
        HmacScheme(algorithm="md5")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        HmacScheme(signature_header="X Bad")
    with pytest.raises(ConfigurationError):
        HmacScheme(signed_headers="host")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        HmacVerifier({}, tolerance=-1)
    with pytest.raises(ConfigurationError):
        HmacVerifier({}, max_nonces=0)


# -- credentials: one snapshot per signature -----------------------------------------------


@pytest.mark.anyio
async def test_refresh_during_signing_one_snapshot() -> None:
    clock = FakeClock()
    versions = iter(range(1, 10))

    async def fetch() -> Token:
        version = next(versions)
        return Token(
            f"secret-{version}",
            extra={"key_id": f"key-{version}", "session_token": f"session-{version}"},
        )

    cache = TokenCache(fetch, clock=clock)
    scheme = HmacScheme(signed_headers=("host", "x-session-token"))

    class SessionHmac(HmacAuth):
        def _sign(
            self, request: httpx.Request, credentials: Credentials, body: bytes | None, now: float
        ) -> None:
            assert credentials.session_token is not None
            request.headers["X-Session-Token"] = credentials.session_token
            super()._sign(request, credentials, body, now)

    auth = SessionHmac(cache, scheme=scheme, clock=clock)

    async def body() -> AsyncIterator[bytes]:
        # The signer has taken its credentials; a refresh swaps all three fields now,
        # and the await lets it complete before the signature is computed.
        await cache.force_refresh()
        await anyio.lowlevel.checkpoint()
        yield b"payload"

    request = await send(auth, "POST", "https://api.example.com/", content=body())

    assert request.headers["X-Key-Id"] == "key-1"
    assert request.headers["X-Session-Token"] == "session-1"
    v1 = HmacVerifier({"key-1": "secret-1"}, scheme=scheme, clock=clock)
    v2 = HmacVerifier({"key-1": "secret-2", "key-2": "secret-2"}, scheme=scheme, clock=clock)
    assert verify(v1, request)[0] == "key-1"
    with pytest.raises(SignatureVerificationError):
        verify(v2, request)

    later = await send(auth, "POST", "https://api.example.com/", content=b"payload")
    assert later.headers["X-Key-Id"] == "key-2"
    assert later.headers["X-Session-Token"] == "session-2"
    assert verify(v2, later)[0] == "key-2"


@pytest.mark.anyio
async def test_rejected_credentials_refreshed_once() -> None:
    clock = FakeClock()
    fetched = 0

    async def fetch() -> Token:
        nonlocal fetched
        fetched += 1
        return Token(f"secret-{fetched}", extra={"key_id": "key-1"})

    verifier = HmacVerifier({"key-1": "secret-2"}, clock=clock)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["X-Nonce"])
        try:
            verify(verifier, request)
        except SignatureVerificationError:
            return httpx.Response(401)
        return httpx.Response(200)

    auth = HmacAuth(TokenCache(fetch, clock=clock), clock=clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        response = await client.post("https://api.example.com/", content=b"x")

    assert response.status_code == 200
    assert fetched == 2
    assert len(seen) == 2
    assert seen[0] != seen[1]


@pytest.mark.anyio
async def test_rejected_static_credentials_returned() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401)

    auth = HmacAuth(CREDENTIALS, clock=FakeClock())
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        response = await client.get("https://api.example.com/")
    assert response.status_code == 401
    assert calls == 1


# -- every attempt signed afresh --------------------------------------------------------


@pytest.mark.anyio
async def test_retry_after_backoff_resigned() -> None:
    clock = FakeClock()
    verifier = HmacVerifier({"key-1": SECRET}, tolerance=300, clock=clock)
    attempts: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempts.append((request.headers["X-Timestamp"], request.headers["X-Nonce"]))
        try:
            verify(verifier, request)
        except SignatureVerificationError as error:
            return httpx.Response(401, headers={"X-Reason": error.reason})
        if len(attempts) == 1:
            return httpx.Response(503, headers={"Retry-After": "360"})
        return httpx.Response(200)

    auth = HmacAuth(CREDENTIALS, clock=clock, retry=RetryPolicy(attempts=2, max_wait=600))
    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, auth=auth) as client, clock.autojump():
        response = await client.post("https://api.example.com/", content=b"x")

    assert response.status_code == 200
    assert len(attempts) == 2
    (first_time, first_nonce), (second_time, second_nonce) = attempts
    assert int(second_time) - int(first_time) >= 360
    assert int(second_nonce) > int(first_nonce)


@pytest.mark.anyio
async def test_clock_skew_resigned_once() -> None:
    local = FakeClock()
    clock = ServerClock(local)
    server_clock = FakeClock(wall_start=local.time() + 600)
    verifier = HmacVerifier({"key-1": SECRET}, tolerance=60, clock=server_clock)

    def handler(request: httpx.Request) -> httpx.Response:
        date = {"Date": email.utils.formatdate(server_clock.time(), usegmt=True)}
        try:
            verify(verifier, request)
        except SignatureVerificationError as error:
            return httpx.Response(401, headers={**date, "X-Reason": error.reason})
        return httpx.Response(200, headers=date)

    def skewed(response: httpx.Response) -> bool:
        return bool(response.headers.get("X-Reason") == "timestamp")

    auth = HmacAuth(CREDENTIALS, clock=clock, clock_skew=skewed)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        response = await client.get("https://api.example.com/")
        later = await client.get("https://api.example.com/")

    assert response.status_code == 200
    assert len(response.history) == 1
    assert abs(clock.offset - 600) <= 1
    assert later.status_code == 200
    assert later.history == []


# -- bodies ---------------------------------------------------------------------------------


async def _stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await anyio.lowlevel.checkpoint()
        yield part


@pytest.mark.anyio
async def test_stream_body_signed_and_sent() -> None:
    clock = FakeClock()
    request = await send(
        HmacAuth(CREDENTIALS, clock=clock),
        "PUT",
        "https://api.example.com/blob",
        content=_stream(b"chunk-1;", b"chunk-2"),
    )
    assert request.content == b"chunk-1;chunk-2"
    assert verify(HmacVerifier({"key-1": SECRET}, clock=clock), request)[0] == "key-1"


@pytest.mark.anyio
async def test_stream_over_limit_never_sent() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200)

    auth = HmacAuth(CREDENTIALS, clock=FakeClock(), max_body_size=10)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        with pytest.raises(SigningError, match="max_body_size=10"):
            await client.put("https://api.example.com/", content=_stream(b"123456", b"7890ab"))
        with pytest.raises(SigningError, match="max_body_size=10"):
            await client.put(
                "https://api.example.com/",
                content=_stream(b"x"),
                headers={"Content-Length": "11"},
            )
    assert calls == 0


def test_sync_client_static_credentials() -> None:
    clock = FakeClock()
    received: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(200)

    def chunks() -> object:
        yield b"a"
        yield b"b"

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        client.post(
            "https://api.example.com/", content=b"ab", auth=HmacAuth(CREDENTIALS, clock=clock)
        )
        client.post(
            "https://api.example.com/",
            content=chunks(),  # type: ignore[arg-type]
            auth=HmacAuth(CREDENTIALS, clock=clock),
        )
        cached = HmacAuth(TokenCache(lambda: _never(), clock=clock), clock=clock)
        with pytest.raises(SigningError, match=r"httpx\.AsyncClient"):
            client.get("https://api.example.com/", auth=cached)

    verifier = HmacVerifier({"key-1": SECRET}, clock=clock)
    for request in received:
        assert verify(verifier, request)[0] == "key-1"


async def _never() -> Token:
    raise AssertionError("not called")


# -- what the caller built -----------------------------------------------------------------


@pytest.mark.anyio
async def test_caller_signature_kept() -> None:
    request = await send(
        HmacAuth(CREDENTIALS, clock=FakeClock()),
        "GET",
        "https://api.example.com/",
        headers={"X-Signature": "precomputed"},
    )
    assert request.headers["X-Signature"] == "precomputed"
    assert "X-Nonce" not in request.headers

    replaced = await send(
        HmacAuth(CREDENTIALS, clock=FakeClock(), replace_existing=True),
        "GET",
        "https://api.example.com/",
        headers={"X-Signature": "precomputed"},
    )
    assert replaced.headers["X-Signature"] != "precomputed"


@pytest.mark.anyio
async def test_missing_key_id_rejected() -> None:
    with pytest.raises(SigningError, match="key_id_header=None"):
        await send(
            HmacAuth(Credentials(None, SECRET), clock=FakeClock()), "GET", "https://a.example/"
        )


# -- secrets -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_secret_absent_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tokenflight")
    clock = FakeClock()
    credentials = Credentials("key-1", SECRET, "session-token-secret")
    auth = HmacAuth(credentials, clock=clock, retry=RetryPolicy(attempts=1, max_wait=5))
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503 if calls == 1 else 200)

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, auth=auth) as client, clock.autojump():
        await client.get("https://api.example.com/")

    texts = [repr(credentials), str(credentials), f"{credentials}", repr(auth), caplog.text]
    for text in texts:
        assert SECRET not in text
        assert "session-token-secret" not in text
    assert credentials.fingerprint in repr(credentials)

    with pytest.raises(InvalidTokenError) as raised:
        Credentials("key-1", SECRET, "bad\ntoken-secret")
    assert "token-secret" not in str(raised.value)


@pytest.mark.parametrize(
    "session_token",
    ["token-secret-\u00e9", "token-secret\r\nX-Injected: 1", "token-secret\x00"],
    ids=["non-ascii", "crlf", "nul"],
)
def test_credentials_session_token_checked(session_token: str) -> None:
    with pytest.raises(InvalidTokenError) as raised:
        Credentials("key-1", SECRET, session_token)

    message = str(raised.value)
    assert "session token contains" in message
    assert "token-secret" not in message
    assert "\u00e9" not in message
    assert "fingerprint" in message


@pytest.mark.parametrize(
    ("key_id", "shown"),
    [("k\u00e9y-1", "'\u00e9' at index 1"), ("key\n1", "'\\n' at index 3")],
    ids=["non-ascii", "line-break"],
)
def test_credentials_key_id_checked(key_id: str, shown: str) -> None:
    with pytest.raises(InvalidTokenError, match="key id contains the") as raised:
        Credentials(key_id, SECRET)

    assert shown in str(raised.value)


def test_credentials_secret_may_be_non_ascii() -> None:
    # The secret is only hashed, never sent, so any text is a valid secret.
    credentials = Credentials("key-1", "s\u00e9cret-\u2028")

    assert credentials.secret_bytes == "s\u00e9cret-\u2028".encode()
