"""Command-line tools other than the demo: `token`, `jwt` and `inspect`."""

from __future__ import annotations

import argparse

from . import _cli_jwt, _cli_token

__all__ = ["register_tools"]


def register_tools(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the tool subcommands to the `tokenflight` parser."""
    _cli_token.register(subcommands)
    _cli_jwt.register(subcommands)
