"""The demo's embedded servers: an OAuth2 token endpoint and a protected API.

Both are plain ASGI applications served by hypercorn, which runs on asyncio and on trio,
each on its own port of 127.0.0.1. The token endpoint implements the client credentials
grant with HTTP Basic client authentication (RFC 6749 sections 2.3.1 and 4.4). The API
accepts a bearer token only while the token registry lists it as valid.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import math
import secrets
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

__all__ = ["ProtectedApi", "TokenEndpoint", "TokenRegistry", "serve"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# Bodies larger than this are rejected; a token request is a few hundred bytes.
MAX_BODY_SIZE = 64 * 1024
REALM = "tokenflight-demo"


class TokenRegistry:
    """The access tokens the API accepts, with their expiry on the monotonic clock.

    The embedded token endpoint adds each token it issues. With an external token
    endpoint, the demo's client adds each token it receives, because the embedded API
    has no other way to check tokens it did not issue.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self.issued = 0

    def add(self, value: str, lifetime: float | None) -> None:
        """Accept ``value`` for ``lifetime`` seconds from now (``None``: until revoked)."""
        now = self._clock()
        self._tokens[value] = math.inf if lifetime is None else now + lifetime
        self.issued += 1
        # Forget expired tokens, so a long run does not grow the table without bound.
        if len(self._tokens) > 1024:
            self._tokens = {key: end for key, end in self._tokens.items() if end > now}

    def accepts(self, value: str) -> bool:
        """Return whether ``value`` is a known token, not expired and not revoked."""
        expires_at = self._tokens.get(value)
        return expires_at is not None and self._clock() < expires_at

    def revoke(self, value: str) -> None:
        """Reject ``value`` from now on, as a token revocation (RFC 7009) would."""
        self._tokens.pop(value, None)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_SIZE:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    payload: object,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = json.dumps(payload).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class TokenEndpoint:
    """An OAuth2 token endpoint for the client credentials grant, at ``POST /token``.

    The client authenticates with HTTP Basic, its id and secret form-encoded first as
    RFC 6749 section 2.3.1 requires. Each token is an opaque random string that lives
    ``lifetime`` seconds. Each response is delayed by ``latency`` seconds, so concurrent
    refreshes would overlap, as they do against a real identity provider.

    :param registry: where issued tokens are recorded for the API to check.
    :param client_id: the one client this endpoint knows.
    :param client_secret: that client's secret.
    :param lifetime: the ``expires_in`` of every token, in seconds.
    :param latency: delay before each answer, in seconds.
    """

    def __init__(
        self,
        registry: TokenRegistry,
        *,
        client_id: str,
        client_secret: str,
        lifetime: float,
        latency: float = 0.02,
    ) -> None:
        self._registry = registry
        self._client_id = client_id.encode("utf-8")
        self._client_secret = client_secret.encode("utf-8")
        self._lifetime = lifetime
        self._latency = latency
        self.requests = 0
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self.requests += 1
        if scope["path"] != "/token":
            await _respond(send, 404, {"error": "not_found"})
            return
        if scope["method"] != "POST":
            await _respond(send, 405, {"error": "invalid_request"}, [(b"allow", b"POST")])
            return

        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, {"error": "invalid_request"})
            return
        if not self._client_is_valid(_header(scope, b"authorization")):
            self.rejected += 1
            challenge = f'Basic realm="{REALM}"'.encode("ascii")
            await _respond(
                send, 401, {"error": "invalid_client"}, [(b"www-authenticate", challenge)]
            )
            return
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if form.get("grant_type") != ["client_credentials"]:
            await _respond(send, 400, {"error": "unsupported_grant_type"})
            return

        await anyio.sleep(self._latency)
        value = secrets.token_urlsafe(32)
        self._registry.add(value, self._lifetime)
        answer: dict[str, object] = {
            "access_token": value,
            "token_type": "Bearer",
            "expires_in": self._lifetime,
        }
        if "scope" in form:
            answer["scope"] = form["scope"][0]
        await _respond(send, 200, answer)

    def _client_is_valid(self, authorization: str | None) -> bool:
        if authorization is None or not authorization.lower().startswith("basic "):
            return False
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, _, client_secret = decoded.partition(":")
        given_id = urllib.parse.unquote_plus(client_id).encode("utf-8")
        given_secret = urllib.parse.unquote_plus(client_secret).encode("utf-8")
        # Compare both in constant time, and both always, so timing reveals neither.
        id_ok = hmac.compare_digest(given_id, self._client_id)
        secret_ok = hmac.compare_digest(given_secret, self._client_secret)
        return id_ok and secret_ok


