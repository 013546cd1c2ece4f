"""No public object, error or log line shows a secret it holds.

Every public object that can hold a secret is rendered the ways programs print objects:
``repr``, ``str``, f-strings, ``%`` formatting, :mod:`pprint` (also nested in a
container), :mod:`reprlib`, a pytest assertion message, and a traceback with local
variables. Errors raised on secret-bearing input are formatted with their whole chain.
Each rendering is checked for every secret the object was built with, in raw,
URL-encoded and base64 form (see ``tests/secret_guard.py``). The last tests check the
secret guard plugin itself.
"""

from __future__ import annotations

import base64
import json
import logging
import pprint
import reprlib
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from secret_guard import SecretGuard, register_secret
from tokenflight import (
    AuthClient,
    ClientCredentials,
    ConfigurationError,
    Credentials,
    HmacAuth,
    HmacVerifier,
    InvalidTokenError,
    JwtBearerGrant,
    JwtSigner,
    JwtSource,
    KeyLease,
    KeyPool,
    KeyPoolAuth,
    PermanentRefreshError,
    PoolKey,
    RefreshError,
    RefreshTokenGrant,
    SigV4Auth,
    Token,
    TokenAuth,
    TokenCache,
    load_signing_key,
    parse_token_response,
)

TOKEN_VALUE = "at-secret-0f9a8b7c6d5e4f3a"
REFRESH_TOKEN = "rt-secret-1a2b3c4d5e6f7a8b"
CLIENT_SECRET = "cs-secret-9z8y7x6w5v4u3t"
HMAC_SECRET = "hmac-secret-5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a"
API_KEY = "ak-secret-7h6g5f4e3d2c1b0a"
SESSION_TOKEN = "st-secret-2p3q4r5s6t7u8v9w"
PASSPHRASE = "pem-passphrase-4k3j2h1g"

_EC_KEY = ec.generate_private_key(ec.SECP256R1())
PRIVATE_PEM = _EC_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()
ENCRYPTED_PEM = _EC_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.BestAvailableEncryption(PASSPHRASE.encode()),
).decode()
_PRIVATE_NUMBER = _EC_KEY.private_numbers().private_value
# The forms in which the private key's material could be printed: the PEM body lines,
# the private number in decimal and hex, and the JWK "d" member.
KEY_MATERIAL = (
    *[line for line in PRIVATE_PEM.splitlines() if line and not line.startswith("-----")],
    str(_PRIVATE_NUMBER),
    f"{_PRIVATE_NUMBER:x}",
    base64.urlsafe_b64encode(_PRIVATE_NUMBER.to_bytes(32, "big")).rstrip(b"=").decode(),
)

# pytester runs a test file in a subprocess to show the guard failing a test.
pytest_plugins = ["pytester"]

ALL_SECRETS = (
    TOKEN_VALUE,
    REFRESH_TOKEN,
    CLIENT_SECRET,
    HMAC_SECRET,
    API_KEY,
    SESSION_TOKEN,
    PASSPHRASE,
    *KEY_MATERIAL,
)


def _renderings(obj: object) -> Iterator[tuple[str, str]]:
    yield "repr", repr(obj)
    yield "str", str(obj)
    yield "f-string", f"{obj} {obj!r}"
    yield "% format", "%s %r" % (obj, obj)  # noqa: UP031 - the old style is what is tested
    yield "pprint", pprint.pformat(obj)
    yield "pprint nested", pprint.pformat({"object": [obj, (obj,)]}, width=40)
    yield "reprlib", reprlib.repr(obj)


def _leaks(guard: SecretGuard, text: str, where: str) -> list[str]:
    before = len(guard.leaks)
    guard.check_text(text, where)
    return [f"secret #{leak.secret_number} in {leak.where}" for leak in guard.leaks[before:]]


def _check_object(obj: object) -> list[str]:
    guard = SecretGuard()
    guard.register(*ALL_SECRETS)
    found: list[str] = []
    for where, text in _renderings(obj):
        found += _leaks(guard, text, f"{type(obj).__name__} {where}")
    return found


def _check_error(error: BaseException) -> list[str]:
    guard = SecretGuard()
    guard.register(*ALL_SECRETS)
    formatted = "".join(traceback.format_exception(error))
    found = _leaks(guard, formatted, f"{type(error).__name__} traceback")
    found += _leaks(guard, repr(error), f"{type(error).__name__} repr")
    cause = error.__cause__
    while cause is not None:
        found += _leaks(guard, repr(cause), f"cause {type(cause).__name__} repr")
        cause = cause.__cause__
    return found


