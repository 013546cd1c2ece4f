"""The command line of ``python -m bench``: set up the environment, run groups, write the page."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from ._env import ensure_environment
from ._report import render_group, render_page
from ._results import GroupResult
from ._worker import GROUPS

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"


def _parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark tokenflight against a static-header baseline and its peers, and "
            "rewrite docs/benchmarks.md. The peers are installed into bench/.venv."
        ),
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer and shorter rounds (a few minutes in all); prints the tables and leaves "
        "docs/benchmarks.md alone unless --write is given",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(GROUPS),
        metavar="NAME",
        help=f"run only this group (repeatable); one of: {', '.join(GROUPS)}",
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds per figure (default: 7, quick: 3)"
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help="update docs/benchmarks.md and bench/results/ even after a --quick run",
    )
    parser.add_argument(
        "--python",
        type=Path,
        default=None,
        help="run the groups with this interpreter instead of bench/.venv; it needs "
        "tokenflight, Authlib, httpx-auth and trio installed",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def _load_results(directory: Path) -> dict[str, GroupResult]:
    results: dict[str, GroupResult] = {}
    for name in GROUPS:
        path = directory / f"{name}.json"
        if path.exists():
            results[name] = GroupResult.from_json(json.loads(path.read_text()))
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the chosen groups and report; return the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    args = _parse_arguments(arguments)
    command = shlex.join(["python", "-m", "bench", *arguments])
    python = args.python if args.python is not None else ensure_environment(ROOT)
    write = args.write or not args.quick
    names = args.only or list(GROUPS)

    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tokenflight-bench-") as scratch:
        output_directory = RESULTS if write else Path(scratch)
        output_directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            output = output_directory / f"{name}.json"
            print(f"bench: running group {name!r}", file=sys.stderr, flush=True)
            worker = [str(python), "-m", "bench._worker", name, "--output", str(output)]
            worker += ["--command", command]
            if args.quick:
                worker.append("--quick")
            if args.rounds is not None:
                worker += ["--rounds", str(args.rounds)]
            completed = subprocess.run(worker, cwd=ROOT, check=False)
            if completed.returncode != 0:
                print(
                    f"bench: group {name!r} failed with exit status {completed.returncode}",
                    file=sys.stderr,
                )
                failed.append(name)
                continue
            result = GroupResult.from_json(json.loads(output.read_text()))
            print(render_group(result, heading="#"), flush=True)

    if write:
        results = _load_results(RESULTS)
        ordered = [results[name] for name in GROUPS if name in results]
        missing = [name for name in GROUPS if name not in results]
        PAGE.write_text(render_page(ordered, missing))
        print(f"bench: wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    if failed:
        print(f"bench: failed groups: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
