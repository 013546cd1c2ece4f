"""Token: immutable, compared by identity, validated on creation, never shows its secrets."""

from __future__ import annotations

import dataclasses
import hashlib
import pprint
import traceback
from typing import Any

import pytest

from tokenflight import InvalidTokenError, Token, TokenflightError, fingerprint

SECRET = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXZhbHVl.QmFzZTY0U2lnbmF0dXJl"
REFRESH = "8xLoxBtZp8-refresh-Gd5vK2mQ"


def make_token(value: str = SECRET, **fields: Any) -> Token:
    fields.setdefault("refresh_token", REFRESH)
    return Token(value, **fields)


def test_defaults() -> None:
    token = Token("abc")

    assert token.value == "abc"
    assert token.token_type == "Bearer"
    assert token.expires_in is None
    assert token.expires_at is None
    assert token.refresh_token is None
    assert token.scope is None
    assert dict(token.extra) == {}


def test_fields_kept() -> None:
    token = Token(
        "abc",
        token_type="DPoP",
        expires_in=3600,
        expires_at=1_700_003_600.5,
        refresh_token="def",
        scope="read write",
        extra={"id_token": "xyz"},
    )

    assert token.token_type == "DPoP"
    assert token.expires_in == 3600
    assert token.expires_at == 1_700_003_600.5
    assert token.refresh_token == "def"
    assert token.scope == "read write"
    assert token.extra["id_token"] == "xyz"


def test_frozen() -> None:
    token = make_token()

    with pytest.raises(dataclasses.FrozenInstanceError):
        token.value = "other"  # type: ignore[misc]


def test_extra_read_only_copy() -> None:
    extra = {"id_token": "xyz"}
    token = Token("abc", extra=extra)
    extra["id_token"] = "changed"

    assert token.extra["id_token"] == "xyz"
    with pytest.raises(TypeError):
        token.extra["id_token"] = "changed"  # type: ignore[index]


def test_compares_by_identity() -> None:
    first = Token("abc", expires_in=60)
    twin = Token("abc", expires_in=60)

    assert first == first
    assert first != twin
    assert len({first, twin}) == 2


def test_scopes_split() -> None:
    assert Token("abc", scope="read  write read").scopes == frozenset({"read", "write"})
    assert Token("abc").scopes == frozenset()


def test_fingerprint_is_hash_prefix() -> None:
    expected = hashlib.sha256(SECRET.encode()).hexdigest()[:8]

    assert fingerprint(SECRET) == expected
    assert make_token().fingerprint == expected


def test_repr_redacts_secrets() -> None:
    token = make_token(expires_in=3600, scope="read", extra={"id_token": "xyz"})
    text = repr(token)

    assert SECRET not in text
    assert REFRESH not in text
    assert "xyz" not in text
    assert token.fingerprint in text
    assert fingerprint(REFRESH) in text
    assert "expires_in=3600" in text
    assert "scope='read'" in text


@pytest.mark.parametrize(
    "render",
    [
        pytest.param(str, id="str"),
        pytest.param(repr, id="repr"),
        pytest.param(lambda token: f"{token}", id="f-string"),
        pytest.param(lambda token: f"{token!r}", id="f-string-repr"),
        pytest.param(lambda token: "%s" % (token,), id="percent"),  # noqa: UP031
        pytest.param(lambda token: "{}".format(token), id="format"),  # noqa: UP032
        pytest.param(pprint.pformat, id="pprint"),
        pytest.param(lambda token: pprint.pformat({"token": token, "list": [token]}), id="nested"),
        pytest.param(lambda token: repr(Exception(token)), id="in-exception"),
    ],
)
def test_renderings_redact_secrets(render: Any) -> None:
    text = render(make_token(expires_in=60))

    assert SECRET not in text
    assert REFRESH not in text
    assert "redacted" in text


