"""The token-response parser: every malformed response gives a clear error or a documented
default, never a crash and never a token cached for ever."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenflight import (
    ClockSkewError,
    OAuth2Error,
    PermanentRefreshError,
    ReauthenticationRequired,
    RefreshError,
    Token,
    TransientRefreshError,
    parse_token_response,
)
from tokenflight._oauth2_response import (
    DEFAULT_MAX_LIFETIME,
    JWT_BEARER_GRANT_TYPE,
    MAX_RETRY_AFTER,
    parse_retry_after,
)

ACCESS = "at-7f3a9c1e5b2d4f6a8c0e"
REFRESH = "rt-1b3d5f7h9j2l4n6p8r0t"
JSON_HEADERS = {"Content-Type": "application/json"}


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def parse(status: int, content: bytes, **kwargs: Any) -> Token:
    headers = kwargs.pop("headers", JSON_HEADERS)
    return parse_token_response(status, content, headers=headers, **kwargs)


def error_text(error: BaseException) -> str:
    """The message of an error and of every exception in its chain."""
    parts = []
    current: BaseException | None = error
    while current is not None:
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


# -- successful responses ----------------------------------------------------------


def test_minimal_response_is_bearer_token() -> None:
    token = parse(200, body(access_token=ACCESS))
    assert token.value == ACCESS
    assert token.token_type == "Bearer"
    assert token.expires_in is None
    assert token.refresh_token is None


def test_full_response_keeps_fields() -> None:
    token = parse(
        200,
        body(
            access_token=ACCESS,
            token_type="Bearer",
            expires_in=3600,
            refresh_token=REFRESH,
            scope="read write",
            id_token="eyJ.x.y",
        ),
    )
    assert token.expires_in == 3600.0
    assert token.refresh_token == REFRESH
    assert token.scope == "read write"
    assert dict(token.extra) == {"id_token": "eyJ.x.y"}


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [
        (3600, 3600.0),
        ("3600", 3600.0),
        (3600.0, 3600.0),
        (" 3600 ", 3600.0),
        ("1799.5", 1799.5),
        (0.25, 0.25),
    ],
)
def test_expires_in_forms_accepted(expires_in: object, expected: float) -> None:
    token = parse(200, body(access_token=ACCESS, expires_in=expires_in))
    assert token.expires_in == expected


def test_expires_in_missing_leaves_cache_default() -> None:
    token = parse(200, body(access_token=ACCESS, expires_in=None))
    assert token.expires_in is None


@pytest.mark.parametrize(
    "expires_in",
    ["soon", "", "-5", -5, 0, "0", True, [3600], {"s": 1}, "1e3", "0x10", "3600s", "inf"],
)
def test_expires_in_invalid_rejected(expires_in: object) -> None:
    with pytest.raises(RefreshError, match="expires_in") as caught:
        parse(200, body(access_token=ACCESS, expires_in=expires_in))
    assert type(caught.value) is RefreshError
    assert ACCESS not in error_text(caught.value)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_expires_in_non_finite_literal_rejected(literal: str) -> None:
    content = f'{{"access_token": "{ACCESS}", "expires_in": {literal}}}'.encode()
    with pytest.raises(RefreshError, match="not valid JSON"):
        parse(200, content)


@pytest.mark.parametrize("expires_in", [10**30, 1e308, str(10**20), 86400 * 365])
def test_expires_in_absurd_clamped(expires_in: object, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tokenflight"):
        token = parse(200, body(access_token=ACCESS, expires_in=expires_in))
    assert token.expires_in == DEFAULT_MAX_LIFETIME
    assert "keeping the token for at most" in caplog.text


def test_expires_in_clamped_to_given_maximum() -> None:
    token = parse(200, body(access_token=ACCESS, expires_in=7200), max_lifetime=600)
    assert token.expires_in == 600


@pytest.mark.parametrize(
    ("token_type", "expected"),
    [
        (None, "Bearer"),
        ("", "Bearer"),
        ("bearer", "Bearer"),
        ("BEARER", "Bearer"),
        ("DPoP", "DPoP"),
    ],
)
def test_token_type_normalized(token_type: object, expected: str) -> None:
    fields: dict[str, Any] = {"access_token": ACCESS}
    if token_type is not None:
        fields["token_type"] = token_type
    assert parse(200, body(**fields)).token_type == expected


@pytest.mark.parametrize("token_type", [5, ["Bearer"], {"a": 1}, False])
def test_token_type_non_string_rejected(token_type: object) -> None:
    with pytest.raises(RefreshError, match="token_type"):
        parse(200, body(access_token=ACCESS, token_type=token_type))


def test_refresh_token_empty_means_none() -> None:
    assert parse(200, body(access_token=ACCESS, refresh_token="")).refresh_token is None


def test_refresh_token_non_string_rejected() -> None:
    with pytest.raises(RefreshError, match="refresh_token"):
        parse(200, body(access_token=ACCESS, refresh_token=12345))


@pytest.mark.parametrize(
    ("scope", "expected"),
    [("read", "read"), (["read", "write"], "read write"), (42, None), ("", None), ([1], None)],
)
def test_scope_forms(scope: object, expected: str | None) -> None:
    assert parse(200, body(access_token=ACCESS, scope=scope)).scope == expected


def test_form_encoded_response_parsed() -> None:
    content = f"access_token={ACCESS}&token_type=bearer&expires_in=60".encode()
    token = parse(
        200, content, headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    )
    assert token.value == ACCESS
    assert token.token_type == "Bearer"
    assert token.expires_in == 60.0


def test_json_with_byte_order_mark_parsed() -> None:
    token = parse(200, b"\xef\xbb\xbf" + body(access_token=ACCESS))
    assert token.value == ACCESS


# -- malformed successful responses ----------------------------------------------------


def test_access_token_missing_names_fields() -> None:
    with pytest.raises(RefreshError, match="no access_token") as caught:
        parse(200, body(token=ACCESS, expires_in=60))
    message = str(caught.value)
    assert "'expires_in'" in message
    assert "'token'" in message
    assert ACCESS not in message


@pytest.mark.parametrize("access_token", ["", None, 12, ["x"]])
def test_access_token_not_string_rejected(access_token: object) -> None:
    with pytest.raises(RefreshError, match="access_token"):
        parse(200, body(access_token=access_token))


def test_access_token_with_newline_rejected_without_value() -> None:
    with pytest.raises(RefreshError, match="unusable token") as caught:
        parse(200, body(access_token=ACCESS + "\n"))
    assert ACCESS not in error_text(caught.value)


def test_html_page_rejected() -> None:
    page = b"<!DOCTYPE html><html><head><title>Sign in</title></head></html>"
    with pytest.raises(RefreshError, match="HTML") as caught:
        parse(200, page, headers={"Content-Type": "text/html; charset=utf-8"})
    assert type(caught.value) is RefreshError
    assert "token URL" in str(caught.value)


def test_html_without_content_type_rejected() -> None:
    with pytest.raises(RefreshError, match="HTML"):
        parse(200, b"  <html><body>maintenance</body></html>", headers={})


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty body"),
        (b"access_token=abc", "not valid JSON"),
        (b"[1, 2]", "JSON array"),
        (b'"token"', "JSON string"),
        (b"null", "JSON null"),
        (b"\xff\xfe{", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_body_not_json_object_rejected(content: bytes, problem: str) -> None:
    with pytest.raises(RefreshError, match=problem) as caught:
        parse(200, content)
    assert type(caught.value) is RefreshError


def test_error_field_in_success_status_raises() -> None:
    with pytest.raises(ReauthenticationRequired, match="invalid_grant"):
        parse(200, body(error="invalid_grant"))


# -- error responses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "fields", "grant_type", "expected"),
    [
        (400, {"error": "invalid_grant"}, "refresh_token", ReauthenticationRequired),
        (400, {"error": "invalid_grant"}, "client_credentials", ReauthenticationRequired),
        (400, {"error": "invalid_grant"}, JWT_BEARER_GRANT_TYPE, PermanentRefreshError),
        (401, {"error": "invalid_client"}, "client_credentials", PermanentRefreshError),
        (400, {"error": "invalid_scope"}, "client_credentials", PermanentRefreshError),
        (400, {"error": "unauthorized_client"}, "client_credentials", PermanentRefreshError),
        (400, {"error": "unsupported_grant_type"}, "refresh_token", PermanentRefreshError),
        (400, {"error": "invalid_target"}, "client_credentials", PermanentRefreshError),
        (400, {"error": "temporarily_unavailable"}, "client_credentials", TransientRefreshError),
        (400, {"error": "slow_down"}, "client_credentials", TransientRefreshError),
        (401, {}, "refresh_token", ReauthenticationRequired),
        (401, {}, "client_credentials", PermanentRefreshError),
        (403, {}, "client_credentials", PermanentRefreshError),
        (404, {}, "client_credentials", PermanentRefreshError),
        (408, {}, "client_credentials", TransientRefreshError),
        (429, {}, "client_credentials", TransientRefreshError),
        (500, {"error": "server_error"}, "client_credentials", TransientRefreshError),
        (502, {}, "refresh_token", TransientRefreshError),
        (503, {"error": "invalid_grant"}, "refresh_token", TransientRefreshError),
    ],
)
def test_error_response_mapped(
    status: int, fields: dict[str, Any], grant_type: str, expected: type[RefreshError]
) -> None:
    with pytest.raises(RefreshError) as caught:
        parse(status, body(**fields), grant_type=grant_type)
    assert type(caught.value) is expected
    cause = caught.value.__cause__
    assert isinstance(cause, OAuth2Error)
    assert cause.status_code == status
    assert cause.error == fields.get("error")


def test_error_response_names_code_and_description() -> None:
    content = body(error="invalid_client", error_description="client authentication failed")
    with pytest.raises(PermanentRefreshError) as caught:
        parse(401, content, grant_type="client_credentials", endpoint="https://idp.test/token?x=1")
    message = str(caught.value)
    assert "https://idp.test/token" in message
    assert "x=1" not in message
    assert "invalid_client" in message
    assert "client authentication failed" in message
    assert "check the client id" in message


def test_error_description_redacts_secrets() -> None:
    content = body(error="invalid_grant", error_description=f"refresh token {REFRESH} is revoked")
    with pytest.raises(ReauthenticationRequired) as caught:
        parse(400, content, grant_type="refresh_token", redact=[REFRESH])
    assert REFRESH not in error_text(caught.value)
    assert "refresh token *** is revoked" in str(caught.value)


def test_error_description_cleaned_and_shortened() -> None:
    content = body(error="invalid_request", error_description="bad\r\nInjected: yes " + "x" * 900)
    with pytest.raises(PermanentRefreshError) as caught:
        parse(400, content)
    cause = caught.value.__cause__
    assert isinstance(cause, OAuth2Error)
    assert cause.error_description is not None
    assert "\n" not in cause.error_description
    assert "\r" not in cause.error_description
    assert len(cause.error_description) <= 300


def test_redirect_rejected() -> None:
    with pytest.raises(PermanentRefreshError, match=r"redirect to https://idp\.test/new"):
        parse(302, b"", headers={"Location": "https://idp.test/new?secret=1"})


def test_html_error_page_is_transient() -> None:
    page = b"<html><body>502 Bad Gateway</body></html>"
    with pytest.raises(TransientRefreshError, match="HTML") as caught:
        parse(502, page, headers={"Content-Type": "text/html"})
    assert caught.value.retry_after is None


def test_too_many_requests_reads_retry_after() -> None:
    with pytest.raises(TransientRefreshError, match="retry after 30 s") as caught:
        parse(429, b"", headers={"Retry-After": "30"})
    assert caught.value.retry_after == 30.0


def test_service_unavailable_reads_retry_after_date() -> None:
    headers = {
        "Retry-After": "Wed, 15 Nov 2023 22:15:00 GMT",
        "Date": "Wed, 15 Nov 2023 22:13:20 GMT",
    }
    with pytest.raises(TransientRefreshError) as caught:
        parse(503, body(error="temporarily_unavailable"), headers=headers)
    assert caught.value.retry_after == 100.0


# -- clock skew ---------------------------------------------------------------------

SHORT_LIVED_MESSAGE = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)


def test_assertion_time_rejection_suspects_skew() -> None:
    content = body(error="invalid_grant", error_description=SHORT_LIVED_MESSAGE)
    with pytest.raises(RefreshError) as caught:
        parse(400, content, grant_type=JWT_BEARER_GRANT_TYPE, signed_assertion=True)
    assert type(caught.value) is RefreshError
    assert "Clock skew suspected" in str(caught.value)
    assert "reasonable timeframe" in str(caught.value)
    skew = caught.value.__cause__
    assert isinstance(skew, ClockSkewError)
    assert isinstance(skew.__cause__, OAuth2Error)


def test_client_assertion_time_rejection_suspects_skew() -> None:
    content = body(error="invalid_client", error_description="client assertion is expired")
    with pytest.raises(RefreshError) as caught:
        parse(401, content, grant_type="client_credentials", signed_assertion=True)
    assert isinstance(caught.value.__cause__, ClockSkewError)


def test_refresh_expiry_is_not_skew() -> None:
    content = body(error="invalid_grant", error_description="refresh token expired")
    with pytest.raises(ReauthenticationRequired) as caught:
        parse(400, content, grant_type="refresh_token", signed_assertion=True)
    assert isinstance(caught.value.__cause__, OAuth2Error)


def test_time_words_without_assertion_not_skew() -> None:
    content = body(error="invalid_grant", error_description=SHORT_LIVED_MESSAGE)
    with pytest.raises(PermanentRefreshError) as caught:
        parse(400, content, grant_type=JWT_BEARER_GRANT_TYPE)
    assert not isinstance(caught.value.__cause__, ClockSkewError)


# -- Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("120", 120.0),
        ("99999999", MAX_RETRY_AFTER),
        ("-5", None),
        ("soon", None),
        ("1.5", None),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_date_against_now() -> None:
    retry_at = "Wed, 15 Nov 2023 22:15:00 GMT"
    now = 1_700_086_400.0 - 60.0  # 22:13:20 GMT minus a minute
    assert parse_retry_after(retry_at, now=now) == 160.0


def test_retry_after_date_in_past_is_zero() -> None:
    headers_date = "Wed, 15 Nov 2023 22:15:00 GMT"
    assert parse_retry_after("Wed, 15 Nov 2023 22:00:00 GMT", date=headers_date) == 0.0


def test_retry_after_date_without_reference_unusable() -> None:
    assert parse_retry_after("Wed, 15 Nov 2023 22:15:00 GMT") is None


# -- properties over generated responses -------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(["3600", "3600.0", " 60 ", "-1", "0", "1e9", "bearer", "Bearer", "mac"]),
)
statuses = st.sampled_from([200, 201, 204, 301, 302, 400, 401, 403, 404, 408, 429, 500, 503])
secret_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=12, max_size=40
)


@st.composite
def token_responses(draw: st.DrawFn) -> tuple[int, dict[str, Any], str]:
    secret = "S3cr3t" + draw(secret_values)
    fields: dict[str, Any] = draw(
        st.dictionaries(
            st.sampled_from(
                ["token_type", "expires_in", "refresh_token", "scope", "error", "extra"]
            ),
            field_values,
            max_size=5,
        )
    )
    if draw(st.booleans()):
        fields["access_token"] = draw(st.one_of(st.just(secret), field_values))
    if draw(st.booleans()):
        fields["refresh_token"] = secret
    if draw(st.booleans()):
        fields["error_description"] = f"rejected {secret}"
    return draw(statuses), fields, secret


def _dumps(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, allow_nan=True).encode()


@settings(max_examples=400, deadline=None)
@given(token_responses())
def test_parser_returns_token_or_refresh_error(response: tuple[int, dict[str, Any], str]) -> None:
    status, fields, secret = response
    try:
        token = parse(status, _dumps(fields), redact=[secret])
    except RefreshError as error:
        message = error_text(error)
    else:
        message = ""
        assert isinstance(token, Token)
        assert 200 <= status < 300
        assert token.value == fields["access_token"]
    assert secret not in message


@settings(max_examples=400, deadline=None)
@given(token_responses())
def test_parsed_lifetime_is_bounded(response: tuple[int, dict[str, Any], str]) -> None:
    _, fields, secret = response
    fields["access_token"] = secret
    try:
        token = parse(200, _dumps(fields), redact=[secret])
    except RefreshError:
        return
    if token.expires_in is not None:
        assert math.isfinite(token.expires_in)
        assert 0 < token.expires_in <= DEFAULT_MAX_LIFETIME


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), statuses, st.sampled_from(["application/json", "text/html", ""]))
def test_parser_survives_arbitrary_bytes(content: bytes, status: int, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    with contextlib.suppress(RefreshError):
        parse(status, content, headers=headers)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.none(), st.text(max_size=40)),
    st.one_of(st.none(), st.text(max_size=40)),
    st.floats(allow_nan=True, allow_infinity=True) | st.none(),
)
def test_retry_after_bounded(value: str | None, date: str | None, now: float | None) -> None:
    seconds = parse_retry_after(value, date=date, now=now)
    if seconds is not None:
        assert 0.0 <= seconds <= MAX_RETRY_AFTER
