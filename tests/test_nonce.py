"""Nonces: unique and strictly increasing per key, whatever the concurrency and the clock."""

from __future__ import annotations

import itertools
import threading

import anyio
import anyio.lowlevel
import httpx
import pytest

from tokenflight import (
    ConfigurationError,
    Credentials,
    HmacAuth,
    HmacVerifier,
    NonceGenerator,
    SignatureVerificationError,
)
from tokenflight.testing import FakeClock


@pytest.mark.anyio
async def test_concurrent_nonces_frozen_clock() -> None:
    generator = NonceGenerator(FakeClock())
    issued: list[int] = []

    async def take() -> None:
        await anyio.lowlevel.checkpoint()
        issued.append(generator.next("key-1"))

    async with anyio.create_task_group() as group:
        for _ in range(1000):
            group.start_soon(take)

    assert len(set(issued)) == 1000
    assert issued == sorted(issued)
    assert all(later > earlier for earlier, later in itertools.pairwise(issued))


@pytest.mark.anyio
async def test_signed_requests_unique_nonces() -> None:
    clock = FakeClock()
    auth = HmacAuth(Credentials("key-1", "secret-1"), clock=clock)
    nonces: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        nonces.append(int(request.headers["X-Nonce"]))
        return httpx.Response(200)

    transport = httpx.MockTransport(handler)
    async with (
        httpx.AsyncClient(transport=transport, auth=auth) as client,
        anyio.create_task_group() as group,
    ):
        for _ in range(1000):
            group.start_soon(client.get, "https://api.example.com/")

    assert len(set(nonces)) == 1000


def test_wall_clock_steps_back() -> None:
    clock = FakeClock()
    generator = NonceGenerator(clock)
    before = [generator.next() for _ in range(3)]
    clock.jump_wall(-3600)
    after = [generator.next() for _ in range(3)]

    sequence = before + after
    assert all(later > earlier for earlier, later in itertools.pairwise(sequence))


def test_seeded_from_wall_clock() -> None:
    clock = FakeClock()
    first = NonceGenerator(clock)
    earlier = [first.next() for _ in range(1000)]
    clock.jump_wall(1.0)
    # A new process a second later starts above every nonce the old one issued.
    second = NonceGenerator(clock)
    assert second.next() > max(earlier)
    assert earlier[0] == int(FakeClock().time() * 1_000_000)


def test_keys_independent() -> None:
    generator = NonceGenerator(FakeClock())
    a1, b1, a2, b2 = (generator.next(key) for key in ("a", "b", "a", "b"))
    assert a1 == b1
    assert a2 == a1 + 1
    assert b2 == b1 + 1
    assert generator.last("a") == a2
    assert generator.last("missing") is None


def test_threads_unique_nonces() -> None:
    generator = NonceGenerator(FakeClock())
    per_thread: list[list[int]] = [[] for _ in range(8)]

    def work(out: list[int]) -> None:
        for _ in range(2000):
            out.append(generator.next())

    threads = [threading.Thread(target=work, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = [nonce for out in per_thread for nonce in out]
    assert len(set(everything)) == len(everything) == 16000
    for out in per_thread:
        assert out == sorted(out)


def test_millisecond_resolution() -> None:
    clock = FakeClock(wall_start=1_700_000_000.5)
    generator = NonceGenerator(clock, resolution=1000)
    assert generator.next() == 1_700_000_000_500
    with pytest.raises(ConfigurationError):
        NonceGenerator(clock, resolution=0)


# -- a server that requires each nonce to exceed the last one it received --------------


async def _two_racing_requests(*, ordered: bool) -> tuple[list[int], list[str]]:
    """Send two requests of one key; the first signed takes 1 s to arrive, the second 0 s."""
    clock = FakeClock()
    verifier = HmacVerifier({"key-1": "secret-1"}, increasing_nonces=True, clock=clock)
    auth = HmacAuth(Credentials("key-1", "secret-1"), clock=clock, ordered=ordered)
    transit = iter([1.0, 0.0])
    outcomes: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        await clock.sleep(next(transit))
        try:
            verifier.verify(request.method, request.url.raw_path, request.headers, request.content)
        except SignatureVerificationError as error:
            outcomes.append(error.reason)
            return httpx.Response(401)
        outcomes.append("ok")
        return httpx.Response(200)

    statuses: list[int] = []

    async def call(client: httpx.AsyncClient) -> None:
        response = await client.get("https://api.example.com/")
        statuses.append(response.status_code)

    transport = httpx.MockTransport(handler)
    async with (
        httpx.AsyncClient(transport=transport, auth=auth) as client,
        clock.autojump(),
        anyio.create_task_group() as group,
    ):
        group.start_soon(call, client)
        await anyio.lowlevel.checkpoint()
        group.start_soon(call, client)
    return statuses, outcomes


@pytest.mark.anyio
async def test_overtaken_request_rejected() -> None:
    # Without ordering, the later nonce arrives first and the earlier one is refused:
    # the failure that ordered signing prevents.
    statuses, outcomes = await _two_racing_requests(ordered=False)
    assert sorted(statuses) == [200, 401]
    assert outcomes == ["ok", "nonce_order"]


@pytest.mark.anyio
async def test_ordered_requests_arrive_in_order() -> None:
    statuses, outcomes = await _two_racing_requests(ordered=True)
    assert statuses == [200, 200]
    assert outcomes == ["ok", "ok"]
