"""Generated hostile input: only documented errors come out, and none quotes a secret.

Hypothesis feeds the token-response parser, the JWT inspector and every header builder
(TokenAuth, KeyPoolAuth, HmacAuth, SigV4Auth, Token, Credentials) with generated input.
The properties:

* the parser returns a :class:`Token` or raises a :class:`RefreshError`; the inspector
  returns two mappings or raises :class:`InvalidTokenError` (or
  :class:`ClockSkewError` for time checks); a header builder puts a clean header on
  the request or raises a :class:`TokenflightError`;
* no message, ``repr`` or argument of those errors contains the secret that went in;
* no header value with CR, LF or another control character reaches the wire;
* a response larger than the limit is cut off after at most one chunk past the limit.

Secrets are built around the marker ``QQ``, which the other generated text cannot
contain (its alphabets have no ``Q``), so finding the marker in a message is a leak and
not a coincidence.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import math
import traceback
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tokenflight import (
    ClientCredentials,
    ClockSkewError,
    Credentials,
    HmacAuth,
    InvalidTokenError,
    KeyPool,
    KeyPoolAuth,
    OAuth2Error,
    RefreshError,
    SigV4Auth,
    Token,
    TokenAuth,
    TokenCache,
    TokenflightError,
    check_time_claims,
    decode_unverified,
    parse_token_response,
)
from tokenflight._cli_jwt import run_inspect
from tokenflight._oauth2_response import MAX_RETRY_AFTER, parse_retry_after
from tokenflight.testing import FakeClock

MARKER = "QQ"

# Text that cannot contain the marker: every printable and control character but "Q".
_PLAIN_ALPHABET = st.characters(exclude_characters="Q", exclude_categories=["Cs"])
plain_text = st.text(_PLAIN_ALPHABET, max_size=30)

# A secret: the marker and some characters, with a control character, a non-ASCII
# character or a line break now and then.
_hostile_chars = st.sampled_from(["\r", "\n", "\r\n", "\x00", "\x7f", "\t", "é", "\u2028", " "])
secrets = st.builds(
    lambda head, tail, hostile, where: (
        MARKER + head + (hostile if where == "middle" else "") + tail
        if where != "end"
        else MARKER + head + tail + hostile
    ),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-._~+/", min_size=4, max_size=20),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", max_size=10),
    _hostile_chars,
    st.sampled_from(["none", "none", "middle", "end"]),
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | plain_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(plain_text, children, max_size=3)
    ),
    max_leaves=8,
)

ERROR_CODES = st.sampled_from(
    [
        "invalid_client",
        "invalid_grant",
        "invalid_scope",
        "unauthorized_client",
        "temporarily_unavailable",
        "server_error",
        "slow_down",
        "invalid_request",
        "unknown_code",
    ]
)

STATUSES = st.sampled_from([200, 201, 204, 301, 302, 400, 401, 403, 404, 408, 429, 500, 503])


def _messages(error: BaseException) -> str:
    """Every text an error carries: its traceback with causes, reprs and attributes."""
    parts = ["".join(traceback.format_exception(error))]
    current: BaseException | None = error
    while current is not None:
        parts.append(repr(current))
        parts.append(repr(current.args))
        if isinstance(current, OAuth2Error):
            parts.append(repr((current.error, current.error_description, current.error_uri)))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _assert_hidden(error: BaseException, *values: str) -> None:
    text = _messages(error)
    for value in values:
        assert value not in text


def _clean_header_value(value: str) -> bool:
    return all(" " <= char <= "~" or char == "\t" for char in value)


# -- the token-response parser ----------------------------------------------------------


@settings(max_examples=300)
@given(
    status=st.integers(min_value=100, max_value=599),
    body=st.binary(max_size=300),
    content_type=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/html", "", "json"]
    ),
    retry_after=st.none() | plain_text,
)
def test_parser_raw_bytes_documented(
    status: int, body: bytes, content_type: str, retry_after: str | None
) -> None:
    headers = {"content-type": content_type}
    if retry_after is not None:
        headers["retry-after"] = retry_after
    try:
        token = parse_token_response(status, body, headers=headers)
    except RefreshError:
        return
    assert isinstance(token, Token)
    assert _clean_header_value(token.value)


token_bodies = st.fixed_dictionaries(
    {},
    optional={
        "access_token": secrets | json_values,
        "token_type": st.sampled_from(["Bearer", "bearer", "MAC", ""]) | json_values,
        "expires_in": st.integers(-5, 10**12)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.sampled_from(["3600", "3600.5", " 60 ", "soon", "1e3", "-1", ""])
        | json_values,
        "refresh_token": secrets | json_values,
        "scope": plain_text | st.lists(plain_text, max_size=3) | json_values,
        "error": ERROR_CODES | json_values,
        "error_description": st.builds(
            lambda before, secret, after: before + secret + after, plain_text, secrets, plain_text
        )
        | plain_text,
        "error_uri": plain_text,
    },
)


@settings(max_examples=400)
@given(
    status=STATUSES,
    fields=token_bodies,
    client_secret=secrets,
    grant_type=st.sampled_from(["client_credentials", "refresh_token", None]),
)
def test_parser_hides_secrets(
    status: int, fields: dict[str, object], client_secret: str, grant_type: str | None
) -> None:
    # The error description may quote the request's secrets; the parser redacts them.
    description = fields.get("error_description")
    redact = [client_secret]
    if isinstance(description, str) and MARKER in description:
        start = description.index(MARKER)
        quoted = description[start:]
        redact.append(quoted)
    refresh_token = fields.get("refresh_token")
    if isinstance(refresh_token, str) and MARKER in refresh_token:
        redact.append(refresh_token)
    body = json.dumps(fields, allow_nan=True).encode()

    try:
        token = parse_token_response(
            status,
            body,
            headers={"content-type": "application/json"},
            grant_type=grant_type,
            redact=redact,
        )
    except RefreshError as error:
        access_token = fields.get("access_token")
        if isinstance(access_token, str) and MARKER in access_token:
            redact.append(access_token)
        _assert_hidden(error, *redact)
        return

    assert isinstance(token, Token)
    assert _clean_header_value(token.value)
    if token.refresh_token is not None:
        assert _clean_header_value(token.refresh_token)
    if token.expires_in is not None:
        assert math.isfinite(token.expires_in)
        assert token.expires_in > 0


@example(value="\u00b2", date=None)  # a digit to str.isdigit(), but not to float()
@example(value="9" * 400, date=None)
@given(value=st.none() | plain_text, date=st.none() | plain_text)
def test_retry_after_bounded(value: str | None, date: str | None) -> None:
    seconds = parse_retry_after(value, date=date, now=1_700_000_000.0)

    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER


# -- oversized responses ------------------------------------------------------------------


class _CountingStream(httpx.AsyncByteStream):
    """A response body of ``total`` bytes that counts how much of it was read."""

    def __init__(self, total: int, chunk: int) -> None:
        self.total = total
        self.chunk = chunk
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < self.total:
            piece = b"x" * min(self.chunk, self.total - self.sent)
            self.sent += len(piece)
            yield piece


@pytest.mark.anyio
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_oversized_response_cut_off(declared: bool) -> None:
    limit = 64 * 1024
    chunk = 8 * 1024
    stream = _CountingStream(total=16 * 1024 * 1024, chunk=chunk)

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if declared:
            headers["content-length"] = str(stream.total)
        return httpx.Response(200, headers=headers, stream=stream)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        source = ClientCredentials(
            "https://idp.example/token",
            "client-id",
            client_secret=MARKER + "client-secret",
            http_client=http,
            max_response_size=limit,
        )
        with pytest.raises(RefreshError, match="larger than 65536 bytes"):
            await source.fetch()

    assert stream.sent <= limit + chunk
    if declared:
        assert stream.sent == 0


# -- the JWT inspector ------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_BASE64URL_NO_Q = "ABCDEFGHIJKLMNOPRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

jwt_like = st.builds(
    lambda parts, hostile: MARKER + ".".join(parts) + hostile,
    st.lists(
        st.text("ABCDEFGHIJKLMNOPRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_="), max_size=6
    ),
    st.sampled_from(["", "\n", " ", "\x00", "é", "=="]),
)


@settings(max_examples=300)
@given(token=jwt_like | plain_text)
def test_inspector_documented(token: str) -> None:
    try:
        header, claims = decode_unverified(token)
    except InvalidTokenError as error:
        if MARKER in token:
            _assert_hidden(error, token.strip())
        return
    assert isinstance(header, dict)
    assert isinstance(claims, dict)


claim_sets = st.dictionaries(
    st.sampled_from(["iat", "nbf", "exp", "sub", "aud"]) | plain_text, json_values, max_size=5
)


@settings(max_examples=300)
@given(header=st.dictionaries(plain_text, json_values, max_size=4), claims=claim_sets)
def test_inspector_roundtrip(header: dict[str, object], claims: dict[str, object]) -> None:
    try:
        header_json = json.dumps(header).encode()
        claims_json = json.dumps(claims).encode()
    except ValueError:
        assume(False)
    token = f"{_b64url(header_json)}.{_b64url(claims_json)}.{_b64url(b'signature')}"

    decoded_header, decoded_claims = decode_unverified(token)

    assert decoded_header == json.loads(header_json)
    assert decoded_claims == json.loads(claims_json)


@settings(max_examples=300)
@given(claims=claim_sets, leeway=st.floats(0, 10**6))
def test_time_claims_documented(claims: dict[str, object], leeway: float) -> None:
    clock = FakeClock()
    try:
        check_time_claims(claims, clock=clock, leeway=leeway)
    except (ClockSkewError, InvalidTokenError):
        return


# -- header builders ----------------------------------------------------------------------


@given(value=secrets | plain_text)
def test_token_value_checked(value: str) -> None:
    try:
        token = Token(value)
    except InvalidTokenError as error:
        if MARKER in value:
            _assert_hidden(error, value)
        return
    assert _clean_header_value(token.value)
    if MARKER in value:
        assert value not in repr(token)


def _wire_headers(seen: list[httpx.Request]) -> Iterator[tuple[str, str]]:
    for request in seen:
        for name, value in request.headers.raw:
            yield name.decode("latin-1"), value.decode("latin-1")


def _recording_transport(seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    return httpx.MockTransport(handler)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(header=plain_text | st.just("Authorization"), scheme=st.none() | plain_text)
@pytest.mark.anyio
async def test_token_auth_header_checked(header: str, scheme: str | None) -> None:
    async def fetch() -> Token:
        return Token(MARKER + "token-value", expires_in=60)

    cache = TokenCache(fetch)
    try:
        auth = TokenAuth(cache, header=header, scheme=scheme)
    except TokenflightError:
        return
    seen: list[httpx.Request] = []
    async with httpx.AsyncClient(auth=auth, transport=_recording_transport(seen)) as client:
        await client.get("https://api.example/")

    for name, value in _wire_headers(seen):
        assert _clean_header_value(name)
        assert _clean_header_value(value)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(key=secrets, scheme=st.none() | st.sampled_from(["Bearer", "Token"]))
@pytest.mark.anyio
async def test_key_pool_header_checked(key: str, scheme: str | None) -> None:
    try:
        pool = KeyPool([key])
    except TokenflightError as error:
        _assert_hidden(error, key)
        return
    seen: list[httpx.Request] = []
    auth = KeyPoolAuth(pool, scheme=scheme)
    async with httpx.AsyncClient(auth=auth, transport=_recording_transport(seen)) as client:
        try:
            await client.get("https://api.example/")
        except TokenflightError as error:
            _assert_hidden(error, key)
            return

    for _, value in _wire_headers(seen):
        assert _clean_header_value(value)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    key_id=st.none() | plain_text,
    secret=secrets,
    session_token=st.none() | secrets,
    signer=st.sampled_from(["hmac", "sigv4"]),
)
@pytest.mark.anyio
async def test_signer_headers_checked(
    key_id: str | None, secret: str, session_token: str | None, signer: str
) -> None:
    # The session token is sent as a header, so a secret inside it would be sent too.
    assume(session_token is None or secret not in session_token)
    hidden = [secret] + ([session_token] if session_token is not None else [])
    try:
        credentials = Credentials(key_id, secret, session_token=session_token)
    except TokenflightError as error:
        _assert_hidden(error, *hidden)
        return
    auth: httpx.Auth
    if signer == "hmac":
        auth = HmacAuth(credentials)
    else:
        auth = SigV4Auth(credentials, region="eu-west-1", service="s3")
    seen: list[httpx.Request] = []
    async with httpx.AsyncClient(auth=auth, transport=_recording_transport(seen)) as client:
        try:
            await client.post("https://api.example/items", content=b"{}")
        except TokenflightError as error:
            _assert_hidden(error, *hidden)
            return

    for name, value in _wire_headers(seen):
        assert _clean_header_value(name)
        assert _clean_header_value(value)
        assert secret not in value


# -- the inspect command ------------------------------------------------------------------

inspect_inputs = (
    jwt_like
    | plain_text
    | st.builds(
        lambda header, claims: (
            f"{_b64url(json.dumps(header).encode())}."
            f"{_b64url(json.dumps(claims).encode())}.{MARKER}signature"
        ),
        st.dictionaries(plain_text, json_values, max_size=3),
        claim_sets,
    )
)


@settings(max_examples=300)
@given(token=inspect_inputs, as_json=st.booleans(), bearer=st.booleans())
def test_inspect_command_documented(token: str, as_json: bool, bearer: bool) -> None:
    # Standard output and error encode strictly as UTF-8, as a terminal or pipe would.
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    stdin = io.StringIO(("Bearer " if bearer else "") + token)
    args = argparse.Namespace(token_file=None, token_env=None, skew=30.0, json=as_json)

    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = run_inspect(args, clock=FakeClock(), stdin=stdin)
    stdout.flush()
    stderr.flush()

    assert status in (0, 1, 2)
    errors = stderr.buffer.getvalue().decode()
    assert "Traceback" not in errors
    if status != 0 and MARKER in token:
        assert token.strip() not in errors


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_inspect_lone_surrogate(as_json: bool) -> None:
    header = _b64url(b'{"alg": "none"}')
    claims = _b64url(b'{"sub": "\\ud800"}')
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    args = argparse.Namespace(token_file=None, token_env=None, skew=30.0, json=as_json)

    with contextlib.redirect_stdout(stdout):
        status = run_inspect(args, clock=FakeClock(), stdin=io.StringIO(f"{header}.{claims}.x"))
    stdout.flush()

    assert status in (0, 1)
