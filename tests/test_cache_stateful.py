"""Generated interleavings of cache operations, checked against a simple model.

Hypothesis draws a program: gets (some with their own deadline), forced refreshes,
invalidations of the current or an older token, cancellations, clock advances, pauses
until every task is blocked, and a script for each key's token source (slow fetches,
fetches that never answer, transient, permanent and unexpected failures). The program
runs inside or outside ``async with cache:`` on a fake clock, on asyncio and on trio.

The model checks, as the program runs:

* at most one fetch per key is in flight;
* no caller gets a token past its margin, or a token invalidated before the call began;
* a refresh starts only when it should: no token, an invalidated token, a token in its
  refresh-ahead window, or a forced refresh, and never during a cooldown or after a
  permanent error unless forced;
* invalidate() drops exactly the cached token, and peek() agrees with the model;
* a fresh token is returned without suspending;

and, once the clock has run on long enough for every refresh to end, that every
caller was answered: with a token, a RefreshError, or the cancellation it asked for.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache_support import VALUE_TAIL, entered_or_not, get_at_once, never_random
from tokenflight import (
    Backoff,
    CacheEvent,
    PermanentRefreshError,
    ReauthenticationRequired,
    RefreshError,
    Token,
    TokenCache,
    TransientRefreshError,
)
from tokenflight.testing import FakeClock, wait_all_tasks_blocked

KEYS = ("a", "b")
SKEW = 30.0
REFRESH_AHEAD = 300.0
TIMEOUT = 30.0


# -- the scripted token source ---------------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    """One scripted fetch: wait ``delay`` (``None``: forever), then do ``outcome``."""

    delay: float | None
    outcome: str
    lifetime: float = 600.0
    retry_after: float | None = None


@dataclass
class Issued:
    """A token a source returned, with what the model needs to judge its use."""

    token: Token
    key: Hashable
    sent: float
    lifetime: float

    @property
    def usable_until(self) -> float:
        return self.sent + self.lifetime - min(SKEW, self.lifetime / 4)

    @property
    def refresh_at(self) -> float:
        usable = self.usable_until - self.sent
        return self.usable_until - min(REFRESH_AHEAD, usable / 2)


@dataclass
class KeyState:
    """The model's state of one key."""

    current: Issued | None = None
    invalidated_at: int | None = None
    forced: int = 0
    in_flight: int = 0
    first_attempt_next: bool = False
    last_attempt_transient: bool = False
    last_error: BaseException | None = None
    streak: int = 0
    failed_at: float = -math.inf
    failed_error: str = ""
    script: list[Fetch] = field(default_factory=list)
    issued: list[Issued] = field(default_factory=list)


