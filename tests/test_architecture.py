"""docs/architecture.md places every module of the package in the flow, so a newcomer
finds each one; a module added without a place there fails here."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "listserv"


def modules() -> list[str]:
    """Every module by its path under listserv/ (`cli.py`, `web/app.py`), subpackages
    included; alembic's `migrations/` is placed as a whole, and an `__init__.py` only
    introduces its package."""
    paths = (p.relative_to(PACKAGE) for p in PACKAGE.rglob("*.py"))
    return sorted(p.as_posix() for p in paths
                  if p.name != "__init__.py" and p.parts[0] != "migrations")


def test_every_module_has_its_place_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [name for name in modules() if f"`{name}`" not in doc]
    assert not missing, f"docs/architecture.md does not place: {', '.join(missing)}"


def test_modules_in_subpackages_are_found():
    assert "web/app.py" in modules() and "cli.py" in modules()
