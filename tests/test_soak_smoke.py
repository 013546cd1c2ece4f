"""The soak run's logic on a fake clock, in-process: it passes, and its checks can fail.

``python -m stress.soak`` runs the same logic against servers in another process on
the real clock. Here :func:`stress.faults.mock_transport` hands every request to the
servers in-process and a FakeClock with autojump makes a 60-second fault schedule take
well under a second, on asyncio and trio.
"""

from __future__ import annotations

import dataclasses
import logging

import httpx
import pytest
from stress.faults import (
    MARKER,
    FaultSchedule,
    FaultyServer,
    Reply,
    Reset,
    ServerConfig,
    ServerRequest,
    mock_transport,
)
from stress.soak import SoakConfig, main, run_soak
from stress.soak_checks import LogCheck, format_report

from tokenflight import Backoff
from tokenflight.testing import FakeClock

SMALL = SoakConfig(
    seconds=60.0,
    tasks=50,
    keys=2,
    rate=25.0,
    trace_memory=False,
    freeze_gc=False,
)


def _invariant(report_text: str, name: str) -> str:
    lines = [line for line in report_text.splitlines() if name in line]
    assert len(lines) == 1, report_text
    return lines[0]


@pytest.mark.anyio
async def test_soak_invariants_hold() -> None:
    clock = FakeClock()
    server = FaultyServer(SMALL.server_config(), clock)
    async with clock.autojump():
        report = await run_soak(SMALL, clock=clock, server=server)

    text = format_report(report)
    assert report.ok, text
    assert report.figures["requests"] > 500
    assert report.figures["outcomes"]["ok"] > 0
    # Every fault of the schedule was injected at least once.
    server_stats = report.figures["server"]
    assert set(server_stats["token_faults"]) == {"503", "429", "hang", "reset", "malformed"}
    assert server_stats["revocations"] > 0
    assert server_stats["api_unauthorized"].get("revoked", 0) > 0
    assert report.figures["log_records"] > 0


@pytest.mark.anyio
async def test_soak_without_backoff_fails() -> None:
    # Without spacing between attempts, an outage draws a flood of token requests: the
    # check that allows a handful per outage must catch it.
    no_backoff = Backoff(initial=0.01, multiplier=1.0, maximum=0.01, jitter=0.0)
    config = SoakConfig(
        seconds=60.0,
        tasks=50,
        keys=2,
        rate=25.0,
        trace_memory=False,
        freeze_gc=False,
        backoff=no_backoff,
        cooldown=no_backoff,
    )
    clock = FakeClock()
    server = FaultyServer(config.server_config(), clock)
    async with clock.autojump():
        report = await run_soak(config, clock=clock, server=server)

    text = format_report(report)
    assert not report.ok
    assert "[FAIL] token-endpoint requests per outage per key" in _invariant(
        text, "token-endpoint requests per outage"
    )


class WallBoundClock:
    """A clock whose monotonic time jumps with the wall clock of ``base``.

    Given to the cache and the token sources, it makes them behave like a cache that
    computes expiries from the wall clock. ``offset`` is the sum of the jumps so far.
    """

    def __init__(self, base: FakeClock) -> None:
        self.base = base
        self.offset = 0.0

    def monotonic(self) -> float:
        return self.base.monotonic() + self.offset

    def time(self) -> float:
        return self.base.time()

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)


class JumpObservingClock(FakeClock):
    """A FakeClock that adds each wall-clock jump to its followers' offsets."""

    def __init__(self) -> None:
        super().__init__()
        self.followers: list[WallBoundClock] = []

    def jump_wall(self, seconds: float) -> None:
        super().jump_wall(seconds)
        for follower in self.followers:
            follower.offset += seconds


@pytest.mark.anyio
async def test_soak_catches_wall_clock_expiry() -> None:
    # After the jump back, a cache on wall time keeps its tokens an hour too long, and the
    # API rejects them as expired: the jump check must fail. With four keys, about one
    # expired token per key shows up after the jump.
    config = dataclasses.replace(SMALL, keys=4, tasks=100, rate=50.0)
    clock = JumpObservingClock()
    library_clock = WallBoundClock(clock)
    clock.followers.append(library_clock)
    server = FaultyServer(config.server_config(), clock)
    async with clock.autojump():
        report = await run_soak(config, clock=clock, server=server, library_clock=library_clock)

    text = format_report(report)
    assert not report.ok
    assert "[FAIL] a wall-clock jump of an hour changes nothing" in _invariant(
        text, "wall-clock jump"
    )


