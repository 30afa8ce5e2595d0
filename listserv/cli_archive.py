"""`listserv archive ...`: the stored, threaded messages: importing a list's old mbox or
Maildir (archive_import.py), exporting it again (archive_export.py), showing its threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import FileArg, JsonOpt, ListArg, app_state, day, out, print_json, progress

if TYPE_CHECKING:
    from collections.abc import Iterator

    from listserv import mbox

archive_app = Typer(help="The stored, threaded messages.")


# Messages per transaction of `archive import`: large enough that threads are read and
# recounted once for many messages, small enough that a batch is a few megabytes.
IMPORT_BATCH = 1000


def _parsing_processes() -> int:
    """One core stores while the others parse; on one core, parsing stays in-process."""
    return min(4, (os.cpu_count() or 1) - 1)


def _maildir(path: Path) -> Iterator[mbox.Mail]:
    import mailbox

    from listserv import mbox

    box = mailbox.Maildir(path, factory=None, create=False)
    for key in box.iterkeys():
        yield mbox.Mail(box.get_bytes(key))


def _mbox_file(path: Path) -> Iterator[mbox.Mail]:
    from listserv import mbox

    with path.open("rb") as stream:
        yield from mbox.read(stream)


def _read_mailbox(path: Path) -> Iterator[mbox.Mail]:
    """The messages of an mbox file or a Maildir folder, one at a time; a wrong path is
    an error now, before anything is shown."""
    from listserv import roster

    if path.is_dir():
        return _maildir(path)
    if path.is_file():
        return _mbox_file(path)
    raise roster.UserError(f"{path}: no such mbox file or Maildir folder")


@archive_app.command("import")
def archive_import_cmd(ctx: typer.Context, list_address: ListArg, file: FileArg) -> None:
    """Store and thread every message of an mbox or Maildir, sending nothing.

    \b
    Example:
      listserv archive import dev@lists.example.org old-list.mbox
    """
    import itertools

    from listserv import archive_import, bulk, db, roster

    read = imported = 0
    mails = _read_mailbox(file)
    engine = app_state(ctx).engine
    with db.session(engine) as s, progress() as bar:
        mlist = roster.get_list(s, list_address)
        task = bar.add_task("importing", total=None)
        parsed = archive_import.parsed_mails(mails, workers=_parsing_processes())
        analyzed_at = 0
        while batch := list(itertools.islice(parsed, IMPORT_BATCH)):
            imported += archive_import.import_mail(s, mlist, batch)
            s.commit()
            read += len(batch)
            bar.update(task, completed=read)
            if imported >= 2 * analyzed_at + IMPORT_BATCH:
                # Each time the archive has doubled: PostgreSQL planned the batch's
                # lookups by the statistics of a smaller table, and a plan for an empty
                # one (a scan of every node per batch) took seconds at 50,000.
                bulk.refresh_statistics(engine, lookups_only=True)
                analyzed_at = imported
        bar.update(task, total=read)  # known now that the whole file was read
    bulk.refresh_statistics(engine)
    out.print(f"{read} messages read: {imported} imported, "
              f"{read - imported} duplicates skipped")


@archive_app.command("export")
def archive_export_cmd(ctx: typer.Context, list_address: ListArg, since: Annotated[
        str | None, typer.Option(metavar="DATE", help="Only messages dated on or after this "
                                 "day (YYYY-MM-DD, UTC).")] = None) -> None:
    """Write the archived messages to stdout as an mbox (mboxrd), oldest first; `archive
    import` of it stores the same messages again.

    \b
    Example:
      listserv archive export dev@lists.example.org --since 2026-01-01 > dev.mbox
    """
    from listserv import archive_export, db, roster

    start = day(since, "--since") if since is not None else None
    with db.read_session(app_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address)
        stdout = sys.stdout.buffer
        selection = archive_export.Selection(mlist.id, start=start)
        for entry in archive_export.export_mbox(s, selection):
            stdout.write(entry)
        stdout.flush()


@archive_app.command("threads")
def archive_threads(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False
                    ) -> None:
    """Every stored message with its parent and thread.

    \b
    Example:
      listserv archive threads dev@lists.example.org --json
    """
    from rich.table import Table

    from listserv import archive_export, db, roster

    with db.session(app_state(ctx).engine) as s:
        rows = archive_export.thread_rows(s, roster.get_list(s, list_address))
    if as_json:
        return print_json(rows)
    table = Table("message_id", "parent_id", "thread_id", "subject")
    for r in rows:
        table.add_row(r["message_id"], r["parent_id"] or "", r["thread_id"], r["subject"])
    out.print(table)
    return None
