"""The wheel holds every subpackage and the themes (the remote sync installs this same code)."""

from __future__ import annotations

from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent


def test_every_subpackage_and_the_themes_are_packaged() -> None:
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    on_disk = {str(p.parent.relative_to(REPO)).replace("/", ".")
               for top in ("kdtui", "kdengine") for p in (REPO / top).rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
    assert setup["package-dir"]["kdtui.themes"] == "themes"
    assert len(list((REPO / "themes").glob("*.toml"))) >= 3
