"""A bounded soak run: many tasks, 2-second tokens, and a token endpoint that misbehaves.

Up to 10,000 tasks send requests through :class:`tokenflight.AuthClient` (one client per
cache key, all sharing one :class:`tokenflight.TokenCache` whose keys are OAuth2 scopes
fetched with :class:`tokenflight.ClientCredentials`) to a token endpoint and an API that
inject the faults of :class:`stress.faults.FaultSchedule`. The wall clock the library
reads steps an hour forward and back during the run. Invariants are checked throughout
and printed as a report; :func:`main` returns 1 when one is violated.

Each request first awaits its key's token from the cache, then waits for one of the
key's connection slots (a limiter as large as the connection pool), then sends. Waiting
for a refresh therefore never occupies a connection, and httpcore's pool, whose work
per request grows with its queue, never has a queue.

Run it with ``python -m stress.soak --seconds 60 --backend both``. The servers run in a
process of their own on 127.0.0.1 (see ``stress/faults.py``); :func:`run_soak` with a
:class:`tokenflight.testing.FakeClock` and :func:`stress.faults.mock_transport` runs the
same logic in-process, as the tests do.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import random
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from dataclasses import dataclass
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
    ClientCredentials,
    Clock,
    RefreshError,
    SystemClock,
    Token,
    TokenCache,
)
from tokenflight.testing import FakeClock

from .faults import FaultSchedule, FaultyServer, ServerConfig, mock_transport
from .soak_checks import (
    Invariant,
    LogCheck,
    Meter,
    SoakReport,
    decide,
    describe_machine,
    format_report,
)

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

# Retries within one refresh, and the spacing of failed refreshes, scaled to tokens that
# live 2 s (the library's defaults suit tokens that live minutes or hours): failed
# refreshes are spaced by at most one token lifetime.
_SOAK_BACKOFF = Backoff(initial=0.25, multiplier=2.0, maximum=2.0)
_SOAK_COOLDOWN = Backoff(initial=0.5, multiplier=2.0, maximum=2.0)


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
    :param backoff: the cache's delays between attempts within one refresh.
    :param cooldown: the cache's delays between failed refreshes.
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
    backoff: Backoff = _SOAK_BACKOFF
    cooldown: Backoff = _SOAK_COOLDOWN

    @property
    def http_timeout(self) -> httpx.Timeout:
        """Timeouts of one API request: connect, read, write and waiting for a connection."""
        return httpx.Timeout(5.0, connect=2.0, write=2.0, pool=5.0)

    @property
    def request_deadline(self) -> float:
        """Longest time one request may take before it counts as hung, in seconds.

        A request waits for its token, then for a connection slot, then sends; after a
        401 it waits for a new token and sends once more. Each step is bounded by the
        refresh timeout or an HTTP timeout; this is their sum plus 2 s.
        """
        timeout = self.http_timeout
        pool = timeout.pool or 0.0
        one_send = sum(
            seconds or 0.0 for seconds in (timeout.connect, timeout.write, timeout.read, pool)
        )
        return self.refresh_timeout + pool + 2 * (self.refresh_timeout + one_send) + 2.0

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
    """Cancel the block after ``seconds`` on ``clock``; see the scope's ``cancelled_caught``."""
    if isinstance(clock, FakeClock):
        async with clock.move_on_after(seconds) as scope:
            yield scope
    else:
        with anyio.move_on_after(seconds) as scope:
            yield scope


# -- what the run records ---------------------------------------------------------------


class _MeteredSource:
    """Wraps a key's token source to count its fetches and how many run at once."""

    def __init__(self, inner: ClientCredentials, key: str, meter: Meter) -> None:
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


_CAPTURED_LOGGERS = ("tokenflight", "httpx", "httpcore")


@contextlib.contextmanager
def _capture_logs(check: LogCheck) -> Iterator[None]:
    """Show every record of the run to ``check``, with these loggers at DEBUG."""
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