class Model:
    """The reference model and the violations it found."""

    def __init__(self, clock: FakeClock, cooldown: Backoff) -> None:
        self.clock = clock
        self.keys: dict[Hashable, KeyState] = {key: KeyState() for key in KEYS}
        self.sequence = 0
        self.violations: list[str] = []
        self.cooldown = cooldown
        self.default = Fetch(0.0, "ok")

    def violation(self, message: str) -> None:
        self.violations.append(f"t={self.clock.monotonic():.3f}: {message}")

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    # Events from the cache, received through its hook.
    def on_event(self, event: CacheEvent) -> None:
        state = self.keys[event.key]
        if event.name == "refresh.started":
            state.first_attempt_next = True
        elif event.name == "refresh.succeeded":
            issued = state.issued[-1]
            if issued.token.fingerprint != event.fingerprint:
                self.violation(f"key {event.key}: stored a token that was not the last fetched")
            state.current = issued
            state.invalidated_at = None
            state.streak = 0
        elif event.name == "refresh.failed":
            state.streak += 1
            state.failed_at = self.clock.monotonic()
            state.failed_error = event.error or ""
        elif event.name == "token.invalidated":
            state.invalidated_at = self.next_sequence()

    def cooldown_until(self, state: KeyState) -> float:
        if state.streak == 0:
            return -math.inf
        if state.failed_error in {"PermanentRefreshError", "ReauthenticationRequired"}:
            return math.inf
        delay = self.cooldown.delay(state.streak, never_random)
        retry_after = getattr(state.last_error, "retry_after", None)
        if state.failed_error != "RefreshTimeoutError" and retry_after is not None:
            delay = max(delay, retry_after)
        return state.failed_at + delay

    def check_fetch_start(self, key: Hashable) -> None:
        state = self.keys[key]
        now = self.clock.monotonic()
        state.in_flight += 1
        if state.in_flight > 1:
            self.violation(f"key {key}: {state.in_flight} fetches in flight")
        if not state.first_attempt_next:
            if not state.last_attempt_transient:
                self.violation(f"key {key}: a retry after an attempt that was not transient")
            return
        state.first_attempt_next = False
        if state.forced:
            return
        current = state.current
        if current is not None and state.invalidated_at is None and now < current.refresh_at:
            self.violation(f"key {key}: refresh started while the token was fresh")
        if now < self.cooldown_until(state):
            self.violation(
                f"key {key}: refresh started during a cooldown or after a permanent error"
            )

    def check_returned(self, key: Hashable, token: Token, call_sequence: int) -> None:
        state = self.keys[key]
        now = self.clock.monotonic()
        issued = next((item for item in state.issued if item.token is token), None)
        if issued is None:
            self.violation(f"key {key}: a caller got a token this key's source never issued")
            return
        if now >= issued.usable_until:
            self.violation(f"key {key}: a caller got a token past its margin")
        if (
            state.current is not None
            and state.current.token is token
            and state.invalidated_at is not None
            and state.invalidated_at < call_sequence
        ):
            self.violation(f"key {key}: a caller got a token invalidated before its call")


class ModelSource:
    """A token source for one key that follows the model's script for that key."""

    def __init__(self, model: Model, key: Hashable) -> None:
        self.model = model
        self.key = key

    async def fetch(self) -> Token:
        model = self.model
        state = model.keys[self.key]
        model.check_fetch_start(self.key)
        sent = model.clock.monotonic()
        step = state.script.pop(0) if state.script else model.default
        try:
            if step.delay is None:
                await anyio.sleep_forever()
            else:
                await model.clock.sleep(step.delay)
        finally:
            state.in_flight -= 1

        state.last_attempt_transient = step.outcome == "transient"
        error: BaseException | None = None
        if step.outcome == "transient":
            error = TransientRefreshError(
                "token endpoint answered 503", retry_after=step.retry_after
            )
        elif step.outcome == "permanent":
            error = PermanentRefreshError("token endpoint answered invalid_client")
        elif step.outcome == "reauth":
            error = ReauthenticationRequired("token endpoint answered invalid_grant")
        elif step.outcome == "other":
            error = ValueError("token endpoint answered malformed JSON")
        if error is not None:
            state.last_error = error
            raise error

        state.last_error = None
        token = Token(f"{self.key}-{len(state.issued)}-{VALUE_TAIL}", expires_in=step.lifetime)
        state.issued.append(Issued(token, self.key, sent, step.lifetime))
        return token


# -- the program -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One step of a generated program."""

    kind: str
    key: str = "a"
    number: float = 0.0
    fetch: Fetch | None = None


