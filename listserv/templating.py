"""The jinja2 environment for every page and mail the server writes (templates/)."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@cache
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("listserv.templates", ""),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def render(template: str, /, **context: Any) -> str:
    """Render templates/TEMPLATE; positional-only, so a context key may be called "name"."""
    return environment().get_template(template).render(**context)
