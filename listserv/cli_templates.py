"""`listserv template ...`: the texts a list's owners write for its welcome, goodbye,
footer and digest header (owner_templates.py checks and keeps them)."""

from __future__ import annotations

from typing import Annotated

import typer

from listserv.cli_help import Typer
from listserv.cli_member import _read_file
from listserv.cli_shared import FileArg, ListArg, app_state, err, out

template_app = Typer(help="The list's own welcome, goodbye, footer and digest header.")

NameArg = Annotated[str, typer.Argument(
    metavar="NAME", help="welcome, goodbye, footer or digest_header.")]


@template_app.command("set")
def template_set(ctx: typer.Context, list_address: ListArg, name: NameArg,
                 file: FileArg) -> None:
    """Use the text in FILE (UTF-8) as the list's NAME: the body of the welcome or
    goodbye mail, the footer of each post, or the header at the top of each digest. It
    is a Jinja template, checked by rendering it before it is saved; it may use the
    variables docs/owners.md lists for it, such as {{ name }}, {{ address }} and
    {{ member }}.

    \b
    Example:
      listserv template set dev@lists.example.org welcome welcome.txt
    """
    from listserv import db, owner_templates, roster

    text = _read_file(file)
    with db.session(app_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address)
        owner_templates.set_template(mlist, name, text)
        s.add(mlist)
        s.commit()
    out.print(f"{mlist.address}: {name} set from {file}")


@template_app.command("show")
def template_show(ctx: typer.Context, list_address: ListArg, name: NameArg) -> None:
    """Print the list's NAME as it is used: the owners' text, or the built-in one
    (stderr says which).

    \b
    Example:
      listserv template show dev@lists.example.org footer
    """
    from listserv import db, owner_templates, roster

    with db.read_session(app_state(ctx).engine) as s:
        text, built_in = owner_templates.shown(roster.get_list(s, list_address), name)
    if built_in:
        err.print(f"{name}: the built-in one" if text else f"{name}: none set")
    out.print(text, end="")


@template_app.command("reset")
def template_reset(ctx: typer.Context, list_address: ListArg, name: NameArg) -> None:
    """Go back to the built-in NAME (for digest_header: none).

    \b
    Example:
      listserv template reset dev@lists.example.org welcome
    """
    from listserv import db, owner_templates, roster

    with db.session(app_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address)
        owner_templates.reset(mlist, name)
        s.add(mlist)
        s.commit()
    out.print(f"{mlist.address}: {name} is the built-in one")