# -- objects --------------------------------------------------------------------------


def _signing_key() -> object:
    return load_signing_key(PRIVATE_PEM, algorithm="ES256", kid="key-1")


def _encrypted_signing_key() -> object:
    return load_signing_key(ENCRYPTED_PEM, algorithm="ES256", password=PASSPHRASE)


def _hmac_signing_key() -> object:
    return load_signing_key(HMAC_SECRET.encode(), algorithm="HS256")


def _jwt_signer() -> JwtSigner:
    return JwtSigner(load_signing_key(PRIVATE_PEM, algorithm="ES256"))


def _jwt_source() -> object:
    return JwtSource(_jwt_signer(), issuer="issuer", subject="subject", lifetime=300)


def _signed_jwt() -> object:
    return _jwt_signer().issue({"sub": "subject"}, lifetime=300)


def _client_credentials() -> ClientCredentials:
    return ClientCredentials(
        "https://idp.example/token", "client-id", client_secret=CLIENT_SECRET, scope="read"
    )


def _client_credentials_post() -> object:
    return ClientCredentials(
        "https://idp.example/token",
        "client-id",
        client_secret=CLIENT_SECRET,
        auth_method="client_secret_post",
    )


def _client_credentials_key() -> object:
    return ClientCredentials(
        "https://idp.example/token",
        "client-id",
        signing_key=load_signing_key(PRIVATE_PEM, algorithm="ES256"),
    )


def _refresh_grant() -> object:
    return RefreshTokenGrant(
        "https://idp.example/token",
        "client-id",
        refresh_token=REFRESH_TOKEN,
        client_secret=CLIENT_SECRET,
    )


def _jwt_bearer_grant() -> object:
    return JwtBearerGrant(
        "https://idp.example/token",
        signing_key=load_signing_key(PRIVATE_PEM, algorithm="ES256"),
        issuer="service@example",
        client_id="client-id",
        client_secret=CLIENT_SECRET,
    )


def _token() -> Token:
    return Token(TOKEN_VALUE, expires_in=60, refresh_token=REFRESH_TOKEN, extra={"id": "x"})


def _credentials() -> Credentials:
    return Credentials("key-id", HMAC_SECRET, session_token=SESSION_TOKEN)


async def _fetch_token() -> Token:
    return _token()


def _cache() -> TokenCache:
    return TokenCache(_client_credentials())


def _cache_callable() -> TokenCache:
    return TokenCache(_fetch_token)


def _token_auth() -> object:
    return TokenAuth(_cache())


def _auth_client() -> object:
    return AuthClient(_cache(), base_url="https://api.example")


def _key_pool() -> KeyPool:
    return KeyPool([API_KEY, PoolKey(Credentials(None, HMAC_SECRET), bucket="project")])


OBJECTS: dict[str, Callable[[], object]] = {
    "Token": _token,
    "Credentials": _credentials,
    "PoolKey": lambda: PoolKey(API_KEY, bucket="p1"),
    "KeyPool": _key_pool,
    "KeyPoolAuth": lambda: KeyPoolAuth(_key_pool()),
    "KeyLease": lambda: KeyLease(_credentials(), token=_token()),
    "HmacAuth": lambda: HmacAuth(_credentials()),
    "HmacVerifier": lambda: HmacVerifier({"key-id": HMAC_SECRET}),
    "SigV4Auth": lambda: SigV4Auth(_credentials(), region="eu-west-1", service="s3"),
    "SigningKey": _signing_key,
    "SigningKey encrypted": _encrypted_signing_key,
    "SigningKey HS256": _hmac_signing_key,
    "JwtSigner": _jwt_signer,
    "JwtSource": _jwt_source,
    "SignedJwt": _signed_jwt,
    "ClientCredentials": _client_credentials,
    "ClientCredentials post": _client_credentials_post,
    "ClientCredentials key": _client_credentials_key,
    "RefreshTokenGrant": _refresh_grant,
    "JwtBearerGrant": _jwt_bearer_grant,
    "TokenCache": _cache,
    "TokenCache callable": _cache_callable,
    "TokenAuth": _token_auth,
    "AuthClient": _auth_client,
}


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_object_renderings_hide_secrets(name: str) -> None:
    obj = OBJECTS[name]()

    assert _check_object(obj) == []


