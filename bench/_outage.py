"""Benchmark group ``outage``: the token endpoint responds with 503 for 2 seconds.

200 callers start together on a client with no token, just as the token endpoint begins
responding with 503. Each caller repeats its request until one succeeds, pausing 100 ms after
each failure (a plain client-side retry). Measured: token requests during the outage,
errors the callers saw, and how long after the outage the callers got their responses.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import anyio

from ._burst import format_counts
from ._harness import LoopbackServer, Profile, collect_garbage, loopback_server, open_pool
from ._harness import with_heartbeat as _with_heartbeat
from ._results import Goal, GroupResult, Table
from ._stats import describe_counts, summarize
from ._variants import AUTHLIB, BASELINE, HTTPX_AUTH, TOKENFLIGHT_AUTH_CLIENT, Variant

__all__ = ["run"]

BACKENDS = ("asyncio", "trio")
VARIANTS = (BASELINE, TOKENFLIGHT_AUTH_CLIENT, AUTHLIB, HTTPX_AUTH)
CALLERS = 200
OUTAGE = 2.0
TOKEN_LATENCY = 0.05
RETRY_PAUSE = 0.1
# Callers give up this long after the outage ends; a round never runs longer.
GIVE_UP_AFTER = 30.0
EARLY_EXPIRY = 30.0
POOL_CONNECTIONS = 100
HANDFUL = 5


@dataclass
class _Sample:
    in_outage: int
    token_requests: int
    errors: Counter[str] = field(default_factory=Counter)
    first_after: float = float("nan")
    all_after: float = float("nan")
    gave_up: int = 0
    stall: float = 0.0


async def _one_round(server: LoopbackServer, variant: Variant) -> _Sample:
    endpoint = server.endpoint()
    server.control(latency=TOKEN_LATENCY, lifetime=3600)
    transport = await open_pool(endpoint.base_url, POOL_CONNECTIONS)
    async with variant.open(endpoint, transport, EARLY_EXPIRY) as client:
        collect_garbage()
        before = server.stats()
        server.control(outage=OUTAGE)
        outage_end = time.perf_counter() + OUTAGE
        deadline = outage_end + GIVE_UP_AFTER
        errors: Counter[str] = Counter()
        successes: list[float] = []
        gave_up = 0

        async def caller() -> None:
            nonlocal gave_up
            while time.perf_counter() < deadline:
                try:
                    with anyio.fail_after(max(deadline - time.perf_counter(), 0.001)):
                        response = await client.get(endpoint.api_path)
                except Exception as error:  # every failure a caller would see is counted
                    errors[type(error).__name__] += 1
                else:
                    if response.status_code == 200:
                        successes.append(time.perf_counter())
                        return
                    errors[f"HTTP {response.status_code}"] += 1
                await anyio.sleep(RETRY_PAUSE)
            gave_up += 1

        async def callers() -> None:
            async with anyio.create_task_group() as group:
                for _ in range(CALLERS):
                    group.start_soon(caller)

        _, stall = await _with_heartbeat(callers)
        after = server.stats()
    return _Sample(
        in_outage=after["token_requests_in_outage"] - before["token_requests_in_outage"],
        token_requests=after["token_requests"] - before["token_requests"],
        errors=errors,
        first_after=min(successes) - outage_end if successes else float("nan"),
        all_after=max(successes) - outage_end if successes and not gave_up else float("nan"),
        gave_up=gave_up,
        stall=stall,
    )


def run(profile: Profile) -> GroupResult:
    """Measure each variant through a 2-second outage of the token endpoint."""
    rounds = min(profile.rounds, 5)
    result = GroupResult(
        name="outage",
        title="Token endpoint outage",
        description=(
            f"{CALLERS} callers start on a new client with no token just as the token "
            f"endpoint starts responding with 503 for {OUTAGE:g} s (each after "
            f"{TOKEN_LATENCY * 1000:.0f} ms). Each caller repeats its GET until it gets a "
            f"200, pausing {RETRY_PAUSE * 1000:.0f} ms after each failure, and gives up "
            f"{GIVE_UP_AFTER:g} s after the outage. Token requests are counted by the server. "
            "Recovery is the time from the end of the outage to the first and to the last "
            "caller's 200. tokenflight retries inside one refresh with its default backoff "
            "(0.5 s doubling, 50% jitter), so its callers wait instead of failing. The API "
            f"requests go through a pre-opened pool of {POOL_CONNECTIONS} connections. The "
            "baseline sends a static header and needs no token; its row shows the stall that "
            "200 callers cause without any token handling."
        ),
    )
    tokenflight_in_outage: list[int] = []
    with loopback_server() as server:
        for backend in BACKENDS:
            table = Table(
                f"{OUTAGE:g} s of 503 under {CALLERS} callers, {backend}",
                [
                    "variant",
                    "token requests in outage",
                    "token requests in all",
                    "errors callers saw",
                    "first 200 after outage (ms)",
                    "last 200 after outage (ms)",
                    "max stall (ms)",
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
                errors: Counter[str] = Counter()
                for sample in runs:
                    errors.update(sample.errors)
                error_totals = [sum(sample.errors.values()) for sample in runs]
                if variant is TOKENFLIGHT_AUTH_CLIENT:
                    tokenflight_in_outage += [sample.in_outage for sample in runs]
                gave_up = sum(sample.gave_up for sample in runs)
                name = variant.name + (f" ({gave_up} callers gave up)" if gave_up else "")
                table.rows.append(
                    [
                        name,
                        format_counts([sample.in_outage for sample in runs])
                        if variant.needs_token
                        else "-",
                        format_counts([sample.token_requests for sample in runs])
                        if variant.needs_token
                        else "-",
                        _format_errors(error_totals, errors),
                        _format_seconds([sample.first_after for sample in runs])
                        if variant.needs_token
                        else "-",
                        _format_seconds([sample.all_after for sample in runs])
                        if variant.needs_token
                        else "-",
                        summarize([sample.stall for sample in runs]).format(0, 1000),
                    ]
                )
                result.raw[f"{backend}/{variant.name}"] = {
                    "in_outage": [sample.in_outage for sample in runs],
                    "token_requests": [sample.token_requests for sample in runs],
                    "errors": dict(errors),
                    "first_after": [sample.first_after for sample in runs],
                    "all_after": [sample.all_after for sample in runs],
                    "stall": [sample.stall for sample in runs],
                }
            table.notes.append(
                f"{rounds} round(s); counts per round as the value when every round agrees, "
                "else median (min-max). Errors: median per round, then the kinds summed over "
                "all rounds."
            )
            result.tables.append(table)

    worst = max(tokenflight_in_outage)
    result.goals.append(
        Goal(
            f"A handful of token requests during an outage (AuthClient, at most {HANDFUL})",
            describe_counts(tokenflight_in_outage),
            worst <= HANDFUL,
        )
    )
    return result


def _format_errors(totals: list[int], kinds: Counter[str]) -> str:
    if not any(totals):
        return "0"
    described = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
    return f"{format_counts(totals)} ({described})"


def _format_seconds(values: list[float]) -> str:
    measured = [value for value in values if value == value]
    if not measured:
        return "n/a"
    text = summarize(measured).format(0, 1000)
    missing = len(values) - len(measured)
    return text + (f", {missing} round(s) without" if missing else "")
