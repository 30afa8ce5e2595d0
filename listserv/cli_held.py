"""`listserv held ...`: the messages held for moderation, and the moderator's verdicts on
them, through moderation.py as the email commands and the owner pages act."""

from __future__ import annotations

from typing import Annotated

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import JsonOpt, app_state, out, print_json

held_app = Typer(help="Messages held for moderation.")


@held_app.command("ls")
def held_ls(ctx: typer.Context, list_address: Annotated[str | None, typer.Argument(
        metavar="LIST", help="Only this list's; every list's without it.")] = None,
        as_json: JsonOpt = False) -> None:
    """Messages waiting for a moderator, oldest first.

    \b
    Examples:
      listserv held ls
      listserv held ls dev@lists.example.org --json
    """
    from rich.table import Column, Table

    from listserv import db, moderation, roster

    with db.session(app_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address) if list_address is not None else None
        lists = {m.id: m.address for m in ([mlist] if mlist else roster.all_lists(s))}
        rows = [{"id": m.id, "list": lists[m.list_id], "sender": m.from_address or m.mail_from,
                 "subject": m.subject, "reason": "; ".join(m.reasons.splitlines()),
                 "received_at": m.received_at}
                for m in moderation.held(s, mlist)]
    if as_json:
        return print_json(rows)
    # An address cut to "dev@lists.example.o…" cannot be copied: the texts wrap instead.
    table = Table("id", *([] if mlist else [Column("list", no_wrap=True)]),
                  Column("sender", no_wrap=True), "subject", "reason")
    for r in rows:
        table.add_row(str(r["id"]), *([] if mlist else [r["list"]]), r["sender"],
                      r["subject"], r["reason"])
    out.print(table)
    return None


@held_app.command("show")
def held_show(ctx: typer.Context, message_id: Annotated[int, typer.Argument(metavar="ID")]
              ) -> None:
    """A held message: why it was held, and its text as received.

    \b
    Example:
      listserv held show 42
    """
    from listserv import db, moderation
    from listserv.models import MailingList

    with db.session(app_state(ctx).engine) as s:
        m = moderation.held_message(s, message_id)
        mlist = s.get(MailingList, m.list_id)
    out.print(f"id: {m.id}\nlist: {mlist.address}\nfrom: {m.from_address or m.mail_from}\n"
              f"subject: {m.subject}\nreceived: {m.received_at:%Y-%m-%d %H:%M} UTC\n"
              f"size: {m.size} bytes\nreasons:")
    for reason in m.reasons.splitlines():
        out.print(f"  - {reason}")
    out.print("")
    out.print(m.raw.decode("utf-8", "replace"))


def _moderate(ctx: typer.Context, ids: list[int], action: str, reason: str = "") -> None:
    from listserv import db, moderation

    with db.session(app_state(ctx).engine) as s:
        messages = [moderation.held_message(s, i) for i in ids]
        lines = [moderation.act(s, app_state(ctx).config, m, action, reason) for m in messages]
        s.commit()
    for line in lines:
        out.print(line)


@held_app.command("approve")
def held_approve(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(metavar="ID...")]
                 ) -> None:
    """Send held messages to the list as if they had been accepted.

    \b
    Example:
      listserv held approve 42 43
    """
    _moderate(ctx, ids, "approve")


@held_app.command("reject")
def held_reject(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(metavar="ID...")],
                reason: Annotated[str, typer.Option(metavar="TEXT",
                                                    help="Told to the author.")] = "") -> None:
    """Refuse held messages and tell their authors why.

    \b
    Example:
      listserv held reject 42 --reason "Off topic here; try users@lists.example.org."
    """
    _moderate(ctx, ids, "reject", reason)


@held_app.command("discard")
def held_discard(ctx: typer.Context, ids: Annotated[list[int], typer.Argument(metavar="ID...")]
                 ) -> None:
    """Drop held messages silently (spam).

    \b
    Example:
      listserv held discard 42
    """
    _moderate(ctx, ids, "discard")
