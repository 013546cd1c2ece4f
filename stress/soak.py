"""A bounded soak run: many tasks, 2-second tokens, and a token endpoint that misbehaves.

Thousands of tasks send requests through :class:`tokenflight.AuthClient` (one client per
cache key, all sharing one :class:`tokenflight.TokenCache` whose keys are OAuth2 scopes
fetched with :class:`tokenflight.ClientCredentials`) to a token endpoint and an API that
inject the faults of :class:`stress.faults.FaultSchedule`. The wall clock the library
reads steps an hour forward and back during the run. Invariants are checked throughout
and printed as a report; :func:`main` returns 1 when one is violated.

Run it with ``python -m stress.soak --seconds 60 --backend both``. The servers run in a
process of their own on 127.0.0.1 (see ``stress/faults.py``); :func:`run_soak` with a
:class:`tokenflight.testing.FakeClock` and :func:`stress.faults.mock_transport` runs the
same logic in-process, as the tests do.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import logging
import math
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
import anyio.abc
import anyio.lowlevel
import httpx
import sniffio

from tokenflight import (
    AuthClient,
    Backoff,
    CacheEvent,
    Clock,
    RefreshError,
    SystemClock,
    Token,
    TokenCache,
)
from tokenflight._oauth2 import ClientCredentials
from tokenflight.testing import FakeClock

from .faults import MARKER, FaultSchedule, FaultyServer, ServerConfig, mock_transport

__all__ = [
    "Invariant",
    "JumpingClock",
    "SoakConfig",
    "SoakReport",
    "format_report",
    "main",
    "run_soak",
]

Backend = Literal["asyncio", "trio"]

API_PATH = "/api/resource"

# The directory that contains the stress package, where the server process starts.
_PROJECT = Path(__file__).resolve().parent.parent


# -- settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    """The size and timing of one run.

    :param seconds: length of the run; the fault schedule scales to it.
    :param tasks: concurrent tasks sending requests.
    :param keys: cache keys (OAuth2 scopes); the tasks are spread evenly over them.
    :param rate: target API requests per second over all tasks; each task pauses about
        ``tasks / rate`` seconds between requests.
    :param token_lifetime: ``expires_in`` of every token, in seconds.
    :param refresh_timeout: the cache's ``timeout``: the budget of one refresh.
    :param seed: seed of every random choice of the run.
    :param trace_memory: measure memory with :mod:`tracemalloc` (slows the run down).
    :param wall_jump: seconds the wall clock steps forward, and later back; 0 for none.
    :param revocations_per_second: mean rate of server-side revocations.
    :param connections_per_key: connection-pool size of each key's API client.
    :param freeze_gc: once the tasks have started, move every object to the garbage
        collector's permanent generation (:func:`gc.freeze`), as large services do.
        Without it, CPython's full collections over 10,000 tasks pause the event loop for
        up to a second on a small machine, longer than a 2-second token's 0.5 s margin.
    """

    seconds: float = 60.0
    tasks: int = 10_000
    keys: int = 4
    rate: float = 100.0
    token_lifetime: float = 2.0
    refresh_timeout: float = 4.0
    seed: int = 1
    trace_memory: bool = True
    wall_jump: float = 3600.0
    revocations_per_second: float = 0.25
    connections_per_key: int = 16
    freeze_gc: bool = True

    # Retries within one refresh, and the spacing of failed refreshes, scaled to tokens
    # that live 2 s: the library's defaults suit tokens that live minutes or hours.
    @property
    def backoff(self) -> Backoff:
        """Delays between attempts within one refresh."""
        return Backoff(initial=0.25, multiplier=2.0, maximum=2.0)

    @property
    def cooldown(self) -> Backoff:
        """Delays between failed refreshes."""
        return Backoff(initial=0.5, multiplier=2.0, maximum=4.0)

    @property
    def http_timeout(self) -> httpx.Timeout:
        """Timeouts of one API request: connect, read, write and waiting for a connection."""
        return httpx.Timeout(5.0, connect=2.0, write=2.0, pool=5.0)

    @property
    def request_deadline(self) -> float:
        """Longest time one request may take before it counts as hung, in seconds.

        A request may wait for a refresh, send, get a 401, wait for a second refresh and
        send again; each step is bounded by a timeout, and this is their sum plus 2 s.
        """
        timeout = self.http_timeout
        one_send = sum(
            seconds or 0.0
            for seconds in (timeout.connect, timeout.write, timeout.read, timeout.pool)
        )
        return 2 * (self.refresh_timeout + one_send) + 2.0

    @property
    def recovery_bound(self) -> float:
        """Longest acceptable time from the end of an outage to a key's first success.

        A refresh attempt sent just before the outage ends can still fail at the end of
        the refresh budget; the longest cooldown then passes before the next refresh.
        2 s more cover the request itself and event-loop lag.
        """
        return self.refresh_timeout + self.cooldown.maximum + 2.0

    def server_config(self) -> ServerConfig:
        """Return the server settings for this run, with fresh client credentials."""
        return ServerConfig.create(
            token_lifetime=self.token_lifetime,
            seconds=self.seconds,
            hang_seconds=self.refresh_timeout + 3.0,
            revocations_per_second=self.revocations_per_second,
            wall_jump=self.wall_jump,
            seed=self.seed,
        )


# -- the clock the library reads ------------------------------------------------------


class WallJumpClock(Clock, Protocol):
    """A clock whose wall time can be stepped while its monotonic time runs on."""

    def jump_wall(self, seconds: float) -> None:
        """Step the wall clock by ``seconds``."""
        ...


class JumpingClock:
    """The real clock, with a wall clock that :meth:`jump_wall` can step.

    ``monotonic()`` and ``sleep()`` are the system's; ``time()`` is the system's plus the
    sum of the jumps so far, as after an NTP step or a suspended laptop.
    """

    def __init__(self) -> None:
        self._system = SystemClock()
        self._offset = 0.0

    def monotonic(self) -> float:
        return self._system.monotonic()

    def time(self) -> float:
        return self._system.time() + self._offset

    async def sleep(self, seconds: float) -> None:
        await self._system.sleep(seconds)

    def jump_wall(self, seconds: float) -> None:
        """Step the wall clock by ``seconds`` (negative steps back)."""
        self._offset += seconds


@contextlib.asynccontextmanager
async def _deadline(clock: Clock, seconds: float) -> AsyncIterator[anyio.CancelScope]:
    """Cancel the block after ``seconds`` on ``clock``; the scope tells whether it did."""
    if isinstance(clock, FakeClock):
        async with clock.move_on_after(seconds) as scope:
            yield scope
    else:
        with anyio.move_on_after(seconds) as scope:
            yield scope


# -- what the run records ---------------------------------------------------------------


class _Meter:
    """Counters filled while the run goes on; every structure is bounded by the run's size."""

    def __init__(self, schedule: FaultSchedule, keys: list[str]) -> None:
        self.schedule = schedule
        self.keys = keys
        self.zero = math.inf
        self.outcomes: Counter[str] = Counter()
        self.outcomes_by_phase: Counter[tuple[str, str]] = Counter()
        self.unexpected: list[str] = []
        self.max_duration = 0.0
        self.durations: list[float] = []
        self.fetches: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight = 0
        self.events: Counter[str] = Counter()
        self.refreshed_at: dict[str, list[float]] = defaultdict(list)
        self.first_success_after: dict[tuple[str, float], float] = {}
        self.outage_ends = sorted({phase.end for phase in schedule.outages()})
        self.memory: list[tuple[float, int]] = []
        self.max_cache_in_flight = 0
        self.max_loop_lag = 0.0
        self.max_waiters = 0
        self.requests_in_flight = 0
        self.max_requests_in_flight = 0

    def elapsed(self, clock: Clock) -> float:
        return clock.monotonic() - self.zero

    def record_request(self, key: str, started: float, ended: float, outcome: str) -> None:
        self.outcomes[outcome] += 1
        phase = self.schedule.phase_at(started)
        self.outcomes_by_phase[phase.kind, outcome] += 1
        duration = ended - started
        self.max_duration = max(self.max_duration, duration)
        if len(self.durations) < 1_000_000:
            self.durations.append(duration)
        if outcome == "ok":
            for end in self.outage_ends:
                if started >= end and (key, end) not in self.first_success_after:
                    self.first_success_after[key, end] = ended - end

    def hook(self, clock: Clock) -> Callable[[CacheEvent], None]:
        def on_event(event: CacheEvent) -> None:
            self.events[event.name] += 1
            if event.name == "refresh.succeeded":
                self.refreshed_at[str(event.key)].append(self.elapsed(clock))

        return on_event


