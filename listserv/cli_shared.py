"""What every `listserv` command module shares: the output consoles, the argument types,
the state the root command makes (config, database engine) and a few small helpers.

Only typer and the standard library are imported here, as in every cli module: each
command imports the domain modules it needs when it runs, so `listserv --help` does not
load the whole server.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from listserv import config as config_mod

if TYPE_CHECKING:
    from datetime import datetime

    from rich.console import Console
    from rich.progress import Progress
    from sqlalchemy.engine import Engine


class _LazyConsole:
    """A rich Console made on first print: importing rich costs every command, --help too."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def console(self) -> Console:
        """The Console itself, for what takes one (a progress bar)."""
        if self._console is None:
            from rich.console import Console

            # Names, subjects and addresses are user data: "[dev] Hello" must print as it
            # is, not as rich markup; and a line of output is one line, never wrapped at
            # the terminal width.
            self._console = Console(stderr=self._stderr, markup=False, highlight=False,
                                    soft_wrap=True)
        return self._console

    def print(self, *objects: Any, **options: Any) -> None:
        """A line of text goes out as it is, without rich: importing rich cost a short
        command a twentieth of its start, and rich turned ":smile:" in a subject or a held
        message into an emoji. Tables and the like are rich's."""
        if len(objects) == 1 and isinstance(objects[0], str) and not options:
            (sys.stderr if self._stderr else sys.stdout).write(objects[0] + "\n")
        else:
            self.console().print(*objects, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console(), name)


out = _LazyConsole(stderr=False)
err = _LazyConsole(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout and nothing else.")]
ListArg = Annotated[str, typer.Argument(metavar="LIST", help="The list's address.")]
AddressArg = Annotated[str, typer.Argument(metavar="ADDRESS")]
FileArg = Annotated[Path, typer.Argument(metavar="FILE")]


class State:
    def __init__(self, config_path: Path | None) -> None:
        self.config = config_mod.load(config_path)
        self._engine: Engine | None = None
        self.upgrade = False  # `serve --upgrade`: the one command that may migrate

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from listserv import db

            self._engine = db.open_database(self.config.database.url, self.upgrade)
            imports_done()
        return self._engine


def imports_done() -> None:
    """Collect cycles again from here. main() turns the collector off because importing
    the database layer makes some 10^5 lasting objects that it would scan over and over
    (0.1 s of a command's start), and again at exit (0.15 s): freezing them moves them
    out of its sight for good, and what the command itself makes is collected as usual.
    Under a test's CliRunner, which does not go through main(), this changes nothing.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def app_state(ctx: typer.Context) -> State:
    return ctx.find_root().obj


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def progress() -> Progress:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err.console(), transient=False)


def day(value: str, option: str) -> datetime:
    from datetime import UTC, datetime

    from listserv import roster

    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise roster.UserError(f"{option} {value!r}: not a date (YYYY-MM-DD)") from None
