"""AWS Signature Version 4: the official suite, botocore as a second opinion, the httpx flow."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import httpx
import pytest

from tokenflight import (
    Credentials,
    RetryPolicy,
    ServerClock,
    SigningError,
    SigV4Auth,
    Token,
    TokenCache,
    presign_url,
)
from tokenflight._sigv4 import (
    canonical_headers,
    compute_signature,
    presign_parameters,
)
from tokenflight.testing import FakeClock

SUITE = Path(__file__).parent / "vectors" / "sigv4" / "v4"
CASES = sorted(path.name for path in SUITE.iterdir() if path.is_dir())
SUITE_TIME = 1440938160.0  # 2015-08-30T12:36:00Z, the suite's timestamp

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SAMPLE = Credentials("AKIDEXAMPLE", SECRET)


# -- reading the suite -------------------------------------------------------------------


@dataclass
class Case:
    name: str
    context: dict[str, Any]
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def read(self, name: str) -> str:
        return (SUITE / self.name / name).read_text(encoding="utf-8")

    @property
    def credentials(self) -> Credentials:
        raw = self.context["credentials"]
        return Credentials(raw["access_key_id"], raw["secret_access_key"], raw.get("token"))

    @property
    def omit_token(self) -> bool:
        return bool(self.context.get("omit_session_token", False))

    @property
    def timestamp(self) -> str:
        moment = datetime.datetime.fromisoformat(self.context["timestamp"].replace("Z", "+00:00"))
        return moment.strftime("%Y%m%dT%H%M%SZ")


def load_case(name: str) -> Case:
    raw = (SUITE / name / "request.txt").read_bytes().decode("utf-8")
    head, _, body = raw.partition("\n\n")
    lines = head.split("\n")
    request_line = lines[0].split(" ")
    method, target = request_line[0], " ".join(request_line[1:-1])
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":
            # Obsolete line folding: the line continues the previous header's value.
            header, value = headers[-1]
            headers[-1] = (header, f"{value} {line.strip()}")
            continue
        header, _, value = line.partition(":")
        headers.append((header, value))
    path, _, query = target.partition("?")
    context = json.loads((SUITE / name / "context.json").read_text(encoding="utf-8"))
    return Case(name, context, method, path, query, headers, body.encode("utf-8"))


def decoded_pairs(query: str) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(query, keep_blank_values=True)


def signed_request_target(case: Case, prefix: str) -> str:
    first_line = case.read(f"{prefix}-signed-request.txt").split("\n")[0]
    return " ".join(first_line.split(" ")[1:-1])


def expected_authorization(case: Case) -> str:
    for line in case.read("header-signed-request.txt").split("\n"):
        name, _, value = line.partition(":")
        if name.lower() == "authorization":
            return value
    raise AssertionError(f"{case.name}: no Authorization line")


def test_suite_has_every_case() -> None:
    assert len(CASES) == 38


# -- the suite against the signing core ------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_suite_header_form(name: str) -> None:
    case = load_case(name)
    credentials = case.credentials
    headers = [*case.headers, ("X-Amz-Date", case.timestamp)]
    if credentials.session_token is not None and not case.omit_token:
        headers.append(("X-Amz-Security-Token", credentials.session_token))
    payload_hash = hashlib.sha256(case.body).hexdigest()
    if case.context["sign_body"]:
        headers.append(("X-Amz-Content-SHA256", payload_hash))

    signature = compute_signature(
        credentials=credentials,
        region=case.context["region"],
        service=case.context["service"],
        timestamp=case.timestamp,
        method=case.method,
        path=case.path,
        query=decoded_pairs(case.query),
        headers=headers,
        payload_hash=payload_hash,
        normalize_path=case.context["normalize"],
    )

    assert signature.canonical_request == case.read("header-canonical-request.txt")
    assert signature.string_to_sign == case.read("header-string-to-sign.txt")
    assert signature.signature == case.read("header-signature.txt")
    assert expected_authorization(case) == (
        f"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{signature.credential_scope}, "
        f"SignedHeaders={signature.signed_headers}, Signature={signature.signature}"
    )


@pytest.mark.parametrize("name", CASES)
def test_suite_query_form(name: str) -> None:
    case = load_case(name)
    credentials = case.credentials
    parameters = presign_parameters(
        credentials,
        region=case.context["region"],
        service=case.context["service"],
        timestamp=case.timestamp,
        expires=case.context["expiration_in_seconds"],
        signed_headers=canonical_headers(case.headers)[1],
        include_session_token=not case.omit_token,
    )
    original = decoded_pairs(case.query)

    signature = compute_signature(
        credentials=credentials,
        region=case.context["region"],
        service=case.context["service"],
        timestamp=case.timestamp,
        method=case.method,
        path=case.path,
        query=original + parameters,
        headers=case.headers,
        payload_hash=hashlib.sha256(case.body).hexdigest(),
        normalize_path=case.context["normalize"],
    )

    assert signature.canonical_request == case.read("query-canonical-request.txt")
    assert signature.string_to_sign == case.read("query-string-to-sign.txt")
    assert signature.signature == case.read("query-signature.txt")
    if credentials.session_token is not None and case.omit_token:
        parameters.append(("X-Amz-Security-Token", credentials.session_token))
    parameters.append(("X-Amz-Signature", signature.signature))
    expected_query = signed_request_target(case, "query").partition("?")[2]
    assert decoded_pairs(expected_query) == original + parameters


# -- the suite through httpx -------------------------------------------------------------


def _wire_path(path: str) -> str:
    return httpx.URL(f"https://example.amazonaws.com{path}").raw_path.decode("ascii")


def _through_httpx(name: str) -> bool:
    case = load_case(name)
    if any("\n" in value for _, value in case.headers):
        return False
    if not case.context["normalize"]:
        # httpx removes dot segments from every URL, so an unnormalized path with
        # dot segments never reaches the wire as the suite writes it.
        return _wire_path(case.path) == case.path
    # The suite writes a space or UTF-8 in the path unencoded. On the wire it is
    # percent-encoded, and a non-S3 service then encodes it a second time.
    return case.path.isascii() and " " not in case.path


HTTPX_CASES = [name for name in CASES if _through_httpx(name)]


def test_suite_httpx_coverage() -> None:
    # Every case whose request httpx can send as the suite writes it is checked below.
    assert len(HTTPX_CASES) == 31


def _suite_request(case: Case) -> httpx.Request:
    target = case.path + (f"?{case.query}" if case.query else "")
    request = httpx.Request(
        case.method,
        f"https://example.amazonaws.com{target}",
        headers=case.headers,
        content=case.body,
    )
    if not any(name.lower() == "content-length" for name, _ in case.headers):
        # httpx adds "Content-Length: 0" to a POST without a body; the suite has none.
        request.headers.pop("Content-Length", None)
    return request


async def _send_captured(auth: httpx.Auth, request: httpx.Request) -> httpx.Request:
    sent: list[httpx.Request] = []

    def handler(received: httpx.Request) -> httpx.Response:
        sent.append(received)
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        response = await client.send(request, auth=auth)
    assert response.status_code == 200
    assert len(sent) == 1
    return sent[0]


def _suite_auth(case: Case, *, presign: bool) -> SigV4Auth:
    return SigV4Auth(
        case.credentials,
        region=case.context["region"],
        service=case.context["service"],
        presign=presign,
        expires=case.context["expiration_in_seconds"],
        content_sha256_header=bool(case.context["sign_body"]) and not presign,
        normalize_path=case.context["normalize"],
        sign_session_token=not case.omit_token,
        clock=FakeClock(wall_start=SUITE_TIME),
    )


@pytest.mark.anyio
@pytest.mark.parametrize("name", HTTPX_CASES)
async def test_suite_httpx_header_form(name: str) -> None:
    case = load_case(name)
    sent = await _send_captured(_suite_auth(case, presign=False), _suite_request(case))

    assert sent.headers["Authorization"] == expected_authorization(case)
    assert sent.headers["X-Amz-Date"] == case.timestamp
    assert sent.headers.get("X-Amz-Security-Token") == case.credentials.session_token
    assert sent.content == case.body


@pytest.mark.anyio
@pytest.mark.parametrize("name", HTTPX_CASES)
async def test_suite_httpx_query_form(name: str) -> None:
    case = load_case(name)
    sent = await _send_captured(_suite_auth(case, presign=True), _suite_request(case))

    expected_query = signed_request_target(case, "query").partition("?")[2]
    assert decoded_pairs(sent.url.query.decode("ascii")) == decoded_pairs(expected_query)
    assert "Authorization" not in sent.headers
    assert "X-Amz-Date" not in sent.headers


def test_presign_url_matches_suite() -> None:
    case = load_case("get-vanilla")
    url = presign_url(
        "GET",
        "https://example.amazonaws.com/",
        case.credentials,
        region="us-east-1",
        service="service",
        clock=FakeClock(wall_start=SUITE_TIME),
    )
    expected = signed_request_target(case, "query")
    assert url.raw_path.decode("ascii") == expected


# -- botocore as an independent signer ------------------------------------------------


def botocore_sign(
    request: httpx.Request,
    credentials: Credentials,
    *,
    region: str,
    service: str,
    now: float,
    presign_expires: int | None = None,
) -> botocore.awsrequest.AWSRequest:
    """Sign a copy of ``request`` with botocore at Unix time ``now``."""
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in ("authorization", "x-amz-date", "x-amz-security-token")
    }
    if presign_expires is None:
        url = str(request.url)
    else:
        kept = [
            (n, v)
            for n, v in decoded_pairs(request.url.query.decode("ascii"))
            if not n.startswith("X-Amz-")
        ]
        url = str(request.url.copy_with(query=urllib.parse.urlencode(kept).encode("ascii")))
    aws_request = botocore.awsrequest.AWSRequest(
        method=request.method, url=url, headers=headers, data=request.content
    )
    boto_credentials = botocore.credentials.Credentials(
        credentials.key_id, credentials.secret, credentials.session_token
    )
    signer_class: Any
    if presign_expires is not None:
        signer_class = (
            botocore.auth.S3SigV4QueryAuth if service == "s3" else (botocore.auth.SigV4QueryAuth)
        )
        signer = signer_class(boto_credentials, service, region, expires=presign_expires)
    else:
        signer_class = botocore.auth.S3SigV4Auth if service == "s3" else botocore.auth.SigV4Auth
        signer = signer_class(boto_credentials, service, region)
    moment = datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=moment):
        signer.add_auth(aws_request)
    return aws_request


BOTOCORE_SAMPLES = [
    pytest.param("GET", "https://api.example.com/items?b=2&a=1&a=0", None, id="get-query"),
    pytest.param("GET", "https://api.example.com/a b/ü?q=x y+z&e=", None, id="get-encoded"),
    pytest.param("POST", "https://api.example.com/v1/run", b'{"n": 1}', id="post-json"),
    pytest.param("PUT", "https://api.example.com/x/./y//z", b"data", id="put-dot-path"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "url", "body"), BOTOCORE_SAMPLES)
@pytest.mark.parametrize("token", [None, "session-token-1"], ids=["static", "session"])
async def test_botocore_header_form(
    method: str, url: str, body: bytes | None, token: str | None
) -> None:
    credentials = Credentials("AKIDEXAMPLE", SECRET, token)
    clock = FakeClock(wall_start=1_700_000_123.0)
    auth = SigV4Auth(credentials, region="eu-west-1", service="execute-api", clock=clock)
    request = httpx.Request(method, url, content=body, headers={"Content-Type": "text/plain"})

    sent = await _send_captured(auth, request)
    signed = botocore_sign(
        sent, credentials, region="eu-west-1", service="execute-api", now=clock.time()
    )

    assert sent.headers["Authorization"] == signed.headers["Authorization"]
    assert sent.headers["X-Amz-Date"] == signed.headers["X-Amz-Date"]


@pytest.mark.anyio
async def test_botocore_s3_form() -> None:
    clock = FakeClock(wall_start=1_700_000_123.0)
    auth = SigV4Auth(SAMPLE, region="us-east-1", service="s3", clock=clock)
    request = httpx.Request("PUT", "https://bucket.s3.amazonaws.com/dir/a b.txt", content=b"hi")

    sent = await _send_captured(auth, request)
    signed = botocore_sign(sent, SAMPLE, region="us-east-1", service="s3", now=clock.time())

    assert sent.headers["X-Amz-Content-SHA256"] == hashlib.sha256(b"hi").hexdigest()
    assert sent.headers["Authorization"] == signed.headers["Authorization"]


@pytest.mark.parametrize("service", ["s3", "execute-api"])
def test_botocore_presigned_url(service: str) -> None:
    clock = FakeClock(wall_start=1_700_000_123.0)
    credentials = Credentials("AKIDEXAMPLE", SECRET, "session/token+1")
    url = presign_url(
        "GET",
        "https://bucket.example.com/report 1.csv?versionId=3",
        credentials,
        region="eu-west-1",
        service=service,
        expires=900,
        clock=clock,
    )
    request = httpx.Request("GET", url)
    signed = botocore_sign(
        request,
        credentials,
        region="eu-west-1",
        service=service,
        now=clock.time(),
        presign_expires=900,
    )
    ours = dict(decoded_pairs(url.query.decode("ascii")))
    theirs = dict(decoded_pairs(urllib.parse.urlsplit(signed.url).query))
    assert ours == theirs


# -- request bodies ------------------------------------------------------------------------


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await anyio.lowlevel.checkpoint()
        yield part


@pytest.mark.anyio
async def test_stream_body_hashed_and_sent() -> None:
    auth = SigV4Auth(SAMPLE, region="us-east-1", service="execute-api", clock=FakeClock())
    request = httpx.Request("POST", "https://api.example.com/up", content=_chunks(b"ab", b"cd"))

    sent = await _send_captured(auth, request)

    assert sent.content == b"abcd"
    signed = botocore_sign(
        sent, SAMPLE, region="us-east-1", service="execute-api", now=FakeClock().time()
    )
    assert sent.headers["Authorization"] == signed.headers["Authorization"]


@pytest.mark.anyio
async def test_stream_body_too_large() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200)

    auth = SigV4Auth(
        SAMPLE, region="us-east-1", service="execute-api", clock=FakeClock(), max_body_size=3
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        with pytest.raises(SigningError, match="max_body_size=3"):
            await client.post("https://api.example.com/up", content=_chunks(b"ab", b"cd"))
    assert calls == 0


@pytest.mark.anyio
async def test_stream_body_consumed() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200)

    stream = _chunks(b"ab")
    async for _ in stream:
        pass
    auth = SigV4Auth(SAMPLE, region="us-east-1", service="execute-api", clock=FakeClock())
    request = httpx.Request("POST", "https://api.example.com/up", content=stream)
    [part async for part in request.stream]  # type: ignore[union-attr]
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(SigningError, match="already read"):
            await client.send(request, auth=auth)
    assert calls == 0


@pytest.mark.anyio
async def test_unsigned_payload_streams_body() -> None:
    reads: list[str] = []

    async def body() -> AsyncIterator[bytes]:
        reads.append("body")
        yield b"large"

    received: list[bytes] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        received.append(await request.aread())
        return httpx.Response(503)

    auth = SigV4Auth(
        SAMPLE,
        region="us-east-1",
        service="s3",
        unsigned_payload="streaming",
        clock=FakeClock(),
        retry=RetryPolicy(attempts=3, max_wait=60),
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        response = await client.put("https://bucket.s3.amazonaws.com/key", content=body())

    # A stream that was never buffered cannot be sent again: one attempt, its 503 returned.
    assert response.status_code == 503
    assert received == [b"large"]
    assert reads == ["body"]
    assert response.request.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"


# -- credentials -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_credentials_from_cache_expiry() -> None:
    clock = FakeClock(wall_start=1_700_000_000.0)
    versions = iter(range(1, 10))

    async def fetch() -> Token:
        version = next(versions)
        return Token(
            f"secret-{version}",
            expires_in=900,
            extra={"key_id": f"ASIA{version}", "session_token": f"token-{version}"},
        )

    cache = TokenCache(fetch, clock=clock, skew=0, refresh_ahead=0)
    auth = SigV4Auth(cache, region="us-east-1", service="sts", clock=clock)
    first = await _send_captured(auth, httpx.Request("GET", "https://sts.example.com/"))
    await clock.advance(901)
    second = await _send_captured(auth, httpx.Request("GET", "https://sts.example.com/"))

    assert "Credential=ASIA1/" in first.headers["Authorization"]
    assert first.headers["X-Amz-Security-Token"] == "token-1"
    assert "Credential=ASIA2/" in second.headers["Authorization"]
    assert second.headers["X-Amz-Security-Token"] == "token-2"
    signed = botocore_sign(
        second,
        Credentials("ASIA2", "secret-2", "token-2"),
        region="us-east-1",
        service="sts",
        now=clock.time(),
    )
    assert second.headers["Authorization"] == signed.headers["Authorization"]


@pytest.mark.anyio
async def test_expired_token_invalidates_cache() -> None:
    clock = FakeClock()
    fetched = 0

    async def fetch() -> Token:
        nonlocal fetched
        fetched += 1
        return Token(f"secret-{fetched}", extra={"key_id": f"ASIA{fetched}"})

    def handler(request: httpx.Request) -> httpx.Response:
        if "Credential=ASIA1/" in request.headers["Authorization"]:
            return httpx.Response(403, text="<Code>ExpiredToken</Code>")
        return httpx.Response(200)

    auth = SigV4Auth(TokenCache(fetch, clock=clock), region="us-east-1", service="sqs", clock=clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        response = await client.get("https://sqs.example.com/")

    assert response.status_code == 200
    assert fetched == 2
    assert len(response.history) == 1


# -- every attempt signed afresh --------------------------------------------------------


def _aws_date(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, tz=datetime.timezone.utc).strftime(
        "%a, %d %b %Y %H:%M:%S GMT"
    )


class TimedAwsServer:
    """A mock AWS endpoint that accepts a signature within 5 minutes of its own clock."""

    def __init__(self, clock: FakeClock, *, offset: float = 0.0, busy: int = 0) -> None:
        self.clock = clock
        self.offset = offset
        self.busy = busy
        self.dates: list[str] = []
        self.accepted = 0

    def now(self) -> float:
        return self.clock.time() + self.offset

    def __call__(self, request: httpx.Request) -> httpx.Response:
        stamp = request.headers["X-Amz-Date"]
        self.dates.append(stamp)
        signed = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.timezone.utc
        )
        expected = botocore_sign(
            request, SAMPLE, region="us-east-1", service="execute-api", now=signed.timestamp()
        )
        if expected.headers["Authorization"] != request.headers["Authorization"]:
            return httpx.Response(403, text="<Code>SignatureDoesNotMatch</Code>")
        date = {"Date": _aws_date(self.now())}
        if abs(signed.timestamp() - self.now()) > 300:
            return httpx.Response(403, headers=date, text="<Code>RequestTimeTooSkewed</Code>")
        if self.busy > 0:
            self.busy -= 1
            return httpx.Response(503, headers={**date, "Retry-After": "360"})
        self.accepted += 1
        return httpx.Response(200, headers=date)


@pytest.mark.anyio
async def test_retry_signed_after_backoff() -> None:
    clock = FakeClock()
    server = TimedAwsServer(clock, busy=1)
    auth = SigV4Auth(
        SAMPLE,
        region="us-east-1",
        service="execute-api",
        clock=clock,
        retry=RetryPolicy(attempts=1, max_wait=600),
    )
    transport = httpx.MockTransport(server)
    async with httpx.AsyncClient(transport=transport, auth=auth) as client, clock.autojump():
        response = await client.post("https://api.example.com/run", content=b"{}")

    assert response.status_code == 200
    assert len(server.dates) == 2
    first, second = (datetime.datetime.strptime(d, "%Y%m%dT%H%M%SZ") for d in server.dates)
    assert (second - first).total_seconds() >= 360


@pytest.mark.anyio
async def test_retry_beyond_budget_returned() -> None:
    clock = FakeClock()
    server = TimedAwsServer(clock, busy=1)
    auth = SigV4Auth(
        SAMPLE,
        region="us-east-1",
        service="execute-api",
        clock=clock,
        retry=RetryPolicy(attempts=1, max_wait=60),
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(server), auth=auth) as client:
        response = await client.post("https://api.example.com/run", content=b"{}")

    assert response.status_code == 503
    assert len(server.dates) == 1


@pytest.mark.anyio
async def test_concurrent_skew_one_offset_update() -> None:
    local = FakeClock()
    clock = ServerClock(local)
    server = TimedAwsServer(local, offset=600.0)
    auth = SigV4Auth(SAMPLE, region="us-east-1", service="execute-api", clock=clock)
    results: list[int] = []
    arrived = 0
    all_arrived = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        # Hold the first 10 requests until all are in, so all were signed with the
        # offset of before any rejection.
        nonlocal arrived
        arrived += 1
        if arrived == 10:
            all_arrived.set()
        if arrived <= 10:
            await all_arrived.wait()
        return server(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:

        async def call() -> None:
            response = await client.get("https://api.example.com/item")
            results.append(response.status_code)

        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(call)

    assert results == [200] * 10
    assert server.accepted == 10
    assert len(server.dates) == 20
    assert clock.updates == 1
    assert abs(clock.offset - 600.0) <= 1.0


# -- the request as the caller built it ---------------------------------------------------


@pytest.mark.anyio
async def test_caller_authorization_kept() -> None:
    auth = SigV4Auth(SAMPLE, region="us-east-1", service="execute-api", clock=FakeClock())
    request = httpx.Request("GET", "https://api.example.com/", headers={"Authorization": "mine"})
    sent = await _send_captured(auth, request)
    assert sent.headers["Authorization"] == "mine"
    assert "X-Amz-Date" not in sent.headers


@pytest.mark.anyio
async def test_query_reencoded_on_wire() -> None:
    clock = FakeClock()
    auth = SigV4Auth(SAMPLE, region="us-east-1", service="execute-api", clock=clock)
    request = httpx.Request("GET", "https://api.example.com/", params={"q": "a b+c", "z": "~"})
    sent = await _send_captured(auth, request)

    assert sent.url.query == b"q=a%20b%2Bc&z=~"
    signed = botocore_sign(
        sent, SAMPLE, region="us-east-1", service="execute-api", now=clock.time()
    )
    assert sent.headers["Authorization"] == signed.headers["Authorization"]


@pytest.mark.anyio
async def test_redirect_headers_dropped() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "https://elsewhere.example.net/"})

    auth = SigV4Auth(
        Credentials("AKID", SECRET, "tok"), region="us-east-1", service="s3", clock=FakeClock()
    )
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler), auth=auth) as client:
        response = await client.get("https://bucket.s3.amazonaws.com/key")

    assert response.next_request is not None
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token", "X-Amz-Content-SHA256"):
        assert name not in response.next_request.headers


# -- secrets -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_secrets_absent_from_repr_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tokenflight")
    credentials = Credentials("AKIDEXAMPLE", SECRET, "session-secret-token")
    clock = FakeClock()
    auth = SigV4Auth(
        credentials,
        region="us-east-1",
        service="execute-api",
        clock=clock,
        retry=RetryPolicy(attempts=1, max_wait=10),
    )
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(503 if calls == 1 else 200, headers={"Retry-After": "1"})

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport, auth=auth) as client, clock.autojump():
        await client.get("https://api.example.com/")

    texts = [repr(credentials), str(credentials), repr(auth), caplog.text]
    for text in texts:
        assert SECRET not in text
        assert "session-secret-token" not in text
    with pytest.raises(SigningError) as raised:
        await _send_captured(
            SigV4Auth(Credentials(None, SECRET), region="us-east-1", service="x", clock=clock),
            httpx.Request("GET", "https://api.example.com/"),
        )
    assert SECRET not in str(raised.value)


def test_invalid_settings_rejected() -> None:
    from tokenflight import ConfigurationError

    bad: list[Callable[[], object]] = [
        lambda: SigV4Auth(SAMPLE, region="", service="s3"),
        lambda: SigV4Auth(SAMPLE, region="us/east", service="s3"),
        lambda: SigV4Auth(SAMPLE, region="us-east-1", service="s3", expires=0),
        lambda: SigV4Auth(SAMPLE, region="us-east-1", service="s3", expires=604801),
    ]
    for build in bad:
        with pytest.raises(ConfigurationError):
            build()
