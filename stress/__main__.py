"""``python -m stress``: the bounded single-flight stress run (see stress/single_flight.py)."""

import sys

from stress.single_flight import main

sys.exit(main())
