"""The ``tokenflight jwt`` and ``tokenflight inspect`` commands.

``jwt`` signs a JWT with a key read from a file or an environment variable and prints
it, for use in ``curl`` or a script. ``inspect`` decodes a JWT read from standard input,
a file or an environment variable, without verifying it, and shows its claims with their
times relative to now. Neither command takes a secret as a command-line value, because
the command line is visible to other users of the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from ._cli import PASSPHRASE_ENV, UsageError, cli_message, read_option_file
from ._clock import Clock, SystemClock
from ._errors import ConfigurationError, InvalidTokenError
from ._jwt import JwtSigner, JwtSource, decode_unverified
from ._keys import (
    ALGORITHMS,
    KeyInput,
    SigningKey,
    _strip_line_break,
    _with_article,
    default_algorithm,
    load_signing_key,
)

__all__ = [
    "ALGORITHM_HELP",
    "KEY_ENV",
    "load_key",
    "read_passphrase",
    "register",
    "run_inspect",
    "run_jwt",
]

KEY_ENV = "TOKENFLIGHT_JWT_KEY"

ALGORITHM_HELP = (
    "JWS algorithm; default: a JWK's alg, else RS256 for RSA keys, ES256/ES384/ES512 by "
    "EC curve, EdDSA for Ed25519 and Ed448; required for HS256/HS384/HS512"
)


class _PresetKey(NamedTuple):
    """The key a ``--preset`` needs."""

    algorithm: str
    key_type: str  # how SigningKey.key_type starts for a key of the right type
    requirement: str
    advice: str


_PRESET_KEYS = {
    "github-app": _PresetKey(
        "RS256",
        "RSA",
        "GitHub Apps sign their JWTs with RS256, so they need an RSA private key",
        "use the private key generated in the app's settings on GitHub",
    ),
    "apple": _PresetKey(
        "ES256",
        "EC P-256",
        "Apple provider tokens are signed with ES256, so they need an EC P-256 private key",
        "use the .p8 key downloaded from the Apple developer account",
    ),
}

_JWT_EPILOG = f"""\
The key comes from --key-file, --key-env, or else the environment variable {KEY_ENV}:
PEM (PKCS#1, SEC 1, PKCS#8, OpenSSH), DER, a JWK as JSON, or for HS* the secret itself.
An encrypted PEM key's passphrase comes from --passphrase-file, --passphrase-env, or
else {PASSPHRASE_ENV}.

examples:
  tokenflight jwt --key-file app.pem --preset github-app --iss 123456
  tokenflight jwt --key-file AuthKey.p8 --preset apple --iss TEAMID1234 --kid KEYID12345
  TOKENFLIGHT_JWT_KEY="$(cat secret)" tokenflight jwt --algorithm HS256 --sub svc --aud api
"""

_INSPECT_EPILOG = """\
The JWT is read from standard input unless --token-file or --token-env names another
place. The signature is not verified. Exit status: 0 when the times are valid now,
1 when the JWT is expired, not yet valid or malformed, 2 for bad options.

example:
  tokenflight jwt --key-file key.pem --sub svc | tokenflight inspect
"""


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``jwt`` and ``inspect`` subcommands; each sets ``run=function(args)``."""
    sign = subcommands.add_parser(
        "jwt",
        help="sign a JWT with a key from a file or the environment and print it",
        description="Sign a JWT and print it on standard output.",
        epilog=_JWT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    key_group = sign.add_argument_group("key")
    key_group.add_argument(
        "--key-file", type=Path, metavar="PATH", help="file with the private key or HS* secret"
    )
    key_group.add_argument(
        "--key-env", metavar="NAME", help=f"environment variable with the key (default {KEY_ENV})"
    )
    key_group.add_argument(
        "--algorithm", choices=sorted(ALGORITHMS), metavar="ALG", help=ALGORITHM_HELP
    )
    key_group.add_argument("--kid", help="key id for the JWT header")
    key_group.add_argument(
        "--passphrase-file", type=Path, metavar="PATH", help="file with the PEM passphrase"
    )
    key_group.add_argument(
        "--passphrase-env",
        metavar="NAME",
        help=f"environment variable with the PEM passphrase (default {PASSPHRASE_ENV})",
    )

    claims = sign.add_argument_group("claims")
    claims.add_argument(
        "--preset",
        choices=("github-app", "apple"),
        help="github-app: RS256, iss = --iss, iat 60 s back, exp - iat = 600 s; "
        "apple: ES256 provider token, iss = --iss (team id), kid = --kid, iat only",
    )
    claims.add_argument("--iss", help="issuer claim")
    claims.add_argument("--sub", help="subject claim")
    claims.add_argument(
        "--aud", action="append", metavar="AUDIENCE", help="audience claim; repeat for several"
    )
    claims.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra claim; VALUE is read as JSON when it parses, else as a string",
    )
    claims.add_argument(
        "--claims-file", type=Path, metavar="PATH", help="JSON object of extra claims"
    )
    claims.add_argument(
        "--header", action="append", default=[], metavar="NAME=VALUE", help="extra header"
    )

    times = sign.add_argument_group("times")
    times.add_argument(
        "--lifetime",
        type=float,
        metavar="SECONDS",
        help="seconds until exp (default 300; 540 with --preset github-app)",
    )
    times.add_argument(
        "--max-lifetime", type=float, metavar="SECONDS", help="largest exp - iat, in seconds"
    )
    times.add_argument(
        "--skew",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds by which iat and nbf are backdated (default 60)",
    )
    times.add_argument("--no-nbf", action="store_true", help="leave out the nbf claim")
    times.add_argument("--no-jti", action="store_true", help="leave out the jti claim")
    sign.set_defaults(run=run_jwt)

    inspect = subcommands.add_parser(
        "inspect",
        help="decode a JWT without verifying it and show its claims and times",
        description="Decode a JWT without verifying it; show its header, claims and times.",
        epilog=_INSPECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("--token-file", type=Path, metavar="PATH", help="file with the JWT")
    inspect.add_argument("--token-env", metavar="NAME", help="environment variable with the JWT")
    inspect.add_argument(
        "--skew",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds of clock difference to tolerate (default 30, the cache's default)",
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead")
    inspect.set_defaults(run=run_inspect)


def _fail(command: str, message: str, status: int) -> int:
    print(f"tokenflight {command}: error: {message}", file=sys.stderr)
    return status


# -- tokenflight jwt ---------------------------------------------------------------------


def run_jwt(args: argparse.Namespace, *, clock: Clock | None = None) -> int:
    """Sign a JWT as the options describe, print it and return the exit status."""
    try:
        token = _sign(args, clock if clock is not None else SystemClock())
    except (UsageError, ConfigurationError) as error:
        return _fail("jwt", cli_message(error), 2)
    print(token)
    return 0


# -- keys, shared with `tokenflight token` -------------------------------------------------


def read_passphrase(path: Path | None, variable: str | None) -> bytes | None:
    """Return the passphrase of an encrypted PEM key, or ``None`` when none is given.

    :param path: the file of ``--passphrase-file``; one trailing line break is dropped.
    :param variable: the variable ``--passphrase-env`` names. Without it,
        ``TOKENFLIGHT_KEY_PASSPHRASE`` is read if it is set.
    :raises UsageError: when the file cannot be read, or the named variable is unset.
    """
    if path is not None:
        return read_option_file(path, "--passphrase-file").rstrip(b"\r\n")
    name = variable or PASSPHRASE_ENV
    value = os.environ.get(name)
    if value:
        return value.encode("utf-8")
    if variable:
        msg = f"environment variable {name} is not set or empty; put the passphrase in it"
        raise UsageError(msg)
    return None


def load_key(
    *,
    key_file: Path | None,
    key_env: str | None,
    algorithm: str | None,
    password: bytes | None,
    kid: str | None,
) -> SigningKey:
    """Load the signing key of ``--key-file`` or an environment variable.

    Without ``algorithm``, the key's own algorithm is used: a JWK's ``alg``, else the one
    its type and curve imply (see :func:`~tokenflight._keys.default_algorithm`).

    :param key_env: the variable ``--key-env`` names; ``TOKENFLIGHT_JWT_KEY`` without it.
    :raises UsageError: when no key is given, its file cannot be read, or the algorithm
        of an HMAC secret is left out.
    :raises ConfigurationError: when the key cannot be parsed or does not fit the
        algorithm. No message contains key material or the key file's path.
    """
    source = _key_source(key_file, key_env, algorithm)
    if algorithm is None:
        algorithm = _inferred_algorithm(source, password)
    return load_signing_key(source, algorithm=algorithm, password=password, kid=kid)


def _key_source(key_file: Path | None, key_env: str | None, algorithm: str | None) -> KeyInput:
    if key_file is not None and key_env is not None:
        msg = "give the key with --key-file or --key-env, not both"
        raise UsageError(msg)
    if key_file is not None:
        data = read_option_file(key_file, "--key-file")
    else:
        name = key_env or KEY_ENV
        value = os.environ.get(name)
        if not value:
            msg = f"no key: pass --key-file PATH, or put the key in the environment variable {name}"
            raise UsageError(msg)
        # PEM and JWK text lose surrounding whitespace; anything else may be an HMAC
        # secret, which is taken as it is, like a key file's. Deployment tools often
        # store PEM on one line, with literal "\n" sequences.
        text = value.strip()
        if text.startswith("-----BEGIN") and "\n" not in text:
            text = text.replace("\\n", "\n")
        data = (text if text.startswith(("-----BEGIN", "{")) else value).encode("utf-8")

    # The contents are read the way load_signing_key reads a key file: a JWK as JSON
    # text, an HMAC secret without one trailing line break, or PEM or DER bytes. They
    # are passed as data, so that no message can show the path.
    if data.lstrip().startswith(b"{"):
        return data.decode("utf-8", "replace")
    if algorithm is not None and algorithm.startswith("HS"):
        return _strip_line_break(data)
    return data


def _inferred_algorithm(source: KeyInput, password: bytes | None) -> str:
    try:
        return default_algorithm(source, password)
    except ConfigurationError as error:
        # Bytes that are neither PEM, a JWK nor DER may be an HMAC secret, whose
        # algorithm cannot be inferred. Other failures (a public key, an encrypted
        # key, a wrong passphrase) are unrelated to the algorithm.
        if isinstance(source, bytes) and not source.lstrip().startswith(b"-----BEGIN"):
            msg = f"{error}; for an HMAC secret, pass --algorithm HS256, HS384 or HS512"
            raise UsageError(msg) from None
        raise


def _preset_key(args: argparse.Namespace) -> SigningKey:
    """Load the key of ``--preset``, which fixes the algorithm and the key type."""
    preset = _PRESET_KEYS[args.preset]
    if args.algorithm is not None and args.algorithm != preset.algorithm:
        msg = (
            f"--preset {args.preset} signs with {preset.algorithm}; "
            f"drop --algorithm {args.algorithm}"
        )
        raise UsageError(msg)
    password = read_passphrase(args.passphrase_file, args.passphrase_env)
    source = _key_source(args.key_file, args.key_env, preset.algorithm)
    try:
        return load_signing_key(source, algorithm=preset.algorithm, password=password, kid=args.kid)
    except ConfigurationError:
        # A key of another type gets a message about the service. A key that cannot
        # be parsed, or one of the right type that fails (too short, say), keeps the
        # loader's message.
        other = _key_of_any_type(source, password)
        if other is None or other.key_type.startswith(preset.key_type):
            raise
        msg = f"{preset.requirement}, got {_with_article(other.key_type)}; {preset.advice}"
        raise UsageError(msg) from None


def _key_of_any_type(source: KeyInput, password: bytes | None) -> SigningKey | None:
    try:
        return load_signing_key(
            source, algorithm=default_algorithm(source, password), password=password
        )
    except ConfigurationError:
        return None


def _assignment(text: str, option: str) -> tuple[str, Any]:
    name, separator, raw = text.partition("=")
    if not separator or not name:
        msg = f"{option} expects NAME=VALUE, got {text!r}"
        raise UsageError(msg)
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return name, value


def _extra_claims(args: argparse.Namespace) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    if args.claims_file is not None:
        try:
            loaded = json.loads(read_option_file(args.claims_file, "--claims-file"))
        except ValueError:
            msg = "the --claims-file file is not valid JSON"
            raise UsageError(msg) from None
        if not isinstance(loaded, dict):
            msg = "the --claims-file file must hold a JSON object"
            raise UsageError(msg)
        claims.update(loaded)
    for item in args.claim:
        name, value = _assignment(item, "--claim")
        claims[name] = value
    return claims


def _sign(args: argparse.Namespace, clock: Clock) -> str:
    headers = dict(_assignment(item, "--header") for item in args.header)
    claims = _extra_claims(args)
    if args.preset is not None:
        conflicting = [
            option
            for option, value in (
                ("--sub", args.sub),
                ("--aud", args.aud),
                ("--claim", args.claim),
                ("--claims-file", args.claims_file),
                ("--header", args.header),
                ("--max-lifetime", args.max_lifetime),
                ("--no-nbf", args.no_nbf),
                ("--no-jti", args.no_jti),
            )
            if value
        ]
        if conflicting:
            msg = f"--preset {args.preset} sets the claims itself; drop {', '.join(conflicting)}"
            raise UsageError(msg)
    if args.preset == "github-app":
        if not args.iss:
            msg = "--preset github-app needs --iss with the app's client ID or app ID"
            raise UsageError(msg)
        app_id: str | int = int(args.iss) if args.iss.isdigit() else args.iss
        key = _preset_key(args)
        lifetime = 540.0 if args.lifetime is None else args.lifetime
        source = JwtSource.github_app(app_id, key, clock=clock, lifetime=lifetime, skew=args.skew)
        return source.issue().value
    if args.preset == "apple":
        if not args.iss or not args.kid:
            msg = "--preset apple needs --iss with the team id and --kid with the key id"
            raise UsageError(msg)
        key = _preset_key(args)
        source = JwtSource.apple_provider_token(
            args.iss, args.kid, key, clock=clock, skew=args.skew
        )
        return source.issue().value

    key = load_key(
        key_file=args.key_file,
        key_env=args.key_env,
        algorithm=args.algorithm,
        password=read_passphrase(args.passphrase_file, args.passphrase_env),
        kid=args.kid,
    )
    time_claims = ["iat", "exp"] if args.no_nbf else ["iat", "nbf", "exp"]
    signer = JwtSigner(
        key,
        clock=clock,
        skew=args.skew,
        max_lifetime=args.max_lifetime,
        time_claims=time_claims,
        jti=not args.no_jti,
    )
    audience: str | list[str] | None = None
    if args.aud:
        audience = args.aud[0] if len(args.aud) == 1 else list(args.aud)
    source = JwtSource(
        signer,
        issuer=args.iss,
        subject=args.sub,
        audience=audience,
        lifetime=300.0 if args.lifetime is None else args.lifetime,
        claims=claims,
        headers=headers,
    )
    return source.issue().value


# -- tokenflight inspect -----------------------------------------------------------------


def run_inspect(
    args: argparse.Namespace, *, clock: Clock | None = None, stdin: TextIO | None = None
) -> int:
    """Decode the JWT the options point to and print its header, claims and times."""
    now = (clock if clock is not None else SystemClock()).time()
    if not math.isfinite(args.skew) or args.skew < 0:
        return _fail("inspect", f"--skew must be a number of seconds >= 0, got {args.skew!r}", 2)
    try:
        token = _read_token(args, stdin if stdin is not None else sys.stdin)
    except UsageError as error:
        return _fail("inspect", str(error), 2)
    try:
        header, claims = decode_unverified(token)
        report = _time_report(claims, now, args.skew)
    except InvalidTokenError as error:
        return _fail("inspect", str(error), 1)

    if args.json:
        document = {
            "header": header,
            "claims": claims,
            "now": now,
            "skew": args.skew,
            "times": report["times"],
            "status": report["status"],
            "detail": report["detail"],
            "signature_verified": False,
        }
        text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
        # json.dumps escapes C0 controls in strings; the line breaks left are its own.
        print(_escape_unprintable(text, _UNPRINTABLE_IN_JSON))
    else:
        print(_format_text(header, claims, report, args.skew))
    return 0 if report["status"] == "valid" else 1


def _read_token(args: argparse.Namespace, stdin: TextIO) -> str:
    if args.token_file is not None and args.token_env is not None:
        msg = "give the JWT with --token-file or --token-env, not both"
        raise UsageError(msg)
    if args.token_file is not None:
        text = read_option_file(args.token_file, "--token-file").decode("utf-8", "replace")
    elif args.token_env is not None:
        value = os.environ.get(args.token_env)
        if not value:
            msg = f"environment variable {args.token_env} is not set or empty"
            raise UsageError(msg)
        text = value
    else:
        if stdin.isatty():
            msg = "pipe the JWT on standard input, or pass --token-file PATH or --token-env NAME"
            raise UsageError(msg)
        text = stdin.read()
    token = text.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if not token:
        msg = "the JWT is empty; pipe a JWT on standard input or pass --token-file PATH"
        raise UsageError(msg)
    return token


def _duration(seconds: float) -> str:
    """Format a length of time as "4 min 10 s", with at most two units."""
    remaining = round(abs(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if remaining >= size:
            parts.append(f"{remaining // size} {unit}")
            remaining %= size
    if remaining or not parts:
        parts.append(f"{remaining} s")
    return " ".join(parts[:2])


def _relative(seconds: float) -> str:
    """Format a signed difference from now as "in 4 min 10 s" or "4 min 10 s ago"."""
    if round(seconds) == 0:
        return "now"
    return f"in {_duration(seconds)}" if seconds > 0 else f"{_duration(seconds)} ago"


def _utc(seconds: float) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "out of range"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _time_report(claims: dict[str, Any], now: float, skew: float) -> dict[str, Any]:
    times: dict[str, dict[str, Any]] = {}
    for name in ("iat", "nbf", "exp"):
        value = claims.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            msg = f"the claim {name!r} is not a number of Unix seconds: {value!r}"
            raise InvalidTokenError(msg)
        times[name] = {
            "value": value,
            "utc": _utc(value),
            "seconds_from_now": value - now,
            "relative": _relative(value - now),
            "integer": isinstance(value, int),
        }

    status = "valid"
    detail = "no exp claim: valid until the issuer revokes it"
    for name in ("nbf", "iat"):
        if name in times and times[name]["seconds_from_now"] > skew:
            ahead = times[name]["seconds_from_now"]
            status = "not yet valid"
            detail = (
                f"{name} is {_duration(ahead)} ahead of this clock, beyond the {skew:g} s "
                "skew: the issuer's clock and this one disagree"
            )
            break
    else:
        if "exp" in times:
            left = times["exp"]["seconds_from_now"]
            if left <= 0:
                status = "expired"
                detail = f"expired {_duration(left)} ago"
            elif left <= skew:
                detail = (
                    f"expires {_relative(left)}, within the {skew:g} s skew: a cache would "
                    "renew it now"
                )
            else:
                detail = f"expires {_relative(left)}"
    return {"times": times, "status": status, "detail": detail}


# Characters a terminal may act on, and lone surrogates, which a JSON escape in a JWT
# can produce and UTF-8 cannot encode. The output shows them as \uXXXX escapes, which
# are valid inside a JSON string.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_UNPRINTABLE_IN_JSON = re.compile("[\x7f-\x9f\ud800-\udfff]")


def _escape_unprintable(text: str, pattern: re.Pattern[str] = _UNPRINTABLE) -> str:
    return pattern.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def _json_value(value: Any) -> str:
    return _escape_unprintable(json.dumps(value, ensure_ascii=False))


def _format_text(
    header: dict[str, Any], claims: dict[str, Any], report: dict[str, Any], skew: float
) -> str:
    lines = ["header"]
    names = {name: _escape_unprintable(name) for name in (*header, *claims)}
    width = max((len(name) for name in names.values()), default=3)
    for name, value in header.items():
        lines.append(f"  {names[name]:<{width}}  {_json_value(value)}")
    lines.append("claims")
    for name, value in claims.items():
        line = f"  {names[name]:<{width}}  {_json_value(value)}"
        time = report["times"].get(name)
        if time is not None:
            line += f"  {time['utc']}  ({time['relative']})"
            if not time["integer"]:
                line += "  [not an integer: strict validators reject it]"
        lines.append(line)
    times = report["times"]
    if "iat" in times and "exp" in times:
        lifetime = times["exp"]["value"] - times["iat"]["value"]
        lines.append(f"lifetime   {lifetime:g} s (exp - iat)")
    lines.append(f"status     {report['status']}: {report['detail']} (skew {skew:g} s)")
    lines.append("signature  not verified")
    return "\n".join(lines)
