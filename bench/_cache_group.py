"""Benchmark group ``cache``: the cost of the cache itself, without HTTP.

* A fresh-token ``get()`` against a bare coroutine that does what the least possible
  cache must do: one dict look-up and one monotonic clock read.
* 10,000 concurrent callers on a cold cache whose fetch takes 50 ms, against the least
  possible time for that: 10,000 tasks waiting on one event set after 50 ms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Hashable

import anyio

from tokenflight import Token, TokenCache

from ._harness import Profile, collect_garbage, with_heartbeat
from ._results import Goal, GroupResult, Table
from ._stats import format_ratio, summarize

__all__ = ["run"]

BACKENDS = ("asyncio", "trio")
FETCH_SECONDS = 0.05


async def _per_call_seconds(call: Callable[[], Awaitable[object]], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        await call()
    return (time.perf_counter_ns() - start) / calls / 1e9


def _bare_lookup() -> Callable[[], Awaitable[Token]]:
    token = Token("bare-token", expires_in=3600)
    table: dict[Hashable, tuple[Token, float]] = {None: (token, math.inf)}
    monotonic = time.monotonic

    async def lookup(key: Hashable = None) -> Token:
        entry = table.get(key)
        if entry is not None and monotonic() < entry[1]:
            return entry[0]
        raise LookupError(key)

    return lookup


async def _fresh_get_rounds(rounds: int, calls: int) -> tuple[list[float], list[float]]:
    async def fetch() -> Token:
        return Token("cached-token", expires_in=3600)

    cache = TokenCache(fetch)
    await cache.get()
    bare = _bare_lookup()
    cache_times: list[float] = []
    bare_times: list[float] = []
    for _ in range(rounds):
        collect_garbage()
        bare_times.append(await _per_call_seconds(bare, calls))
        collect_garbage()
        cache_times.append(await _per_call_seconds(cache.get, calls))
    return cache_times, bare_times


async def _cold_burst(callers: int, entered: bool) -> tuple[float, int, float]:
    fetches = 0

    async def fetch() -> Token:
        nonlocal fetches
        fetches += 1
        await anyio.sleep(FETCH_SECONDS)
        return Token("cold-start-token", expires_in=3600)

    cache = TokenCache(fetch)

    async def burst() -> float:
        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            for _ in range(callers):
                group.start_soon(cache.get)
        return time.perf_counter() - start

    collect_garbage()
    if entered:
        async with cache:
            wall, stall = await with_heartbeat(burst)
    else:
        wall, stall = await with_heartbeat(burst)
    return wall, fetches, stall


async def _ideal_burst(callers: int) -> tuple[float, int, float]:
    """Wait 50 ms once, then wake every caller: the floor for a cold-cache burst."""
    event = anyio.Event()

    async def set_after_fetch() -> None:
        await anyio.sleep(FETCH_SECONDS)
        event.set()

    async def burst() -> float:
        start = time.perf_counter()
        async with anyio.create_task_group() as group:
            group.start_soon(set_after_fetch)
            for _ in range(callers):
                group.start_soon(event.wait)
        return time.perf_counter() - start

    collect_garbage()
    wall, stall = await with_heartbeat(burst)
    return wall, 1, stall


def run(profile: Profile) -> GroupResult:
    """Measure the fresh-token path and the cold-cache burst on asyncio and trio."""
    calls = profile.pick(50_000, 300_000)
    callers = 10_000
    result = GroupResult(
        name="cache",
        title="The cache alone",
        description=(
            "No HTTP: the cost of `TokenCache.get()` itself. A fresh-token `get()` is timed "
            f"over {calls:,} sequential awaits per round against a bare coroutine that does "
            "one dict look-up and one `time.monotonic()` read. The cold burst starts "
            f"{callers:,} tasks calling `get()` on an empty cache whose fetch sleeps "
            f"{FETCH_SECONDS * 1000:.0f} ms; its floor is the same number of tasks waiting on "
            "one event that a task sets after the same sleep. The stall column is the "
            "longest delay of a 1 ms heartbeat task during the burst; the harness's own loop "
            "that starts the tasks counts in it, for the floor as well."
        ),
    )

    fresh = Table(
        "Fresh-token get(): time per call",
        [
            "backend",
            "bare look-up (ns)",
            "TokenCache.get() (ns)",
            "ratio to bare look-up",
            "ratio, best rounds",
        ],
    )
    burst = Table(
        f"{callers:,} concurrent callers, cold cache, {FETCH_SECONDS * 1000:.0f} ms fetch",
        [
            "backend",
            "variant",
            "fetches",
            "wall time (ms)",
            "ratio to floor",
            "ratio, best rounds",
            "max stall (ms)",
        ],
    )
    worst_fresh = 0.0
    worst_fresh_best = 0.0
    worst_burst = 0.0
    worst_burst_best = 0.0
    fetch_counts: set[int] = set()
    for backend in BACKENDS:
        cache_times, bare_times = anyio.run(
            _fresh_get_rounds, profile.rounds, calls, backend=backend
        )
        cache_summary = summarize(cache_times)
        bare_summary = summarize(bare_times)
        worst_fresh = max(worst_fresh, cache_summary.median / bare_summary.median)
        worst_fresh_best = max(worst_fresh_best, cache_summary.minimum / bare_summary.minimum)
        fresh.rows.append(
            [
                backend,
                bare_summary.format(0, 1e9),
                cache_summary.format(0, 1e9),
                format_ratio(cache_summary.median, bare_summary.median),
                format_ratio(cache_summary.minimum, bare_summary.minimum),
            ]
        )
        result.raw[f"fresh_get_{backend}"] = {
            "cache": cache_summary.to_json(),
            "bare": bare_summary.to_json(),
        }

        floor_label = "floor: one event, 50 ms"
        labels = {
            floor_label: None,
            "TokenCache, `async with cache:`": True,
            "TokenCache, cache not entered": False,
        }
        samples: dict[str, list[tuple[float, int, float]]] = {label: [] for label in labels}
        for _ in range(profile.rounds):
            # The floor and both modes take turns, so a slow spell hits them alike.
            for label, entered in labels.items():
                if entered is None:
                    sample = anyio.run(_ideal_burst, callers, backend=backend)
                else:
                    sample = anyio.run(_cold_burst, callers, entered, backend=backend)
                samples[label].append(sample)
        floor_wall = summarize([wall for wall, _, _ in samples[floor_label]])
        rows = list(samples.items())
        for label, runs in rows:
            if label == floor_label:
                continue
            wall = summarize([wall for wall, _, _ in runs])
            worst_burst = max(worst_burst, wall.median / floor_wall.median)
            worst_burst_best = max(worst_burst_best, wall.minimum / floor_wall.minimum)
            fetch_counts.update(fetches for _, fetches, _ in runs)
        for label, runs in rows:
            wall = summarize([wall for wall, _, _ in runs])
            fetches = sorted({count for _, count, _ in runs})
            burst.rows.append(
                [
                    backend,
                    label,
                    ", ".join(str(count) for count in fetches),
                    wall.format(1, 1000),
                    format_ratio(wall.median, floor_wall.median),
                    format_ratio(wall.minimum, floor_wall.minimum),
                    summarize([stall for _, _, stall in runs]).format(1, 1000),
                ]
            )
            result.raw[f"burst_{backend}_{label}"] = {
                "wall": wall.to_json(),
                "fetches": fetches,
            }

    fresh.notes.append(
        f"{profile.rounds} rounds. Both columns include the same `for` loop and `await`. "
        "The ratios compare the medians, and the best rounds (the fastest of each), which "
        "other processes on the machine disturb least."
    )
    burst.notes.append(
        f"{profile.rounds} rounds. Fetches lists every distinct count seen over the rounds. "
        "The ratios compare the medians, and the best rounds."
    )
    result.tables += [fresh, burst]
    result.goals += [
        Goal(
            "Fresh-token get() at most 2x the bare look-up (best rounds)",
            f"best rounds {worst_fresh_best:.2f}x, medians {worst_fresh:.2f}x (worst backend)",
            worst_fresh_best <= 2.0,
        ),
        Goal(
            f"{callers:,} callers on a cold cache: exactly one fetch",
            "fetches seen: " + ", ".join(str(count) for count in sorted(fetch_counts)),
            fetch_counts == {1},
        ),
        Goal(
            f"{callers:,} callers on a cold cache: wall time at most 1.2x the floor (best rounds)",
            f"best rounds {worst_burst_best:.2f}x, medians {worst_burst:.2f}x "
            "(worst backend and mode)",
            worst_burst_best <= 1.2,
        ),
    ]
    return result
