"""The `tokenflight demo` run: embedded servers, a load of requests, and a summary.

It is built on the public API only: a :class:`~tokenflight.ClientCredentials` source
behind a :class:`~tokenflight.TokenCache`, and an :class:`~tokenflight.AuthClient`
shared by every load task.
"""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import anyio
import httpx

from .. import AuthClient, ClientCredentials, Token, TokenCache, TokenSource
from ._load import LimitedTransport, ProgressBar, drive
from ._servers import App, ProtectedApi, TokenEndpoint, TokenRegistry, serve
from ._summary import DemoSummary, percentile

__all__ = ["DemoError", "DemoOptions", "DemoSummary", "missing_dependency", "run_demo"]

DEMO_EXTRA_HINT = "pip install 'tokenflight[demo]'"

# Connections to the protected API. httpcore's pool does work proportional to the
# number of connections on every request, and both ends run in this one process, so a
# few connections carry the load fastest.
CONNECTIONS = 10

# Requests inside the AuthClient at once. The other load tasks wait before their request
# starts, so a token waits at most for this many requests on the connections before it
# is sent. At 100 requests per second, a slow machine's pace, that is half a second,
# within the margin the demo's cache keeps before a 3 s token expires.
IN_FLIGHT = 50


class DemoError(Exception):
    """The demo could not run; the message gives the reason and what to change."""


@dataclass(frozen=True)
class DemoOptions:
    """Settings of one demo run; the command line fills them in.

    :param backend: ``"asyncio"`` or ``"trio"``.
    :param requests: requests to send in total.
    :param concurrency: tasks sending them.
    :param token_lifetime: lifetime of the embedded endpoint's tokens, in seconds.
    :param revoke_at: after this many requests, the API revokes the token in use once
        (0: never; ``None``: after half of them).
    :param token_url: an external token endpoint to use instead of the embedded one.
    :param client_id: the client id at the external endpoint.
    :param client_secret: the client secret at the external endpoint.
    :param scope: the scope to request, if any.
    :param unsafe_allow_http: allow a plain ``http://`` external endpoint on a host
        other than loopback, which sends the client secret unencrypted.
    :param progress: draw a progress bar (``None``: when standard error is a terminal).
    """

    backend: str = "asyncio"
    requests: int = 10_000
    concurrency: int = 1_000
    token_lifetime: float = 3.0
    revoke_at: int | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    scope: str | None = None
    unsafe_allow_http: bool = False
    progress: bool | None = None


def missing_dependency(backend: str) -> str | None:
    """Return a one-line message if a package the demo needs is missing, else ``None``."""
    modules = ["hypercorn"] + (["trio"] if backend == "trio" else [])
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            return f"the demo needs {module}, which is not installed; run: {DEMO_EXTRA_HINT}"
    return None


class _RecordingSource:
    """Passes fetches through, and adds each token to the API's registry if asked to."""

    def __init__(self, source: TokenSource, registry: TokenRegistry | None) -> None:
        self._source = source
        self._registry = registry
        self.lifetime: float | None = None
        self.tokens = 0

    async def fetch(self) -> Token:
        token = await self._source.fetch()
        self.tokens += 1
        lifetime = token.expires_in
        if lifetime is None and token.expires_at is not None:
            lifetime = token.expires_at - time.time()
        if self.lifetime is None:
            self.lifetime = lifetime
        if self._registry is not None:
            self._registry.add(token.value, lifetime)
        return token


def _demo_cache(source: TokenSource, lifetime: float | None) -> TokenCache:
    # The library's defaults (30 s of skew, 5 min of refresh ahead) suit tokens that
    # live minutes or hours. For the demo's short tokens, a fifth of the lifetime is the
    # margin (0.6 s for a 3 s token), which covers the time a request waits for a
    # connection. A tenth is the refresh-ahead window, so a 3 s token is replaced
    # after about 2.1 s.
    # The lifetime of an external endpoint's tokens is not known in advance; 1 s each
    # suits the few-second tokens a test server issues.
    if lifetime is None:
        return TokenCache(source, skew=1.0, refresh_ahead=1.0, timeout=10.0)
    return TokenCache(source, skew=lifetime / 5, refresh_ahead=lifetime / 10, timeout=10.0)


def _renewal_interval(cache: TokenCache, lifetime: float | None) -> float | None:
    # When the cache renews a token of this lifetime, by the same policy functions the
    # cache applies, with the jitter at its mean.
    if not lifetime:
        return None
    policy = cache.policy
    usable = lifetime - policy.margin(lifetime)
    return usable - policy.refresh_window(usable, lambda: 0.5)


