"""How `listserv ... --help` reads: plain text rewrapped to the terminal, every value shown
by its metavar in capitals (LIST, ADDRESS, FILE), never a Python type name.

typer shows `<str>`, `<list[str]>` and even `--help <bool>`, and keeps a docstring's hard
line breaks in its rich panels; click's plain formatter rewraps paragraphs (a paragraph
after a line of `\\b` is kept as written, for examples), and does not import rich.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


class _Argument(TyperArgument):
    @property
    def display_name_raw(self) -> str:
        return self.metavar or (self.name or "").upper()

    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the metavar says what it is

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        if self.nargs != 1 and not name.endswith("..."):
            name += "..."
        return name if self.required else f"[{name}]"


class _Option(TyperOption):
    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag:
            return None
        return self.metavar or (self.name or "").upper()


_PLAIN = {TyperArgument: _Argument, TyperOption: _Option}


def _plain(param: Any) -> Any:
    """typer builds its own parameter classes; ours only change how they are shown."""
    if param is not None:
        param.__class__ = _PLAIN.get(type(param), type(param))
    return param


class _PlainParams:
    """For a command or a group: its parameters, and the --help option click adds
    later, are shown as described above."""

    params: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _plain(param)

    def get_help_option(self, ctx: Any) -> Any:
        return _plain(super().get_help_option(ctx))  # type: ignore[misc]


class _Command(_PlainParams, TyperCommand):
    pass


class _Group(_PlainParams, TyperGroup):
    pass


class Typer(typer.Typer):
    """A typer app whose commands and groups show their help as described above."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=_Group, rich_markup_mode=None, no_args_is_help=True,
                         pretty_exceptions_enable=False, **kwargs)

    def command(self, name: str | None = None, **kwargs: Any) -> Any:
        return super().command(name, cls=_Command, **kwargs)
