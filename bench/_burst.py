"""Benchmark group ``burst``: many concurrent requests when no valid token is cached.

Two cases per variant, each on a newly opened client:

* cold start: the client has never fetched a token, and the burst starts at once;
* expiry: the client fetched a token with a 2-second lifetime, waited 2.3 s until it
  expired, and then the burst starts.

The token endpoint responds after 50 ms. The ideal is one token request, then every API
request: 50 ms plus the time the static-header baseline needs for the same burst through
the same kind of pool in the same run.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import anyio
import httpx

from ._harness import (
    Endpoint,
    LoopbackServer,
    Profile,
    collect_garbage,
    loopback_server,
    open_pool,
    with_heartbeat,
)
from ._results import Goal, GroupResult, Table
from ._stats import describe_counts, format_ratio, summarize
from ._variants import AUTHLIB, BASELINE, HTTPX_AUTH, TOKENFLIGHT_AUTH_CLIENT, Variant

__all__ = ["BurstOutcome", "burst", "format_counts", "run"]

TOKEN_LATENCY = 0.05
SHORT_LIFETIME = 2.0
EXPIRY_WAIT = 2.3
EARLY_EXPIRY = 0.5
POOL_CONNECTIONS = 100
# A burst that takes longer than this is stopped and reported as unfinished.
BURST_LIMIT = 300.0

VARIANTS = (TOKENFLIGHT_AUTH_CLIENT, AUTHLIB, HTTPX_AUTH)


@dataclass
class BurstOutcome:
    """One burst: its wall time, failures by kind, and whether it finished in time."""

    wall: float
    failures: Counter[str] = field(default_factory=Counter)
    finished: bool = True


async def burst(client: httpx.AsyncClient, path: str, requests: int) -> BurstOutcome:
    """Start ``requests`` concurrent GET requests and wait for all of them."""
    outcome = BurstOutcome(wall=0.0)

    async def one() -> None:
        try:
            response = await client.get(path)
        except Exception as error:  # every failure a caller would see is counted
            outcome.failures[type(error).__name__] += 1
        else:
            if response.status_code != 200:
                outcome.failures[f"HTTP {response.status_code}"] += 1

    start = time.perf_counter()
    with anyio.move_on_after(BURST_LIMIT) as scope:
        async with anyio.create_task_group() as group:
            for _ in range(requests):
                group.start_soon(one)
    outcome.wall = time.perf_counter() - start
    outcome.finished = not scope.cancelled_caught
    return outcome


def format_counts(values: list[int]) -> str:
    """Render per-round counts: the value if all rounds agree, else median (min-max)."""
    if min(values) == max(values):
        return str(values[0])
    return summarize([float(value) for value in values]).format(0)


@dataclass
class _Sample:
    wall: float
    stall: float
    token_requests: int
    rejected: int
    failures: Counter[str]
    finished: bool


@dataclass(frozen=True)
class _Case:
    requests: int
    backend: str
    preopened: bool
    expiry: bool
    rounds: int


async def _one_burst(
    server: LoopbackServer, variant: Variant, requests: int, preopened: bool, expiry: bool
) -> _Sample:
    endpoint: Endpoint = server.endpoint()
    server.control(latency=TOKEN_LATENCY, lifetime=3600)
    transport = await open_pool(endpoint.base_url, POOL_CONNECTIONS) if preopened else None
    async with variant.open(endpoint, transport, EARLY_EXPIRY) as client:
        if expiry:
            server.control(lifetime=SHORT_LIFETIME)
            response = await client.get(endpoint.api_path)
            response.raise_for_status()
            server.control(lifetime=3600)
            await anyio.sleep(EXPIRY_WAIT)
        before = server.stats()
        collect_garbage()

        async def load() -> BurstOutcome:
            return await burst(client, endpoint.api_path, requests)

        outcome, stall = await with_heartbeat(load)
        after = server.stats()
    return _Sample(
        wall=outcome.wall,
        stall=stall,
        token_requests=after["token_requests"] - before["token_requests"],
        rejected=after["api_401"] - before["api_401"],
        failures=outcome.failures,
        finished=outcome.finished,
    )


def _measure(server: LoopbackServer, case: _Case) -> dict[str, list[_Sample]]:
    samples: dict[str, list[_Sample]] = {BASELINE.name: []}
    for variant in VARIANTS:
        samples[variant.name] = []
    for round_number in range(case.rounds):
        order = (BASELINE, *VARIANTS)
        shift = round_number % len(order)
        for variant in order[shift:] + order[:shift]:
            expiry = case.expiry and variant.needs_token
            sample = anyio.run(
                _one_burst,
                server,
                variant,
                case.requests,
                case.preopened,
                expiry,
                backend=case.backend,
            )
            samples[variant.name].append(sample)
    return samples


def _cases(profile: Profile) -> list[_Case]:
    rounds = profile.rounds
    if profile.quick:
        return [
            _Case(1_000, "asyncio", preopened=True, expiry=False, rounds=rounds),
            _Case(1_000, "asyncio", preopened=True, expiry=True, rounds=rounds),
            _Case(1_000, "trio", preopened=True, expiry=False, rounds=rounds),
            _Case(300, "asyncio", preopened=False, expiry=False, rounds=1),
        ]
    # A burst of 10,000 takes about 20 s per variant, and one of 1,000 through the stock
    # pool about 30 s, so those get fewer rounds.
    rounds = min(rounds, 5)
    few = min(rounds, 2)
    return [
        _Case(1_000, "asyncio", preopened=True, expiry=False, rounds=rounds),
        _Case(1_000, "asyncio", preopened=True, expiry=True, rounds=rounds),
        _Case(1_000, "trio", preopened=True, expiry=False, rounds=rounds),
        _Case(1_000, "trio", preopened=True, expiry=True, rounds=rounds),
        _Case(10_000, "asyncio", preopened=True, expiry=False, rounds=few),
        _Case(10_000, "asyncio", preopened=True, expiry=True, rounds=few),
        _Case(1_000, "asyncio", preopened=False, expiry=False, rounds=1),
    ]


def run(profile: Profile) -> GroupResult:
    """Measure cold-start and expiry bursts through pre-opened and stock pools."""
    result = GroupResult(
        name="burst",
        title="Cold start and expiry under a burst",
        description=(
            "Each case opens a new client per variant and round and sends a burst of "
            "concurrent GET requests to the loopback API. Cold start: no token yet. Expiry: "
            f"the client fetched a token with a {SHORT_LIFETIME:g}-second lifetime, then "
            f"waited {EXPIRY_WAIT:g} s. The token endpoint responds after "
            f"{TOKEN_LATENCY * 1000:.0f} ms, and every library counts a token as expired "
            f"{EARLY_EXPIRY:g} s early (tokenflight's `skew`, Authlib's `leeway`, httpx-auth's "
            "`early_expiry`). Token requests and 401s are counted by the server. The ideal "
            f"is {TOKEN_LATENCY * 1000:.0f} ms plus the median time of the static-header "
            "baseline for the same burst. The pre-opened pool holds "
            f"{POOL_CONNECTIONS} connections opened before the burst and hands them out in "
            "arrival order; httpx's stock pool starts empty with its default limits (100 "
            "connections, 20 kept alive). The stall column is the longest delay of a 1 ms "
            "heartbeat task; starting thousands of tasks stalls the loop by itself, so "
            "compare it with the baseline's."
        ),
    )
    goal_counts: list[int] = []
    with loopback_server() as server:
        for case in _cases(profile):
            pool = "pre-opened pool" if case.preopened else "httpx's stock pool"
            kind = "expiry" if case.expiry else "cold start"
            table = Table(
                f"{case.requests:,} requests, {kind}, {pool}, {case.backend}",
                [
                    "variant",
                    "token requests",
                    "401s",
                    "failed requests",
                    "wall time (ms)",
                    "ratio to ideal",
                    "max stall (ms)",
                ],
            )
            samples = _measure(server, case)
            baseline_wall = summarize([sample.wall for sample in samples[BASELINE.name]])
            ideal = TOKEN_LATENCY + baseline_wall.median
            for variant in (BASELINE, *VARIANTS):
                runs = samples[variant.name]
                wall = summarize([sample.wall for sample in runs])
                failures: Counter[str] = Counter()
                for sample in runs:
                    failures.update(sample.failures)
                unfinished = sum(not sample.finished for sample in runs)
                name = variant.name
                if unfinished:
                    name += f" ({unfinished} round(s) stopped after {BURST_LIMIT:.0f} s)"
                token_requests = [sample.token_requests for sample in runs]
                if variant is TOKENFLIGHT_AUTH_CLIENT:
                    goal_counts += token_requests
                table.rows.append(
                    [
                        name,
                        format_counts(token_requests) if variant.needs_token else "-",
                        format_counts([sample.rejected for sample in runs]),
                        _format_failures(failures),
                        wall.format(0, 1000),
                        format_ratio(wall.median, ideal) if variant.needs_token else "-",
                        summarize([sample.stall for sample in runs]).format(0, 1000),
                    ]
                )
                result.raw[f"{table.title}/{variant.name}"] = {
                    "wall": wall.to_json(),
                    "token_requests": token_requests,
                    "rejected": [sample.rejected for sample in runs],
                    "failures": dict(failures),
                    "stall": [sample.stall for sample in runs],
                }
            rounds = len(samples[BASELINE.name])
            table.notes.append(
                f"{rounds} round(s). Counts show the value when every round agrees, else "
                "median (min-max); failed requests are summed over the rounds. The baseline "
                f"row is the ideal's base: ideal = {ideal * 1000:.0f} ms."
            )
            result.tables.append(table)

    result.goals.append(
        Goal(
            "Exactly one token request per expiry at any concurrency (AuthClient, bursts)",
            f"token requests per burst: {describe_counts(goal_counts)}",
            set(goal_counts) == {1},
        )
    )
    return result


def _format_failures(failures: Counter[str]) -> str:
    if not failures:
        return "0"
    return ", ".join(f"{count} {kind}" for kind, count in failures.most_common())