async def run_demo(options: DemoOptions, *, stream: TextIO | None = None) -> DemoSummary:
    """Start the servers, send the load through an AuthClient, and return the summary.

    :param stream: where the progress bar goes; standard error by default.
    :raises DemoError: when not one token could be obtained, so every request failed.
    :raises ConfigurationError: when the external token URL is not acceptable.
    :raises ImportError: when hypercorn is not installed.
    """
    stream = sys.stderr if stream is None else stream
    embedded = options.token_url is None
    registry = TokenRegistry()
    api = ProtectedApi(registry)
    apps: list[App] = [api]
    client_id = options.client_id or "tokenflight-demo"
    client_secret = options.client_secret or secrets.token_urlsafe(24)
    if embedded:
        endpoint = TokenEndpoint(
            registry,
            client_id=client_id,
            client_secret=client_secret,
            lifetime=options.token_lifetime,
        )
        apps.append(endpoint)

    external_source = None
    if not embedded:
        # Built before any server starts, so that a bad URL (not https, and not on
        # loopback) fails at once with a ConfigurationError.
        external_source = ClientCredentials(
            options.token_url,
            client_id,
            client_secret=client_secret,
            scope=options.scope,
            unsafe_allow_http=options.unsafe_allow_http,
        )

    revoke_at = options.requests // 2 if options.revoke_at is None else options.revoke_at
    progress_enabled = stream.isatty() if options.progress is None else options.progress

    async with serve(apps, backend=options.backend) as urls:
        api_url = urls[0]
        token_url = f"{urls[1]}/token" if embedded else str(options.token_url)
        source = external_source or ClientCredentials(
            token_url, client_id, client_secret=client_secret, scope=options.scope
        )
        recorder = _RecordingSource(source, None if embedded else registry)
        lifetime = options.token_lifetime if embedded else None
        cache = _demo_cache(recorder, lifetime)
        connections = min(options.concurrency, CONNECTIONS)
        pool = httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        )
        client = AuthClient(
            cache,
            base_url=api_url,
            transport=LimitedTransport(pool, anyio.Semaphore(connections)),
            timeout=httpx.Timeout(30.0),
        )
        try:
            async with client:
                revoked_at: int | None = None

                def revoke_once(completed: int) -> None:
                    # The API revokes the token the cache serves now. Requests that carry
                    # it get a 401 and are retried with the next token, which the API
                    # accepts. Older tokens still in flight stay valid until they expire.
                    nonlocal revoked_at
                    if revoked_at is not None or completed < revoke_at:
                        return
                    current = cache.peek()
                    if current is not None:
                        registry.revoke(current.value)
                        revoked_at = completed

                result = await drive(
                    client,
                    total=options.requests,
                    concurrency=options.concurrency,
                    in_flight=min(options.concurrency, IN_FLIGHT),
                    progress=ProgressBar(options.requests, stream=stream, enabled=progress_enabled),
                    after_request=revoke_once if revoke_at > 0 else None,
                )
                retries = client.token_auth.statistics().retried
                fetches = cache.statistics().fetches
        finally:
            await source.aclose()

    successes = sum(count for status, count in result.statuses.items() if 200 <= status < 300)
    if fetches > 0 and recorder.tokens == 0 and result.first_errors:
        # Not one token arrived, so every request failed the same way. One error line
        # explains that better than a summary of failures.
        name, message = next(iter(result.first_errors.items()))
        problem = f"could not get a token from {token_url}: {name}: {message}"
        raise DemoError(problem)
    return DemoSummary(
        backend=options.backend,
        requests=options.requests,
        concurrency=options.concurrency,
        in_flight=min(options.concurrency, IN_FLIGHT),
        successes=successes,
        token_fetches=fetches,
        token_lifetime=recorder.lifetime,
        renewal_interval=_renewal_interval(cache, recorder.lifetime),
        duration=result.duration,
        rejections=api.rejected,
        retries=retries,
        revoked_at=revoked_at,
        latency_p50=percentile(result.latencies, 0.50),
        latency_p99=percentile(result.latencies, 0.99),
        token_url=token_url,
        embedded=embedded,
        api_url=api_url,
        statuses={s: n for s, n in result.statuses.items() if not 200 <= s < 300},
        errors={name: (count, result.first_errors[name]) for name, count in result.errors.items()},
    )
