"""The jinja2 environment for every page and mail the server writes (templates/)."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

# What XML 1.0 cannot carry at all, not even escaped: most C0 controls, lone
# surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value: str) -> str:
    """Mail text made fit for an XML document (the Atom feed); escaping is autoescape's."""
    return _NOT_XML.sub("", value)


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("listserv.templates", ""),
        autoescape=select_autoescape(["html", "atom"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["xml"] = xml_text
    return env


def render(template: str, /, **context: Any) -> str:
    """Render templates/TEMPLATE; positional-only, so a context key may be called "name"."""
    return environment().get_template(template).render(**context)
