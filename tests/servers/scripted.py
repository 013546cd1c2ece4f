"""A scripted token endpoint for unit tests: an ``httpx.MockTransport`` that records requests.

Each request is parsed (method, URL, headers, form fields) and passed to a handler
function that returns the response. The handler may be async, so it can wait on a
FakeClock. Tests read ``requests`` to count endpoint calls and check what was sent.
"""

from __future__ import annotations

import inspect
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

TOKEN_URL = "https://idp.example/oauth2/token"


@dataclass(frozen=True)
class SentRequest:
    """One request the scripted endpoint received."""

    method: str
    url: str
    headers: httpx.Headers
    form: dict[str, list[str]]

    def field(self, name: str) -> str | None:
        """Return the single value of form field ``name``, or ``None``."""
        values = self.form.get(name)
        if not values:
            return None
        assert len(values) == 1, f"form field {name} repeated: {values}"
        return values[0]


Handler = Callable[[SentRequest], "httpx.Response | Awaitable[httpx.Response]"]


class ScriptedEndpoint:
    """Record requests and respond to them with ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[SentRequest] = []

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        body = (await request.aread()).decode("ascii", "replace")
        sent = SentRequest(
            method=request.method,
            url=str(request.url),
            headers=request.headers,
            form=urllib.parse.parse_qs(body, keep_blank_values=True),
        )
        self.requests.append(sent)
        result = self.handler(sent)
        if inspect.isawaitable(result):
            result = await result
        return result

    def client(self) -> httpx.AsyncClient:
        """Return a plain AsyncClient whose requests go to this endpoint."""
        return httpx.AsyncClient(transport=httpx.MockTransport(self._handle))


def token_json(
    access_token: str,
    *,
    expires_in: Any = 3600,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    """Return a JSON token response."""
    document: dict[str, Any] = {"access_token": access_token, "token_type": "Bearer"}
    if expires_in is not None:
        document["expires_in"] = expires_in
    document.update(fields)
    return httpx.Response(status, content=json.dumps(document).encode(), headers=_json(headers))


def error_json(
    error: str | None, *, status: int = 400, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    """Return an RFC 6749 section 5.2 error response."""
    document: dict[str, Any] = dict(fields)
    if error is not None:
        document["error"] = error
    return httpx.Response(status, content=json.dumps(document).encode(), headers=_json(headers))


def _json(headers: dict[str, str] | None) -> dict[str, str]:
    return {"Content-Type": "application/json", **(headers or {})}
