"""Every Python example in README.md and docs/ runs as written.

A block fenced as ```python runs in a fresh namespace; a block fenced as
```python notest is shown only (it needs a real identity provider or a web framework).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _examples() -> list[object]:
    examples: list[object] = []
    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if "notest" in match.group(1):
                continue
            line = text.count("\n", 0, match.start()) + 1
            name = f"{document.relative_to(ROOT)}:{line}"
            examples.append(pytest.param(match.group(2), id=name))
    return examples


@pytest.mark.parametrize("source", _examples())
def test_example_runs(source: str) -> None:
    code = compile(source, "<docs example>", "exec")
    exec(code, {"__name__": "__docs__"})  # noqa: S102 - the examples are ours, under review
