"""`listserv sender ...`, `listserv ban ...` and `listserv rule ...`: the owners' rules on
who may post and what (posting_rules.py keeps them; policy.py acts on them).
"""

from __future__ import annotations

from typing import Annotated

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import JsonOpt, ListArg, app_state, out, print_json

sender_app = Typer(help="Allow, deny or hold the posts of senders a pattern names.")
ban_app = Typer(help="Senders banned from every list: no subscribing, no posting.")
rule_app = Typer(help="Rules on header fields: hold, reject or discard a post whose field "
                      "matches (the verdict of a spam filter in front, for example).")

PatternArg = Annotated[str, typer.Argument(
    metavar="PATTERN", help="An address, @domain (that domain, not its subdomains) or "
    "^regex$ (matched against the address alone, case-insensitively).")]


def _table(rows: list[dict], *columns: str) -> None:
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    out.print(table)


# --- sender -----------------------------------------------------------------------------

def _sender(ctx: typer.Context, list_address: str, pattern: str, action: str) -> None:
    from listserv import db, posting_rules, roster
    from listserv.enums import SenderAction

    with db.session(app_state(ctx).engine) as s:
        added = posting_rules.set_sender(s, roster.get_list(s, list_address), pattern,
                                         SenderAction(action))
        s.commit()
    out.print(f"{added}: {action}")


@sender_app.command("allow")
def sender_allow(ctx: typer.Context, list_address: ListArg, pattern: PatternArg) -> None:
    """Let these senders' posts through without moderation, members' and non-members'
    alike (a post can still be held for its size, emergency moderation or a header rule).

    \b
    Examples:
      listserv sender allow dev@lists.example.org ci@example.org
      listserv sender allow dev@lists.example.org @example.org
    """
    _sender(ctx, list_address, pattern, "allow")


@sender_app.command("deny")
def sender_deny(ctx: typer.Context, list_address: ListArg, pattern: PatternArg) -> None:
    """Discard every post from these senders, telling no one.

    \b
    Examples:
      listserv sender deny dev@lists.example.org spam@example.net
      listserv sender deny dev@lists.example.org '^.*@(mail\\.)?spam\\.example$'
    """
    _sender(ctx, list_address, pattern, "deny")


@sender_app.command("hold")
def sender_hold(ctx: typer.Context, list_address: ListArg, pattern: PatternArg) -> None:
    """Hold every post from these senders for a moderator, members' too.

    \b
    Example:
      listserv sender hold dev@lists.example.org @newcomers.example
    """
    _sender(ctx, list_address, pattern, "hold")


@sender_app.command("remove")
def sender_remove(ctx: typer.Context, list_address: ListArg, pattern: PatternArg) -> None:
    """Take a pattern off the list: its senders are treated like any others again.

    \b
    Example:
      listserv sender remove dev@lists.example.org ci@example.org
    """
    from listserv import db, posting_rules, roster

    with db.session(app_state(ctx).engine) as s:
        removed = posting_rules.remove_sender(s, roster.get_list(s, list_address), pattern)
        s.commit()
    out.print(f"{removed}: removed")


@sender_app.command("ls")
def sender_ls(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False) -> None:
    """The allow, deny and hold entries of a list.

    \b
    Example:
      listserv sender ls dev@lists.example.org
    """
    from listserv import db, posting_rules, roster

    with db.session(app_state(ctx).engine) as s:
        rows = [{"address": r.address, "action": r.action.value}
                for r in posting_rules.senders(s, roster.get_list(s, list_address))]
    if as_json:
        return print_json(rows)
    _table(rows, "address", "action")
    return None


# --- ban --------------------------------------------------------------------------------

@ban_app.command("add")
def ban_add(ctx: typer.Context, pattern: PatternArg) -> None:
    """Ban senders from every list: their posts are discarded and their requests to
    subscribe go unanswered. Members already subscribed stay until removed.

    \b
    Examples:
      listserv ban add spammer@example.net
      listserv ban add '^.*@.*\\.spam\\.example$'
    """
    from listserv import db, posting_rules

    with db.session(app_state(ctx).engine) as s:
        added = posting_rules.add_ban(s, pattern)
        s.commit()
    out.print(f"{added}: banned")


@ban_app.command("remove")
def ban_remove(ctx: typer.Context, pattern: PatternArg) -> None:
    """Lift a ban.

    \b
    Example:
      listserv ban remove spammer@example.net
    """
    from listserv import db, posting_rules

    with db.session(app_state(ctx).engine) as s:
        removed = posting_rules.remove_ban(s, pattern)
        s.commit()
    out.print(f"{removed}: no longer banned")


@ban_app.command("ls")
def ban_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The banned patterns.

    \b
    Example:
      listserv ban ls
    """
    from listserv import db, posting_rules

    with db.session(app_state(ctx).engine) as s:
        rows = [{"pattern": b.pattern, "since": b.created_at.strftime("%Y-%m-%d")}
                for b in posting_rules.bans(s)]
    if as_json:
        return print_json(rows)
    _table(rows, "pattern", "since")
    return None


# --- rule -------------------------------------------------------------------------------

@rule_app.command("add")
def rule_add(ctx: typer.Context, list_address: ListArg,
             header: Annotated[str, typer.Argument(metavar="HEADER")],
             regex: Annotated[str, typer.Argument(
                 metavar="REGEX", help="Searched for in each value of the field, "
                 "case-insensitively.")],
             action: Annotated[str, typer.Argument(metavar="hold|reject|discard")]) -> None:
    """Hold, reject (5xx at the door) or discard a post one of whose HEADER fields
    matches REGEX. Of several rules that match, the strictest acts.

    \b
    Examples:
      listserv rule add dev@lists.example.org X-Spam-Flag YES discard
      listserv rule add dev@lists.example.org X-Spam-Status '^Yes' hold
    """
    from listserv import db, posting_rules, roster
    from listserv.cli_member import choice
    from listserv.enums import HeaderAction

    kind = choice(HeaderAction, action, "the action")
    with db.session(app_state(ctx).engine) as s:
        rule = posting_rules.add_header_rule(s, roster.get_list(s, list_address), header,
                                             regex, kind)
        s.commit()
        out.print(f"rule {rule.id}: {rule.header} matching {rule.pattern!r}: {kind.value}")


@rule_app.command("remove")
def rule_remove(ctx: typer.Context, list_address: ListArg,
                rule_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Remove a header rule (its ID is in `rule ls`).

    \b
    Example:
      listserv rule remove dev@lists.example.org 3
    """
    from listserv import db, posting_rules, roster

    with db.session(app_state(ctx).engine) as s:
        posting_rules.remove_header_rule(s, roster.get_list(s, list_address), rule_id)
        s.commit()
    out.print(f"rule {rule_id}: removed")


@rule_app.command("ls")
def rule_ls(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False) -> None:
    """A list's header rules.

    \b
    Example:
      listserv rule ls dev@lists.example.org
    """
    from listserv import db, posting_rules, roster

    with db.session(app_state(ctx).engine) as s:
        rows = [{"id": r.id, "header": r.header, "regex": r.pattern, "action": r.action.value}
                for r in posting_rules.header_rules(s, roster.get_list(s, list_address))]
    if as_json:
        return print_json(rows)
    _table(rows, "id", "header", "regex", "action")
    return None
