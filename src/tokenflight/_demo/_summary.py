"""The demo's closing summary."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["DemoSummary", "percentile"]


def percentile(values: list[float], share: float) -> float:
    """Return the nearest-rank percentile of ``values`` (``share`` from 0 to 1), or NaN."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(share * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass(frozen=True)
class DemoSummary:
    """The numbers of one demo run.

    :param backend: the event loop, ``asyncio`` or ``trio``.
    :param requests: requests sent by the load tasks (retries not counted).
    :param concurrency: load tasks.
    :param in_flight: requests inside the client at once, at most.
    :param successes: requests that ended with a 2xx response.
    :param token_fetches: calls to the token source, retries included.
    :param token_lifetime: lifetime of the tokens in seconds, if the endpoint gave one.
    :param renewal_interval: seconds the cache serves one token before it renews it,
        ahead of the expiry, by its own policy (the mean of the jitter); ``None`` when the
        tokens carried no lifetime.
    :param duration: seconds the load took.
    :param rejections: 401 responses the protected API sent.
    :param retries: requests that TokenAuth sent again with a new token after a 401.
    :param revoked_at: the request count at which the API revoked the token in use, if
        it did.
    :param latencies: p50 and p99 latency in seconds.
    :param statuses: responses other than 2xx, by status code.
    :param errors: requests that raised, by error class, with the first message.
    :param token_url: the token endpoint used, and whether it was the embedded one.
    :param api_url: the protected API's base URL.
    """

    backend: str
    requests: int
    concurrency: int
    in_flight: int
    successes: int
    token_fetches: int
    token_lifetime: float | None
    renewal_interval: float | None
    duration: float
    rejections: int
    retries: int
    revoked_at: int | None
    latency_p50: float
    latency_p99: float
    token_url: str
    embedded: bool
    api_url: str
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every request succeeded."""
        return self.successes == self.requests

    @property
    def expiries(self) -> float | None:
        """How many times the run needed a new token after the first one.

        A token is renewed once its renewal interval has passed, a little before it
        expires, so this is the run time divided by that interval.
        """
        if not self.renewal_interval:
            return None
        return self.duration / self.renewal_interval

    @property
    def fetches_per_expiry(self) -> float | None:
        """Token fetches after the first, per expiry: 1.0 is single flight.

        The first fetch serves the start of the run; after that, each expiry needs one
        fetch, plus one for a token the API revoked. A fetch per waiting task would show
        here as tens or hundreds. ``None`` when no token expired during the run.
        """
        expiries = self.expiries
        if expiries is None or expiries < 1:
            return None
        return max(self.token_fetches - 1, 0) / expiries

    def format(self) -> str:
        """Return the summary as the lines the command prints."""
        rate = self.requests / self.duration if self.duration > 0 else math.inf
        share = 100.0 * self.successes / self.requests if self.requests else 100.0
        where = "embedded" if self.embedded else "external"
        lifetime = f"{self.token_lifetime:g} s" if self.token_lifetime else "not given"
        lines = [
            f"tokenflight demo on {self.backend}: {self.requests:,} requests from "
            f"{self.concurrency:,} concurrent tasks through one AuthClient "
            f"({self.in_flight:,} in flight at a time)",
            f"  token endpoint      {self.token_url} ({where}; token lifetime {lifetime})",
            f"  protected API       {self.api_url}",
            f"  requests            {self.requests:,} in {self.duration:.1f} s ({rate:,.0f}/s)",
            f"  successes           {self.successes:,} ({share:.1f} %)",
            f"  token fetches       {self.token_fetches:,}",
        ]

        expiries = self.expiries
        per_expiry = self.fetches_per_expiry
        if expiries is None:
            lines.append("  fetches per expiry  n/a (the tokens carried no lifetime)")
        elif per_expiry is None:
            lines.append(
                f"  fetches per expiry  n/a (no token expired: {self.duration:.1f} s run, "
                f"{self.token_lifetime:g} s tokens)"
            )
        else:
            lines.append(
                f"  fetches per expiry  {per_expiry:.2f} ({self.token_fetches:,} fetches: the "
                f"first, then {expiries:.1f} expiries of a token renewed every "
                f"{self.renewal_interval:.2f} s)"
            )

        revoked = ""
        if self.revoked_at is not None:
            revoked = f" (the API revoked the token in use after request {self.revoked_at:,})"
        lines.append(f"  401s                {self.rejections:,}{revoked}")
        lines.append(f"  retries             {self.retries:,}")
        lines.append(
            f"  latency             p50 {self.latency_p50 * 1000:.1f} ms, "
            f"p99 {self.latency_p99 * 1000:.1f} ms"
        )
        for status, count in sorted(self.statuses.items()):
            lines.append(f"  status {status}          {count:,}")
        for name, (count, message) in sorted(self.errors.items()):
            lines.append(f"  {name}: {count:,} (first: {message})")
        return "\n".join(lines)
