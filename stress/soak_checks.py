"""The soak run's measurements, the invariants decided from them, and the report.

:class:`Meter` records what the client saw while the run goes on, :class:`LogCheck`
checks every log record for a secret, and :func:`decide` turns them, with the servers'
counters, into :class:`Invariant` verdicts and the figures of a :class:`SoakReport`.
"""

from __future__ import annotations

import array
import base64
import contextlib
import logging
import math
import os
import platform
import statistics
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenflight import CacheEvent, Clock

from .faults import MARKER, FaultSchedule

if TYPE_CHECKING:
    from .soak import SoakConfig

__all__ = [
    "Invariant",
    "LogCheck",
    "Meter",
    "SoakReport",
    "decide",
    "describe_machine",
    "format_report",
]


# -- what the run records --------------------------------------------------------------


class Meter:
    """The measurements of a run as it goes on; every structure is bounded by the run's size."""

    def __init__(self, schedule: FaultSchedule, keys: list[str]) -> None:
        self.schedule = schedule
        self.keys = keys
        self.zero = math.inf
        self.outcomes: Counter[str] = Counter()
        self.outcomes_by_phase: Counter[tuple[str, str]] = Counter()
        # Requests and failed requests per whole second of their start, since time zero.
        self.started_per_second: Counter[int] = Counter()
        self.failed_per_second: Counter[int] = Counter()
        self.unexpected: list[str] = []
        self.max_duration = 0.0
        # An array of C doubles, so that the run's own records barely show in its memory.
        self.durations = array.array("d")
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
        second = math.floor(started)
        self.started_per_second[second] += 1
        if outcome != "ok":
            self.failed_per_second[second] += 1
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


class LogCheck(logging.Handler):
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


# -- the verdicts -----------------------------------------------------------------------


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


# -- deciding the invariants ----------------------------------------------------------


def _in_window(events: list[Any], start: float, end: float) -> list[Any]:
    return [event for event in events if start <= event[0] < end]


