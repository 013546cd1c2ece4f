"""Origins: the (scheme, host, port) triple that decides where credentials may be sent.

Two URLs have the same origin when their schemes, hosts and ports are equal, with a
missing port read as the scheme's default (80 for http, 443 for https). Hosts are
compared as httpx normalises them: lowercase and IDNA-encoded. Anything else counts as
a different host and gets no credentials, so every doubtful case fails closed:

* ``example.com.`` (with the trailing dot of a fully qualified name) is not
  ``example.com``;
* ``127.1`` is not ``127.0.0.1``, although both reach the same address;
* userinfo (``user:password@``), path, query and fragment play no part.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import httpx

from ._errors import ConfigurationError

__all__ = ["DEFAULT_PORTS", "AllowedOrigins", "Origin", "origin_of", "same_origin"]

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class Origin(NamedTuple):
    """A URL's origin: scheme, host (lowercase, IDNA-encoded) and port (never ``None``)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if DEFAULT_PORTS.get(self.scheme) == self.port:
            return f"{self.scheme}://{host}"
        return f"{self.scheme}://{host}:{self.port}"


def origin_of(url: httpx.URL | str) -> Origin:
    """Return the origin of an absolute URL.

    :param url: an absolute URL, for example ``"https://api.example.com/v1"``.
    :raises ConfigurationError: when the URL is relative, has no host, or has no port and
        a scheme without a default port.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as error:
        message = f"{url!r} is not a valid URL: {error}"
        raise ConfigurationError(message) from None
    if not parsed.scheme or not parsed.raw_host:
        message = (
            f"{str(parsed)!r} is not an absolute URL; give an origin such as "
            "'https://api.example.com'"
        )
        raise ConfigurationError(message)
    port = parsed.port if parsed.port is not None else DEFAULT_PORTS.get(parsed.scheme)
    if port is None:
        message = (
            f"{str(parsed)!r} has no port, and the scheme {parsed.scheme!r} has no default "
            "port; add the port to the URL"
        )
        raise ConfigurationError(message)
    return Origin(parsed.scheme, parsed.raw_host.decode("ascii"), port)


def same_origin(url: httpx.URL, other: httpx.URL) -> bool:
    """Return whether two absolute URLs have the same origin."""
    if url.scheme != other.scheme or url.raw_host != other.raw_host:
        return False
    default = DEFAULT_PORTS.get(url.scheme)
    port = url.port if url.port is not None else default
    other_port = other.port if other.port is not None else default
    return port == other_port


class AllowedOrigins:
    """The set of origins that may receive credentials.

    :meth:`allows` runs on every request, so it does one set lookup on the URL's parts
    as httpx has already parsed them. httpx drops a scheme's default port while parsing
    (``https://host:443`` has ``port=None``); the set holds both spellings in case a
    URL still carries it.

    :param origins: absolute URLs (strings or :class:`httpx.URL`) or :class:`Origin`
        values; only their origins count.
    :raises ConfigurationError: when an entry is not an absolute URL, or none is given.
    """

    __slots__ = ("_keys", "_origins")

    def __init__(self, origins: Iterable[str | httpx.URL | Origin] | str | httpx.URL) -> None:
        if isinstance(origins, str | httpx.URL):
            origins = [origins]
        parsed: list[Origin] = []
        for entry in origins:
            parsed.append(entry if isinstance(entry, Origin) else origin_of(entry))
        if not parsed:
            message = (
                "allowed_origins is empty, so no request could carry credentials; "
                "give at least one origin such as 'https://api.example.com'"
            )
            raise ConfigurationError(message)
        self._origins = frozenset(parsed)
        keys: set[tuple[str, bytes, int | None]] = set()
        for origin in parsed:
            host = origin.host.encode("ascii")
            keys.add((origin.scheme, host, origin.port))
            if DEFAULT_PORTS.get(origin.scheme) == origin.port:
                keys.add((origin.scheme, host, None))
        self._keys = frozenset(keys)

    @property
    def origins(self) -> frozenset[Origin]:
        """The allowed origins."""
        return self._origins

    def allows(self, url: httpx.URL) -> bool:
        """Return whether a request to ``url`` may carry credentials."""
        return (url.scheme, url.raw_host, url.port) in self._keys

    def __contains__(self, url: object) -> bool:
        if isinstance(url, str):
            url = httpx.URL(url)
        return isinstance(url, httpx.URL) and self.allows(url)

    def __repr__(self) -> str:
        return f"AllowedOrigins({sorted(str(origin) for origin in self._origins)!r})"
