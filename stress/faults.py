"""The soak run's loopback servers: a token endpoint and an API that misbehave on a schedule.

:class:`FaultSchedule` lays out one run as phases (latency spikes, 5xx bursts, 429 with
``Retry-After``, hangs past the refresh timeout, connection resets, malformed bodies)
separated by calm phases, and places the two wall-clock jumps. :class:`FaultyServer`
contains the servers' logic and counters and does not care how requests reach it:

* ``python -m stress.faults`` serves it over real HTTP/1.1 on 127.0.0.1 in a process of
  its own, so its work and memory stay out of the measured client (:func:`serve`);
* :func:`mock_transport` hands requests to it in-process through
  :class:`httpx.MockTransport`, for runs on a fake clock.

Routes: ``POST /token`` (client credentials with ``client_secret_basic``; the ``scope`` is
the client's cache key), ``GET /api/resource`` (a bearer token issued and neither
expired nor revoked), and the control routes ``POST /_soak/start`` (time zero of the
schedule) and ``GET /_soak/stats`` (the counters as JSON), which never fail.

Every token and the client secret start with :data:`MARKER`, so a log line containing
it is a leaked secret whatever else it contains.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import random
import secrets
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx

from tokenflight import Clock, SystemClock

__all__ = [
    "MARKER",
    "FaultSchedule",
    "FaultyServer",
    "Phase",
    "Reply",
    "Reset",
    "ServerConfig",
    "ServerRequest",
    "main",
    "mock_transport",
    "serve",
]

MARKER = "tfsoak"
"""The prefix of every secret the soak run creates."""

PhaseKind = Literal["calm", "latency", "5xx", "429", "hang", "reset", "malformed"]

# Phases during which the token endpoint gives no token: outages, for the report.
OUTAGE_KINDS: frozenset[str] = frozenset({"5xx", "429", "hang", "reset", "malformed"})

# One cycle of the schedule, in units of 1/60 of the cycle (one second in a 60 s run).
# Calm phases between the faults let the client recover and serve as baselines. The
# hang comes last because recovering from it takes longest: a request sent just before
# it ends still hangs for the whole refresh timeout.
_CYCLE: tuple[tuple[PhaseKind, int], ...] = (
    ("calm", 10),
    ("latency", 3),
    ("calm", 3),
    ("5xx", 4),
    ("calm", 4),
    ("429", 3),
    ("calm", 4),
    ("reset", 4),
    ("calm", 3),
    ("malformed", 4),
    ("calm", 8),
    ("hang", 4),
    ("calm", 6),
)
_CYCLE_UNITS = sum(units for _, units in _CYCLE)
# The wall clock steps an hour forward 6 units into the first cycle and back 46 units
# into the last one. The 4 units before and after each jump are calm, and the forward
# jump comes after the first 2 units, in which the client starts its tasks.
_JUMP_FORWARD_UNIT = 6
_JUMP_BACK_UNIT = 46
# A run is split into cycles of about this many seconds.
_CYCLE_SECONDS = 60.0

_MALFORMED_BODIES: tuple[tuple[str, str, bytes], ...] = (
    ("html", "text/html", b"<html><body>502 Bad Gateway</body></html>"),
    ("truncated", "application/json", b'{"access_token": "' + MARKER.encode() + b"-trunc"),
    ("no access_token", "application/json", b'{"token_type": "Bearer", "expires_in": 2}'),
    ("number token", "application/json", b'{"access_token": 12345, "expires_in": 2}'),
    (
        "CR LF in token",
        "application/json",
        b'{"access_token": "' + MARKER.encode() + b'-crlf\\r\\nX-Injected: 1", "expires_in": 2}',
    ),
    (
        "bad expires_in",
        "application/json",
        b'{"access_token": "' + MARKER.encode() + b'-badexp", "expires_in": "soon"}',
    ),
    ("JSON array", "application/json", b'["access_token", "expires_in"]'),
    ("oversized", "application/json", b""),  # built on demand: see _OVERSIZED_BYTES
)
# 16 times the library's default limit for token responses (256 KiB): the client must
# cut it off, not buffer it.
_OVERSIZED_BYTES = 4 * 1024 * 1024

# Counters of events over time are kept for at most this many events.
_MAX_EVENTS = 500_000


@dataclass(frozen=True)
class Phase:
    """One stretch of the schedule, in seconds from time zero of the run."""

    kind: PhaseKind
    start: float
    end: float

    @property
    def is_outage(self) -> bool:
        """Whether the token endpoint gives no token during this phase."""
        return self.kind in OUTAGE_KINDS


@dataclass(frozen=True)
class FaultSchedule:
    """The phases of a run and the moments of its wall-clock jumps.

    :param seconds: length of the run.
    :param phases: consecutive phases covering ``[0, seconds)``.
    :param jumps: ``(time, step)`` pairs: at ``time`` seconds the wall clock steps by
        ``step`` seconds.
    """

    seconds: float
    phases: tuple[Phase, ...]
    jumps: tuple[tuple[float, float], ...]

    @classmethod
    def build(cls, seconds: float, *, wall_jump: float = 3600.0) -> FaultSchedule:
        """Lay out a run of ``seconds``: whole cycles of about a minute each.

        :raises ValueError: when ``seconds`` is not positive.
        """
        if not seconds > 0:
            msg = f"a run needs a positive length, got {seconds!r} s"
            raise ValueError(msg)
        cycles = max(1, round(seconds / _CYCLE_SECONDS))
        unit = seconds / (cycles * _CYCLE_UNITS)
        phases: list[Phase] = []
        start = 0.0
        for _ in range(cycles):
            for kind, units in _CYCLE:
                end = start + units * unit
                phases.append(Phase(kind, start, end))
                start = end
        last = phases[-1]
        phases[-1] = Phase(last.kind, last.start, seconds)
        last_cycle = (cycles - 1) * _CYCLE_UNITS * unit
        jumps = (
            (_JUMP_FORWARD_UNIT * unit, wall_jump),
            (last_cycle + _JUMP_BACK_UNIT * unit, -wall_jump),
        )
        return cls(seconds, tuple(phases), jumps if wall_jump else ())

    def phase_at(self, elapsed: float) -> Phase:
        """Return the phase at ``elapsed`` seconds; before zero and after the end, calm."""
        for phase in self.phases:
            if phase.start <= elapsed < phase.end:
                return phase
        if elapsed < 0:
            return Phase("calm", -math.inf, 0.0)
        return Phase("calm", self.seconds, math.inf)

    def outages(self) -> list[Phase]:
        """Return the phases during which the token endpoint gives no token."""
        return [phase for phase in self.phases if phase.is_outage]


@dataclass(frozen=True)
class ServerConfig:
    """Settings of the faulty servers, shared by the client and the server process.

    :param client_id: the only client the token endpoint accepts.
    :param client_secret: its secret; starts with :data:`MARKER`.
    :param token_lifetime: ``expires_in`` of every token, in seconds.
    :param seconds: length of the run, which fixes the schedule.
    :param hang_seconds: how long a request hangs in a ``hang`` phase; longer than the
        client's refresh timeout.
    :param retry_after: the ``Retry-After`` of a 429, in whole seconds.
    :param latency: ``(low, high)`` extra seconds per request in a ``latency`` phase.
    :param api_reset_share: share of API requests reset in a ``reset`` phase.
    :param revocations_per_second: mean rate at which the API revokes a live token.
    :param leeway: seconds past its expiry that the API still accepts a token. Resource
        servers allow some leeway for clock differences; 1 s keeps a client's scheduling
        delay on a busy machine from counting as an expired token, while a client that
        kept a token for an hour too long is still caught.
    :param wall_jump: size of the wall-clock jumps of the schedule, in seconds.
    :param seed: seed of the server's random choices.
    """

    client_id: str
    client_secret: str
    token_lifetime: float = 2.0
    seconds: float = 60.0
    hang_seconds: float = 7.0
    retry_after: int = 1
    latency: tuple[float, float] = (0.1, 0.6)
    api_reset_share: float = 0.05
    revocations_per_second: float = 0.25
    leeway: float = 1.0
    wall_jump: float = 3600.0
    seed: int = 1

    @classmethod
    def create(cls, **settings: Any) -> ServerConfig:
        """Return a config with a fresh client id and secret and the given settings."""
        return cls(
            client_id=f"soak-client-{secrets.token_hex(4)}",
            client_secret=f"{MARKER}-secret-{secrets.token_urlsafe(24)}",
            **settings,
        )

    @property
    def schedule(self) -> FaultSchedule:
        """The run's schedule."""
        return FaultSchedule.build(self.seconds, wall_jump=self.wall_jump)

    def to_json(self) -> str:
        """Serialise for the server process."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        """Read what :meth:`to_json` wrote."""
        data = json.loads(text)
        data["latency"] = tuple(data["latency"])
        return cls(**data)


@dataclass(frozen=True)
class ServerRequest:
    """One request as the servers see it; header names are lowercase."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    """A complete HTTP response."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @classmethod
    def json(cls, status: int, data: object, *headers: tuple[str, str]) -> Reply:
        """Return a JSON response."""
        body = json.dumps(data).encode()
        return cls(status, (("content-type", "application/json"), *headers), body)

    @classmethod
    def text(cls, status: int, text: str, *headers: tuple[str, str]) -> Reply:
        """Return a plain-text response."""
        return cls(status, (("content-type", "text/plain"), *headers), text.encode())


