"""Benchmark group ``cancel``: the task that started a refresh is cancelled.

On a client with no token, one task (the leader) sends a request and so starts the token
request, to which the endpoint responds after 200 ms. 20 ms later, 99 more callers send
theirs; at 50 ms the leader is cancelled. Counted: token requests, and whether any of the
other callers failed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import anyio

from ._burst import format_counts
from ._harness import LoopbackServer, Profile, collect_garbage, loopback_server, open_pool
from ._results import Goal, GroupResult, Table
from ._stats import describe_counts, summarize
from ._variants import (
    AUTHLIB,
    HTTPX_AUTH,
    TOKENFLIGHT_AUTH_CLIENT,
    TOKENFLIGHT_NOT_ENTERED,
    Variant,
)

__all__ = ["run"]

BACKENDS = ("asyncio", "trio")
VARIANTS = (TOKENFLIGHT_AUTH_CLIENT, TOKENFLIGHT_NOT_ENTERED, AUTHLIB, HTTPX_AUTH)
TOKEN_LATENCY = 0.2
FOLLOWERS = 99
FOLLOWERS_START = 0.02
CANCEL_AT = 0.05
EARLY_EXPIRY = 30.0
POOL_CONNECTIONS = 100
ROUND_LIMIT = 30.0


@dataclass
class _Sample:
    token_requests: int
    leader: str
    failures: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0


async def _one_round(server: LoopbackServer, variant: Variant) -> _Sample:
    endpoint = server.endpoint()
    server.control(latency=TOKEN_LATENCY, lifetime=3600)
    transport = await open_pool(endpoint.base_url, POOL_CONNECTIONS)
    failures: Counter[str] = Counter()
    leader_outcome = "not started"
    async with variant.open(endpoint, transport, EARLY_EXPIRY) as client:
        collect_garbage()
        before = server.stats()
        leader_scope = anyio.CancelScope()

        async def leader() -> None:
            nonlocal leader_outcome
            leader_outcome = "cancelled"
            with leader_scope:
                response = await client.get(endpoint.api_path)
                leader_outcome = f"finished, HTTP {response.status_code}"

        async def follower() -> None:
            try:
                response = await client.get(endpoint.api_path)
            except Exception as error:  # every failure a caller would see is counted
                failures[type(error).__name__] += 1
            else:
                if response.status_code != 200:
                    failures[f"HTTP {response.status_code}"] += 1

        async def followers() -> None:
            await anyio.sleep(FOLLOWERS_START)
            async with anyio.create_task_group() as group:
                for _ in range(FOLLOWERS):
                    group.start_soon(follower)

        async def cancel_leader() -> None:
            await anyio.sleep(CANCEL_AT)
            leader_scope.cancel()

        start = time.perf_counter()
        with anyio.move_on_after(ROUND_LIMIT):
            async with anyio.create_task_group() as group:
                group.start_soon(leader)
                group.start_soon(followers)
                group.start_soon(cancel_leader)
        wall = time.perf_counter() - start
        after = server.stats()
    return _Sample(
        token_requests=after["token_requests"] - before["token_requests"],
        leader=leader_outcome,
        failures=failures,
        wall=wall,
    )


def run(profile: Profile) -> GroupResult:
    """Cancel the refresh-starting task under each variant and count the consequences."""
    rounds = min(profile.rounds, 5)
    result = GroupResult(
        name="cancel",
        title="Cancelling the task that started a refresh",
        description=(
            "On a new client with no token, a leader task sends a request, which starts a "
            f"token request that the endpoint completes after {TOKEN_LATENCY * 1000:.0f} ms. "
            f"{FOLLOWERS_START * 1000:.0f} ms later {FOLLOWERS} more callers send theirs; at "
            f"{CANCEL_AT * 1000:.0f} ms the leader is cancelled. Token requests are counted "
            "by the server. `AuthClient` enters its cache, so the refresh runs in the cache's "
            "own task group. `TokenAuth` on a cache that was never entered runs the refresh "
            "in the task that needed it. Cancelling that task abandons the refresh, and a "
            "waiting caller starts another."
        ),
    )
    tokenflight_counts: list[int] = []
    tokenflight_failures = 0
    with loopback_server() as server:
        for backend in BACKENDS:
            table = Table(
                f"leader cancelled during the token request, {backend}",
                [
                    "variant",
                    "token requests",
                    f"failed among the {FOLLOWERS} others",
                    "leader",
                    "wall time (ms)",
                ],
            )
            samples: dict[str, list[_Sample]] = {variant.name: [] for variant in VARIANTS}
            for round_number in range(rounds):
                shift = round_number % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    samples[variant.name].append(
                        anyio.run(_one_round, server, variant, backend=backend)
                    )
            for variant in VARIANTS:
                runs = samples[variant.name]
                failures: Counter[str] = Counter()
                for sample in runs:
                    failures.update(sample.failures)
                counts = [sample.token_requests for sample in runs]
                if variant is TOKENFLIGHT_AUTH_CLIENT:
                    tokenflight_counts += counts
                    tokenflight_failures += sum(failures.values())
                leaders = Counter(sample.leader for sample in runs)
                table.rows.append(
                    [
                        variant.name,
                        format_counts(counts),
                        ", ".join(f"{n} {kind}" for kind, n in failures.most_common()) or "0",
                        ", ".join(f"{kind} ({n})" for kind, n in leaders.most_common()),
                        summarize([sample.wall for sample in runs]).format(0, 1000),
                    ]
                )
                result.raw[f"{backend}/{variant.name}"] = {
                    "token_requests": counts,
                    "failures": dict(failures),
                    "leader": dict(leaders),
                }
            table.notes.append(
                f"{rounds} round(s); failures summed over the rounds; the leader column counts "
                "the rounds per outcome."
            )
            result.tables.append(table)

    result.goals.append(
        Goal(
            "A cancelled caller neither repeats the token request nor fails other callers "
            "(AuthClient)",
            f"token requests: {describe_counts(tokenflight_counts)}; other callers failed: "
            f"{tokenflight_failures}",
            set(tokenflight_counts) == {1} and tokenflight_failures == 0,
        )
    )
    return result
