"""tokenflight: single-flight async credentials for httpx, on asyncio and trio.

The core (tokens, the cache, errors, clocks) imports no HTTP library. The adapters for
httpx, the token sources and the signers build on it.
"""

from ._cache import TokenCache
from ._clock import Clock, SystemClock
from ._credentials import Credentials
from ._errors import (
    ClockSkewError,
    ConfigurationError,
    InvalidTokenError,
    NoUsableKeyError,
    OAuth2Error,
    PermanentRefreshError,
    RateLimitedError,
    ReauthenticationRequired,
    RefreshError,
    RefreshTimeoutError,
    SignatureVerificationError,
    SigningError,
    TokenflightError,
    TransientRefreshError,
)
from ._events import CacheEvent, CacheStatistics, EventHook
from ._hmac import (
    HmacAuth,
    HmacCanonicalRequest,
    HmacScheme,
    HmacVerifier,
    VerifiedRequest,
)
from ._httpx import AuthClient, AuthStatistics, TokenAuth
from ._jwt import (
    JwtSigner,
    JwtSource,
    SignedJwt,
    check_time_claims,
    decode_unverified,
    encode_jws,
)
from ._keypool import KeyPool, KeyPoolAuth, KeyPoolStatistics, PoolKey
from ._keys import SigningKey, load_signing_key, signing_key_from_env
from ._nonce import NonceGenerator
from ._oauth2 import ClientCredentials, JwtBearerGrant, TokenKey
from ._oauth2_discovery import ServerMetadata, fetch_server_metadata
from ._oauth2_refresh import RefreshTokenGrant
from ._oauth2_response import parse_token_response
from ._policy import Backoff, RefreshPolicy
from ._server_clock import ServerClock, looks_like_clock_skew
from ._signing import KeyLease, RetryPolicy, SigningAuth
from ._sigv4 import SigV4Auth, presign_url
from ._source import CallableSource, TokenSource
from ._token import Token, fingerprint

__version__ = "0.1.0"

__all__ = [
    "AuthClient",
    "AuthStatistics",
    "Backoff",
    "CacheEvent",
    "CacheStatistics",
    "CallableSource",
    "ClientCredentials",
    "Clock",
    "ClockSkewError",
    "ConfigurationError",
    "Credentials",
    "EventHook",
    "HmacAuth",
    "HmacCanonicalRequest",
    "HmacScheme",
    "HmacVerifier",
    "InvalidTokenError",
    "JwtBearerGrant",
    "JwtSigner",
    "JwtSource",
    "KeyLease",
    "KeyPool",
    "KeyPoolAuth",
    "KeyPoolStatistics",
    "NoUsableKeyError",
    "NonceGenerator",
    "OAuth2Error",
    "PermanentRefreshError",
    "PoolKey",
    "RateLimitedError",
    "ReauthenticationRequired",
    "RefreshError",
    "RefreshPolicy",
    "RefreshTimeoutError",
    "RefreshTokenGrant",
    "RetryPolicy",
    "ServerClock",
    "ServerMetadata",
    "SigV4Auth",
    "SignatureVerificationError",
    "SignedJwt",
    "SigningAuth",
    "SigningError",
    "SigningKey",
    "SystemClock",
    "Token",
    "TokenAuth",
    "TokenCache",
    "TokenKey",
    "TokenSource",
    "TokenflightError",
    "TransientRefreshError",
    "VerifiedRequest",
    "check_time_claims",
    "decode_unverified",
    "encode_jws",
    "fetch_server_metadata",
    "fingerprint",
    "load_signing_key",
    "looks_like_clock_skew",
    "parse_token_response",
    "presign_url",
    "signing_key_from_env",
]
