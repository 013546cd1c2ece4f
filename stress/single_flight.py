"""The single-flight stress run: thousands of tasks, short-lived tokens, one fetch per expiry.

:func:`run_stress` starts ``tasks`` tasks that each call ``cache.get()`` in a loop, with a
short random pause between calls, against an in-process token source whose tokens live
a few seconds and whose fetch takes a few milliseconds. Over the run the token expires
many times. The source and the tasks check, as they go:

* **at most one fetch in flight** at any moment;
* **no duplicate fetch**: each fetch starts no earlier than the earliest moment the
  previous token could enter its refresh-ahead window, so no expiry is fetched twice;
* **no unusable token**: every token a task gets is still inside its usable life (its
  lifetime minus the cache's margin) at the moment it is returned, so no expiry is
  missed;
* **every call answered**: no call fails, and every task finishes before the run's
  deadline plus a grace period.

The run takes a :class:`tokenflight.Clock`: the real one from the command line, or a
:class:`tokenflight.testing.FakeClock` in the tests. ``python -m stress`` runs it on
asyncio and on trio, inside and outside ``async with cache:``, and prints a report.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import anyio

from tokenflight import Clock, RefreshError, RefreshPolicy, SystemClock, Token, TokenCache

__all__ = [
    "CacheFactory",
    "CacheLike",
    "CountingSource",
    "StressConfig",
    "StressReport",
    "expected_fetches",
    "main",
    "run_stress",
]

BACKENDS = ("asyncio", "trio")


@dataclass(frozen=True)
class StressConfig:
    """Settings of one stress run; times are in seconds of the given clock.

    :param tasks: concurrent tasks calling ``get()``.
    :param seconds: how long the tasks keep calling.
    :param lifetime: ``expires_in`` of every token.
    :param fetch_delay: how long each fetch takes.
    :param pause: shortest and longest random pause between two calls of one task.
    :param max_calls: most calls one task makes, so a run is bounded in count too.
    :param skew: the cache's skew, sized for the short lifetime.
    :param refresh_ahead: the cache's refresh-ahead window, sized for the short lifetime.
    :param entered: whether the run happens inside ``async with cache:``.
    :param grace: how long after ``seconds`` every task must have finished.
    :param seed: seed of the pauses' random numbers.
    """

    tasks: int = 10_000
    seconds: float = 12.0
    lifetime: float = 2.0
    fetch_delay: float = 0.005
    pause: tuple[float, float] = (1.0, 3.0)
    max_calls: int = 1_000
    skew: float = 0.5
    refresh_ahead: float = 0.5
    entered: bool = True
    grace: float = 10.0
    seed: int = 0

    def policy(self) -> RefreshPolicy:
        """Return the cache's timing settings for this run."""
        return RefreshPolicy(skew=self.skew, refresh_ahead=self.refresh_ahead)


@dataclass
class StressReport:
    """What one run did and which invariants it broke (``violations``; empty is good)."""

    backend: str
    entered: bool
    tasks: int
    elapsed: float = 0.0
    calls: int = 0
    fetches: int = 0
    max_in_flight: int = 0
    unused_tokens: int = 0
    finished_tasks: int = 0
    # Each broken invariant, by kind: how often it broke and its first occurrence.
    broken: dict[str, tuple[int, str]] = field(default_factory=dict)

    def violate(self, kind: str, detail: str) -> None:
        """Count one breach of invariant ``kind``, keeping the first one's ``detail``."""
        count, first = self.broken.get(kind, (0, detail))
        self.broken[kind] = (count + 1, first)

    @property
    def violations(self) -> list[str]:
        """One line per broken invariant: its kind, count and first occurrence."""
        return [
            f"{kind} ({count}x; first: {first})" for kind, (count, first) in self.broken.items()
        ]


class CacheLike(Protocol):
    """The part of :class:`tokenflight.TokenCache` the run uses; tests pass broken ones."""

    async def get(self) -> Token: ...

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None: ...


@dataclass
class _Issued:
    sent: float
    usable_until: float
    earliest_refresh: float
    handed_out: int = 0


