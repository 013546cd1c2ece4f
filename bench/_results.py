"""The results one benchmark group hands back: tables of figures and the goals they check."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Goal", "GroupResult", "Table"]


@dataclass
class Table:
    """One table of the report: formatted cells, one row per variant."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Table:
        """Rebuild a table from :meth:`GroupResult.to_json` output."""
        return cls(
            title=str(data["title"]),
            columns=[str(cell) for cell in data["columns"]],
            rows=[[str(cell) for cell in row] for row in data["rows"]],
            notes=[str(note) for note in data["notes"]],
        )


@dataclass
class Goal:
    """A goal from the project's targets, the figure that checks it, and the verdict.

    ``met`` is ``None`` when the figure could not be measured in this run.
    """

    text: str
    measured: str
    met: bool | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Goal:
        """Rebuild a goal from :meth:`GroupResult.to_json` output."""
        met = data["met"]
        return cls(
            text=str(data["text"]),
            measured=str(data["measured"]),
            met=None if met is None else bool(met),
        )


@dataclass
class GroupResult:
    """Everything one benchmark group measured in one run."""

    name: str
    title: str
    description: str
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    command: str = ""
    seconds: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the result as JSON-ready data."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupResult:
        """Rebuild a result from :meth:`to_json` output."""
        return cls(
            name=str(data["name"]),
            title=str(data["title"]),
            description=str(data["description"]),
            tables=[Table.from_json(table) for table in data["tables"]],
            goals=[Goal.from_json(goal) for goal in data["goals"]],
            environment={str(k): str(v) for k, v in data["environment"].items()},
            command=str(data["command"]),
            seconds=float(data["seconds"]),
            raw=dict(data["raw"]),
        )
