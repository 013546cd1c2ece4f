"""Benchmark group ``jwt``: requests that each need a locally signed JWT.

The API wants a JWT with a 15-second lifetime on every request. Compared, in-process
(``httpx.MockTransport``) with 50 workers:

* tokenflight: ``AuthClient`` over a ``TokenCache`` of a ``JwtSource``, so one JWT serves
  every request until the cache renews it ahead of expiry;
* per-request signing as often written by hand: an ``httpx.Auth`` that calls
  ``jwt.encode()`` (PyJWT) with the PEM text on every request, so the key is parsed
  every time;
* the same with the key parsed once, to separate parsing from signing;
* the static-header baseline, for scale.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tokenflight import AuthClient, JwtSigner, JwtSource, TokenCache, load_signing_key

from ._harness import (
    STATIC_TOKEN,
    Profile,
    collect_garbage,
    drive,
    drive_for,
    in_process_endpoint,
    mock_transport,
)
from ._results import Goal, GroupResult, Table
from ._stats import format_ratio, summarize

__all__ = ["run"]

BACKENDS = ("asyncio", "trio")
ALGORITHMS = ("RS256", "ES256", "EdDSA")
LIFETIME = 15.0
WORKERS = 50
ISSUER = "bench-issuer"
SUBJECT = "bench-subject"
AUDIENCE = "https://api.example.test"
# The cache's default skew (30 s) is longer than the JWT's lifetime. The cache would clamp
# it and log a warning, so the benchmark sets a skew that fits, as the warning advises.
JWT_SKEW = 5.0


def _private_key_pem(algorithm: str) -> bytes:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif algorithm == "ES256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class PerRequestJwtAuth(httpx.Auth):
    """Sign a new JWT for every request with PyJWT, as hand-written auth often does.

    With ``parse_once=False`` the PEM text goes to ``jwt.encode()`` each time, which
    parses the key on every call.
    """

    def __init__(self, pem: bytes, algorithm: str, *, parse_once: bool) -> None:
        self._algorithm = algorithm
        self._key: Any = serialization.load_pem_private_key(pem, None) if parse_once else pem

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": SUBJECT,
            "aud": AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + int(LIFETIME),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._key, algorithm=self._algorithm)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


Opener = Callable[[bytes, str], AbstractAsyncContextManager[httpx.AsyncClient]]


@dataclass(frozen=True)
class _JwtVariant:
    name: str
    open: Opener


def _kwargs() -> dict[str, Any]:
    return {"base_url": in_process_endpoint().base_url, "transport": mock_transport()}


@asynccontextmanager
async def _open_static(pem: bytes, algorithm: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {STATIC_TOKEN}"}
    async with httpx.AsyncClient(headers=headers, **_kwargs()) as client:
        yield client


@asynccontextmanager
async def _open_tokenflight(pem: bytes, algorithm: str) -> AsyncIterator[httpx.AsyncClient]:
    signer = JwtSigner(load_signing_key(pem, algorithm=algorithm))
    source = JwtSource(signer, issuer=ISSUER, subject=SUBJECT, audience=AUDIENCE, lifetime=LIFETIME)
    cache = TokenCache(source, skew=JWT_SKEW)
    async with AuthClient(cache, **_kwargs()) as client:
        yield client


@asynccontextmanager
async def _open_per_request(pem: bytes, algorithm: str) -> AsyncIterator[httpx.AsyncClient]:
    auth = PerRequestJwtAuth(pem, algorithm, parse_once=False)
    async with httpx.AsyncClient(auth=auth, **_kwargs()) as client:
        yield client


@asynccontextmanager
async def _open_per_request_parsed(pem: bytes, algorithm: str) -> AsyncIterator[httpx.AsyncClient]:
    auth = PerRequestJwtAuth(pem, algorithm, parse_once=True)
    async with httpx.AsyncClient(auth=auth, **_kwargs()) as client:
        yield client


BASELINE = _JwtVariant("httpx, static header (for scale)", _open_static)
TOKENFLIGHT = _JwtVariant("tokenflight AuthClient + JwtSource", _open_tokenflight)
PER_REQUEST = _JwtVariant("per-request signing, PEM parsed each time", _open_per_request)
PER_REQUEST_PARSED = _JwtVariant("per-request signing, key parsed once", _open_per_request_parsed)
VARIANTS = (BASELINE, TOKENFLIGHT, PER_REQUEST, PER_REQUEST_PARSED)


async def _measure(
    pem: bytes, algorithm: str, rounds: int, seconds: float
) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {variant.name: [] for variant in VARIANTS}
    async with contextlib.AsyncExitStack() as stack:
        clients: dict[str, httpx.AsyncClient] = {}
        for variant in VARIANTS:
            client = await stack.enter_async_context(variant.open(pem, algorithm))
            warmup = await drive(client, "/api", WORKERS, WORKERS * 2)
            if warmup.failures:
                raise RuntimeError(f"{variant.name}: {warmup.failures} failed warm-up requests")
            clients[variant.name] = client
        for round_number in range(rounds):
            shift = round_number % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                collect_garbage()
                outcome = await drive_for(clients[variant.name], "/api", WORKERS, seconds)
                if outcome.failures:
                    raise RuntimeError(f"{variant.name}: {outcome.failures} failed requests")
                rates[variant.name].append(outcome.rate)
    return rates


def run(profile: Profile) -> GroupResult:
    """Measure requests per second when each request needs a JWT, per algorithm."""
    rounds = min(profile.rounds, 5)
    seconds = profile.pick(0.3, 1.0)
    result = GroupResult(
        name="jwt",
        title="Locally signed JWTs",
        description=(
            f"Every request carries a JWT with a {LIFETIME:g}-second lifetime (iss, sub, aud, "
            f"iat, nbf, exp, jti), sent in-process (`httpx.MockTransport`) by {WORKERS} "
            f"workers for {seconds:g} s per round. tokenflight signs through `JwtSource` "
            "behind a `TokenCache` with `skew=5`, so it signs once and then again ahead of "
            "expiry. Per-request signing calls PyJWT's `jwt.encode()` in an `httpx.Auth` "
            "for every request, once with the PEM text (parsed on every call, the common "
            "hand-written pattern) and once with a key object parsed up front. Keys: RSA "
            "2048, P-256 and Ed25519, generated for the run."
        ),
    )
    rs256_ratios: list[float] = []
    for backend in BACKENDS:
        table = Table(
            f"requests per second, {WORKERS} workers, in-process, {backend}",
            [
                "algorithm",
                "variant",
                "requests/s",
                "µs per request",
                "tokenflight's multiple of it",
            ],
        )
        for algorithm in ALGORITHMS:
            pem = _private_key_pem(algorithm)
            rates = anyio.run(_measure, pem, algorithm, rounds, seconds, backend=backend)
            ours = summarize(rates[TOKENFLIGHT.name])
            for variant in VARIANTS:
                rate = summarize(rates[variant.name])
                if variant is PER_REQUEST and algorithm == "RS256":
                    rs256_ratios.append(ours.median / rate.median)
                table.rows.append(
                    [
                        algorithm,
                        variant.name,
                        rate.format(0),
                        f"{1e6 / rate.median:,.0f}",
                        "-" if variant is TOKENFLIGHT else format_ratio(ours.median, rate.median),
                    ]
                )
                result.raw[f"{backend}/{algorithm}/{variant.name}"] = rate.to_json()
        table.notes.append(
            f"{rounds} rounds; requests per second as median (min-max); µs per request is "
            "the median's inverse (wall time per request across all workers)."
        )
        result.tables.append(table)

    result.goals.append(
        Goal(
            "Signed JWTs: at least 20x the throughput of per-request signing with RS256",
            ", ".join(f"{ratio:.0f}x" for ratio in rs256_ratios) + " (asyncio, trio)",
            min(rs256_ratios) >= 20,
        )
    )
    return result