@dataclass(frozen=True)
class Reset:
    """Abort the connection without a response (a TCP reset where the transport has one)."""


@dataclass
class _Issued:
    scope: str
    expires_at: float
    revoked: bool = False


@dataclass
class _Counters:
    token_requests: int = 0
    tokens_issued: int = 0
    token_faults: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    retry_after_early: int = 0
    api_requests: int = 0
    api_per_second: Counter[int] = field(default_factory=Counter)
    api_ok: int = 0
    api_unauthorized: Counter[str] = field(default_factory=Counter)
    api_resets: int = 0
    revocations: int = 0
    requests_resent: int = 0
    max_attempts: int = 1
    bad_client: int = 0


class FaultyServer:
    """A token endpoint and an API that inject the faults of a :class:`FaultSchedule`.

    :param config: the settings, the client's credentials and the run's length.
    :param clock: the time source; the schedule is measured from :meth:`start`.
    """

    def __init__(self, config: ServerConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.schedule = config.schedule
        self._random = random.Random(config.seed)
        self._zero: float | None = None
        self._tokens: dict[str, _Issued] = {}
        self._latest: dict[str, str] = {}
        self._serial = 0
        self._counters = _Counters()
        # Per scope: the time before which its last 429 asked the client not to come back.
        self._retry_not_before: dict[str, float] = {}
        # (elapsed seconds, scope, outcome) per token request, for the report's windows.
        self._token_events: list[tuple[float, str, str]] = []
        # (elapsed seconds, reason, seconds past expiry) per API 401.
        self._unauthorized_events: list[tuple[float, str, float]] = []
        # Request ids that got a 401, with the number of attempts seen.
        self._attempts: dict[str, int] = {}
        self._next_revocation = math.inf
        self._next_purge = 0.0
        self._malformed_turn = 0
        # Set by the process that serves this server: its worst event-loop lag, in seconds.
        self.loop_lag = 0.0
        expected = f"{config.client_id}:{config.client_secret}".encode()
        self._basic = "Basic " + base64.b64encode(expected).decode("ascii")

    # -- time --------------------------------------------------------------------

    def start(self) -> None:
        """Make now time zero of the schedule."""
        self._zero = self.clock.monotonic()
        self._next_revocation = self._draw_revocation_delay()

    def elapsed(self) -> float:
        """Seconds since :meth:`start`, negative before it."""
        if self._zero is None:
            return -1.0
        return self.clock.monotonic() - self._zero

    def _draw_revocation_delay(self) -> float:
        rate = self.config.revocations_per_second
        if rate <= 0:
            return math.inf
        return self.elapsed() + self._random.expovariate(rate)

    # -- requests ----------------------------------------------------------------

    async def handle(self, request: ServerRequest) -> Reply | Reset:
        """Return the reply to one request, injecting the fault of the current phase."""
        if request.path == "/_soak/start" and request.method == "POST":
            self.start()
            return Reply.json(200, {"started": True})
        if request.path == "/_soak/stats":
            return Reply.json(200, self.stats())
        if request.path == "/token" and request.method == "POST":
            return await self._token(request)
        if request.path == "/api/resource":
            return await self._api(request)
        return Reply.text(404, "not found")

    async def _token(self, request: ServerRequest) -> Reply | Reset:
        counters = self._counters
        counters.token_requests += 1
        form = urllib.parse.parse_qs(request.body.decode("ascii", "replace"))
        scope = form.get("scope", ["?"])[0]
        elapsed = self.elapsed()
        phase = self.schedule.phase_at(elapsed)

        not_before = self._retry_not_before.get(scope)
        # The client may start 50 ms early: its clock and this one started apart.
        if not_before is not None and elapsed < not_before - 0.05:
            counters.retry_after_early += 1

        if phase.kind == "latency":
            await self.clock.sleep(self._random.uniform(*self.config.latency))
        elif phase.kind == "5xx":
            return self._token_fault(elapsed, scope, "503", Reply.text(503, "unavailable"))
        elif phase.kind == "429":
            seconds = self.config.retry_after
            self._retry_not_before[scope] = elapsed + seconds
            reply = Reply.json(
                429,
                {"error": "slow_down", "error_description": "too many requests"},
                ("retry-after", str(seconds)),
            )
            return self._token_fault(elapsed, scope, "429", reply)
        elif phase.kind == "hang":
            self._record_token_event(elapsed, scope, "hang")
            counters.token_faults["hang"] += 1
            await self.clock.sleep(self.config.hang_seconds)
            # Answered late, if the client is still there.
        elif phase.kind == "reset":
            self._record_token_event(elapsed, scope, "reset")
            counters.token_faults["reset"] += 1
            return Reset()
        elif phase.kind == "malformed":
            return self._token_fault(elapsed, scope, "malformed", self._malformed())

        if request.headers.get("authorization") != self._basic:
            counters.bad_client += 1
            self._record_token_event(elapsed, scope, "invalid_client")
            return Reply.json(401, {"error": "invalid_client"})
        if phase.kind != "hang":
            self._record_token_event(elapsed, scope, "issued")
        return self._issue(scope)

    def _token_fault(self, elapsed: float, scope: str, name: str, reply: Reply) -> Reply:
        self._counters.token_faults[name] += 1
        self._record_token_event(elapsed, scope, name)
        return reply

    def _record_token_event(self, elapsed: float, scope: str, outcome: str) -> None:
        if len(self._token_events) < _MAX_EVENTS:
            self._token_events.append((round(elapsed, 4), scope, outcome))

    def _malformed(self) -> Reply:
        name, content_type, body = _MALFORMED_BODIES[self._malformed_turn % len(_MALFORMED_BODIES)]
        self._malformed_turn += 1
        self._counters.malformed[name] += 1
        if name == "oversized":
            padding = "x" * _OVERSIZED_BYTES
            body = json.dumps({"access_token": f"{MARKER}-big", "padding": padding}).encode()
        return Reply(200, (("content-type", content_type),), body)

    def _issue(self, scope: str) -> Reply:
        self._serial += 1
        value = f"{MARKER}.{scope}.{self._serial}.{secrets.token_urlsafe(18)}"
        now = self.clock.monotonic()
        self._tokens[value] = _Issued(scope, now + self.config.token_lifetime)
        self._latest[scope] = value
        self._counters.tokens_issued += 1
        self._purge(now)
        lifetime = self.config.token_lifetime
        expires_in: float = int(lifetime) if lifetime == int(lifetime) else lifetime
        return Reply.json(
            200,
            {"access_token": value, "token_type": "Bearer", "expires_in": expires_in},
            ("cache-control", "no-store"),
        )

    def _purge(self, now: float) -> None:
        # Forget tokens long expired, so the server's memory stays flat too.
        if now < self._next_purge:
            return
        self._next_purge = now + 5.0
        horizon = now - 10.0 * self.config.token_lifetime
        for value in [v for v, issued in self._tokens.items() if issued.expires_at < horizon]:
            del self._tokens[value]

    async def _api(self, request: ServerRequest) -> Reply | Reset:
        counters = self._counters
        counters.api_requests += 1
        elapsed = self.elapsed()
        counters.api_per_second[math.floor(elapsed)] += 1
        phase = self.schedule.phase_at(elapsed)
        self._maybe_revoke(elapsed)

        request_id = request.headers.get("x-soak-request", "")
        attempts = self._attempts.get(request_id)
        if attempts is not None:
            attempts += 1
            self._attempts[request_id] = attempts
            counters.requests_resent += 1
            counters.max_attempts = max(counters.max_attempts, attempts)

        if phase.kind == "latency":
            await self.clock.sleep(self._random.uniform(*self.config.latency))
        elif phase.kind == "reset" and self._random.random() < self.config.api_reset_share:
            counters.api_resets += 1
            return Reset()

        reason, late = self._check_bearer(request.headers.get("authorization", ""))
        if reason is None:
            counters.api_ok += 1
            return Reply.text(200, "ok")
        counters.api_unauthorized[reason] += 1
        if len(self._unauthorized_events) < _MAX_EVENTS:
            self._unauthorized_events.append((round(elapsed, 4), reason, round(late, 4)))
        if request_id and request_id not in self._attempts:
            self._attempts[request_id] = 1
        return Reply.text(
            401,
            "invalid token",
            ("www-authenticate", f'Bearer error="invalid_token", error_description="{reason}"'),
        )

    def _check_bearer(self, authorization: str) -> tuple[str | None, float]:
        """Return why the token is refused (``None`` if it is not) and, for an expired
        token, how many seconds past its expiry it arrived."""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value:
            return "missing", 0.0
        issued = self._tokens.get(value)
        if issued is None:
            return "unknown", 0.0
        if issued.revoked:
            return "revoked", 0.0
        late = self.clock.monotonic() - issued.expires_at
        if late > self.config.leeway:
            return "expired", late
        return None, 0.0

    def _maybe_revoke(self, elapsed: float) -> None:
        if elapsed < self._next_revocation or not self._latest:
            return
        self._next_revocation = self._draw_revocation_delay()
        scope = self._random.choice(sorted(self._latest))
        issued = self._tokens.get(self._latest[scope])
        if issued is not None and not issued.revoked:
            issued.revoked = True
            self._counters.revocations += 1
            self._record_token_event(elapsed, scope, "revoked")

    # -- reporting ---------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return the counters and event lists as JSON-compatible data."""
        counters = self._counters
        return {
            "token_requests": counters.token_requests,
            "tokens_issued": counters.tokens_issued,
            "token_faults": dict(counters.token_faults),
            "malformed": dict(counters.malformed),
            "retry_after_early": counters.retry_after_early,
            "api_requests": counters.api_requests,
            "api_per_second": {str(second): n for second, n in counters.api_per_second.items()},
            "api_ok": counters.api_ok,
            "api_unauthorized": dict(counters.api_unauthorized),
            "api_resets": counters.api_resets,
            "revocations": counters.revocations,
            "requests_resent": counters.requests_resent,
            "max_attempts": counters.max_attempts,
            "bad_client": counters.bad_client,
            "loop_lag_max_s": self.loop_lag,
            "cpu_seconds": time.process_time(),
            "token_events": self._token_events,
            "unauthorized_events": self._unauthorized_events,
        }


# -- in-process transport ----------------------------------------------------------


def mock_transport(server: FaultyServer) -> httpx.MockTransport:
    """Return an httpx transport that hands every request to ``server`` in-process.

    A :class:`Reset` becomes :class:`httpx.ReadError`, as a reset connection does.
    """

    async def handler(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = {name.lower(): value for name, value in request.headers.items()}
        reply = await server.handle(ServerRequest(request.method, request.url.path, headers, body))
        if isinstance(reply, Reset):
            msg = "connection reset by peer (injected)"
            raise httpx.ReadError(msg, request=request)
        return httpx.Response(reply.status, headers=list(reply.headers), content=reply.body)

    return httpx.MockTransport(handler)


# -- the HTTP/1.1 server process ------------------------------------------------------

_MAX_HEAD = 64 * 1024
_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests"}


def _encode_reply(reply: Reply) -> bytes:
    reason = _REASONS.get(reply.status, "Service Unavailable" if reply.status == 503 else "")
    lines = [f"HTTP/1.1 {reply.status} {reason}", f"content-length: {len(reply.body)}"]
    lines.extend(f"{name}: {value}" for name, value in reply.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


class _Connection(asyncio.Protocol):
    """One keep-alive connection; requests are answered one at a time, in order."""

    def __init__(self, server: FaultyServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy is not None:
            self.busy.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._next()

    def _next(self) -> None:
        if self.busy is not None or self.transport is None:
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > _MAX_HEAD:
                self.transport.close()
            return
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            self.transport.close()
            return
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        path = target.split("?", 1)[0]
        request = ServerRequest(method, path, headers, body)
        self.busy = asyncio.get_running_loop().create_task(self._answer(request))

    async def _answer(self, request: ServerRequest) -> None:
        try:
            reply = await self.server.handle(request)
        except asyncio.CancelledError:
            return
        transport = self.transport
        if transport is None:
            return
        if isinstance(reply, Reset):
            _abort_with_reset(transport)
            return
        transport.write(_encode_reply(reply))
        self.busy = None
        self._next()


def _abort_with_reset(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def serve(config: ServerConfig, *, max_seconds: float) -> None:
    """Serve :class:`FaultyServer` on 127.0.0.1 until stdin closes or ``max_seconds`` pass.

    Prints ``PORT <number>`` on stdout once it listens.
    """
    server = FaultyServer(config)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(
        lambda: _Connection(server), host="127.0.0.1", port=0, backlog=4096
    )
    port = listener.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)

    stdin_closed = loop.create_future()

    def wait_for_stdin() -> None:
        sys.stdin.buffer.read()
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            loop.call_soon_threadsafe(stdin_closed.set_result, None)

    # A daemon thread: one blocked on stdin must not keep the process alive at the end.
    threading.Thread(target=wait_for_stdin, daemon=True).start()
    lag_monitor = loop.create_task(_watch_loop_lag(server))
    try:
        await asyncio.wait_for(stdin_closed, timeout=max_seconds)
    except asyncio.TimeoutError:
        print(f"stopping after {max_seconds:g} s", file=sys.stderr)
    finally:
        lag_monitor.cancel()
        listener.close()


async def _watch_loop_lag(server: FaultyServer) -> None:
    """Record how late a 100 ms sleep wakes up: the server's own event-loop lag."""
    while True:
        expected = time.monotonic() + 0.1
        await asyncio.sleep(0.1)
        server.loop_lag = max(server.loop_lag, time.monotonic() - expected)


def main(argv: list[str] | None = None) -> int:
    """Run the server process: read the config as one JSON line from stdin, then serve."""
    parser = argparse.ArgumentParser(
        prog="python -m stress.faults",
        description="Serve the soak run's faulty token endpoint and API on 127.0.0.1.",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="stop after this many seconds even if stdin stays open (default 600)",
    )
    args = parser.parse_args(argv)
    line = sys.stdin.buffer.readline()
    if not line.strip():
        print("error: expected the server config as one JSON line on stdin", file=sys.stderr)
        return 2
    config = ServerConfig.from_json(line.decode())
    started = time.monotonic()
    asyncio.run(serve(config, max_seconds=args.max_seconds))
    print(f"served for {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
