"""A pytest plugin that fails any test whose log output contains a secret it registered.

Every test runs under a :class:`SecretGuard`. A test, or a fixture it uses, registers the
secrets it handles (token values, refresh tokens, client secrets, private keys, HMAC
keys) with :func:`register_secret` or through the ``secret_guard`` fixture. The guard
checks every log record emitted while the test runs: the formatted message, each
argument's ``str`` and ``repr``, extra attributes, and any formatted exception or stack.
A test that registers nothing cannot fail because of the guard.

Records of the ``tokenflight`` loggers are checked at every level, DEBUG included, even
when no handler would emit them. The guard makes those loggers build every record and
checks it, then passes on only the records their configured level lets through. Other
handlers, ``caplog`` included, see exactly the records they would see without the guard.

Besides the raw text, the guard looks for the URL-encoded and base64 forms of each
secret, so a logged ``Authorization: Basic ...`` header or a form body is caught too.
"""

from __future__ import annotations

import base64
import logging
import threading
import traceback
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

__all__ = ["Leak", "SecretGuard", "register_secret"]

# The loggers checked at every level. Records of other loggers are checked when they are
# emitted at their configured level.
GUARDED_LOGGERS = ("tokenflight",)

# A shorter value matches ordinary words and would fail tests at random.
MINIMUM_SECRET_LENGTH = 6

# Base64 forms are only searched for when their stable middle part is at least this long.
_MINIMUM_ENCODED_LENGTH = 8

# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("name", logging.INFO, "path", 1, "message", None, None))
) | {"message", "asctime", "taskName", "_secret_guards"}