class CountingSource:
    """An in-process token source that checks single flight as it is called."""

    def __init__(self, clock: Clock, config: StressConfig, report: StressReport) -> None:
        self._clock = clock
        self._config = config
        self._report = report
        self._policy = config.policy()
        self._in_flight = 0
        self._tolerance = min(0.05, config.lifetime / 100)
        self.issued: dict[Token, _Issued] = {}
        self._last: _Issued | None = None

    async def fetch(self) -> Token:
        report = self._report
        sent = self._clock.monotonic()
        report.fetches += 1
        self._in_flight += 1
        report.max_in_flight = max(report.max_in_flight, self._in_flight)
        if self._in_flight > 1:
            report.violate("fetches in flight", f"t={sent:.3f}: {self._in_flight} at once")
        last = self._last
        # The cache reads the clock just before it calls fetch(), so ``sent`` here can be a
        # little later than its own; the tolerance covers that, and a duplicate fetch
        # starts about a whole refresh period too early, far more than the tolerance.
        if last is not None and sent < last.earliest_refresh - self._tolerance:
            report.violate(
                "duplicate fetch",
                f"t={sent:.3f}: the previous token could not be due before "
                f"t={last.earliest_refresh:.3f}",
            )
        try:
            await self._clock.sleep(self._config.fetch_delay)
        finally:
            self._in_flight -= 1

        lifetime = self._config.lifetime
        usable_until = sent + lifetime - self._policy.margin(lifetime)
        window = min(self._policy.refresh_ahead, (usable_until - sent) / 2)
        issued = _Issued(sent, usable_until, usable_until - window)
        token = Token(f"stress-{report.fetches}", expires_in=lifetime)
        self.issued[token] = issued
        self._last = issued
        return token


def _default_cache(source: CountingSource, clock: Clock, config: StressConfig) -> CacheLike:
    return TokenCache(source, clock=clock, skew=config.skew, refresh_ahead=config.refresh_ahead)


CacheFactory = Callable[[CountingSource, Clock, StressConfig], CacheLike]


async def run_stress(
    config: StressConfig,
    clock: Clock,
    *,
    cache_factory: CacheFactory = _default_cache,
) -> StressReport:
    """Run one stress run on the current event loop and return its report.

    :param config: the run's settings.
    :param clock: the clock of both the cache and the run.
    :param cache_factory: builds the cache under test from the source, the clock and the
        settings; the tests pass deliberately broken caches to see the checks fail.
    """
    report = StressReport(anyio_backend_name(), config.entered, config.tasks)
    source = CountingSource(clock, config, report)
    cache = cache_factory(source, clock, config)
    randoms = random.Random(config.seed)
    started = clock.monotonic()
    end = started + config.seconds

    async def worker(pauses: list[float]) -> None:
        calls = 0
        while calls < config.max_calls and clock.monotonic() < end:
            called = clock.monotonic()
            try:
                token = await cache.get()
            except RefreshError as error:
                report.violate("failed call", f"t={called:.3f}: {type(error).__name__}")
                break
            calls += 1
            issued = source.issued.get(token)
            # The cache judges the token at some instant of the call; on a real clock a
            # garbage collection can pause the task between that instant and the return,
            # so the token must be usable when the call began, not when it returned.
            if issued is None:
                report.violate("foreign token", f"t={called:.3f}: never issued by the source")
            elif called >= issued.usable_until:
                report.violate(
                    "unusable token",
                    f"t={called:.3f}: returned a token unusable since t={issued.usable_until:.3f}",
                )
            else:
                issued.handed_out += 1
            # No pause runs past the end, so a run lasts ``seconds`` and not a pause more.
            await clock.sleep(min(pauses[calls % len(pauses)], max(end - clock.monotonic(), 0.0)))
        report.calls += calls
        report.finished_tasks += 1

    async def run_workers() -> None:
        async with anyio.create_task_group() as workers:
            for _ in range(config.tasks):
                # A few pauses per task, drawn up front, keep the hot loop free of the
                # random number generator.
                pauses = [randoms.uniform(*config.pause) for _ in range(8)]
                workers.start_soon(worker, pauses)

    async with anyio.create_task_group() as guard:

        async def stop_at_deadline() -> None:
            await clock.sleep(config.seconds + config.grace)
            guard.cancel_scope.cancel()

        guard.start_soon(stop_at_deadline)
        if config.entered:
            async with cache:
                await run_workers()
        else:
            await run_workers()
        guard.cancel_scope.cancel()

    report.elapsed = clock.monotonic() - started
    if report.finished_tasks < config.tasks:
        report.violate(
            "unanswered call",
            f"{config.tasks - report.finished_tasks} tasks were still waiting "
            f"{config.grace:g} s after the run's end",
        )
    tokens = sorted(source.issued.values(), key=lambda issued: issued.sent)
    report.unused_tokens = sum(1 for issued in tokens[:-1] if issued.handed_out == 0)
    return report


