"""The ``tokenflight token`` command: fetch an OAuth2 access token and print it.

Options and environment variables configure the token source. Secrets (the client
secret, the refresh token, private keys) are read from files or the environment, never
from the command line, because other users of the machine can read it. The printed token is
meant for scripts, for example ``curl -H "Authorization: Bearer $(tokenflight token ...)"``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import anyio

from ._cache import TokenCache
from ._cli import (
    CLIENT_SECRET_ENV,
    PASSPHRASE_ENV,
    UNSAFE_ALLOW_HTTP_HELP,
    UsageError,
    cli_message,
    read_option_text,
)
from ._cli_jwt import ALGORITHM_HELP, KEY_ENV, load_key, read_passphrase
from ._errors import ConfigurationError, RefreshError
from ._keys import ALGORITHMS, SigningKey
from ._oauth2 import ClientCredentials, JwtBearerGrant
from ._oauth2_http import check_endpoint_url
from ._oauth2_refresh import RefreshTokenGrant
from ._token import Token

__all__ = ["register", "run_token"]

TOKEN_URL_ENV = "TOKENFLIGHT_TOKEN_URL"  # noqa: S105 - a variable name
CLIENT_ID_ENV = "TOKENFLIGHT_CLIENT_ID"

GRANTS = ("client_credentials", "refresh_token", "jwt_bearer")
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")

_EPILOG = f"""\
Secrets are never command-line values:
  client secret   --client-secret-file PATH, or the environment variable {CLIENT_SECRET_ENV}
  private key     --key-file PATH, or {KEY_ENV} (PEM, DER or a JWK); passphrase from
                  --passphrase-file PATH or {PASSPHRASE_ENV}
  refresh token   --refresh-token-file PATH; a rotated refresh token is written back to it
The token URL (unless --issuer-url is given) and the client id may also come from
{TOKEN_URL_ENV} and {CLIENT_ID_ENV}.

Exit status: 0 with the token printed, 1 when the token request failed, 2 for bad options.

examples:
  tokenflight token --token-url https://idp.example/token --client-id svc \\
      --client-secret-file ~/.config/svc.secret --scope "read write"
  curl -H "$(tokenflight token --issuer-url https://idp.example --client-id svc \\
      --key-file svc.pem --output header)" https://api.example/items
"""


class _RejectSecretOption(argparse.Action):
    """An option that would put a secret on the command line: an error that names the
    safe alternative without repeating the value."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        self.alternative = kwargs.pop("alternative")
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not accepted, because other users of the machine can read "
            f"the command line; use {self.alternative}"
        )