class _MeteredSource:
    """Wraps a key's token source to count its fetches and how many run at once."""

    def __init__(self, inner: ClientCredentials, key: str, meter: _Meter) -> None:
        self._inner = inner
        self._key = key
        self._meter = meter

    async def fetch(self) -> Token:
        meter = self._meter
        meter.fetches[self._key] += 1
        meter.in_flight[self._key] += 1
        meter.max_in_flight = max(meter.max_in_flight, meter.in_flight[self._key])
        try:
            return await self._inner.fetch()
        finally:
            meter.in_flight[self._key] -= 1

    def __repr__(self) -> str:
        return f"_MeteredSource({self._inner!r})"


class _LogCheck(logging.Handler):
    """Checks every log record of the run for a secret, keeping counts, not records.

    Every token and the client secret start with :data:`MARKER`; the client secret's
    URL-encoded and base64 forms (as in a ``Basic`` header) are looked for too.
    """

    def __init__(self, client_id: str, client_secret: str) -> None:
        super().__init__(level=logging.NOTSET)
        self.records = 0
        self.leaks = 0
        self.samples: list[str] = []
        basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self.needles = (MARKER, urllib.parse.quote(client_secret, safe=""), basic)
        self.by_logger: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records += 1
        self.by_logger[record.name.split(".", 1)[0]] += 1
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is checked piecewise
            text = f"{record.msg} {record.args!r}"
        if record.exc_info and record.exc_info[1] is not None:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        if any(needle in text for needle in self.needles):
            self.leaks += 1
            if len(self.samples) < 5:
                masked = text
                for needle in self.needles:
                    masked = masked.replace(needle, "<secret>")
                self.samples.append(f"{record.name}:{record.levelname}: {masked[:300]}")