fetches = st.builds(
    Fetch,
    delay=st.sampled_from([0.0, 0.25, 1.0, 5.0, 20.0, 45.0, None]),
    outcome=st.sampled_from(["ok", "ok", "ok", "transient", "permanent", "reauth", "other"]),
    lifetime=st.sampled_from([60.0, 60.0, 600.0, 3600.0]),
    retry_after=st.sampled_from([None, None, 2.0, 90.0]),
)
# What a source does once its script is used up: return a token at once or a little
# later, keep failing in a way that is retried or one that is not, or never return.
defaults = st.sampled_from(
    [
        Fetch(0.0, "ok", lifetime=60.0),
        Fetch(0.0, "ok", lifetime=600.0),
        Fetch(1.0, "ok", lifetime=60.0),
        Fetch(0.25, "transient"),
        Fetch(20.0, "transient"),
        Fetch(0.0, "other"),
        Fetch(None, "ok"),
    ]
)
keys = st.sampled_from(KEYS)
# Advances chosen to land before, inside and after the refresh-ahead window and the
# margin of 60 s and 600 s tokens, and across timeouts and cooldowns.
advances = st.sampled_from([0.0, 0.1, 1.0, 4.0, 15.0, 23.0, 31.0, 46.0, 61.0, 300.0, 600.0])
gets = st.builds(Op, kind=st.sampled_from(["get", "get-settle"]), key=keys)
ops = st.one_of(
    gets,
    gets,
    st.builds(Op, kind=st.just("get-deadline"), key=keys, number=st.sampled_from([0.5, 3.0, 40.0])),
    st.builds(Op, kind=st.just("force"), key=keys),
    st.builds(Op, kind=st.just("invalidate-current"), key=keys),
    st.builds(Op, kind=st.just("invalidate-stale"), key=keys),
    st.builds(Op, kind=st.just("cancel"), number=st.integers(0, 30)),
    st.builds(Op, kind=st.just("advance"), number=advances),
    st.builds(Op, kind=st.just("advance"), number=advances),
    st.builds(
        Op,
        kind=st.sampled_from(["to-window", "to-margin", "to-cooldown-end"]),
        key=keys,
        number=st.sampled_from([-0.1, 0.0, 0.1, 5.0]),
    ),
    st.builds(Op, kind=st.just("settle")),
    st.builds(Op, kind=st.just("hot-get"), key=keys),
    st.builds(Op, kind=st.just("peek"), key=keys),
    st.builds(Op, kind=st.just("script"), key=keys, fetch=fetches),
)


@dataclass
class Caller:
    """A task the program started, and how it ended."""

    kind: str
    key: str
    sequence: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    outcome: str | None = None


def boundary_step(model: Model, state: KeyState, op: Op) -> float:
    """Return how far to advance to land ``op.number`` seconds from a boundary, or 0."""
    target = math.inf
    if op.kind == "to-cooldown-end":
        target = model.cooldown_until(state)
    elif state.current is not None:
        issued = state.current
        target = issued.refresh_at if op.kind == "to-window" else issued.usable_until
    step = target + op.number - model.clock.monotonic()
    return step if math.isfinite(step) else 0.0


def check_invalidate(cache: TokenCache, model: Model, op: Op) -> None:
    """Invalidate the current or an older token; only the cached one may be dropped."""
    state = model.keys[op.key]
    cached = state.current.token if state.current is not None else None
    if op.kind == "invalidate-current" and cached is not None:
        target = cached
    elif len(state.issued) >= 2:
        target = state.issued[0].token
    else:
        target = Token(f"foreign-{VALUE_TAIL}")
    expected = state.invalidated_at is None and target is cached
    if cache.invalidate(target, op.key) != expected:
        model.violation(f"{op.kind} on key {op.key} did not return {expected}")


def check_peek(cache: TokenCache, model: Model, op: Op) -> None:
    """peek() returns the cached token while it is usable and not invalidated."""
    state = model.keys[op.key]
    issued = state.current
    expected = None
    if (
        issued is not None
        and state.invalidated_at is None
        and model.clock.monotonic() < issued.usable_until
    ):
        expected = issued.token
    if cache.peek(op.key) is not expected:
        model.violation(f"peek({op.key}) disagreed with the model")


def check_hot_get(cache: TokenCache, model: Model, op: Op) -> None:
    """A fresh token comes back from get() without suspending."""
    state = model.keys[op.key]
    issued = state.current
    if issued is None or state.invalidated_at is not None:
        return
    if model.clock.monotonic() >= issued.refresh_at:
        return
    try:
        token = get_at_once(cache, op.key)
    except AssertionError:
        model.violation(f"get({op.key}) suspended on a fresh token")
        return
    if token is not issued.token:
        model.violation(f"get({op.key}) returned another token than the fresh one")