@dataclass
class _Run:
    """The addresses and controls of one run's servers, for :func:`_drive`."""

    config: SoakConfig
    clock: WallJumpClock
    library_clock: Clock
    server_config: ServerConfig
    meter: Meter
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
    library_clock: Clock | None = None,
) -> SoakReport:
    """Run one soak on the current event loop and return its report.

    Without ``server``, the servers run in a child process on 127.0.0.1 and the run lasts
    ``config.seconds`` of real time. With an in-process ``server`` (built from
    ``config.server_config()``), requests reach it through :func:`mock_transport`. Pass
    the same :class:`~tokenflight.testing.FakeClock` as ``clock`` and to the server, and
    run inside its ``autojump()``, to run on fake time.

    :param clock: the clock of the run, whose wall time the schedule steps.
    :param library_clock: the clock the cache and the token sources read; ``clock`` by
        default. Tests pass a faulty one to show that the checks catch it.
    """
    started = time.monotonic()
    the_clock: WallJumpClock = clock if clock is not None else JumpingClock()
    read_clock = library_clock if library_clock is not None else the_clock
    if server is not None:
        report = await _run_in_process(config, the_clock, read_clock, server)
    else:
        report = await _run_with_server_process(config, the_clock, read_clock)
    report.wall_seconds = time.monotonic() - started
    return report


async def _run_in_process(
    config: SoakConfig, clock: WallJumpClock, library_clock: Clock, server: FaultyServer
) -> SoakReport:
    def start() -> None:
        server.start()

    run = _Run(
        config=config,
        clock=clock,
        library_clock=library_clock,
        server_config=server.config,
        meter=Meter(server.schedule, _keys(config)),
        token_url="http://127.0.0.1/token",
        api_url="http://127.0.0.1",
        transport_factory=lambda: mock_transport(server),
        stats=server.stats,
        start_schedule=start,
    )
    return await _drive(run)


async def _run_with_server_process(
    config: SoakConfig, clock: WallJumpClock, library_clock: Clock
) -> SoakReport:
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
                library_clock=library_clock,
                server_config=server_config,
                meter=Meter(server_config.schedule, _keys(config)),
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

    check = LogCheck(server_config.client_id, server_config.client_secret)
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
                clock=run.library_clock,
            )
            return _MeteredSource(inner, str(key), meter)

        cache = TokenCache(
            sources=source_for,
            timeout=config.refresh_timeout,
            backoff=config.backoff,
            cooldown=config.cooldown,
            clock=run.library_clock,
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

    return decide(
        config,
        meter,
        backend=sniffio.current_async_library(),
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
    clock: Clock, meter: Meter, cache: TokenCache, config: SoakConfig, scope: anyio.CancelScope
) -> None:
    """Record, every second, the cache's refreshes in flight and, if traced, memory in use."""
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
    meter: Meter,
    config: SoakConfig,
    stop_at: float,
) -> None:
    """Send requests from one task, with a jittered pause between them, until the run ends."""
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
    meter: Meter,
) -> str:
    """Send one request; return "ok", "HTTP <status>", or the class of the error raised.

    A tokenflight :class:`RefreshError` and an :class:`httpx.TransportError` are the
    documented errors; anything else is recorded as "unexpected <class>". Waiting for a
    connection slot longer than the pool timeout counts as ``httpx.PoolTimeout``, the
    error httpx raises for the same wait in its own pool.
    """
    outcome = "deadline exceeded"
    pool_timeout = config.http_timeout.pool or 0.0
    async with _deadline(clock, config.request_deadline):
        try:
            # Wait for the key's token before taking a connection slot, so that requests
            # waiting for a refresh do not hold slots that others could send with.
            await client.cache.get(client.token_auth.key)
            acquired = False
            async with _deadline(clock, pool_timeout):
                await limiter.acquire()
                acquired = True
            if not acquired:
                return "httpx.PoolTimeout"
            try:
                response = await client.get(API_PATH, headers={"x-soak-request": request_id})
            finally:
                limiter.release()
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
