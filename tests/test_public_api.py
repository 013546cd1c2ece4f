"""The public surface: what `tokenflight` exports is what `__all__` lists, and it is documented."""

from __future__ import annotations

import inspect

import tokenflight
import tokenflight.testing


def test_all_matches_public_names() -> None:
    public = {name for name in vars(tokenflight) if not name.startswith("_")}
    modules = {name for name in public if inspect.ismodule(getattr(tokenflight, name))}
    assert sorted(public - modules) == sorted(tokenflight.__all__)


def test_all_is_sorted() -> None:
    assert list(tokenflight.__all__) == sorted(tokenflight.__all__)


def test_public_names_have_docstrings() -> None:
    # Type aliases such as EventHook cannot carry a docstring; the classes and functions can.
    objects = {name: getattr(tokenflight, name) for name in tokenflight.__all__}
    objects.update(
        {f"testing.{n}": getattr(tokenflight.testing, n) for n in tokenflight.testing.__all__}
    )
    documentable = {
        name: obj
        for name, obj in objects.items()
        if inspect.isclass(obj) or inspect.isfunction(obj)
    }
    assert len(documentable) >= len(objects) - 1
    undocumented = [name for name, obj in documentable.items() if not inspect.getdoc(obj)]
    assert undocumented == []


def test_package_ships_type_information() -> None:
    package_dir = inspect.getfile(tokenflight).rsplit("/", 1)[0]
    with open(f"{package_dir}/py.typed", encoding="utf-8") as marker:
        assert marker.read() == ""
