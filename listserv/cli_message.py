"""`listserv message ...`: one archived post, as the owners act on it; `erase` makes it a
tombstone everywhere (erasure.py).
"""

from __future__ import annotations

from typing import Annotated

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import ListArg, app_state, out

message_app = Typer(help="One post of a list's archive: erase it.")

MessageIdArg = Annotated[str, typer.Argument(
    metavar="MESSAGE-ID", help="The post's Message-ID, with or without <>.")]


@message_app.command("erase")
def message_erase(ctx: typer.Context, list_address: ListArg, message_id: MessageIdArg,
                  reason: Annotated[str, typer.Option(
                      "--reason", metavar="TEXT",
                      help="Why, kept with the message for the owners; never shown.")] = ""
                  ) -> None:
    """Erase a post: it becomes a tombstone that keeps its Message-ID, date and place in
    the thread ("removed by the list owners on DATE"), so replies keep their parent.
    Its text, sender, subject and attachments leave every page, the search, the feed,
    the mbox export, the digest issues kept and the stored bytes; /raw answers 410
    Gone, and copies not sent yet are cancelled. It cannot be undone.

    \b
    Example:
      listserv message erase dev@lists.example.org 'spam.1234@example.net' --reason spam
    """
    from listserv import db, erasure, roster

    state = app_state(ctx)
    with db.session(state.engine) as s:
        message = erasure.erase_id(s, state.config, roster.get_list(s, list_address),
                                   message_id, reason)
        s.commit()
        out.print(f"erased <{message.message_id}>")