_CAPTURED_LOGGERS = ("tokenflight", "httpx", "httpcore")


@contextlib.contextmanager
def _capture_logs(check: _LogCheck) -> Iterator[None]:
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in _CAPTURED_LOGGERS}
    root.addHandler(check)
    for name in _CAPTURED_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        root.removeHandler(check)


# -- leak probes ---------------------------------------------------------------------


def _open_fds() -> tuple[int, int]:
    """Return the process's open file descriptors and, of those, sockets (Linux only)."""
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return -1, -1
    fds = sockets = 0
    for entry in fd_dir.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue  # closed while listing, such as the listing's own descriptor
        fds += 1
        sockets += target.startswith("socket:")
    return fds, sockets


def _task_count() -> int:
    """Return how many tasks the running event loop has."""
    if sniffio.current_async_library() == "trio":
        import trio.lowlevel

        def count(task: trio.lowlevel.Task) -> int:
            return 1 + sum(count(child) for n in task.child_nurseries for child in n.child_tasks)

        return count(trio.lowlevel.current_root_task())  # type: ignore[arg-type]

    import asyncio

    return len(asyncio.all_tasks())


# -- the run -------------------------------------------------------------------------


@dataclass(frozen=True)
class Invariant:
    """One checked property of the run: what was measured against what was allowed."""

    name: str
    holds: bool
    measured: str
    bound: str