def anyio_backend_name() -> str:
    """Return the name of the running async library."""
    import sniffio

    return sniffio.current_async_library()


def expected_fetches(config: StressConfig, seconds: float) -> float:
    """Return roughly how many fetches ``seconds`` of calls need: one per refresh period.

    A token is replaced once it reaches its refresh-ahead window, on average
    ``refresh_jitter / 2`` of the window later than its earliest point.
    """
    policy = config.policy()
    usable = config.lifetime - policy.margin(config.lifetime)
    window = min(policy.refresh_ahead, usable / 2)
    period = usable - window * (1 - policy.refresh_jitter / 2) + config.fetch_delay
    return seconds / period


def _format(reports: Sequence[StressReport], config: StressConfig) -> str:
    lines = [
        f"single-flight stress: {config.tasks} tasks, {config.lifetime:g} s tokens, "
        f"{config.fetch_delay * 1000:g} ms fetches",
        "",
        f"{'backend':<8} {'cache':<8} {'seconds':>7} {'calls':>9} {'fetches':>7} "
        f"{'expected':>8} {'max in flight':>13} {'unused':>6}  result",
    ]
    for report in reports:
        expected = expected_fetches(config, config.seconds)
        mode = "entered" if report.entered else "bare"
        result = "ok" if not report.broken else "INVARIANT BROKEN"
        lines.append(
            f"{report.backend:<8} {mode:<8} {report.elapsed:>7.1f} {report.calls:>9} "
            f"{report.fetches:>7} {expected:>8.1f} {report.max_in_flight:>13} "
            f"{report.unused_tokens:>6}  {result}"
        )
    for report in reports:
        for violation in report.violations:
            mode = "entered" if report.entered else "bare"
            lines.append(f"  {report.backend}/{mode}: {violation}")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stress",
        description=(
            "Check single flight under load: many tasks share a cache whose short-lived "
            "tokens expire many times, on asyncio and trio, with and without "
            "'async with cache'. Exits with status 1 if an invariant is broken."
        ),
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="total time budget in seconds, split between the runs (default 60)",
    )
    parser.add_argument(
        "--tasks", type=int, default=10_000, help="concurrent tasks per run (default 10000)"
    )
    parser.add_argument(
        "--backend",
        choices=[*BACKENDS, "both"],
        default="both",
        help="event loop to run on (default both)",
    )
    arguments = parser.parse_args(argv)
    if not arguments.seconds > 0 or not math.isfinite(arguments.seconds):
        parser.error(f"--seconds must be a positive number, got {arguments.seconds}")
    if arguments.tasks < 1:
        parser.error(f"--tasks must be at least 1, got {arguments.tasks}")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stress runs from the command line and print the report.

    :returns: 0 when every invariant held, 1 otherwise.
    """
    arguments = _parse(argv)
    backends = BACKENDS if arguments.backend == "both" else (arguments.backend,)
    modes = (True, False)
    runs = len(backends) * len(modes)
    # Starting and stopping 10,000 tasks takes about a second per run; a fifth of the
    # budget is left for that.
    config = StressConfig(tasks=arguments.tasks, seconds=arguments.seconds * 0.8 / runs)

    reports: list[StressReport] = []
    wall_started = time.monotonic()
    for backend in backends:
        for entered in modes:
            run_config = StressConfig(tasks=config.tasks, seconds=config.seconds, entered=entered)
            reports.append(anyio.run(run_stress, run_config, SystemClock(), backend=backend))
    print(_format(reports, config))
    print(f"\ntotal wall time {time.monotonic() - wall_started:.1f} s")
    return 1 if any(report.broken for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
