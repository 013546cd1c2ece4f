"""Run one benchmark group in this interpreter and write its result as JSON.

``python -m bench`` starts this module in the benchmark environment (``bench/.venv``), one
process per group, so that groups do not share memory, garbage or imported peers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import cast

from ._env import machine_facts, package_versions
from ._harness import Profile
from ._results import GroupResult

__all__ = ["GROUPS", "main"]

# Group name -> module with a ``run(profile) -> GroupResult`` function, in report order.
GROUPS: dict[str, str] = {
    "cache": "bench._cache_group",
    "hot": "bench._hot",
    "burst": "bench._burst",
    "outage": "bench._outage",
    "cancel": "bench._cancel",
    "stall": "bench._stall",
    "jwt": "bench._jwt_group",
    "memory": "bench._memory",
}


def run_group(name: str, profile: Profile, command: str) -> GroupResult:
    """Import and run one group, and stamp its result with the environment and command."""
    module = importlib.import_module(GROUPS[name])
    run = cast(Callable[[Profile], GroupResult], module.run)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = run(profile)
    result.seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    result.command = command
    result.environment = {
        **machine_facts(),
        **{f"version {package}": version for package, version in package_versions().items()},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # Other processes on the machine slow every variant and widen the spread.
        "load average (1 min) before and after": f"{load_before:.2f}, {load_after:.2f}",
    }
    return result


def main() -> int:
    """Run the group named on the command line."""
    parser = argparse.ArgumentParser(description="Run one tokenflight benchmark group.")
    parser.add_argument("group", choices=sorted(GROUPS))
    parser.add_argument("--quick", action="store_true", help="fewer and shorter rounds")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per figure")
    parser.add_argument("--output", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--command", default="", help="the command to record in the report")
    args = parser.parse_args()

    # Authlib warns on import that plain httpx is deprecated in favour of httpx2.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="authlib")
    rounds = args.rounds
    if rounds is None:
        rounds = 3 if args.quick else 7
    profile = Profile(quick=args.quick, rounds=rounds)
    result = run_group(args.group, profile, args.command)
    args.output.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
