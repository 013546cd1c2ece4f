"""A small, fast HTTP/1.1 server for the loopback benchmarks: a token endpoint and an API.

Run as ``python -m bench._server``. It binds to 127.0.0.1 on a free port, prints
``PORT <n>`` on stdout, and serves until its standard input closes or ``--max-seconds``
pass, so a benchmark that dies cannot leave it running for long. It uses only the
standard library and runs in its own process, so its work does not share the client's
event loop.

Routes:

* ``POST /token``: a client-credentials token endpoint. It responds after the configured
  latency with ``{"access_token", "token_type", "expires_in"}``, or with 503 while an
  outage window is open.
* ``GET /api``: 200 for a known, unexpired bearer token (or the static token), 401 with
  ``WWW-Authenticate: Bearer error="invalid_token"`` otherwise.
* ``GET /ping``: 200 without authentication, for opening pooled connections.
* ``GET /stats`` and ``POST /control``: counters, and settings changed by a JSON body
  with any of ``latency`` (seconds), ``lifetime`` (seconds), ``outage`` (seconds from
  now) and ``reset`` (true clears the counters and the issued tokens).

The token endpoint checks nothing about the client: the benchmarks count requests, they
do not test authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["STATIC_TOKEN", "ServerState", "main"]

# The token the static-header baseline sends; the API always accepts it.
STATIC_TOKEN = "static-token-for-the-baseline"

_MAX_HEAD = 65536


@dataclass
class _Counters:
    token_requests: int = 0
    token_ok: int = 0
    token_503: int = 0
    token_requests_in_outage: int = 0
    api_ok: int = 0
    api_401: int = 0


class ServerState:
    """Settings, issued tokens and counters, shared by every connection."""

    def __init__(self) -> None:
        self.latency = 0.0
        self.lifetime = 3600.0
        self.outage_until = 0.0
        self.counters = _Counters()
        self.tokens: dict[str, float] = {}
        self.serial = 0

    def reset(self) -> None:
        self.counters = _Counters()
        self.tokens.clear()
        self.outage_until = 0.0

    def control(self, settings: dict[str, Any]) -> None:
        if settings.get("reset"):
            self.reset()
        if "latency" in settings:
            self.latency = float(settings["latency"])
        if "lifetime" in settings:
            self.lifetime = float(settings["lifetime"])
        if "outage" in settings:
            self.outage_until = time.monotonic() + float(settings["outage"])

    def stats(self) -> dict[str, Any]:
        return {**asdict(self.counters), "tokens_issued": len(self.tokens)}

    def issue_token(self) -> bytes:
        self.serial += 1
        value = f"tok{self.serial}.{secrets.token_hex(12)}"
        self.tokens[value] = time.monotonic() + self.lifetime
        # Peers convert expires_in with int(), so whole seconds are sent as an integer.
        lifetime = self.lifetime
        expires_in: float = int(lifetime) if lifetime == int(lifetime) else lifetime
        body = {"access_token": value, "token_type": "Bearer", "expires_in": expires_in}
        return json.dumps(body).encode()

    def accepts(self, authorization: str) -> bool:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        if value == STATIC_TOKEN:
            return True
        expiry = self.tokens.get(value)
        return expiry is not None and time.monotonic() < expiry


def _response(status: int, reason: str, body: bytes, headers: tuple[str, ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_OK = _response(200, "OK", b"ok", ("content-type: text/plain",))
_UNAUTHORIZED = _response(
    401,
    "Unauthorized",
    b"invalid token",
    ('www-authenticate: Bearer error="invalid_token"', "content-type: text/plain"),
)
_UNAVAILABLE = _response(503, "Service Unavailable", b"down", ("content-type: text/plain",))
_NOT_FOUND = _response(404, "Not Found", b"not found", ("content-type: text/plain",))


class _Connection(asyncio.Protocol):
    """One client connection: parses requests one after another and responds in order."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        # Responses must leave in request order, so a delayed token response delays later ones.
        self.pending: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.handle(method, target.split("?", 1)[0], headers, body)

    def send(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(payload)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        state = self.state
        if path == "/api":
            if state.accepts(headers.get("authorization", "")):
                state.counters.api_ok += 1
                self.reply(_OK)
            else:
                state.counters.api_401 += 1
                self.reply(_UNAUTHORIZED)
        elif path == "/token" and method == "POST":
            state.counters.token_requests += 1
            in_outage = time.monotonic() < state.outage_until
            if in_outage:
                state.counters.token_requests_in_outage += 1
            self.reply_later(state.latency, in_outage)
        elif path == "/ping":
            self.reply(_OK)
        elif path == "/stats":
            self.reply(_json(state.stats()))
        elif path == "/control" and method == "POST":
            state.control(json.loads(body or b"{}"))
            self.reply(_json(state.stats()))
        else:
            self.reply(_NOT_FOUND)

    def reply(self, payload: bytes) -> None:
        if self.pending is None or self.pending.done():
            self.send(payload)
        else:
            self.pending.add_done_callback(lambda _: self.send(payload))

    def reply_later(self, delay: float, unavailable: bool) -> None:
        loop = asyncio.get_running_loop()
        previous = self.pending
        future: asyncio.Future[None] = loop.create_future()
        self.pending = future

        def respond() -> None:
            if unavailable:
                self.state.counters.token_503 += 1
                payload = _UNAVAILABLE
            else:
                self.state.counters.token_ok += 1
                body = self.state.issue_token()
                payload = _response(200, "OK", body, ("content-type: application/json",))
            if previous is None or previous.done():
                self.send(payload)
            else:
                previous.add_done_callback(lambda _: self.send(payload))
            future.set_result(None)

        loop.call_later(delay, respond)


def _json(data: dict[str, Any]) -> bytes:
    return _response(200, "OK", json.dumps(data).encode(), ("content-type: application/json",))


async def _serve(max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    state = ServerState()
    server = await loop.create_server(lambda: _Connection(state), "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)

    stopped = loop.create_future()

    def stop() -> None:
        if not stopped.done():
            stopped.set_result(None)

    # Closing stdin (the parent exited or is done) stops the server. A thread reads it
    # because stdin may be a file or a terminal, which an event loop cannot watch.
    def watch_stdin() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop)

    threading.Thread(target=watch_stdin, daemon=True).start()
    loop.call_later(max_seconds, stop)
    await stopped
    server.close()


def main() -> None:
    """Run the server until stdin closes or the time limit passes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=3600.0,
        help="stop after this many seconds even if stdin stays open (default: 3600)",
    )
    args = parser.parse_args()
    asyncio.run(_serve(args.max_seconds))


if __name__ == "__main__":
    main()
