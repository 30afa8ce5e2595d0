"""`listserv digest ...`: the digest issues and summaries of a list's posts: sending the
next one now (digest.py) and listing what was sent."""

from __future__ import annotations

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import JsonOpt, ListArg, _print_json, _state, out

digest_app = Typer(help="Digests of the posts.")


@digest_app.command("send")
def digest_send(ctx: typer.Context, list_address: ListArg) -> None:
    """Build the next issue from the pending posts now and queue it for the digest
    members, and its summary for the summary members (`listserv serve` delivers
    them).

    \b
    Example:
      listserv digest send dev@lists.example.org
    """
    from listserv import db, digest, roster
    from listserv.models import utcnow

    state = _state(ctx)
    with db.session(state.engine) as s:
        mlist = roster.get_list(s, list_address)
        sent = digest.build(s, state.config, mlist.id, utcnow(), force=True)
        s.commit()
    if sent is None:
        out.print(f"{mlist.address}: nothing pending")
        return
    out.print(f"{sent.issue.subject}: {sent.messages} messages, queued for "
              f"{sent.mime_members} digest-mime and {sent.plain_members} digest-plain members"
              + (f", and a summary for {sent.summary_members} summary members"
                 if sent.summary_members else ""))


@digest_app.command("ls")
def digest_ls(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False) -> None:
    """The issues sent, newest first.

    \b
    Example:
      listserv digest ls dev@lists.example.org
    """
    from rich.table import Table

    from listserv import db, digest, roster

    with db.session(_state(ctx).engine) as s:
        rows = [{"volume": i.volume, "number": i.number, "subject": i.subject,
                 "created_at": i.created_at, "messages": n, "size": i.size}
                for i, n in digest.issues(s, roster.get_list(s, list_address).id)]
    if as_json:
        return _print_json(rows)
    table = Table("volume", "number", "subject", "created_at", "messages", "size")
    for r in rows:
        table.add_row(str(r["volume"]), str(r["number"]), r["subject"],
                      f"{r['created_at']:%Y-%m-%d %H:%M}", str(r["messages"]), str(r["size"]))
    out.print(table)
    return None