@dataclass
class SoakReport:
    """Everything a run measured, and the invariants decided from it."""

    backend: str
    config: SoakConfig
    wall_seconds: float
    invariants: list[Invariant]
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every invariant held."""
        return all(invariant.holds for invariant in self.invariants)


@dataclass
class _Run:
    config: SoakConfig
    clock: WallJumpClock
    server_config: ServerConfig
    meter: _Meter
    token_url: str
    api_url: str
    transport_factory: Callable[[], httpx.AsyncBaseTransport | None]
    stats: Callable[[], Any]
    start_schedule: Callable[[], Any]


async def run_soak(
    config: SoakConfig,
    *,
    clock: WallJumpClock | None = None,
    server: FaultyServer | None = None,
) -> SoakReport:
    """Run one soak on the current event loop and return its report.

    Without ``server``, the servers run in a child process on 127.0.0.1 and the run lasts
    ``config.seconds`` of real time. With an in-process ``server`` (built from
    ``config.server_config()``), requests reach it through :func:`mock_transport`; pass
    the same :class:`~tokenflight.testing.FakeClock` as ``clock`` and to the server, and
    run inside its ``autojump()``, to run on fake time.
    """
    started = time.monotonic()
    the_clock: WallJumpClock = clock if clock is not None else JumpingClock()
    if server is not None:
        report = await _run_in_process(config, the_clock, server)
    else:
        report = await _run_with_server_process(config, the_clock)
    report.wall_seconds = time.monotonic() - started
    return report


async def _run_in_process(
    config: SoakConfig, clock: WallJumpClock, server: FaultyServer
) -> SoakReport:
    def start() -> None:
        server.start()

    run = _Run(
        config=config,
        clock=clock,
        server_config=server.config,
        meter=_Meter(server.schedule, _keys(config)),
        token_url="http://127.0.0.1/token",
        api_url="http://127.0.0.1",
        transport_factory=lambda: mock_transport(server),
        stats=server.stats,
        start_schedule=start,
    )
    return await _drive(run)


async def _run_with_server_process(config: SoakConfig, clock: WallJumpClock) -> SoakReport:
    server_config = config.server_config()
    command = [sys.executable, "-m", "stress.faults", "--max-seconds", str(config.seconds * 3 + 60)]
    async with await anyio.open_process(
        command, cwd=_PROJECT, stdin=-1, stdout=-1, stderr=None
    ) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        await process.stdin.send(server_config.to_json().encode() + b"\n")
        port = await _read_port(process.stdout)
        base = f"http://127.0.0.1:{port}"
        control = httpx.AsyncClient(base_url=base, timeout=10.0)

        async def start() -> None:
            response = await control.post("/_soak/start")
            response.raise_for_status()

        async def stats() -> Any:
            response = await control.get("/_soak/stats")
            response.raise_for_status()
            return response.json()

        try:
            run = _Run(
                config=config,
                clock=clock,
                server_config=server_config,
                meter=_Meter(server_config.schedule, _keys(config)),
                token_url=f"{base}/token",
                api_url=base,
                transport_factory=lambda: None,
                stats=stats,
                start_schedule=start,
            )
            return await _drive(run, before_leak_check=control.aclose)
        finally:
            await control.aclose()
            await process.stdin.aclose()
            with anyio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()


async def _read_port(stream: anyio.abc.ByteReceiveStream) -> int:
    buffer = b""
    with anyio.fail_after(30):
        while b"\n" not in buffer:
            buffer += await stream.receive()
    line = buffer.split(b"\n", 1)[0].decode()
    if not line.startswith("PORT "):
        msg = f"the server process printed {line!r} instead of its port"
        raise RuntimeError(msg)
    return int(line.split()[1])


def _keys(config: SoakConfig) -> list[str]:
    return [f"scope{index}" for index in range(config.keys)]


async def _maybe_await(value: Any) -> Any:
    if hasattr(value, "__await__"):
        return await value
    return value


async def _drive(run: _Run, *, before_leak_check: Callable[[], Any] | None = None) -> SoakReport:
    config = run.config
    clock = run.clock
    meter = run.meter
    schedule = meter.schedule
    server_config = run.server_config

    gc.collect()
    fds_before = _open_fds()
    tasks_before = _task_count()
    if config.trace_memory:
        tracemalloc.start(1)

    check = _LogCheck(server_config.client_id, server_config.client_secret)
    with _capture_logs(check):
        token_http = httpx.AsyncClient(
            transport=run.transport_factory(), timeout=10.0, follow_redirects=False
        )

        def source_for(key: Hashable) -> _MeteredSource:
            inner = ClientCredentials(
                run.token_url,
                server_config.client_id,
                client_secret=server_config.client_secret,
                scope=str(key),
                http_client=token_http,
                clock=clock,
            )
            return _MeteredSource(inner, str(key), meter)

        cache = TokenCache(
            sources=source_for,
            timeout=config.refresh_timeout,
            backoff=config.backoff,
            cooldown=config.cooldown,
            clock=clock,
            hooks=[meter.hook(clock)],
        )
        limits = httpx.Limits(
            max_connections=config.connections_per_key,
            max_keepalive_connections=config.connections_per_key,
        )
        clients = {
            key: AuthClient(
                cache,
                key=key,
                base_url=run.api_url,
                transport=run.transport_factory(),
                timeout=config.http_timeout,
                limits=limits,
            )
            for key in meter.keys
        }
        # httpcore's pool spends time proportional to its queue on every request it adds
        # or removes, so a long queue there stalls the event loop. Requests wait for a
        # connection here instead, on a limiter as large as the pool.
        limiters = {key: anyio.CapacityLimiter(config.connections_per_key) for key in meter.keys}
        auth_statistics: dict[str, Any] = {}
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(token_http)
            await stack.enter_async_context(cache)
            for client in clients.values():
                await stack.enter_async_context(client)

            await _maybe_await(run.start_schedule())
            meter.zero = clock.monotonic()
            stop_at = meter.zero + config.seconds
            async with anyio.create_task_group() as workers:
                workers.start_soon(_jump_wall_clock, clock, schedule, meter.zero)
                sampler = anyio.CancelScope()
                workers.start_soon(_sample, clock, meter, cache, config, sampler)
                async with anyio.create_task_group() as senders:
                    for index in range(config.tasks):
                        key = meter.keys[index % len(meter.keys)]
                        senders.start_soon(
                            _send_requests,
                            index,
                            clients[key],
                            limiters[key],
                            key,
                            clock,
                            meter,
                            config,
                            stop_at,
                        )
                    if config.freeze_gc:
                        senders.start_soon(_freeze_gc, clock, _GC_FREEZE_AFTER)
                sampler.cancel()
            if config.freeze_gc:
                gc.unfreeze()
            server_stats = await _maybe_await(run.stats())
            for key, client in clients.items():
                auth_statistics[key] = client.token_auth.statistics()
        cache_statistics = cache.statistics()

    memory_peak = 0
    if config.trace_memory:
        memory_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    if before_leak_check is not None:
        await _maybe_await(before_leak_check())
    gc.collect()
    await anyio.lowlevel.checkpoint()
    fds_after = _open_fds()
    tasks_after = _task_count()

    return _decide(
        run,
        server_stats=server_stats,
        check=check,
        fds=(fds_before, fds_after),
        tasks=(tasks_before, tasks_after),
        memory_peak=memory_peak,
        auth_statistics=auth_statistics,
        cache_statistics=cache_statistics,
    )


# Seconds into the run at which the objects of the started tasks are frozen.
_GC_FREEZE_AFTER = 1.0


async def _freeze_gc(clock: Clock, delay: float) -> None:
    """Once the tasks exist, keep the collector's full passes from scanning them."""
    await clock.sleep(delay)
    gc.collect()
    gc.freeze()