def test_assertion_diff_redacts_secrets(request: pytest.FixtureRequest) -> None:
    """The explanation pytest prints for a failed ``==`` between tokens shows no secret."""
    left = make_token(expires_in=60)
    right = make_token(SECRET + "x", expires_in=61, refresh_token=REFRESH + "x")
    explanations = request.config.hook.pytest_assertrepr_compare(
        config=request.config, op="==", left=left, right=right
    )
    text = "\n".join("\n".join(lines) for lines in explanations if lines)

    assert "expires_in" in text or text == ""
    assert SECRET not in text
    assert REFRESH not in text


def test_failed_assert_message_redacts_secrets() -> None:
    left = make_token(expires_in=60)
    right = make_token(SECRET + "x", expires_in=60, refresh_token=REFRESH + "x")

    with pytest.raises(AssertionError) as caught:
        assert left == right

    assert SECRET not in str(caught.value)
    assert REFRESH not in str(caught.value)


def test_traceback_locals_redact_token() -> None:
    """A token held in a local shows only its redacted repr in a traceback with locals."""

    def fail_holding(token: Token) -> None:
        raise RuntimeError("request failed")

    with pytest.raises(RuntimeError) as caught:
        fail_holding(make_token(expires_in=60))
    formatted = "".join(
        traceback.TracebackException.from_exception(caught.value, capture_locals=True).format()
    )

    assert "token = Token(value=<redacted" in formatted
    assert SECRET not in formatted
    assert REFRESH not in formatted


def test_replace_validates() -> None:
    token = make_token()

    with pytest.raises(InvalidTokenError):
        dataclasses.replace(token, value=SECRET + "\n")


@pytest.mark.parametrize(
    "bad",
    ["\n", "\r", "\r\n", "\x00", "\t", "\x1f", "\x7f", "\u00e9", "\u2028", " \n"],
    ids=["lf", "cr", "crlf", "nul", "tab", "unit-separator", "del", "e-acute", "line-sep", "sp-lf"],
)
def test_value_unsafe_char_rejected(bad: str) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        Token(SECRET + bad)

    message = str(caught.value)
    assert SECRET not in message
    assert "token value" in message
    assert fingerprint(SECRET + bad) in message


@pytest.mark.parametrize("bad", ["\n", "\r", "\x00", "\u00e9"], ids=["lf", "cr", "nul", "e-acute"])
def test_refresh_token_unsafe_char_rejected(bad: str) -> None:
    with pytest.raises(InvalidTokenError) as caught:
        Token("abc", refresh_token=REFRESH + bad)

    assert REFRESH not in str(caught.value)
    assert "refresh token" in str(caught.value)


def test_token_type_unsafe_char_rejected() -> None:
    with pytest.raises(InvalidTokenError):
        Token("abc", token_type="Bearer\r\nX-Injected: 1")


def test_empty_value_rejected() -> None:
    with pytest.raises(InvalidTokenError, match="empty"):
        Token("")


def test_empty_refresh_token_rejected() -> None:
    with pytest.raises(InvalidTokenError, match="empty"):
        Token("abc", refresh_token="")


def test_non_str_value_rejected() -> None:
    value: Any = b"abc"

    with pytest.raises(InvalidTokenError, match="str"):
        Token(value)


@pytest.mark.parametrize("field", ["expires_in", "expires_at"])
@pytest.mark.parametrize(
    "bad",
    [-1, float("inf"), float("nan"), "3600", True, None.__class__],
    ids=["negative", "inf", "nan", "string", "bool", "type"],
)
def test_bad_expiry_rejected(field: str, bad: Any) -> None:
    with pytest.raises(InvalidTokenError, match=field):
        Token("abc", **{field: bad})


@pytest.mark.parametrize("good", [0, 3600, 3600.0, 0.5])
def test_numeric_expiry_accepted(good: float) -> None:
    assert Token("abc", expires_in=good).expires_in == good
    assert Token("abc", expires_at=good).expires_at == good


def test_invalid_token_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="control character"):
        Token("abc\n")
    assert issubclass(InvalidTokenError, TokenflightError)