def test_signed_jwt_value_hidden() -> None:
    signed = _signed_jwt()
    value = getattr(signed, "value")  # noqa: B009 - the object is typed as object above

    assert value not in repr(signed)
    assert value not in str(signed)


@pytest.mark.anyio
async def test_cache_holding_token_hides_it() -> None:
    cache = TokenCache(_fetch_token)
    token = await cache.get()

    assert token.value == TOKEN_VALUE
    assert _check_object(cache) == []
    assert _check_object(cache.statistics()) == []


def test_assertion_message_hides_token() -> None:
    first, second = _token(), _token()

    with pytest.raises(AssertionError) as raised:
        assert first == second  # tokens compare by identity, so this fails

    message = str(raised.value)
    assert "Token(" in message
    assert TOKEN_VALUE not in message
    assert REFRESH_TOKEN not in message


def test_assertion_message_hides_credentials() -> None:
    first, second = _credentials(), _credentials()

    with pytest.raises(AssertionError) as raised:
        assert first == second

    message = str(raised.value)
    assert HMAC_SECRET not in message
    assert SESSION_TOKEN not in message


def _raise_with_locals(token: Token, credentials: Credentials) -> None:
    pair = (token, credentials)
    msg = f"failed with {len(pair)} objects"
    raise RuntimeError(msg)


def test_traceback_locals_hide_objects() -> None:
    # Tracebacks that show local variables (pytest --showlocals, error trackers) render
    # them with repr(), so a Token or Credentials local shows its fingerprint only.
    try:
        _raise_with_locals(_token(), _credentials())
    except RuntimeError as error:
        formatted = "".join(
            traceback.TracebackException.from_exception(error, capture_locals=True).format()
        )
    assert "Token(value=<redacted" in formatted
    for secret in (TOKEN_VALUE, REFRESH_TOKEN, HMAC_SECRET, SESSION_TOKEN):
        assert secret not in formatted


# -- errors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _ErrorCase:
    build: Callable[[], object]
    error: type[BaseException]