def decide(
    config: SoakConfig,
    meter: Meter,
    *,
    backend: str,
    server_stats: dict[str, Any],
    check: LogCheck,
    fds: tuple[tuple[int, int], tuple[int, int]],
    tasks: tuple[int, int],
    memory_peak: int,
    auth_statistics: dict[str, Any],
    cache_statistics: Any,
) -> SoakReport:
    """Decide every invariant of a finished run and collect its figures.

    :param fds: open file descriptors and sockets, before the run and after it.
    :param tasks: tasks of the event loop, before the run and after it.
    :param memory_peak: peak traced memory in bytes, or 0 when memory was not traced.
    """
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
    calm_total = sum(n for (kind, _), n in meter.outcomes_by_phase.items() if kind == "calm")
    calm_ok = meter.outcomes_by_phase["calm", "ok"]
    figures["calm_success_ratio"] = calm_ok / calm_total if calm_total else 0.0
    figures["outcomes_by_phase"] = {
        kind: {o: n for (k, o), n in meter.outcomes_by_phase.items() if k == kind}
        for kind in sorted({kind for kind, _ in meter.outcomes_by_phase})
    }
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
    by_kind: dict[str, float] = {}
    for phase in schedule.outages():
        if phase.end >= schedule.seconds - 1e-9:
            continue
        for key in keys:
            value = meter.first_success_after.get((key, phase.end))
            if value is None:
                missing += 1
            else:
                recoveries.append(value)
                by_kind[phase.kind] = max(by_kind.get(phase.kind, 0.0), value)
    figures["recovery_max_by_outage_s"] = by_kind
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

    jump_rows, jump_ok = _jump_windows(config, meter, events, server_stats)
    figures["wall_clock_jumps"] = jump_rows
    if schedule.jumps:
        add(
            "a wall-clock jump of an hour changes nothing",
            jump_ok,
            "; ".join(
                f"{row['step']:+g} s, before -> after: token requests per key per lifetime "
                f"{row['token_requests_per_key_per_lifetime_before']:.1f} -> "
                f"{row['token_requests_per_key_per_lifetime_after']:.1f}, expired-token 401s "
                f"{row['expired_401_before']} -> {row['expired_401_after']}, failed requests "
                f"{row['failed_share_before']:.1%} -> {row['failed_share_after']:.1%}"
                for row in jump_rows
            ),
            "after <= twice before + 5 requests, + 1 401, + 5 points of failures",
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
    return SoakReport(backend, config, 0.0, invariants, figures)


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
    config: SoakConfig, meter: Meter, events: list[Any], server_stats: dict[str, Any]
) -> tuple[list[dict[str, Any]], bool]:
    """Compare the seconds after each wall-clock jump with the same length of time before.

    A cache that read its clock's wall time for expiries or cooldowns would, after a jump
    forward, see every token expired (a burst of token requests), and after a jump back
    keep tokens past their expiry (expired-token 401s) or wait an hour to retry (failed
    requests). After each jump, each of these must stay within twice its value before,
    plus a small allowance: 5 token requests per key per token lifetime, one 401, and 5
    points of failed requests. Comparing with the time just before keeps a machine that
    is slow for other reasons from looking like a clock bug.
    """
    schedule = meter.schedule
    keys = len(meter.keys)
    lifetime = config.token_lifetime
    # Two lifetimes: a token issued just before the jump has then passed its expiry and
    # the API's leeway of 1 s, so a cache that kept it too long has been rejected.
    window = 2 * lifetime
    unauthorized = server_stats["unauthorized_events"]

    def token_requests_per_lifetime(start: float, end: float) -> float:
        count = sum(1 for e in _in_window(events, start, end) if e[2] != "revoked")
        return count / keys / (max(end - start, 1e-9) / lifetime)

    def expired(start: float, end: float) -> int:
        return sum(1 for e in _in_window(unauthorized, start, end) if e[1] == "expired")

    def failed_share(start: float, end: float) -> float:
        seconds = range(math.floor(start), math.ceil(end))
        started = sum(meter.started_per_second[second] for second in seconds)
        failed = sum(meter.failed_per_second[second] for second in seconds)
        return failed / started if started else 0.0

    rows = []
    ok = True
    for at, step in schedule.jumps:
        end = min(at + window, schedule.seconds)
        start = max(at - (end - at), 0.0)
        row = {
            "at_s": round(at, 2),
            "step": step,
            "window_s": round(end - at, 2),
            "token_requests_per_key_per_lifetime_before": token_requests_per_lifetime(start, at),
            "token_requests_per_key_per_lifetime_after": token_requests_per_lifetime(at, end),
            "expired_401_before": expired(start, at),
            "expired_401_after": expired(at, end),
            "failed_share_before": failed_share(start, at),
            "failed_share_after": failed_share(at, end),
        }
        holds = (
            row["token_requests_per_key_per_lifetime_after"]
            <= 2 * row["token_requests_per_key_per_lifetime_before"] + 5
            and row["expired_401_after"] <= 2 * row["expired_401_before"] + 1
            and row["failed_share_after"] <= 2 * row["failed_share_before"] + 0.05
        )
        ok = ok and holds
        rows.append(row)
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
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = ", load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {memory}, Python {platform.python_version()} "
        f"on {platform.system()}{load}"
    )


def format_report(report: SoakReport) -> str:
    """Format a report as text: the run, its invariants, and its figures."""
    config = report.config
    figures = report.figures
    lines = [
        f"soak run on {report.backend}: {config.tasks} tasks, {config.keys} keys, "
        f"{config.seconds:g} s, {config.token_lifetime:g} s tokens, "
        f"refresh timeout {config.refresh_timeout:g} s ({report.wall_seconds:.1f} s of wall time)",
        f"requests: {figures['requests']}, success ratio {figures['success_ratio']:.3f} "
        f"({figures['calm_success_ratio']:.3f} of those started in calm phases); "
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