class ProtectedApi:
    """An API that serves ``GET /items/<n>`` to requests with a valid bearer token.

    A request without a valid token gets 401 with a ``WWW-Authenticate: Bearer`` challenge,
    carrying ``error="invalid_token"`` when a token was sent (RFC 6750 section 3.1).

    :param registry: the tokens to accept.
    """

    def __init__(self, registry: TokenRegistry) -> None:
        self._registry = registry
        self.requests = 0
        self.successes = 0
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self.requests += 1
        authorization = _header(scope, b"authorization")
        token = None
        if authorization is not None and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        if token is None or not self._registry.accepts(token):
            self.rejected += 1
            challenge = f'Bearer realm="{REALM}"'
            if token is not None:
                challenge += ', error="invalid_token"'
            await _respond(
                send,
                401,
                {"error": "invalid_token" if token is not None else "unauthorized"},
                [(b"www-authenticate", challenge.encode("ascii"))],
            )
            return

        path: str = scope["path"]
        if scope["method"] != "GET" or not path.startswith("/items/"):
            await _respond(send, 404, {"error": "not_found"})
            return
        self.successes += 1
        await _respond(send, 200, {"item": path.removeprefix("/items/")})


def _listen_on_loopback(backlog: int) -> tuple[int, int]:
    """Open a listening socket on a free port of 127.0.0.1; return (port, file descriptor).

    The caller takes over the descriptor: hypercorn closes it when it stops serving.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(backlog)
        port = listener.getsockname()[1]
    except BaseException:
        listener.close()
        raise
    return port, listener.detach()


@asynccontextmanager
async def serve(apps: Sequence[App], *, backend: str) -> AsyncIterator[list[str]]:
    """Serve each app on its own free port of 127.0.0.1 while the block runs.

    Yields the base URL of each app (``http://127.0.0.1:<port>``), in order. Leaving the
    block shuts the servers down gracefully and waits until they have stopped.

    :param backend: ``"asyncio"`` or ``"trio"``, the event loop this runs in.
    :raises ImportError: when hypercorn (or, for trio, trio) is not installed.
    """
    from hypercorn.config import Config

    hypercorn_serve: Callable[..., Coroutine[Any, Any, None]]
    if backend == "trio":
        from hypercorn.trio import serve as hypercorn_serve
    else:
        from hypercorn.asyncio import serve as hypercorn_serve

    backlog = 2048
    stop = anyio.Event()
    urls: list[str] = []
    # An error of the block is raised after the servers have stopped, outside their task
    # group, so that it reaches the caller as itself and not inside an ExceptionGroup.
    block_error: Exception | None = None
    async with anyio.create_task_group() as task_group:
        try:
            for app in apps:
                port, descriptor = _listen_on_loopback(backlog)
                config = Config()
                config.bind = [f"fd://{descriptor}"]
                config.backlog = backlog
                config.accesslog = None
                config.loglevel = "WARNING"
                config.graceful_timeout = 2.0
                task_group.start_soon(
                    functools.partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)
                )
                urls.append(f"http://127.0.0.1:{port}")
            yield urls
        except Exception as error:  # noqa: BLE001 - raised again below, once stopped
            block_error = error
        finally:
            stop.set()
    if block_error is not None:
        raise block_error