async def _jump_wall_clock(clock: WallJumpClock, schedule: FaultSchedule, zero: float) -> None:
    for at, step in schedule.jumps:
        delay = zero + at - clock.monotonic()
        if delay > 0:
            await clock.sleep(delay)
        clock.jump_wall(step)


async def _sample(
    clock: Clock, meter: _Meter, cache: TokenCache, config: SoakConfig, scope: anyio.CancelScope
) -> None:
    """Every second: the cache's refreshes in flight and, if traced, the memory in use."""
    with scope:
        for _ in range(int(config.seconds * 2) + 10):
            cache_statistics = cache.statistics()
            meter.max_cache_in_flight = max(meter.max_cache_in_flight, cache_statistics.in_flight)
            meter.max_waiters = max(meter.max_waiters, cache_statistics.waiters)
            if config.trace_memory:
                meter.memory.append((meter.elapsed(clock), tracemalloc.get_traced_memory()[0]))
            # How late the sleep ends shows how far the event loop lags behind.
            woke_at = clock.monotonic() + 1.0
            await clock.sleep(1.0)
            meter.max_loop_lag = max(meter.max_loop_lag, clock.monotonic() - woke_at)


async def _send_requests(
    index: int,
    client: AuthClient,
    limiter: anyio.CapacityLimiter,
    key: str,
    clock: Clock,
    meter: _Meter,
    config: SoakConfig,
    stop_at: float,
) -> None:
    """One task: requests with a jittered pause between them until the run ends."""
    rng = random.Random(config.seed * 1_000_003 + index)
    pause = config.tasks / config.rate
    # Start times spread over one pause, so that the run sends about ``rate`` requests
    # per second from the start; a task whose start falls after the run sends nothing.
    first = rng.uniform(0.0, pause)
    if first >= config.seconds:
        return
    await clock.sleep(first)
    # Bounded in count as well as in time.
    for number in range(int(config.seconds / (0.5 * pause)) + 2):
        if clock.monotonic() >= stop_at:
            return
        started = meter.elapsed(clock)
        meter.requests_in_flight += 1
        meter.max_requests_in_flight = max(meter.max_requests_in_flight, meter.requests_in_flight)
        outcome = await _one_request(client, limiter, f"{index}-{number}", clock, config, meter)
        meter.requests_in_flight -= 1
        meter.record_request(key, started, meter.elapsed(clock), outcome)
        # A pause that would end after the run is cut short, so the run ends on time.
        remaining = stop_at - clock.monotonic()
        if remaining <= 0:
            return
        await clock.sleep(min(rng.uniform(0.5, 1.5) * pause, remaining))


async def _one_request(
    client: AuthClient,
    limiter: anyio.CapacityLimiter,
    request_id: str,
    clock: Clock,
    config: SoakConfig,
    meter: _Meter,
) -> str:
    """Send one request; return "ok", "HTTP <status>", or the class of the error raised.

    A tokenflight :class:`RefreshError` and an :class:`httpx.TransportError` are the
    documented errors; anything else is recorded as "unexpected <class>".
    """
    outcome = "deadline exceeded"
    async with _deadline(clock, config.request_deadline):
        try:
            # Wait for the key's token before taking a connection slot, so that requests
            # waiting for a refresh do not hold slots that others could send with.
            await client.cache.get(client.token_auth.key)
            async with limiter:
                response = await client.get(API_PATH, headers={"x-soak-request": request_id})
        except RefreshError as error:
            outcome = type(error).__name__
        except httpx.TransportError as error:
            outcome = f"httpx.{type(error).__name__}"
        except Exception as error:  # noqa: BLE001 - an undocumented error is the finding
            outcome = f"unexpected {type(error).__name__}"
            if len(meter.unexpected) < 5:
                meter.unexpected.append(f"{type(error).__name__}: {str(error)[:200]}")
        else:
            outcome = "ok" if response.status_code == 200 else f"HTTP {response.status_code}"
    return outcome


# -- deciding the invariants ----------------------------------------------------------


def _in_window(events: list[Any], start: float, end: float) -> list[Any]:
    return [event for event in events if start <= event[0] < end]