def register(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``token`` subcommand; it sets ``run=function(args) -> exit status``."""
    parser = subcommands.add_parser(
        "token",
        help="fetch an OAuth2 access token and print it",
        description="Fetch an OAuth2 access token and print it on standard output.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        # Abbreviations would read "--client-secret VALUE" as --client-secret-file.
        allow_abbrev=False,
    )
    parser.add_argument(
        "--client-secret",
        action=_RejectSecretOption,
        alternative=f"--client-secret-file PATH or {CLIENT_SECRET_ENV}",
    )
    parser.add_argument(
        "--refresh-token", action=_RejectSecretOption, alternative="--refresh-token-file PATH"
    )
    server = parser.add_argument_group("authorization server")
    server.add_argument("--token-url", metavar="URL", help=f"token endpoint (or {TOKEN_URL_ENV})")
    server.add_argument(
        "--issuer-url",
        metavar="URL",
        help="issuer to discover the token endpoint from (OpenID Connect or RFC 8414 "
        "metadata), instead of --token-url",
    )
    server.add_argument("--unsafe-allow-http", action="store_true", help=UNSAFE_ALLOW_HTTP_HELP)

    grant = parser.add_argument_group("grant")
    grant.add_argument(
        "--grant",
        choices=GRANTS,
        default="client_credentials",
        help="grant type (default client_credentials)",
    )
    grant.add_argument(
        "--refresh-token-file",
        type=Path,
        metavar="PATH",
        help="refresh_token grant: file with the refresh token; rotations are written back",
    )
    grant.add_argument("--issuer", metavar="ISS", help="jwt_bearer grant: the assertion's iss")
    grant.add_argument(
        "--subject", metavar="SUB", help="jwt_bearer grant: the assertion's sub (default: iss)"
    )
    grant.add_argument("--scope", help="scope to request, space-separated")
    grant.add_argument("--audience", help="the audience request parameter some servers use")
    grant.add_argument(
        "--resource",
        action="append",
        metavar="URI",
        help="resource indicator (RFC 8707); repeat for several",
    )

    client = parser.add_argument_group("client authentication")
    client.add_argument("--client-id", metavar="ID", help=f"client id (or {CLIENT_ID_ENV})")
    client.add_argument(
        "--client-secret-file",
        type=Path,
        metavar="PATH",
        help=f"file with the client secret (or {CLIENT_SECRET_ENV})",
    )
    client.add_argument(
        "--auth-method",
        choices=AUTH_METHODS,
        help="client authentication; default: client_secret_basic with a secret, "
        "private_key_jwt with a key",
    )
    client.add_argument(
        "--key-file",
        type=Path,
        metavar="PATH",
        help=f"private key for private_key_jwt or the jwt_bearer grant (or {KEY_ENV})",
    )
    client.add_argument(
        "--algorithm", choices=sorted(ALGORITHMS), metavar="ALG", help=ALGORITHM_HELP
    )
    client.add_argument("--key-id", metavar="KID", help="kid header of signed assertions")
    client.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="PATH",
        help=f"passphrase of an encrypted PEM key (or {PASSPHRASE_ENV})",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output",
        choices=("token", "header", "json"),
        default="token",
        help="token: the access token alone (default); header: an Authorization header "
        "line; json: access_token, token_type, expires_in and scope",
    )
    output.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up after this many seconds, retries included (default 30)",
    )
    parser.set_defaults(run=run_token)


def run_token(args: argparse.Namespace, *, stdout: TextIO | None = None) -> int:
    """Fetch a token as the options say and print it; return the exit status."""
    out = stdout if stdout is not None else sys.stdout
    try:
        source = _build_source(args)
        timeout = _positive(args.timeout, "--timeout")
    except (UsageError, ConfigurationError) as error:
        return _fail(cli_message(error), 2)
    try:
        token = anyio.run(_fetch, source, timeout)
    except RefreshError as error:
        return _fail(cli_message(error), 1)
    except ConfigurationError as error:
        return _fail(cli_message(error), 2)
    print(_format(token, args.output), file=out)
    return 0


def _fail(message: str, status: int) -> int:
    print(f"tokenflight token: error: {message}", file=sys.stderr)
    return status


async def _fetch(
    source: ClientCredentials | RefreshTokenGrant | JwtBearerGrant, budget: float
) -> Token:
    # The cache retries transient failures with backoff, within the time budget.
    async with source, TokenCache(source, timeout=budget) as cache:
        return await cache.get()


def _format(token: Token, output: str) -> str:
    if output == "header":
        return f"Authorization: {token.token_type} {token.value}"
    if output == "json":
        document: dict[str, Any] = {"access_token": token.value, "token_type": token.token_type}
        if token.expires_in is not None:
            document["expires_in"] = token.expires_in
        if token.scope is not None:
            document["scope"] = token.scope
        return json.dumps(document)
    return token.value


# -- building the source ---------------------------------------------------------------


def _build_source(
    args: argparse.Namespace,
) -> ClientCredentials | RefreshTokenGrant | JwtBearerGrant:
    token_url = _endpoint_url(args)
    client_id = args.client_id or os.environ.get(CLIENT_ID_ENV) or None
    common: dict[str, Any] = {
        "issuer_url": args.issuer_url,
        "unsafe_allow_http": args.unsafe_allow_http,
        "resource": args.resource,
        "scope": args.scope,
    }

    if args.grant == "jwt_bearer":
        if not args.issuer:
            msg = "the jwt_bearer grant needs --issuer, the assertion's iss"
            raise UsageError(msg)
        return JwtBearerGrant(
            token_url,
            signing_key=_signing_key(args),
            issuer=args.issuer,
            subject=args.subject,
            client_id=client_id,
            client_secret=_client_secret(args),
            auth_method=args.auth_method,
            **common,
        )

    if client_id is None:
        msg = f"pass --client-id, or set {CLIENT_ID_ENV}"
        raise UsageError(msg)
    wants_key = args.auth_method == "private_key_jwt" or (
        args.auth_method is None and args.key_file is not None
    )
    secret = None if wants_key else _client_secret(args)
    key = _signing_key(args) if wants_key else None

    if args.grant == "refresh_token":
        path: Path | None = args.refresh_token_file
        if path is None:
            msg = (
                "the refresh_token grant needs --refresh-token-file, so that a rotated "
                "refresh token can be written back"
            )
            raise UsageError(msg)
        refresh_token = read_option_text(path, "--refresh-token-file")
        return RefreshTokenGrant(
            token_url,
            client_id,
            refresh_token=refresh_token,
            client_secret=secret,
            auth_method=args.auth_method,
            signing_key=key,
            save=_file_saver(path, refresh_token),
            **common,
        )

    if secret is None and key is None:
        msg = (
            f"pass --client-secret-file (or set {CLIENT_SECRET_ENV}), or --key-file for "
            "private_key_jwt"
        )
        raise UsageError(msg)
    return ClientCredentials(
        token_url,
        client_id,
        client_secret=secret,
        auth_method=args.auth_method,
        signing_key=key,
        audience=args.audience,
        **common,
    )


def _endpoint_url(args: argparse.Namespace) -> str | None:
    """Return the token URL, or ``None`` when ``--issuer-url`` discovers it.

    Both URLs are checked here, so that the messages name the options.
    """
    if args.token_url is not None and args.issuer_url is not None:
        msg = "pass --token-url or --issuer-url, not both; --issuer-url discovers the token URL"
        raise UsageError(msg)
    if args.issuer_url is not None:
        check_endpoint_url(
            args.issuer_url, name="--issuer-url", unsafe_allow_http=args.unsafe_allow_http
        )
        return None
    if args.token_url is not None:
        name, token_url = "--token-url", args.token_url
    else:
        name, token_url = TOKEN_URL_ENV, os.environ.get(TOKEN_URL_ENV, "")
        if not token_url:
            msg = f"pass --token-url (or set {TOKEN_URL_ENV}), or --issuer-url to discover it"
            raise UsageError(msg)
    return check_endpoint_url(token_url, name=name, unsafe_allow_http=args.unsafe_allow_http)


def _client_secret(args: argparse.Namespace) -> str | None:
    if args.client_secret_file is not None:
        return read_option_text(args.client_secret_file, "--client-secret-file")
    return os.environ.get(CLIENT_SECRET_ENV) or None


def _signing_key(args: argparse.Namespace) -> SigningKey:
    return load_key(
        key_file=args.key_file,
        key_env=None,
        algorithm=args.algorithm,
        password=read_passphrase(args.passphrase_file, None),
        kid=args.key_id,
    )


def _file_saver(path: Path, initial: str) -> Callable[[Token], None]:
    target = path.expanduser()

    def save(token: Token) -> None:
        if token.refresh_token is None or token.refresh_token == initial:
            return
        # Write a new file and rename it over the old one, so a crash leaves one whole
        # refresh token, never a truncated one.
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".refresh-token-")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(token.refresh_token + "\n")
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    return save


def _positive(value: float, option: str) -> float:
    if not value > 0 or value == float("inf"):
        msg = f"{option} must be a positive number of seconds, got {value!r}"
        raise UsageError(msg)
    return value
