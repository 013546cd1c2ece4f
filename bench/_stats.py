"""Summaries of repeated measurements: median with min and max, and ratios to a baseline."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "describe_counts", "format_ratio", "summarize"]


@dataclass(frozen=True)
class Summary:
    """The median, minimum and maximum of one figure over several rounds."""

    median: float
    minimum: float
    maximum: float
    rounds: int

    def format(self, digits: int = 0, scale: float = 1.0) -> str:
        """Render as ``median (min-max)``, each value multiplied by ``scale``."""
        median = f"{self.median * scale:,.{digits}f}"
        if self.rounds == 1:
            return median
        low = f"{self.minimum * scale:,.{digits}f}"
        high = f"{self.maximum * scale:,.{digits}f}"
        return f"{median} ({low}-{high})"

    def to_json(self) -> dict[str, float]:
        """Return the summary as a JSON-ready mapping."""
        return {
            "median": self.median,
            "min": self.minimum,
            "max": self.maximum,
            "rounds": self.rounds,
        }


def summarize(values: Sequence[float]) -> Summary:
    """Summarize the values of one figure, one value per round."""
    if not values:
        raise ValueError("summarize() needs at least one value")
    return Summary(
        median=statistics.median(values),
        minimum=min(values),
        maximum=max(values),
        rounds=len(values),
    )


def format_ratio(value: float, baseline: float) -> str:
    """Render ``value / baseline`` with two decimals, or a dash when undefined."""
    if baseline == 0:
        return "n/a"
    return f"{value / baseline:.2f}"


def describe_counts(values: Sequence[int]) -> str:
    """Describe one count per round: ``"1 in each of 10 rounds"``, or the list of them."""
    if values and min(values) == max(values):
        return f"{values[0]} in each of {len(values)} rounds"
    return "per round: " + ", ".join(str(value) for value in values)
