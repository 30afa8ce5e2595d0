"""`listserv list ...`: create, inspect, change and delete lists; each command calls
roster.py and list_settings.py as the owner pages do."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import JsonOpt, ListArg, app_state, out, print_json

list_app = Typer(help="Create, inspect and delete lists.")


@list_app.command("create")
def list_create(ctx: typer.Context, address: ListArg,
                name: Annotated[str | None, typer.Option(metavar="NAME",
                                                         help="Display name.")] = None,
                owner: Annotated[str | None, typer.Option(metavar="ADDRESS",
                                                          help="Owner address.")] = None,
                description: Annotated[str, typer.Option(metavar="TEXT")] = "") -> None:
    """Create a list; --owner makes that address owner and member.

    \b
    Example:
      listserv list create dev@lists.example.org --owner ann@example.org --name Developers
    """
    from listserv import db, roster

    with db.session(app_state(ctx).engine) as s:
        mlist = roster.create_list(s, address, name=name, owner=owner, description=description)
        s.commit()
    out.print(f"created {mlist.address} ({mlist.name})")


def _list_summary(s: Any, mlist: Any) -> dict:
    from listserv import list_settings, roster

    counts: dict[str, int] = {}
    for m in roster.members(s, mlist):
        counts[m.role.value] = counts.get(m.role.value, 0) + 1
    return {"address": mlist.address, "name": mlist.name, "description": mlist.description,
            "members": counts.get("member", 0), "owners": counts.get("owner", 0),
            "moderators": counts.get("moderator", 0), "created_at": mlist.created_at,
            **list_settings.settings_of(mlist)}


@list_app.command("ls")
def list_ls(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """All lists.

    \b
    Example:
      listserv list ls --json
    """
    from rich.table import Table

    from listserv import db, roster

    with db.session(app_state(ctx).engine) as s:
        rows = [_list_summary(s, m) for m in roster.all_lists(s)]
    if as_json:
        return print_json(rows)
    table = Table("address", "name", "members", "description")
    for r in rows:
        table.add_row(r["address"], r["name"], str(r["members"]), r["description"])
    out.print(table)


@list_app.command("show")
def list_show(ctx: typer.Context, address: ListArg, as_json: JsonOpt = False) -> None:
    """One list, its counts and its settings. A subject prefix or footer left to the
    built-in one shows that one, marked "(default)".

    \b
    Example:
      listserv list show dev@lists.example.org
    """
    from listserv import db, list_settings, roster

    with db.session(app_state(ctx).engine) as s:
        mlist = roster.get_list(s, address)
        info = _list_summary(s, mlist)
        effective = list_settings.effective(mlist)
    if as_json:
        return print_json({**info, **effective.values, "defaults": effective.defaults})
    for key, value in {**info, **effective.values}.items():
        _print_setting(key, value, " (default)" if key in effective.defaults else "")
    return None


def _print_setting(key: str, value: Any, mark: str) -> None:
    """One line a setting; a footer's lines indented under its name, and "" as (none)."""
    if value == "":
        out.print(f"{key}: (none)")
    elif isinstance(value, str) and "\n" in value.rstrip("\n"):
        out.print(f"{key}{mark}:")
        for line in value.rstrip("\n").splitlines():
            out.print(f"  {line}")
    else:
        out.print(f"{key}: {value}{mark}")


@list_app.command("delete")
def list_delete(ctx: typer.Context, address: ListArg,
                yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False) -> None:
    """Delete a list with its members and archive.

    \b
    Example:
      listserv list delete dev@lists.example.org --yes
    """
    from listserv import db, roster

    if not yes:
        if not sys.stdin.isatty():
            raise roster.UserError(f"not deleting {address} without --yes")
        typer.confirm(f"Delete {address}, its members and its archive?", abort=True)
    with db.session(app_state(ctx).engine) as s:
        roster.delete_list(s, roster.get_list(s, address))
        s.commit()
    out.print(f"deleted {address}")


@list_app.command("set")
def list_set(ctx: typer.Context, address: ListArg, key: str, value: str) -> None:
    """Change one setting: subscription, nonmember_action, member_action (accept, hold:
    the owners approve each member's post, reject: only owners and moderators post),
    new_member_holds (a new member's first N posts are held; 0 for none), notify_owners
    (on: the owners get a mail when someone joins, leaves, is disabled by bounces or is
    removed; off, the default), emergency,
    reply_to, subject_prefix, footer, max_message_bytes, archive, digest_frequency,
    digest_send_hour, digest_max_bytes, digest_volume_frequency, verp, dmarc, name,
    description. VALUE "default" gives subject_prefix and footer back the built-in ones.
    The content filter (what copies, digests and the archive's pages carry; the stored
    post stays as received): pass_types (the MIME types kept, "text/plain image/*";
    others are removed with a note; text/plain always passes; "" keeps every type),
    collapse_alternatives (true: a multipart/alternative goes as its text/plain),
    html_to_text (true: HTML-only posts go as text), max_attachment_bytes (larger
    attachments are removed with a note; 0 for no limit).

    \b
    Example:
      listserv list set dev@lists.example.org subject_prefix "[dev]"
    """
    from listserv import db, list_settings, roster

    with db.session(app_state(ctx).engine) as s:
        mlist = roster.get_list(s, address)
        new = list_settings.set_setting(mlist, key, value)
        s.add(mlist)
        s.commit()
    out.print(f"{mlist.address}: {key} = {new if new is not None else 'default'}")