async def run_program(
    program: list[Op],
    *,
    entered: bool,
    scripts: dict[str, list[Fetch]] | None = None,
    default: Fetch | None = None,
) -> Model:
    clock = FakeClock()
    model: Model
    cache = TokenCache(
        sources=lambda key: ModelSource(model, key),
        clock=clock,
        random=never_random,
        hooks=[lambda event: model.on_event(event)],
        max_keys=len(KEYS),
    )
    model = Model(clock, cache.policy.cooldown)
    for key, script in (scripts or {}).items():
        model.keys[key].script = list(script)
    if default is not None:
        model.default = default
    callers: list[Caller] = []
    cancelled = anyio.get_cancelled_exc_class()

    async def call(caller: Caller, deadline: float | None) -> None:
        state = model.keys[caller.key]
        if caller.kind == "force":
            state.forced += 1
        try:
            with caller.scope:
                async with clock.move_on_after(math.inf if deadline is None else deadline) as limit:
                    try:
                        if caller.kind == "force":
                            token = await cache.force_refresh(caller.key)
                        else:
                            token = await cache.get(caller.key)
                    except RefreshError:
                        caller.outcome = "error"
                        return
                    except cancelled:
                        if not (caller.scope.cancel_called or limit.cancel_called):
                            model.violation(f"{caller.kind} {caller.key}: unexpected cancellation")
                            caller.outcome = "unexpected"
                            return
                        raise
                    except Exception as error:
                        model.violation(f"{caller.kind} {caller.key}: raised {error!r}")
                        caller.outcome = "unexpected"
                        return
                    model.check_returned(caller.key, token, caller.sequence)
                    caller.outcome = "token"
                if limit.cancelled_caught:
                    caller.outcome = "deadline"
            if caller.scope.cancelled_caught:
                caller.outcome = "cancelled"
        finally:
            if caller.kind == "force":
                state.forced -= 1

    async with entered_or_not(cache, entered=entered), anyio.create_task_group() as task_group:
        for op in program:
            state = model.keys[op.key]
            if op.kind in {"get", "get-settle", "get-deadline", "force"}:
                kind = "force" if op.kind == "force" else "get"
                caller = Caller(kind, op.key, model.next_sequence())
                callers.append(caller)
                deadline = op.number if op.kind == "get-deadline" else None
                task_group.start_soon(call, caller, deadline)
                if op.kind == "get-settle":
                    await wait_all_tasks_blocked()
            elif op.kind == "cancel" and callers:
                callers[int(op.number) % len(callers)].scope.cancel()
            elif op.kind == "advance":
                await clock.advance(op.number)
            elif op.kind in {"to-window", "to-margin", "to-cooldown-end"}:
                step = boundary_step(model, state, op)
                if step > 0:
                    await clock.advance(step)
            elif op.kind == "settle":
                await wait_all_tasks_blocked()
            elif op.kind == "script" and op.fetch is not None:
                state.script.append(op.fetch)
            elif op.kind in {"invalidate-current", "invalidate-stale"}:
                check_invalidate(cache, model, op)
            elif op.kind == "peek":
                check_peek(cache, model, op)
            elif op.kind == "hot-get":
                check_hot_get(cache, model, op)

        # Let every refresh end. Without fetches that never answer, a refresh lasts at most
        # its 30 s timeout, and a waiter of an abandoned one starts at most one more, so
        # 20 minutes of fake time answer every caller that is still waiting.
        for key in KEYS:
            model.keys[key].script = [
                fetch for fetch in model.keys[key].script if fetch.delay is not None
            ]
        if model.default.delay is None:
            model.default = Fetch(0.0, "ok")
        for _ in range(30):
            await clock.advance(40.0)
        unanswered = [caller for caller in callers if caller.outcome is None]
        for caller in unanswered:
            model.violation(f"{caller.kind} {caller.key} (call {caller.sequence}) never answered")
        task_group.cancel_scope.cancel()

    statistics = cache.statistics()
    if statistics.in_flight or statistics.waiters:
        model.violation(f"left behind: {statistics}")
    return model


@pytest.mark.anyio
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    program=st.lists(ops, min_size=10, max_size=60),
    entered=st.booleans(),
    scripts=st.fixed_dictionaries({key: st.lists(fetches, max_size=3) for key in KEYS}),
    default=defaults,
)
async def test_interleavings_match_model(
    program: list[Op], entered: bool, scripts: dict[str, list[Fetch]], default: Fetch
) -> None:
    model = await run_program(program, entered=entered, scripts=scripts, default=default)

    assert model.violations == []