def _response(body: dict[str, object], status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps(body).encode()


ERROR_CASES: dict[str, _ErrorCase] = {
    "token with LF": _ErrorCase(lambda: Token(TOKEN_VALUE + "\n"), InvalidTokenError),
    "token with CR LF inside": _ErrorCase(
        lambda: Token(TOKEN_VALUE[:8] + "\r\n" + TOKEN_VALUE[8:]), InvalidTokenError
    ),
    "token with non-ASCII": _ErrorCase(lambda: Token(TOKEN_VALUE + "é"), InvalidTokenError),
    "refresh token with CR": _ErrorCase(
        lambda: Token(TOKEN_VALUE, refresh_token=REFRESH_TOKEN + "\r"), InvalidTokenError
    ),
    "session token with LF": _ErrorCase(
        lambda: Credentials("key-id", HMAC_SECRET, session_token=SESSION_TOKEN + "\n"),
        InvalidTokenError,
    ),
    "response with CR LF token": _ErrorCase(
        lambda: parse_token_response(*_response({"access_token": TOKEN_VALUE + "\r\nX: 1"})),
        RefreshError,
    ),
    "response with bad expires_in": _ErrorCase(
        lambda: parse_token_response(
            *_response({"access_token": TOKEN_VALUE, "expires_in": "soon"})
        ),
        RefreshError,
    ),
    "response with bad refresh token": _ErrorCase(
        lambda: parse_token_response(
            *_response({"access_token": TOKEN_VALUE, "refresh_token": 12345})
        ),
        RefreshError,
    ),
    "error echoing the client secret": _ErrorCase(
        lambda: parse_token_response(
            *_response(
                {"error": "invalid_client", "error_description": f"bad secret {CLIENT_SECRET}"},
                401,
            ),
            redact=[CLIENT_SECRET],
        ),
        PermanentRefreshError,
    ),
    "error echoing the refresh token": _ErrorCase(
        lambda: parse_token_response(
            *_response(
                {"error": "invalid_grant", "error_description": f"{REFRESH_TOKEN} revoked"},
                400,
            ),
            grant_type="refresh_token",
            redact=[REFRESH_TOKEN],
        ),
        PermanentRefreshError,
    ),
    "encrypted key without password": _ErrorCase(
        lambda: load_signing_key(ENCRYPTED_PEM, algorithm="ES256"), ConfigurationError
    ),
    "encrypted key with wrong password": _ErrorCase(
        lambda: load_signing_key(ENCRYPTED_PEM, algorithm="ES256", password=PASSPHRASE + "x"),
        ConfigurationError,
    ),
    "key for the wrong algorithm": _ErrorCase(
        lambda: load_signing_key(PRIVATE_PEM, algorithm="RS256"), ConfigurationError
    ),
    "HMAC secret too short": _ErrorCase(
        lambda: load_signing_key(HMAC_SECRET[:20].encode(), algorithm="HS512"),
        ConfigurationError,
    ),
}


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_error_hides_secrets(name: str) -> None:
    case = ERROR_CASES[name]

    with pytest.raises(case.error) as raised:
        case.build()

    assert _check_error(raised.value) == []


def _token_endpoint(status: int, body: dict[str, object]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handler)


@pytest.mark.anyio
async def test_source_error_hides_echoed_secret() -> None:
    transport = _token_endpoint(
        401, {"error": "invalid_client", "error_description": f"secret {CLIENT_SECRET} wrong"}
    )
    async with httpx.AsyncClient(transport=transport) as http:
        source = ClientCredentials(
            "https://idp.example/token",
            "client-id",
            client_secret=CLIENT_SECRET,
            auth_method="client_secret_post",
            http_client=http,
        )
        cache = TokenCache(source)

        with pytest.raises(PermanentRefreshError) as raised:
            await cache.get()

    assert _check_error(raised.value) == []


@pytest.mark.anyio
async def test_refresh_grant_error_hides_token() -> None:
    transport = _token_endpoint(
        400, {"error": "invalid_grant", "error_description": f"token {REFRESH_TOKEN} is revoked"}
    )
    async with httpx.AsyncClient(transport=transport) as http:
        source = RefreshTokenGrant(
            "https://idp.example/token",
            "client-id",
            refresh_token=REFRESH_TOKEN,
            client_secret=CLIENT_SECRET,
            http_client=http,
        )

        with pytest.raises(PermanentRefreshError) as raised:
            await TokenCache(source).get()

    assert _check_error(raised.value) == []


# -- logs -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_debug_logs_hide_secrets(caplog: pytest.LogCaptureFixture) -> None:
    # One refresh, a rejected token, a second refresh and requests, all at DEBUG. The
    # secret guard fails the test on a leak too; the asserts below make it fail alone.
    register_secret(CLIENT_SECRET)
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []

    def identity_provider(request: httpx.Request) -> httpx.Response:
        value = f"{TOKEN_VALUE}-{len(issued)}"
        issued.append(value)
        register_secret(value)
        return httpx.Response(200, json={"access_token": value, "expires_in": 60})

    def api(request: httpx.Request) -> httpx.Response:
        if request.headers["authorization"] == f"Bearer {issued[0]}":
            return httpx.Response(401, headers={"www-authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(identity_provider)) as http:
        source = ClientCredentials(
            "https://idp.example/token", "client-id", client_secret=CLIENT_SECRET, http_client=http
        )
        async with AuthClient(
            source, base_url="https://api.example", transport=httpx.MockTransport(api)
        ) as client:
            responses = [await client.get("/orders") for _ in range(5)]

    assert [response.status_code for response in responses] == [200] * 5
    assert len(issued) == 2
    text = caplog.text + "".join(repr(record.args) for record in caplog.records)
    assert caplog.records
    for secret in (CLIENT_SECRET, *issued):
        assert secret not in text
    basic = base64.b64encode(f"client-id:{CLIENT_SECRET}".encode()).decode()
    assert basic not in text


@pytest.mark.anyio
async def test_signer_logs_hide_secrets(caplog: pytest.LogCaptureFixture) -> None:
    register_secret(HMAC_SECRET, SESSION_TOKEN, API_KEY)
    caplog.set_level(logging.DEBUG)

    def api(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    transport = httpx.MockTransport(api)
    for auth in (
        HmacAuth(_credentials()),
        SigV4Auth(_credentials(), region="eu-west-1", service="s3"),
        KeyPoolAuth(KeyPool([API_KEY])),
    ):
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            response = await client.post("https://api.example/items", content=b"{}")
        assert response.status_code == 200

    text = caplog.text + "".join(repr(record.args) for record in caplog.records)
    for secret in (HMAC_SECRET, SESSION_TOKEN, API_KEY):
        assert secret not in text


# -- the secret guard plugin ----------------------------------------------------------

_guard_logger = logging.getLogger("tokenflight.secret_guard_test")


def _raise(error: Exception) -> None:
    raise error


def test_guard_catches_debug_record() -> None:
    guard = SecretGuard()
    guard.register(TOKEN_VALUE)
    with guard.install():
        _guard_logger.debug("token %s", TOKEN_VALUE)

    assert len(guard.leaks) >= 1
    assert TOKEN_VALUE not in guard.report()


def test_guard_catches_encoded_forms() -> None:
    guard = SecretGuard()
    guard.register(CLIENT_SECRET)
    basic = base64.b64encode(f"client-id:{CLIENT_SECRET}".encode()).decode()
    with guard.install():
        logging.getLogger("httpx").warning("Authorization: Basic %s", basic)
        logging.getLogger("httpx").warning("body client_secret=%s", CLIENT_SECRET.upper())

    assert [leak.where for leak in guard.leaks] == [
        "log record httpx:WARNING (message)",
        "log record httpx:WARNING (argument)",
        "log record httpx:WARNING (argument)",
    ]


def test_guard_catches_exception_text() -> None:
    guard = SecretGuard()
    guard.register(REFRESH_TOKEN)
    with guard.install():
        try:
            _raise(ValueError(REFRESH_TOKEN))
        except ValueError:
            logging.getLogger("tokenflight").exception("refresh failed")

    assert any("exception" in leak.where for leak in guard.leaks)


def test_guard_keeps_levels(caplog: pytest.LogCaptureFixture) -> None:
    # The guard checks DEBUG records of the tokenflight loggers, but handlers such as
    # caplog still get only what the configured level lets through.
    caplog.set_level(logging.WARNING)
    guard = SecretGuard()
    guard.register(TOKEN_VALUE)
    with guard.install():
        _guard_logger.debug("quiet %s", TOKEN_VALUE)
        _guard_logger.warning("loud")

    assert [record.getMessage() for record in caplog.records] == ["loud"]
    assert guard.records_checked == 2
    assert len(guard.leaks) >= 1


def test_guard_without_secrets_passes() -> None:
    guard = SecretGuard()
    with guard.install():
        _guard_logger.warning("anything %s", TOKEN_VALUE)

    assert guard.leaks == []
    assert guard.records_checked == 1


def test_guard_rejects_short_secret() -> None:
    with pytest.raises(ValueError, match="at least 6 characters"):
        SecretGuard().register("abc")


def test_guard_restores_logger() -> None:
    logger = logging.getLogger("tokenflight")
    before = vars(logger).get("handle")
    with SecretGuard().install(), SecretGuard().install():
        pass

    assert vars(logger).get("handle") is before


class _LeakyRepr:
    def __repr__(self) -> str:
        return f"_LeakyRepr(secret={CLIENT_SECRET!r})"


def test_object_check_finds_leak() -> None:
    found = _check_object(_LeakyRepr())

    assert "secret #3 in _LeakyRepr repr" in found


def test_error_check_finds_leak_in_cause() -> None:
    try:
        try:
            _raise(KeyError(SESSION_TOKEN))
        except KeyError as cause:
            msg = "wrapped"
            raise RuntimeError(msg) from cause
    except RuntimeError as error:
        found = _check_error(error)

    assert found


_FAILING_TEST = """
import logging

from secret_guard import register_secret


def test_logs_its_secret():
    register_secret("very-secret-value-123")
    logging.getLogger("tokenflight").debug("value=%s", "very-secret-value-123")


def test_logs_nothing_secret():
    register_secret("other-secret-value-456")
    logging.getLogger("tokenflight").debug("nothing here")


def test_registers_nothing():
    logging.getLogger("tokenflight").warning("very-secret-value-123")
"""


def test_guard_fails_leaking_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        'pytest_plugins = ["secret_guard"]\n'
    )
    pytester.makepyfile(_FAILING_TEST)

    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")

    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*secret #1 in log record tokenflight:DEBUG*"])
    result.stdout.no_fnmatch_line("*very-secret-value-123*")
