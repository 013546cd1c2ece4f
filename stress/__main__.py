"""``python -m stress``: the single-flight run, then the soak with injected faults.

Both run on asyncio and then on trio. ``--seconds`` sets the single-flight run's total
budget and the length of each soak run. It defaults to 60, which is also the soak's
minimum, so a default run takes about three minutes. The exit status is 1 if any
invariant failed in either run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stress import single_flight, soak

MINIMUM_SOAK_SECONDS = 60.0
# The soak rejects longer runs; checking here avoids a long single-flight run first.
MAXIMUM_SECONDS = 3600.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run both stress runs and return 0 when every invariant held, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m stress", description=__doc__)
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="single-flight budget and length of each soak run, in seconds (default 60)",
    )
    arguments = parser.parse_args(argv)
    if not 0 < arguments.seconds <= MAXIMUM_SECONDS:
        parser.error(
            f"--seconds must be between 0 and {MAXIMUM_SECONDS:g}, got {arguments.seconds}"
        )
    seconds = str(arguments.seconds)

    print("== single flight: many tasks, many expiries ==", flush=True)
    single_flight_status = single_flight.main(["--seconds", seconds])
    print("\n== soak: faults, revocations and wall-clock jumps ==", flush=True)
    # The fault schedule is one 60 s cycle of calm and faulty phases. Squeezed into less,
    # its outages last fractions of a second, too short to measure recovery.
    soak_seconds = max(arguments.seconds, MINIMUM_SOAK_SECONDS)
    if soak_seconds != arguments.seconds:
        print(f"(the soak runs for its minimum of {MINIMUM_SOAK_SECONDS:g} s)", flush=True)
    soak_status = soak.main(["--seconds", str(soak_seconds), "--backend", "both"])
    return 1 if single_flight_status or soak_status else 0


if __name__ == "__main__":
    sys.exit(main())
