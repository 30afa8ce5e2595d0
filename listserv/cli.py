"""`listserv ...`: the root command. It reads the config, registers one typer sub-app per
noun (each in a cli_*.py module of its own) and turns every error into one line and a
non-zero exit. Commands parse arguments, call the same functions the server uses, and
print with rich; a user error is one line and exit 1.

Only typer and the standard library are imported here and in the cli_* modules: each
command imports the domain modules it needs when it runs, so `listserv --help` does not
load the whole server.
"""

from __future__ import annotations

import gc
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from listserv import (
    cli_archive,
    cli_bounce,
    cli_digest,
    cli_held,
    cli_list,
    cli_member,
    cli_message,
    cli_queue,
    cli_rules,
    cli_server,
    cli_templates,
)
from listserv.cli_help import Typer
from listserv.cli_shared import State, err, out

app = Typer(help="listserv: a mailing-list server.")
app.command("doctor")(cli_server.doctor_cmd)
app.command("serve")(cli_server.serve)
# The order `listserv --help` lists them in.
for sub_app, noun in [(cli_list.list_app, "list"), (cli_member.member_app, "member"),
                      (cli_held.held_app, "held"), (cli_archive.archive_app, "archive"),
                      (cli_server.db_app, "db"), (cli_digest.digest_app, "digest"),
                      (cli_bounce.bounce_app, "bounce"), (cli_server.dkim_app, "dkim"),
                      (cli_queue.queue_app, "queue"), (cli_rules.sender_app, "sender"),
                      (cli_rules.ban_app, "ban"), (cli_rules.rule_app, "rule"),
                      (cli_templates.template_app, "template"),
                      (cli_message.message_app, "message")]:
    app.add_typer(sub_app, name=noun)


def _print_version(value: bool) -> None:
    if value:
        from listserv import db

        out.print(f"listserv {db.version()}")
        raise typer.Exit()


@app.callback()
def _global(ctx: typer.Context, config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE", help="TOML config file (default: $LISTSERV_CONFIG, else "
        "built-in defaults).")] = None,
        _version: Annotated[bool, typer.Option(
            "--version", is_eager=True, callback=_print_version,
            help="Print the version and exit.")] = False) -> None:
    ctx.obj = State(config)


def _usage_error(exc: Exception) -> int | None:
    """Click's usage errors (typer bundles its own click, so match by shape, not class)."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and callable(getattr(exc, "format_message", None)):
        message = exc.format_message()
        if message:  # empty when the help was shown instead (a bare `listserv member`)
            err.print(f"error: {message} (see --help)")
        return code
    return None


# The errors a user can fix, by module and class: only modules already imported are
# looked in, since an exception comes from one, and importing the others just to compare
# would cost every failing command the start time the lazy imports save.
_USER_ERRORS = (("listserv.config", "ConfigError"), ("listserv.db", "DatabaseError"),
                ("listserv.roster", "UserError"))


def _is_user_error(exc: Exception) -> bool:
    return any(isinstance(exc, getattr(sys.modules[module], name))
               for module, name in _USER_ERRORS if module in sys.modules)


def _database_error(exc: Exception) -> bool:
    errors = sys.modules.get("sqlalchemy.exc")
    return errors is not None and isinstance(exc, errors.SQLAlchemyError)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: every error is one line on stderr and a non-zero exit."""
    gc.disable()  # until the command's imports are done: see cli_shared.imports_done
    # SIGTERM (kill, a supervisor, a container stopping) ends a command as Ctrl-C does:
    # a long one cleans up on its way out. Killed by the default action, `archive
    # import` left its parsing processes waiting for work forever. `serve` sets its own.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except OSError as exc:
        err.print(f"error: {exc}")
        sys.exit(1)
    except Exception as exc:
        if _is_user_error(exc):
            err.print(f"error: {exc}")
            sys.exit(1)
        if _database_error(exc):
            err.print(f"database error: {str(exc).splitlines()[0]}")
            sys.exit(1)
        usage = _usage_error(exc)
        if usage is None:
            raise
        sys.exit(usage)
    if code == 130:  # typer's exit for KeyboardInterrupt: Ctrl-C or SIGTERM
        err.print("interrupted")
    sys.exit(code if isinstance(code, int) else 0)