def _encoded_forms(secret: str) -> set[str]:
    """Return the secret and the forms in which it can appear inside other text."""
    forms = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    raw = secret.encode("utf-8", "surrogatepass")
    # Inside a longer base64 text, the secret's encoding depends on its offset modulo 3.
    # Encode it at each offset and keep only the characters that do not depend on the
    # neighbouring bytes.
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        start = (offset * 4 + 2) // 3
        stable_end = ((offset + len(raw)) // 3) * 4
        core = encoded[start:stable_end]
        if len(core) >= _MINIMUM_ENCODED_LENGTH:
            forms.add(core)
            forms.add(core.replace("+", "-").replace("/", "_"))
    return forms


@dataclass(frozen=True)
class Leak:
    """One place where a registered secret appeared; ``excerpt`` has it masked."""

    where: str
    secret_number: int
    excerpt: str


class SecretGuard:
    """The secrets one test registered, and the leaks of them found so far.

    :meth:`install` attaches the guard to the logging system; the plugin does that around
    every test. Tests of the guard itself create their own instance.
    """

    def __init__(self) -> None:
        self._secrets: list[str] = []
        self._forms: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self.leaks: list[Leak] = []
        self.records_checked = 0

    @property
    def secrets(self) -> tuple[str, ...]:
        """The registered secrets, in registration order."""
        return tuple(self._secrets)

    def register(self, *secrets: str) -> None:
        """Add secrets to look for in every log record from now on.

        :raises TypeError: when a secret is not a str or bytes.
        :raises ValueError: when a secret is shorter than ``MINIMUM_SECRET_LENGTH``
            characters, which would match ordinary words.
        """
        for secret in secrets:
            text = _as_text(secret)
            if len(text) < MINIMUM_SECRET_LENGTH:
                msg = (
                    f"a registered secret must have at least {MINIMUM_SECRET_LENGTH} "
                    f"characters to be found reliably, got {len(text)}"
                )
                raise ValueError(msg)
            with self._lock:
                if text in self._secrets:
                    continue
                self._secrets.append(text)
                number = len(self._secrets)
                self._forms.extend((number, form) for form in _encoded_forms(text))

    def check_text(self, text: str, where: str) -> bool:
        """Record a leak for each registered secret found in ``text``; return whether any was.

        :param where: what the text is, for the failure report (a logger name, "repr").
        """
        found = False
        for number, form in self._forms:
            if form in text:
                found = True
                self.leaks.append(Leak(where, number, self._mask(text)))
        return found

    def check_record(self, record: logging.LogRecord) -> None:
        """Check one log record: message, arguments, extra fields, exception and stack."""
        self.records_checked += 1
        if not self._forms:
            return
        where = f"log record {record.name}:{record.levelname}"
        for part, text in _record_texts(record):
            self.check_text(text, f"{where} ({part})")

    def _mask(self, text: str) -> str:
        for number, form in sorted(self._forms, key=lambda item: -len(item[1])):
            text = text.replace(form, f"<secret #{number}>")
        return text if len(text) <= 300 else text[:300] + "..."

    def report(self) -> str:
        """Describe the leaks found, with every secret masked."""
        lines = [f"{len(self.leaks)} leak(s) of a registered secret:"]
        lines.extend(
            f"  secret #{leak.secret_number} in {leak.where}: {leak.excerpt}"
            for leak in self.leaks[:20]
        )
        if len(self.leaks) > 20:
            lines.append(f"  ... and {len(self.leaks) - 20} more")
        return "\n".join(lines)

    @contextmanager
    def install(self) -> Iterator[SecretGuard]:
        """Check every log record emitted inside the block. Guards may be nested."""
        handler = _GuardHandler(self)
        root = logging.getLogger()
        root.addHandler(handler)
        patches = [_patch_logger(logging.getLogger(name), self) for name in _guarded_names()]
        try:
            yield self
        finally:
            for logger, saved in reversed(patches):
                _unpatch_logger(logger, saved)
            root.removeHandler(handler)


def _as_text(secret: object) -> str:
    if isinstance(secret, bytes):
        return secret.decode("utf-8", "surrogateescape")
    if isinstance(secret, str):
        return secret
    msg = f"a registered secret must be str or bytes, not {type(secret).__name__}"
    raise TypeError(msg)


def _safe_text(function: object, value: object) -> str:
    try:
        return str(function(value))  # type: ignore[operator]
    except Exception as error:
        return f"<{type(error).__name__} while formatting>"


def _record_texts(record: logging.LogRecord) -> Iterable[tuple[str, str]]:
    try:
        yield "message", record.getMessage()
    except Exception:
        # A malformed format string: look at the pieces instead of failing the test here.
        yield "message", str(record.msg)
    args = record.args
    arguments: Iterable[object] = list(args.values()) if isinstance(args, dict) else args or ()
    for argument in arguments:
        yield "argument", _safe_text(str, argument)
        yield "argument", _safe_text(repr, argument)
    for name, value in vars(record).items():
        if name not in _STANDARD_ATTRIBUTES:
            yield f"extra {name}", _safe_text(repr, value)
    if record.exc_info and record.exc_info[1] is not None:
        yield "exception", "".join(traceback.format_exception(*record.exc_info))
    if record.exc_text:
        yield "exception", record.exc_text
    if record.stack_info:
        yield "stack", record.stack_info


class _GuardHandler(logging.Handler):
    """Checks every record that reaches the root logger and was not checked yet."""

    def __init__(self, guard: SecretGuard) -> None:
        super().__init__(level=logging.NOTSET)
        self.guard = guard

    def emit(self, record: logging.LogRecord) -> None:
        if not _mark_checked(record, self.guard):
            return
        self.guard.check_record(record)


def _mark_checked(record: logging.LogRecord, guard: SecretGuard) -> bool:
    """Note that ``guard`` has seen ``record``; return False if it had already."""
    seen: set[int] | None = getattr(record, "_secret_guards", None)
    if seen is None:
        seen = set()
        record._secret_guards = seen
    if id(guard) in seen:
        return False
    seen.add(id(guard))
    return True


def _guarded_names() -> list[str]:
    names = set(GUARDED_LOGGERS)
    for name in list(logging.Logger.manager.loggerDict):
        if any(name.startswith(prefix + ".") for prefix in GUARDED_LOGGERS):
            names.add(name)
    return sorted(names)


_PATCHED_METHODS = ("isEnabledFor", "handle")


def _patch_logger(
    logger: logging.Logger, guard: SecretGuard
) -> tuple[logging.Logger, dict[str, object]]:
    """Make ``logger`` build records at every level and show each one to ``guard``.

    Records below the logger's effective level are checked and then dropped, so no
    handler receives a record it would not receive without the guard. The logger's level
    is not changed, so ``caplog.set_level`` and the like keep working. Returns what
    :func:`_unpatch_logger` needs to restore the logger.
    """
    saved = {name: vars(logger)[name] for name in _PATCHED_METHODS if name in vars(logger)}
    inner_handle = logger.handle

    def is_enabled_for(level: int) -> bool:
        return not logger.manager.disable >= level

    def handle(record: logging.LogRecord) -> None:
        if _mark_checked(record, guard):
            guard.check_record(record)
        if record.levelno >= logger.getEffectiveLevel():
            inner_handle(record)

    logger.isEnabledFor = is_enabled_for  # type: ignore[method-assign]
    logger.handle = handle  # type: ignore[method-assign]
    return logger, saved


def _unpatch_logger(logger: logging.Logger, saved: dict[str, object]) -> None:
    for name in _PATCHED_METHODS:
        if name in saved:
            setattr(logger, name, saved[name])
        else:
            vars(logger).pop(name, None)


# -- the plugin ------------------------------------------------------------------------

_current: SecretGuard | None = None
_session_secrets: list[str] = []


def register_secret(*secrets: str | bytes, session: bool = False) -> None:
    """Register secrets that no log record may contain.

    Called during a test (or a function-scoped fixture), the secrets apply to that test.
    With ``session=True``, or when no test is running, they apply to every test from then
    on; use that in session-scoped fixtures that create credentials.

    :raises ValueError: when a secret is too short to be found reliably.
    """
    texts = [_as_text(secret) for secret in secrets]
    if session or _current is None:
        SecretGuard().register(*texts)  # validates before storing
        _session_secrets.extend(text for text in texts if text not in _session_secrets)
    if _current is not None:
        _current.register(*texts)


@pytest.fixture(autouse=True)
def _guard_secrets_in_logs() -> Iterator[SecretGuard]:
    """Check every log record of the test for the secrets it registered."""
    global _current
    guard = SecretGuard()
    guard.register(*_session_secrets)
    previous, _current = _current, guard
    try:
        with guard.install():
            yield guard
    finally:
        _current = previous
    if guard.leaks:
        pytest.fail(guard.report(), pytrace=False)


@pytest.fixture
def secret_guard(_guard_secrets_in_logs: SecretGuard) -> SecretGuard:
    """The current test's guard: ``secret_guard.register(value)`` adds a secret."""
    return _guard_secrets_in_logs
