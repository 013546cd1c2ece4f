"""The ``tokenflight`` command: ``demo`` here, and the tools that ``_cli_tools`` adds.

Each subcommand sets ``run=function(args) -> exit status``. A bad option ends the
command with one line on standard error, naming the problem and the fix, and exit
status 2; a run that fails exits with 1. No traceback is printed for either.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

from ._errors import ConfigurationError
from ._keys import PASSPHRASE_HINT
from ._oauth2_http import ALLOW_HTTP_HINT, USERINFO_HINT, check_endpoint_url

__all__ = [
    "CLIENT_SECRET_ENV",
    "PASSPHRASE_ENV",
    "UNSAFE_ALLOW_HTTP_HELP",
    "UsageError",
    "build_parser",
    "cli_message",
    "main",
    "read_option_file",
    "read_option_text",
]

CLIENT_SECRET_ENV = "TOKENFLIGHT_CLIENT_SECRET"  # noqa: S105 - a variable name
PASSPHRASE_ENV = "TOKENFLIGHT_KEY_PASSPHRASE"  # noqa: S105 - a variable name

UNSAFE_ALLOW_HTTP_HELP = (
    "allow a plain http:// endpoint on a host other than loopback, which sends the "
    "credentials and tokens over the network unencrypted; for test setups only"
)

# Library messages name the Python argument to pass. On the command line, each of these
# hints becomes the option or variable that sets the same thing.
_OPTION_HINTS = {
    ALLOW_HTTP_HINT: "pass --unsafe-allow-http for a test setup",
    PASSPHRASE_HINT: f"pass it with --passphrase-file PATH or the variable {PASSPHRASE_ENV}",
    USERINFO_HINT: "pass the client credentials with --client-id and --client-secret-file",
}


class UsageError(Exception):
    """A bad option or combination of options; the message names what to change."""


def cli_message(error: Exception) -> str:
    """Return an error's message with the library's argument hints in command-line words."""
    message = str(error)
    for hint, option_hint in _OPTION_HINTS.items():
        message = message.replace(hint, option_hint)
    return message


def read_option_file(path: Path, option: str) -> bytes:
    """Return the contents of the file that ``option`` names.

    :raises UsageError: when the file cannot be read. The message names the option and
        the reason, but not the path, in case a secret was pasted in place of the path.
    """
    try:
        return path.expanduser().read_bytes()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        msg = (
            f"cannot read the {option} file: {reason} (the path is not shown, in case a "
            "secret was pasted in its place)"
        )
        raise UsageError(msg) from None


def read_option_text(path: Path, option: str) -> str:
    """Return the text of the file that ``option`` names, without surrounding whitespace.

    :raises UsageError: when the file cannot be read, is not UTF-8 or holds only
        whitespace. No message shows the path or the contents.
    """
    data = read_option_file(path, option)
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        msg = f"the {option} file is not UTF-8 text"
        raise UsageError(msg) from None
    if not text:
        msg = f"the {option} file is empty"
        raise UsageError(msg)
    return text


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, without the usage block."""

    # The subcommand parsers, by name, on the top-level parser.
    commands: dict[str, argparse.ArgumentParser] | None = None

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _RejectSecretOption(argparse.Action):
    """An option that would put a secret on the command line: fail without echoing it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        parser.error(
            f"{option_string} is not accepted, because other users of the machine can read "
            f"the command line; put the secret in a file and pass --client-secret-file, or "
            f"set {CLIENT_SECRET_ENV}"
        )


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        msg = f"expected a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        msg = f"expected a whole number, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 0:
        msg = f"must be 0 or more, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _lifetime(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"expected seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    # The cache keeps any token for at least 1 s, so shorter tokens would be sent after
    # the server considers them expired.
    if not 1.0 <= value <= 86_400.0:
        msg = f"must be between 1 and 86400 seconds, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


_DEMO_DESCRIPTION = """\
Start an OAuth2 token endpoint and a protected API on 127.0.0.1. Then send many
concurrent requests to the API through one tokenflight.AuthClient while the tokens
expire every few seconds, and print a summary: requests, successes, token fetches,
fetches per token expiry, 401s, retries and latency. Halfway through, the API revokes
the token in use, to show that a burst of 401s causes one token fetch.
"""

_DEMO_EPILOG = f"""\
With --token-url, the demo fetches tokens from that endpoint instead (client credentials
grant, client_secret_basic) and its API accepts the tokens the endpoint issued, until
their expires_in passes. The client secret comes from --client-secret-file or from the
environment variable {CLIENT_SECRET_ENV}, never from the command line.
"""


def _add_demo(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subcommands.add_parser(
        "demo",
        help="run 10,000 requests from 1,000 tasks through AuthClient and print a summary",
        description=_DEMO_DESCRIPTION,
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )

    demo.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop to run on (default: asyncio)",
    )

    demo.add_argument(
        "--requests",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="requests to send in total (default: 10,000)",
    )

    demo.add_argument(
        "--concurrency",
        type=_positive_int,
        default=1_000,
        metavar="N",
        help="tasks sending requests at the same time (default: 1,000)",
    )

    demo.add_argument(
        "--token-lifetime",
        type=_lifetime,
        default=None,
        metavar="SECONDS",
        help="lifetime of the embedded endpoint's tokens, 1 to 86400 (default: 3)",
    )

    demo.add_argument(
        "--revoke-at",
        type=_non_negative_int,
        default=None,
        metavar="N",
        help="revoke the token in use after N requests; 0 never (default: half of --requests)",
    )

    demo.add_argument(
        "--no-progress",
        action="store_true",
        help="do not draw the progress bar (it is drawn only on a terminal anyway)",
    )

    external = demo.add_argument_group("external token endpoint")
    external.add_argument("--token-url", metavar="URL", help="token endpoint to use instead")
    external.add_argument("--client-id", metavar="ID", help="client id at that endpoint")
    external.add_argument(
        "--client-secret-file",
        type=Path,
        metavar="PATH",
        help=f"file holding the client secret (default: the {CLIENT_SECRET_ENV} variable)",
    )
    external.add_argument("--scope", metavar="SCOPE", help="scope to request, space-separated")
    external.add_argument("--unsafe-allow-http", action="store_true", help=UNSAFE_ALLOW_HTTP_HELP)
    external.add_argument("--client-secret", action=_RejectSecretOption, help=argparse.SUPPRESS)

    demo.set_defaults(run=_run_demo)


def _demo_options(args: argparse.Namespace) -> Any:
    from ._demo import DemoOptions

    external_only = {
        "--client-id": args.client_id,
        "--client-secret-file": args.client_secret_file,
        "--scope": args.scope,
        "--unsafe-allow-http": args.unsafe_allow_http or None,
    }
    if args.token_url is None:
        for option, value in external_only.items():
            if value is not None:
                msg = f"{option} applies only with --token-url; add --token-url URL"
                raise UsageError(msg)
        return DemoOptions(
            backend=args.backend,
            requests=args.requests,
            concurrency=args.concurrency,
            token_lifetime=3.0 if args.token_lifetime is None else args.token_lifetime,
            revoke_at=args.revoke_at,
            progress=False if args.no_progress else None,
        )

    if args.token_lifetime is not None:
        msg = (
            "--token-lifetime sets the embedded endpoint's tokens; with --token-url the "
            "endpoint decides, so drop --token-lifetime"
        )
        raise UsageError(msg)
    check_endpoint_url(args.token_url, name="--token-url", unsafe_allow_http=args.unsafe_allow_http)
    if not args.client_id:
        msg = "--token-url needs --client-id ID"
        raise UsageError(msg)
    if args.client_secret_file is not None:
        secret = read_option_text(args.client_secret_file, "--client-secret-file")
    else:
        secret = os.environ.get(CLIENT_SECRET_ENV, "").strip()
        if not secret:
            msg = (
                f"--token-url needs the client secret: pass --client-secret-file PATH or set "
                f"{CLIENT_SECRET_ENV}"
            )
            raise UsageError(msg)
    return DemoOptions(
        backend=args.backend,
        requests=args.requests,
        concurrency=args.concurrency,
        revoke_at=args.revoke_at,
        token_url=args.token_url,
        client_id=args.client_id,
        client_secret=secret,
        scope=args.scope,
        unsafe_allow_http=args.unsafe_allow_http,
        progress=False if args.no_progress else None,
    )


def _run_demo(args: argparse.Namespace) -> int:
    options = _demo_options(args)

    from . import _demo

    missing = _demo.missing_dependency(options.backend)
    if missing is not None:
        print(f"tokenflight demo: error: {missing}", file=sys.stderr)
        return 2

    import anyio

    try:
        summary = anyio.run(_demo.run_demo, options, backend=options.backend)
    except _demo.DemoError as error:
        print(f"tokenflight demo: error: {error}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0 if summary.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """Return the ``tokenflight`` argument parser with every subcommand."""
    from ._cli_tools import register_tools

    parser = _Parser(
        prog="tokenflight",
        description="Single-flight async credentials for httpx: a demo and a few tools.",
    )
    subcommands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(title="commands", dest="command", required=True, metavar="COMMAND"),
    )
    _add_demo(subcommands)
    register_tools(subcommands)
    parser.commands = dict(subcommands.choices)
    return parser


def _reject_extras(parser: argparse.ArgumentParser, extras: list[str]) -> NoReturn:
    # Only option names are repeated back: a value may be a secret typed by mistake.
    names = [item.split("=", 1)[0] for item in extras if item.startswith("-")]
    others = len(extras) - len(names)
    described = names + ([f"{others} value(s) that belong to no option"] if others else [])
    parser.error(f"unrecognized arguments: {', '.join(described)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tokenflight`` command and return its exit status.

    :param argv: the arguments after the program name; ``sys.argv[1:]`` by default.
    """
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            commands = getattr(parser, "commands", None) or {}
            _reject_extras(commands.get(args.command, parser), extras)
    except SystemExit as exit_request:
        return exit_request.code if isinstance(exit_request.code, int) else 2

    prog = f"tokenflight {args.command}"
    # The commands report failures themselves, in one line. Without a handler of its own,
    # the library's warnings would reach stderr through logging's last-resort handler
    # first; a program that configures logging still receives them.
    quiet = logging.NullHandler()
    library_logger = logging.getLogger("tokenflight")
    library_logger.addHandler(quiet)
    try:
        status: int = args.run(args)
    except (UsageError, ConfigurationError) as error:
        print(f"{prog}: error: {cli_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        library_logger.removeHandler(quiet)
    return status


if __name__ == "__main__":
    sys.exit(main())
