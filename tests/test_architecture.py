"""docs/architecture.md places every module of the package in the flow, so a newcomer
finds each one; a module added without a place there fails here."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_every_module_has_its_place_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = sorted(p.name for p in (ROOT / "listserv").glob("*.py") if p.name != "__init__.py")
    missing = [name for name in modules if f"`{name}`" not in doc]
    assert not missing, f"docs/architecture.md does not place: {', '.join(missing)}"
