"""Benchmark group ``memory``: memory per cached key with 100,000 keys.

The cache is filled through ``get(key)`` for every key, with one shared token source
returning a 43-character token. ``tracemalloc`` measures what the filled cache holds;
the keys themselves are created before the measurement, so they are not counted. The
token values (the token's own strings) are subtracted. For comparison, a plain dict of
``key -> (Token, expiry)`` is filled with the same kind of tokens.
"""

from __future__ import annotations

import gc
import math
import secrets
import sys
import tracemalloc
from collections.abc import Hashable

import anyio

from tokenflight import Token, TokenCache

from ._harness import Profile
from ._results import Goal, GroupResult, Table

__all__ = ["run"]

KIB = 1024


class _Source:
    """One source for every key: a new random token per fetch."""

    async def fetch(self) -> Token:
        return Token(secrets.token_urlsafe(32), expires_in=3600)


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def _fill_cache(keys: list[str]) -> tuple[int, int, dict[str, int]]:
    source = _Source()
    cache = TokenCache(sources=lambda key: source, max_keys=len(keys))
    tracemalloc.start()
    try:
        before = _traced()
        for key in keys:
            await cache.get(key)
        total = _traced() - before
    finally:
        tracemalloc.stop()
    strings = 0
    for key in keys:
        token = cache.peek(key)
        assert token is not None
        strings += sys.getsizeof(token.value)
    sample = cache.peek(keys[0])
    assert sample is not None
    entry = cache._entries[keys[0]]
    parts = {
        "Token object (with its __dict__)": sys.getsizeof(sample) + sys.getsizeof(vars(sample)),
        "cache entry (_Entry, slots)": sys.getsizeof(entry),
    }
    return total, strings, parts


def _fill_dict(keys: list[str]) -> tuple[int, int]:
    table: dict[Hashable, tuple[Token, float]] = {}
    tracemalloc.start()
    try:
        before = _traced()
        for key in keys:
            table[key] = (Token(secrets.token_urlsafe(32), expires_in=3600), math.inf)
        total = _traced() - before
    finally:
        tracemalloc.stop()
    strings = sum(sys.getsizeof(token.value) for token, _ in table.values())
    return total, strings


def run(profile: Profile) -> GroupResult:
    """Measure the bytes per cached key beyond the token strings."""
    count = profile.pick(20_000, 100_000)
    keys = [f"scope-{index:06d}" for index in range(count)]
    total, strings, parts = anyio.run(_fill_cache, keys)
    dict_total, dict_strings = _fill_dict(keys)

    per_key = (total - strings) / count
    dict_per_key = (dict_total - dict_strings) / count
    result = GroupResult(
        name="memory",
        title="Memory per cached key",
        description=(
            f"{count:,} keys, each filled by `await cache.get(key)` on asyncio through one "
            "shared token source that returns a random 43-character token. Measured with "
            "`tracemalloc` after a garbage collection; the key strings exist before the "
            "measurement and are not counted; the token values are subtracted. The plain dict "
            "holds `key -> (Token, expiry)` for the same number of keys, the least a cache "
            "could hold."
        ),
    )
    table = Table(
        f"{count:,} cached keys",
        ["holder", "bytes in all", "token strings", "bytes per key beyond the strings"],
    )
    table.rows.append(
        ["TokenCache", f"{total:,}", f"{strings:,}", f"{per_key:,.0f}"],
    )
    table.rows.append(
        [
            "dict of (Token, expiry)",
            f"{dict_total:,}",
            f"{dict_strings:,}",
            f"{dict_per_key:,.0f}",
        ],
    )
    table.notes.append(
        "Sizes of single objects (sys.getsizeof): "
        + "; ".join(f"{name}: {size} B" for name, size in parts.items())
        + ". The rest per key is the ordered dict's slot and node and the float expiry times."
    )
    result.tables.append(table)
    result.raw = {
        "keys": count,
        "total": total,
        "strings": strings,
        "per_key": per_key,
        "dict_per_key": dict_per_key,
        "parts": parts,
    }
    result.goals.append(
        Goal(
            "Under 1 KiB per cached key beyond the token's own strings",
            f"{per_key:,.0f} B per key (a plain dict: {dict_per_key:,.0f} B)",
            per_key < KIB,
        )
    )
    return result