def test_log_check_finds_marker() -> None:
    config = ServerConfig.create()
    check = LogCheck(config.client_id, config.client_secret)
    record = logging.LogRecord(
        "tokenflight", logging.DEBUG, __file__, 1, "sent %s", (f"{MARKER}.k.1.abc",), None
    )

    check.emit(record)

    assert check.records == 1
    assert check.leaks == 1
    assert MARKER not in check.samples[0]


def test_log_check_finds_basic_header() -> None:
    config = ServerConfig.create()
    check = LogCheck(config.client_id, config.client_secret)
    basic = httpx.BasicAuth(config.client_id, config.client_secret)
    header = next(basic.auth_flow(httpx.Request("GET", "http://127.0.0.1/"))).headers[
        "Authorization"
    ]
    record = logging.LogRecord("httpx", logging.INFO, __file__, 1, header, None, None)

    check.emit(record)

    assert check.leaks == 1


def test_schedule_covers_run() -> None:
    schedule = FaultSchedule.build(60.0)

    assert schedule.phases[0].start == 0.0
    assert schedule.phases[-1].end == 60.0
    for before, after in zip(schedule.phases, schedule.phases[1:], strict=False):
        assert before.end == pytest.approx(after.start)
    kinds = {phase.kind for phase in schedule.phases}
    assert kinds == {"calm", "latency", "5xx", "429", "hang", "reset", "malformed"}
    assert [step for _, step in schedule.jumps] == [3600.0, -3600.0]
    for at, _ in schedule.jumps:
        assert schedule.phase_at(at).kind == "calm"


def test_schedule_repeats_cycle() -> None:
    schedule = FaultSchedule.build(180.0)

    assert len(schedule.outages()) == 3 * len(FaultSchedule.build(60.0).outages())
    assert schedule.phase_at(-1.0).kind == "calm"
    assert schedule.phase_at(500.0).kind == "calm"


def test_schedule_rejects_zero_length() -> None:
    with pytest.raises(ValueError, match="positive length"):
        FaultSchedule.build(0.0)


def _token_request(config: ServerConfig, scope: str) -> ServerRequest:
    basic = httpx.BasicAuth(config.client_id, config.client_secret)
    header = next(basic.auth_flow(httpx.Request("POST", "http://127.0.0.1/token"))).headers[
        "Authorization"
    ]
    body = f"grant_type=client_credentials&scope={scope}".encode()
    return ServerRequest("POST", "/token", {"authorization": header}, body)


@pytest.mark.anyio
async def test_server_counts_early_retry() -> None:
    clock = FakeClock()
    config = ServerConfig.create(seconds=60.0, retry_after=2)
    server = FaultyServer(config, clock)
    server.start()
    phase = next(phase for phase in server.schedule.phases if phase.kind == "429")
    await clock.advance(phase.start + 0.1)

    first = await server.handle(_token_request(config, "a"))
    await clock.advance(0.5)
    second = await server.handle(_token_request(config, "a"))

    assert isinstance(first, Reply)
    assert first.status == 429
    assert ("retry-after", "2") in first.headers
    assert isinstance(second, Reply)
    assert server.stats()["retry_after_early"] == 1


@pytest.mark.anyio
async def test_server_resets_in_reset_phase() -> None:
    clock = FakeClock()
    config = ServerConfig.create(seconds=60.0)
    server = FaultyServer(config, clock)
    server.start()
    phase = next(phase for phase in server.schedule.phases if phase.kind == "reset")
    await clock.advance(phase.start + 0.1)

    reply = await server.handle(_token_request(config, "a"))

    assert isinstance(reply, Reset)
    with pytest.raises(httpx.ReadError):
        async with httpx.AsyncClient(transport=mock_transport(server)) as client:
            await client.post("http://127.0.0.1/token", content=b"scope=a")


@pytest.mark.anyio
async def test_server_rejects_expired_token() -> None:
    clock = FakeClock()
    config = ServerConfig.create(seconds=60.0, revocations_per_second=0.0)
    server = FaultyServer(config, clock)
    server.start()
    issued = await server.handle(_token_request(config, "a"))
    assert isinstance(issued, Reply)
    token = httpx.Response(200, content=issued.body).json()["access_token"]
    api = ServerRequest("GET", "/api/resource", {"authorization": f"Bearer {token}"}, b"")

    accepted = await server.handle(api)
    await clock.advance(config.token_lifetime + config.leeway + 0.1)
    expired = await server.handle(api)

    assert isinstance(accepted, Reply)
    assert accepted.status == 200
    assert isinstance(expired, Reply)
    assert expired.status == 401
    assert server.stats()["api_unauthorized"] == {"expired": 1}


def test_main_rejects_too_many_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--tasks", "20000"])

    assert raised.value.code == 2
    assert "--tasks must be between 1 and 10000" in capsys.readouterr().err
