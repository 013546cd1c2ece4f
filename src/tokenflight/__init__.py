"""tokenflight: single-flight async credentials for httpx, on asyncio and trio.

The core (tokens, the cache, errors, clocks) imports no HTTP library. The adapters for
httpx, the token sources and the signers build on it.
"""

from ._cache import TokenCache
from ._clock import Clock, SystemClock
from ._errors import (
    ClockSkewError,
    ConfigurationError,
    InvalidTokenError,
    PermanentRefreshError,
    ReauthenticationRequired,
    RefreshError,
    RefreshTimeoutError,
    TokenflightError,
    TransientRefreshError,
)
from ._events import CacheEvent, CacheStatistics, EventHook
from ._policy import Backoff, RefreshPolicy
from ._source import CallableSource, TokenSource
from ._token import Token, fingerprint

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "CacheEvent",
    "CacheStatistics",
    "CallableSource",
    "Clock",
    "ClockSkewError",
    "ConfigurationError",
    "EventHook",
    "InvalidTokenError",
    "PermanentRefreshError",
    "ReauthenticationRequired",
    "RefreshError",
    "RefreshPolicy",
    "RefreshTimeoutError",
    "SystemClock",
    "Token",
    "TokenCache",
    "TokenSource",
    "TokenflightError",
    "TransientRefreshError",
    "fingerprint",
]
