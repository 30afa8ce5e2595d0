"""The jinja2 environments: one for every page and mail the server writes (templates/),
and a sandbox for the templates a list's owner writes (the footer)."""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

# What XML 1.0 cannot carry at all, not even escaped: most C0 controls, lone
# surrogates, U+FFFE and U+FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value: str) -> str:
    """Mail text made fit for an XML document (the Atom feed); escaping is autoescape's."""
    return _NOT_XML.sub("", value)


def when(value: datetime | None) -> Markup:
    """A date as every page shows it, in a <time> element that says it exactly. A filter
    rather than a macro: a thread page shows one per post, and a macro call costs
    several times the formatting."""
    if value is None:
        return Markup("no date")
    # Digits, "-", ":", "+" and "T" only: nothing to escape (Markup.format would cost
    # more than the rest of the filter).
    return Markup(f'<time datetime="{value.isoformat()}">{value:%Y-%m-%d %H:%M}</time>')


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("listserv.templates", ""),
        autoescape=select_autoescape(["html", "atom"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["xml"] = xml_text
    env.filters["when"] = when
    return env


# Repeating a string or list (`"x" * 10**9`) would fill the memory of the server; a
# footer has no use for it, nor for powers.
_MAX_REPEAT = 1000


class _OwnerSandbox(SandboxedEnvironment):
    """Jinja's sandbox (no attributes starting with "_", no unsafe methods), and also no
    huge repetition or power: what an owner writes runs in the server for every post."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            raise SecurityError("a footer may not raise to a power")
        if any(isinstance(v, int) and abs(v) > _MAX_REPEAT for v in (left, right)) and any(
                isinstance(v, str | list | tuple) for v in (left, right)):
            raise SecurityError(f"a footer may repeat text at most {_MAX_REPEAT} times")
        return super().call_binop(context, operator, left, right)


@cache
def owner_environment() -> Environment:
    """Where a template an owner set is rendered: sandboxed, plain text (mail, not
    HTML), and with no globals (range, dict, cycler...), so it sees only the variables
    the caller passes, the documented ones."""
    env = _OwnerSandbox(undefined=StrictUndefined, keep_trailing_newline=True,
                        autoescape=False)
    env.globals.clear()
    return env


def render(template: str, /, **context: Any) -> str:
    """Render templates/TEMPLATE; positional-only, so a context key may be called "name"."""
    return environment().get_template(template).render(**context)
