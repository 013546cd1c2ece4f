"""Run the benchmarks: ``python -m bench [--quick] [--only NAME] [--write]``."""

from __future__ import annotations

import sys

from ._runner import main

sys.exit(main())
