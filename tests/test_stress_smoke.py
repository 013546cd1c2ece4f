"""The single-flight stress run's core, on a fake clock: it passes, and its checks can fail.

``python -m stress`` runs the same core on the real clock; here a FakeClock with autojump
makes a 30-second run of a few hundred tasks take a moment, on asyncio and trio.
"""

from __future__ import annotations

from types import TracebackType

import anyio
import pytest
from stress.single_flight import (
    CacheFactory,
    CountingSource,
    StressConfig,
    expected_fetches,
    main,
    run_stress,
)

from tokenflight import Clock, Token
from tokenflight.testing import FakeClock

SMALL = StressConfig(tasks=200, seconds=30.0, grace=10.0)


@pytest.fixture(params=[True, False], ids=["entered", "bare"])
def entered(request: pytest.FixtureRequest) -> bool:
    """Whether the run happens inside ``async with cache:``."""
    return bool(request.param)


class BrokenCache:
    """A stand-in for TokenCache with one of the bugs the stress run must catch."""

    def __init__(self, source: CountingSource, bug: str) -> None:
        self.source = source
        self.bug = bug
        self.first: Token | None = None

    async def get(self) -> Token:
        if self.bug == "no single flight":
            return await self.source.fetch()
        if self.bug == "never refreshes":
            if self.first is None:
                self.first = await self.source.fetch()
            return self.first
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def __aenter__(self) -> BrokenCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


def broken(bug: str) -> CacheFactory:
    def factory(source: CountingSource, clock: Clock, config: StressConfig) -> BrokenCache:
        return BrokenCache(source, bug)

    return factory


@pytest.mark.anyio
async def test_stress_run_passes(entered: bool) -> None:
    clock = FakeClock()
    config = StressConfig(
        tasks=SMALL.tasks, seconds=SMALL.seconds, grace=SMALL.grace, entered=entered
    )

    async with clock.autojump():
        report = await run_stress(config, clock)

    assert report.broken == {}
    assert report.finished_tasks == config.tasks
    assert report.max_in_flight == 1
    assert report.calls > config.tasks * 5
    expected = expected_fetches(config, config.seconds)
    assert 0.8 * expected <= report.fetches <= 1.2 * expected + 1
    assert report.unused_tokens == 0


@pytest.mark.anyio
async def test_stress_catches_duplicate_fetches() -> None:
    clock = FakeClock()

    async with clock.autojump():
        report = await run_stress(SMALL, clock, cache_factory=broken("no single flight"))

    assert "fetches in flight" in report.broken
    assert "duplicate fetch" in report.broken


@pytest.mark.anyio
async def test_stress_catches_expired_token() -> None:
    clock = FakeClock()

    async with clock.autojump():
        report = await run_stress(SMALL, clock, cache_factory=broken("never refreshes"))

    assert "unusable token" in report.broken


@pytest.mark.anyio
async def test_stress_catches_hung_callers() -> None:
    clock = FakeClock()

    async with clock.autojump():
        report = await run_stress(SMALL, clock, cache_factory=broken("hangs"))

    assert clock.monotonic() == 1000.0 + SMALL.seconds + SMALL.grace
    assert report.broken == {
        "unanswered call": (1, f"{SMALL.tasks} tasks were still waiting 10 s after the run's end")
    }


@pytest.mark.parametrize(
    "argv",
    [["--seconds", "0"], ["--seconds", "nan"], ["--tasks", "0"], ["--backend", "curio"]],
)
def test_stress_rejects_bad_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)

    assert caught.value.code == 2