def _decide(
    run: _Run,
    *,
    server_stats: dict[str, Any],
    check: _LogCheck,
    fds: tuple[tuple[int, int], tuple[int, int]],
    tasks: tuple[int, int],
    memory_peak: int,
    auth_statistics: dict[str, Any],
    cache_statistics: Any,
) -> SoakReport:
    config = run.config
    meter = run.meter
    schedule = meter.schedule
    keys = meter.keys
    lifetime = config.token_lifetime
    invariants: list[Invariant] = []
    figures: dict[str, Any] = {}

    def add(name: str, holds: bool, measured: str, bound: str) -> None:
        invariants.append(Invariant(name, holds, measured, bound))

    total = sum(meter.outcomes.values())
    figures["requests"] = total
    figures["outcomes"] = dict(meter.outcomes.most_common())
    figures["success_ratio"] = meter.outcomes["ok"] / total if total else 0.0
    durations = sorted(meter.durations)
    if durations:
        figures["duration_p50_s"] = durations[len(durations) // 2]
        figures["duration_p99_s"] = durations[min(len(durations) - 1, int(len(durations) * 0.99))]
    figures["duration_max_s"] = meter.max_duration
    figures["loop_lag_max_s"] = meter.max_loop_lag
    figures["requests_in_flight_max"] = meter.max_requests_in_flight
    figures["cache_waiters_max_sampled"] = meter.max_waiters

    hung = meter.outcomes["deadline exceeded"]
    add(
        "every request ends within its deadline",
        hung == 0 and meter.max_duration <= config.request_deadline,
        f"{hung} past the deadline; longest {meter.max_duration:.2f} s",
        f"0; {config.request_deadline:g} s",
    )
    undocumented = {o: n for o, n in meter.outcomes.items() if o.startswith("unexpected ")}
    add(
        "every request ends in success or a documented error",
        not undocumented,
        ", ".join(f"{o}: {n}" for o, n in undocumented.items()) or "none undocumented",
        "success, an HTTP response, RefreshError or httpx.TransportError",
    )
    figures["unexpected_samples"] = meter.unexpected

    add(
        "at most one refresh in flight per key",
        meter.max_in_flight <= 1,
        f"max {meter.max_in_flight} fetch() at once for one key; "
        f"max {meter.max_cache_in_flight} in the cache over {len(keys)} keys",
        "1 per key",
    )

    # Refreshes per token lifetime, over the calm phases: the cache renews each key
    # ahead of expiry, about every half of its usable life, never once per caller.
    events = server_stats["token_events"]
    calm = [phase for phase in schedule.phases if phase.kind == "calm"]
    calm_seconds = sum(phase.end - phase.start for phase in calm)
    calm_requests = sum(
        1
        for phase in calm
        for event in _in_window(events, phase.start, phase.end)
        if event[2] != "revoked"
    )
    per_lifetime = calm_requests / len(keys) / (calm_seconds / lifetime) if calm_seconds else 0.0
    figures["token_requests_per_key_per_lifetime_calm"] = per_lifetime
    tasks_per_key = config.tasks / len(keys)
    add(
        "refreshes per token lifetime per key (calm phases)",
        per_lifetime <= 5.0,
        f"{per_lifetime:.2f} (with {tasks_per_key:.0f} tasks per key)",
        "<= 5",
    )

    # Token-endpoint requests per outage, per key.
    outage_rows = []
    worst_outage = 0
    for phase in schedule.outages():
        window = [e for e in _in_window(events, phase.start, phase.end) if e[2] != "revoked"]
        by_key = Counter(e[1] for e in window)
        most = max(by_key.values(), default=0)
        worst_outage = max(worst_outage, most)
        outage_rows.append(
            {
                "kind": phase.kind,
                "seconds": round(phase.end - phase.start, 2),
                "requests": len(window),
                "max_per_key": most,
            }
        )
    figures["outages"] = outage_rows
    add(
        "token-endpoint requests per outage per key",
        worst_outage <= 20,
        f"max {worst_outage} (with {tasks_per_key:.0f} tasks per key)",
        "<= 20",
    )

    early = server_stats["retry_after_early"]
    add(
        "Retry-After of a 429 is honoured",
        early == 0,
        f"{early} token requests before the time the server asked for",
        "0",
    )

    max_attempts = server_stats["max_attempts"]
    rejected = sum(stat.rejected for stat in auth_statistics.values())
    retried = sum(stat.retried for stat in auth_statistics.values())
    figures["api_unauthorized"] = server_stats["api_unauthorized"]
    figures["auth_rejected"] = rejected
    figures["auth_retried"] = retried
    add(
        "no 401 loop: a request is sent at most twice",
        max_attempts <= 2,
        f"max {max_attempts} attempts of one request; {rejected} rejections, {retried} resent",
        "<= 2",
    )

    recoveries = []
    missing = 0
    for end in meter.outage_ends:
        if end >= schedule.seconds - 1e-9:
            continue
        for key in keys:
            value = meter.first_success_after.get((key, end))
            if value is None:
                missing += 1
            else:
                recoveries.append(value)
    worst_recovery = max(recoveries, default=0.0)
    figures["recovery_max_s"] = worst_recovery
    figures["recovery_mean_s"] = statistics.fmean(recoveries) if recoveries else 0.0
    add(
        "recovery after the endpoint comes back",
        missing == 0 and worst_recovery <= config.recovery_bound,
        f"max {worst_recovery:.2f} s, mean {figures['recovery_mean_s']:.2f} s; "
        f"{missing} key/outage pairs without a success",
        f"<= {config.recovery_bound:g} s",
    )

    (fds_before, sockets_before), (fds_after, sockets_after) = fds
    add(
        "no leaked sockets or file descriptors",
        fds_after <= fds_before and sockets_after <= sockets_before,
        f"fds {fds_before} -> {fds_after}, sockets {sockets_before} -> {sockets_after}",
        "no increase",
    )
    tasks_before, tasks_after = tasks
    add(
        "no leaked tasks",
        tasks_after <= tasks_before,
        f"tasks {tasks_before} -> {tasks_after}",
        "no increase",
    )

    if config.trace_memory:
        growth, first_mib, last_mib = _memory_growth(meter.memory, schedule)
        figures["memory_first_calm_mib"] = first_mib
        figures["memory_last_calm_mib"] = last_mib
        figures["memory_peak_mib"] = memory_peak / 2**20
        add(
            "memory flat over the run (tracemalloc)",
            growth <= 0.10,
            f"{first_mib:.1f} MiB -> {last_mib:.1f} MiB ({growth:+.1%})",
            "<= +10 %",
        )

    figures["log_records"] = check.records
    figures["log_records_by_logger"] = dict(check.by_logger)
    add(
        "no secret in any log record",
        check.leaks == 0 and check.records > 0,
        f"{check.leaks} of {check.records} records; " + "; ".join(check.samples),
        "0",
    )

    jump_rows, jump_ok = _jump_windows(run, events, server_stats)
    figures["wall_clock_jumps"] = jump_rows
    if schedule.jumps:
        add(
            "a wall-clock jump of an hour changes nothing",
            jump_ok,
            "; ".join(
                f"{row['step']:+g} s: {row['token_requests_per_key_per_lifetime']:.1f} token "
                f"requests per key per lifetime, {row['expired_401_share']:.1%} expired-token "
                f"401s in the next {row['window_s']:g} s"
                for row in jump_rows
            ),
            "<= 5 per key per lifetime; <= 5 % expired-token 401s",
        )

    figures["server"] = {
        key: value
        for key, value in server_stats.items()
        if key not in {"token_events", "unauthorized_events"}
    }
    figures["cache"] = {
        "refreshes": cache_statistics.refreshes,
        "failures": cache_statistics.failures,
        "fetches": cache_statistics.fetches,
        "hits": cache_statistics.hits,
        "misses": cache_statistics.misses,
    }
    figures["events"] = dict(meter.events)
    return SoakReport(sniffio.current_async_library(), config, 0.0, invariants, figures)


def _memory_growth(
    samples: list[tuple[float, int]], schedule: FaultSchedule
) -> tuple[float, float, float]:
    """Compare memory in use in the first calm phase (after 2 s of warm-up) and the last."""
    calm = [phase for phase in schedule.phases if phase.kind == "calm"]
    first, last = calm[0], calm[-1]
    warm_up = min(2.0, (first.end - first.start) / 2)
    early = [size for at, size in samples if first.start + warm_up <= at < first.end]
    late = [size for at, size in samples if last.start <= at < last.end]
    if not early or not late:
        return 0.0, 0.0, 0.0
    early_mean, late_mean = statistics.fmean(early), statistics.fmean(late)
    return late_mean / early_mean - 1.0, early_mean / 2**20, late_mean / 2**20


def _jump_windows(
    run: _Run, events: list[Any], server_stats: dict[str, Any]
) -> tuple[list[dict[str, Any]], bool]:
    """Check the seconds after each wall-clock jump for what a clock bug would cause.

    A cache that read expiry from the wall clock would see every token expired after a
    jump forward (a burst of token requests) and would keep expired tokens after a jump
    back (a burst of expired-token 401s). Each window must show neither: at most 5
    token requests per key per token lifetime, and at most 5 % expired-token 401s.
    """
    schedule = run.meter.schedule
    keys = len(run.meter.keys)
    lifetime = run.config.token_lifetime
    window = max(1.5 * lifetime, 1.0)
    unauthorized = server_stats["unauthorized_events"]
    per_second = {int(second): n for second, n in server_stats["api_per_second"].items()}
    rows = []
    ok = True
    for at, step in schedule.jumps:
        end = min(at + window, schedule.seconds)
        seconds = max(end - at, 1e-9)
        requests = sum(1 for e in _in_window(events, at, end) if e[2] != "revoked") / keys
        expired = sum(1 for e in _in_window(unauthorized, at, end) if e[1] == "expired")
        api_requests = sum(n for second, n in per_second.items() if at <= second + 0.5 < end)
        expired_share = expired / api_requests if api_requests else 0.0
        per_lifetime = requests / (seconds / lifetime)
        holds = per_lifetime <= 5.0 and expired_share <= 0.05
        ok = ok and holds
        rows.append(
            {
                "at_s": round(at, 2),
                "step": step,
                "window_s": round(seconds, 2),
                "token_requests_per_key_per_lifetime": per_lifetime,
                "expired_401": expired,
                "api_requests": api_requests,
                "expired_401_share": expired_share,
            }
        )
    return rows, ok


# -- the report ------------------------------------------------------------------------


def describe_machine() -> str:
    """Return the CPU count, CPU model, memory and Python of this machine, in one line."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown memory"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory}, Python {platform.python_version()} "
        f"on {platform.system()}"
    )


def format_report(report: SoakReport) -> str:
    """Format a report as text: the run, its invariants, and its figures."""
    config = report.config
    figures = report.figures
    lines = [
        f"soak run on {report.backend}: {config.tasks} tasks, {config.keys} keys, "
        f"{config.seconds:g} s, {config.token_lifetime:g} s tokens, "
        f"refresh timeout {config.refresh_timeout:g} s ({report.wall_seconds:.1f} s of wall time)",
        f"requests: {figures['requests']}, success ratio {figures['success_ratio']:.3f}; "
        + ", ".join(f"{outcome}: {count}" for outcome, count in figures["outcomes"].items()),
    ]
    if "duration_p50_s" in figures:
        lines.append(
            f"request duration: median {figures['duration_p50_s'] * 1000:.0f} ms, "
            f"p99 {figures['duration_p99_s'] * 1000:.0f} ms, max {figures['duration_max_s']:.2f} s"
        )
    lines.append(
        f"most requests in flight at once: {figures['requests_in_flight_max']}; "
        f"event-loop lag: max {figures['loop_lag_max_s'] * 1000:.0f} ms"
    )
    lines.append("outages (token-endpoint requests):")
    lines.extend(
        f"  {row['kind']:<9} {row['seconds']:>5g} s  {row['requests']:>4} requests, "
        f"max {row['max_per_key']} per key"
        for row in figures["outages"]
    )
    lines.append("invariants:")
    for invariant in report.invariants:
        mark = "ok  " if invariant.holds else "FAIL"
        lines.append(f"  [{mark}] {invariant.name}: {invariant.measured} (bound {invariant.bound})")
    lines.append(f"result: {'all invariants hold' if report.ok else 'INVARIANT VIOLATED'}")
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stress.soak",
        description=(
            "Run bounded soak runs against a faulty loopback token endpoint and API, "
            "check the invariants and print a report. Exits 1 if an invariant fails."
        ),
    )
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="length of each run in seconds (default 60)"
    )
    parser.add_argument(
        "--tasks", type=int, default=10_000, help="concurrent tasks, 1 to 10000 (default 10000)"
    )
    parser.add_argument("--keys", type=int, default=4, help="cache keys (default 4)")
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="target API requests per second over all tasks (default 100)",
    )
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio", "both"),
        default="both",
        help="event loop to run on (default both, one after the other)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the random choices")
    parser.add_argument(
        "--no-tracemalloc",
        action="store_true",
        help="do not measure memory with tracemalloc (which slows the run down)",
    )
    parser.add_argument("--json", type=Path, help="also write the reports as JSON to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.tasks <= 10_000:
        parser.error(f"--tasks must be between 1 and 10000, got {args.tasks}")
    if not 1 <= args.seconds <= 3600:
        parser.error(f"--seconds must be between 1 and 3600, got {args.seconds:g}")
    if not 1 <= args.keys <= args.tasks:
        parser.error(f"--keys must be between 1 and --tasks, got {args.keys}")
    if not args.rate > 0:
        parser.error(f"--rate must be positive, got {args.rate:g}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the soak on the chosen backends, print each report, and return the exit status.

    :returns: 0 when every invariant held on every backend, 1 otherwise.
    """
    args = _parse(argv)
    config = SoakConfig(
        seconds=args.seconds,
        tasks=args.tasks,
        keys=args.keys,
        rate=args.rate,
        seed=args.seed,
        trace_memory=not args.no_tracemalloc,
    )
    backends: list[Backend] = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    print(f"machine: {describe_machine()}", flush=True)
    reports = []
    for backend in backends:
        report = anyio.run(run_soak, config, backend=backend)
        reports.append(report)
        print(format_report(report), flush=True)
    if args.json is not None:
        data = [
            {
                "backend": report.backend,
                "ok": report.ok,
                "wall_seconds": report.wall_seconds,
                "invariants": [vars(invariant) for invariant in report.invariants],
                "figures": report.figures,
            }
            for report in reports
        ]
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
