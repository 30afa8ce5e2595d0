"""`listserv digest ...`: the digest issues and summaries of a list's posts: sending the
next one now (digest.py) and listing what was sent."""

from __future__ import annotations

from typing import Any

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import JsonOpt, ListArg, app_state, out, print_json

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

    state = app_state(ctx)
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


def _sent(session: Any, list_id: int) -> list[dict[str, Any]]:
    """Each issue, newest first, followed by its summary when it had summary members:
    the summary covers the same posts, and its size is that of the mail kept."""
    from listserv import digest

    kept = digest.summaries(session, list_id)
    rows: list[dict[str, Any]] = []
    for issue, messages in digest.issues(session, list_id):
        row = {"volume": issue.volume, "number": issue.number, "kind": "digest",
               "subject": issue.subject, "created_at": issue.created_at,
               "messages": messages, "size": issue.size}
        rows.append(row)
        if (made := kept.get(issue.id)) is not None:
            rows.append(row | {"kind": "summary", "subject": made.subject,
                               "threads": made.threads, "size": made.size})
    return rows


@digest_app.command("ls")
def digest_ls(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False) -> None:
    """The issues sent, newest first, each followed by its summary (kind "summary") when
    the list had summary members then.

    \b
    Example:
      listserv digest ls dev@lists.example.org
    """
    from rich.table import Table

    from listserv import db, roster

    with db.session(app_state(ctx).engine) as s:
        rows = _sent(s, roster.get_list(s, list_address).id)
    if as_json:
        return print_json(rows)
    table = Table("volume", "number", "kind", "subject", "created_at", "messages", "size")
    for r in rows:
        table.add_row(str(r["volume"]), str(r["number"]), r["kind"], r["subject"],
                      f"{r['created_at']:%Y-%m-%d %H:%M}", str(r["messages"]), str(r["size"]))
    out.print(table)
    return None
