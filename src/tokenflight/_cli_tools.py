"""Command-line tools other than the demo: `token`, `jwt` and `inspect`."""

from __future__ import annotations

import argparse

__all__ = ["register_tools"]


def register_tools(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the tool subcommands to the `tokenflight` parser."""
