"""Benchmark group ``hot``: requests per second with a valid cached token.

Every variant fetches its token during the warm-up, so the rounds measure only the hot
path: taking the cached token and setting the header. Two settings:

* in-process: ``httpx.MockTransport`` returns responses without sockets, so the auth layer's own
  cost is not hidden by socket and pool costs;
* loopback: the benchmark server in another process, through a pool with one open
  connection per worker, which is what users see.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx

from ._harness import (
    Endpoint,
    LoadOutcome,
    Profile,
    collect_garbage,
    drive,
    in_process_endpoint,
    loopback_server,
    mock_transport,
    open_pool,
    with_heartbeat,
)
from ._results import Goal, GroupResult, Table
from ._stats import Summary, format_ratio, summarize
from ._variants import (
    ALL_VARIANTS,
    AUTHLIB,
    BASELINE,
    HTTPX_AUTH,
    TOKENFLIGHT_AUTH_CLIENT,
    Variant,
    token_source_name,
)

__all__ = ["run"]

BACKENDS = ("asyncio", "trio")
EARLY_EXPIRY = 30.0


async def _measure(
    endpoint: Endpoint,
    make_transport: Callable[[int], Awaitable[httpx.AsyncBaseTransport | None]],
    workers: int,
    total: int,
    rounds: int,
    variants: tuple[Variant, ...],
    watch_stalls: bool,
) -> dict[str, tuple[list[float], list[float], int]]:
    """Open every variant, warm it up, then time ``rounds`` interleaved rounds of each."""
    samples: dict[str, tuple[list[float], list[float], int]] = {
        variant.name: ([], [], 0) for variant in variants
    }
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, httpx.AsyncClient] = {}
        for variant in variants:
            transport = await make_transport(workers)
            client = await stack.enter_async_context(
                variant.open(endpoint, transport, EARLY_EXPIRY)
            )
            warmup = await drive(client, endpoint.api_path, workers, workers * 4)
            if warmup.failures:
                raise RuntimeError(f"{variant.name}: {warmup.failures} failed warm-up requests")
            clients[variant.name] = client

        for round_number in range(rounds):
            # Rotate the order so that no variant always runs first or last in a round.
            shift = round_number % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                client = clients[variant.name]
                collect_garbage()

                async def load(client: httpx.AsyncClient = client) -> LoadOutcome:
                    return await drive(client, endpoint.api_path, workers, total)

                if watch_stalls:
                    outcome, stall = await with_heartbeat(load)
                else:
                    outcome, stall = await load(), float("nan")
                rates, stalls, failures = samples[variant.name]
                rates.append(outcome.rate)
                stalls.append(stall)
                samples[variant.name] = (rates, stalls, failures + outcome.failures)
    return samples


@dataclass(frozen=True)
class _Setting:
    """Destination of the requests and the pool they go through."""

    label: str
    worker_counts: tuple[int, ...]
    loopback: bool
    preopened: bool


SETTINGS = (
    _Setting("in-process", (1, 50), loopback=False, preopened=False),
    _Setting("loopback, pre-opened pool", (1, 50), loopback=True, preopened=True),
    _Setting("loopback, httpx's stock pool", (50,), loopback=True, preopened=False),
)


def run(profile: Profile) -> GroupResult:
    """Measure the hot path in-process and on loopback, with 1 and 50 workers."""
    # In-process rounds are short, so they get twice as many: adjacent rounds of two
    # variants then see the same conditions on the machine more often.
    in_process_total = profile.pick(2_000, 2_500)
    in_process_rounds = profile.rounds * 2
    loopback_total = profile.pick(300, 2_000)
    # httpx's stock pool serves about 200 to 500 requests per second with 50 workers here,
    # so its rounds are smaller and fewer.
    stock_total = profile.pick(250, 500)
    stock_rounds = min(profile.rounds, 3)
    result = GroupResult(
        name="hot",
        title="Hot path: a valid token in the cache",
        description=(
            "Requests per second with a valid cached token, each client against a plain "
            "`httpx.AsyncClient` that sends a static `Authorization` header. In-process "
            f"(`httpx.MockTransport`, no sockets), each of {in_process_rounds} rounds sends "
            f"{in_process_total:,} requests. On loopback (the benchmark server in its own "
            f"process), each of {profile.rounds} rounds sends {loopback_total:,} requests "
            f"through a pre-opened pool, and each of {stock_rounds} rounds sends "
            f"{stock_total:,} through httpx's stock pool. The requests of a round are split "
            "over the workers, and each worker waits for its response before sending the "
            "next request. The pre-opened pool has one open connection per worker (see the "
            "note on pools above). httpx's stock pool starts empty with its default limits. "
            "Every variant fetches its token in a warm-up before the first round, and the "
            "variants take turns within each round, in a rotating order. tokenflight's token "
            f"source: {token_source_name()}. The stall column (loopback only) is the longest "
            "delay of a 1 ms heartbeat task. In-process, no request ever waits for I/O, so a "
            "heartbeat could only measure the length of a round."
        ),
    )
    ratios: dict[tuple[str, str, int, str], float] = {}
    best_ratios: dict[tuple[str, str, int, str], float] = {}
    summaries: dict[tuple[str, str, int, str], Summary] = {}

    with loopback_server() as server:
        loopback_endpoint = server.endpoint()
        for backend in BACKENDS:
            for setting in SETTINGS:
                table = Table(
                    f"{setting.label}, {backend}",
                    [
                        "workers",
                        "variant",
                        "requests/s",
                        "ratio to baseline",
                        "ratio, best rounds",
                        "max stall (ms)",
                        "failed",
                    ],
                )
                for workers in setting.worker_counts:
                    make_transport: Callable[[int], Awaitable[httpx.AsyncBaseTransport | None]]
                    if not setting.loopback:
                        endpoint = in_process_endpoint()
                        total = in_process_total
                        rounds = in_process_rounds
                        make_transport = _in_process_transport
                    elif setting.preopened:
                        endpoint = loopback_endpoint
                        total = loopback_total
                        rounds = profile.rounds
                        make_transport = functools.partial(_loopback_pool, endpoint.base_url)
                    else:
                        endpoint = loopback_endpoint
                        total = stock_total
                        rounds = stock_rounds
                        make_transport = _stock_pool

                    samples = anyio.run(
                        _measure,
                        endpoint,
                        make_transport,
                        workers,
                        total,
                        rounds,
                        ALL_VARIANTS,
                        setting.loopback,
                        backend=backend,
                    )
                    baseline = summarize(samples[BASELINE.name][0])
                    for variant in ALL_VARIANTS:
                        per_round, stalls, failures = samples[variant.name]
                        rate = summarize(per_round)
                        ratio = rate.median / baseline.median
                        best_ratio = rate.maximum / baseline.maximum
                        ratios[(setting.label, backend, workers, variant.name)] = ratio
                        best_ratios[(setting.label, backend, workers, variant.name)] = best_ratio
                        summaries[(setting.label, backend, workers, variant.name)] = rate
                        table.rows.append(
                            [
                                str(workers),
                                variant.name,
                                rate.format(0),
                                format_ratio(rate.median, baseline.median),
                                format_ratio(rate.maximum, baseline.maximum),
                                _format_stall(stalls),
                                str(failures),
                            ]
                        )
                        result.raw[f"{setting.label}/{backend}/{workers}/{variant.name}"] = {
                            "rate": rate.to_json(),
                            "ratio": ratio,
                            "best_ratio": best_ratio,
                            "stall": stalls,
                        }
                table.notes.append(
                    f"{rounds} rounds. Requests per second: median (min-max) over the rounds. "
                    "The ratios compare "
                    "the medians, and the best rounds (the fastest of each variant), which "
                    "other processes on the machine disturb least."
                )
                result.tables.append(table)

    in_process_keys = [
        ("in-process", backend, workers, TOKENFLIGHT_AUTH_CLIENT.name)
        for backend in BACKENDS
        for workers in SETTINGS[0].worker_counts
    ]
    in_process = [ratios[key] for key in in_process_keys]
    in_process_best = [best_ratios[key] for key in in_process_keys]
    # Behind means clearly behind: even the best round of AuthClient was slower than the
    # peer's worst. A lower median within overlapping ranges is listed, not counted.
    behind: list[str] = []
    lower: list[str] = []
    for (label, backend, workers, name), peer in summaries.items():
        if name not in (AUTHLIB.name, HTTPX_AUTH.name):
            continue
        ours = summaries[(label, backend, workers, TOKENFLIGHT_AUTH_CLIENT.name)]
        where = f"{label}, {backend}, {workers} worker(s), against {name}"
        if ours.maximum < peer.minimum:
            behind.append(where)
        elif ours.median < peer.median:
            lower.append(where)
    comparisons = sum(1 for key in summaries if key[3] in (AUTHLIB.name, HTTPX_AUTH.name))
    verdict = "clearly behind in: " + "; ".join(behind) if behind else "never clearly behind"
    if lower:
        verdict += (
            f"; a lower median in {len(lower)} of {comparisons} comparisons, each within "
            "overlapping ranges"
        )
    result.goals += [
        Goal(
            "Hot path at least 0.97 of the static-header baseline in-process (AuthClient, "
            "best rounds)",
            f"best rounds {min(in_process_best):.3f} to {max(in_process_best):.3f}, medians "
            f"{min(in_process):.3f} to {max(in_process):.3f} (asyncio and trio, 1 and 50 "
            "workers)",
            min(in_process_best) >= 0.97,
        ),
        Goal(
            "Hot path never behind a peer (AuthClient; behind: its best round slower than "
            "the peer's worst)",
            verdict,
            not behind,
        ),
    ]
    return result


async def _in_process_transport(connections: int) -> httpx.AsyncBaseTransport | None:
    return mock_transport()


async def _stock_pool(connections: int) -> httpx.AsyncBaseTransport | None:
    return None


async def _loopback_pool(base_url: str, connections: int) -> httpx.AsyncBaseTransport | None:
    return await open_pool(base_url, connections)


def _format_stall(stalls: list[float]) -> str:
    measured = [stall for stall in stalls if stall == stall]
    if not measured:
        return "n/a"
    summary: Summary = summarize(measured)
    return summary.format(1, 1000)
