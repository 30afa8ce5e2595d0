"""`listserv member ...`: who is on a list, added by hand or imported from the system a
list leaves, and where one address is on every list."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Annotated, Any

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import (
    AddressArg,
    FileArg,
    JsonOpt,
    ListArg,
    app_state,
    day,
    err,
    out,
    print_json,
    progress,
)

if TYPE_CHECKING:
    from listserv.roster import AddResult

member_app = Typer(help="Manage the members of a list.")

AddressesArg = Annotated[list[str], typer.Argument(metavar="ADDRESS...")]
RoleOpt = Annotated[str, typer.Option(metavar="ROLE", help="member, moderator or owner.")]


def choice(cls: type[enum.Enum], value: str, option: str) -> Any:
    """An option's value as one of the enum's; a usage error naming the valid ones. The
    enums live with the database models, which --help must not wait for."""
    try:
        return cls(value.strip().lower())
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not one of "
                                 f"{', '.join(m.value for m in cls)}", param_hint=option
                                 ) from None


def _report(result: AddResult, role: str) -> None:
    for a in result.existing:
        err.print(f"{a}: already a {role}")
    for a in result.invalid:
        err.print(f"{a!r}: not a valid address")


@member_app.command("add")
def member_add(ctx: typer.Context, list_address: ListArg, addresses: AddressesArg,
               role: RoleOpt = "member") -> None:
    """Add addresses; bad or existing ones are reported and the rest still go in.

    \b
    Example:
      listserv member add dev@lists.example.org ann@example.org "Bob <bob@example.org>"
    """
    from listserv import db, roster
    from listserv.enums import Role

    state = app_state(ctx)
    kind = choice(Role, role, "--role")
    with db.session(state.engine) as s:
        mlist = roster.get_list(s, list_address)
        result = roster.add_members(s, mlist, addresses, kind)
        if kind is Role.MEMBER:
            _tell_owners(s, state.config, mlist, "joined", result.added, "member add")
        s.commit()
    for a in result.added:
        out.print(f"added {a} as {kind.value}")
    _report(result, kind.value)
    if result.invalid or result.existing:
        raise typer.Exit(1)


@member_app.command("remove")
def member_remove(ctx: typer.Context, list_address: ListArg, addresses: AddressesArg) -> None:
    """Remove addresses (every role they hold).

    \b
    Example:
      listserv member remove dev@lists.example.org ann@example.org
    """
    from listserv import db, roster

    state = app_state(ctx)
    with db.session(state.engine) as s:
        mlist = roster.get_list(s, list_address)
        removed, missing = roster.remove_members(s, mlist, addresses)
        _tell_owners(s, state.config, mlist, "removed", removed, "member remove")
        s.commit()
    for a in removed:
        out.print(f"removed {a}")
    for a in missing:
        err.print(f"{a}: not on {list_address}")
    if missing:
        raise typer.Exit(1)


def _tell_owners(s: Any, config: Any, mlist: Any, change: str, addresses: list[str],
                 command: str) -> None:
    """The owners hear of what the command line did too (when notify_owners is on)."""
    from listserv import notify_owners

    notify_owners.tell(s, config, mlist, notify_owners.Change(change), addresses,
                       f"by `listserv {command}`")


@member_app.command("invite")
def member_invite(ctx: typer.Context, list_address: ListArg, addresses: AddressesArg) -> None:
    """Mail each address an invitation to join; it becomes a member only when it
    accepts (a reply, a confirm line, or the button on the invitation's web page). An
    address already a member, already invited, banned or over its daily automatic
    mails is reported and not mailed; exit 1 when any was not invited.

    \b
    Example:
      listserv member invite dev@lists.example.org ann@example.org "Bob <bob@example.org>"
    """
    from listserv import db, invite, roster

    state = app_state(ctx)
    with db.session(state.engine) as s:
        result = invite.invite(s, state.config, roster.get_list(s, list_address), addresses)
        s.commit()
    for a in result.sent:
        out.print(f"invited {a}")
    for a, why in result.refused():
        err.print(f"{a}: {why}; not invited")
    if len(result.sent) < len(addresses):
        raise typer.Exit(1)


def _row(member: Any, now: Any, config: Any) -> dict:
    from listserv import bounces, roster

    return {"address": member.address, "name": member.display_name,
            "role": member.role.value, "delivery": member.delivery.value,
            "moderated": member.moderated,
            "disabled_by": member.disabled_by.value if member.disabled_by else None,
            "delivery_status": roster.delivery_status(member),
            "nomail_until": member.nomail_until.date().isoformat() if member.nomail_until
            else None,
            "own_posts": member.own_posts, "skip_if_addressed": member.skip_if_addressed,
            "acknowledge": member.acknowledge,
            "bounce_score": bounces.score_now(member.bounce_score, member.last_bounce_at,
                                               now, config.bounces)}


@member_app.command("ls")
def member_ls(ctx: typer.Context, list_address: ListArg, as_json: JsonOpt = False) -> None:
    """Members with their roles and delivery.

    \b
    Example:
      listserv member ls dev@lists.example.org --json
    """
    from listserv import db, roster
    from listserv.models import utcnow

    state = app_state(ctx)
    now = utcnow()
    with db.session(state.engine) as s:
        rows = [_row(m, now, state.config)
                for m in roster.members(s, roster.get_list(s, list_address))]
    if as_json:
        return print_json(rows)
    # A line a member, as `member show` prints: a rich table of a list of 20,000 took
    # half a minute to draw (each cell measured), and the lines take no time.
    out.print("address  role  delivery  status  options  name")
    for r in rows:
        out.print(f"{r['address']}  {r['role']}  {r['delivery']}  {r['delivery_status']}  "
                  f"{_options(r) or '-'}  {r['name'] or '-'}")
    return None


@member_app.command("show")
def member_show(ctx: typer.Context, address: AddressArg, as_json: JsonOpt = False) -> None:
    """Every list ADDRESS is on, with its role, delivery, status and bounce score there.
    Exit 1 when it is on none.

    \b
    Example:
      listserv member show ann@example.org
    """
    from listserv import db, roster
    from listserv.models import utcnow

    state = app_state(ctx)
    now = utcnow()
    with db.read_session(state.engine) as s:
        rows = [{"list": mlist.address, **_row(m, now, state.config)}
                for mlist, m in roster.memberships(s, address)]
    if not rows:
        raise roster.UserError(f"{address} is on no list")
    if as_json:
        return print_json(rows)
    out.print("list  role  delivery  status  bounce score  options")
    for r in rows:
        out.print(f"{r['list']}  {r['role']}  {r['delivery']}  {r['delivery_status']}  "
                  f"{r['bounce_score']:g}  {_options(r)}")
    return None


def _options(row: dict) -> str:
    """A member's own options that differ from the defaults, as `set` spells them."""
    if row["role"] != "member":
        return ""
    changed = [f"{name}={'yes' if row[name] else 'no'}"
               for name, default in (("own_posts", True), ("skip_if_addressed", False),
                                     ("acknowledge", False)) if row[name] != default]
    return " ".join(changed) or "-"


def _read_file(file: Any) -> str:
    from listserv.roster import UserError

    try:
        return file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{file} is not UTF-8 text") from exc


@member_app.command("import")
def member_import(ctx: typer.Context, list_address: ListArg, file: FileArg,
                  welcome: Annotated[bool, typer.Option(
                      "--welcome", help="Send each new member the welcome mail.")] = False
                  ) -> None:
    """Add every address in FILE: one a line ("Name <address>" too, as Mailman 3's
    `mailman members` writes them), a CSV with an address or email column and optional
    name and delivery columns (Mailman 3's members CSV), or Google Groups' members
    export as downloaded: the nickname becomes the name, the email preference the
    delivery (Abridged: summary), and invited or pending people are left out. Exit 1
    when a line was refused; the others still go in.

    \b
    Example:
      listserv member import dev@lists.example.org members.csv --welcome
    """
    from listserv import db, member_import, roster

    state = app_state(ctx)
    found = member_import.read(_read_file(file))
    with db.session(state.engine) as s, progress() as bar:
        mlist = roster.get_list(s, list_address)
        task = bar.add_task("importing", total=len(found.entries))
        result = roster.add_members(s, mlist, found.entries,
                                    progress=lambda n: bar.advance(task, n))
        if welcome:
            _welcome(s, state.config, mlist, set(result.added))
        _tell_owners(s, state.config, mlist, "joined", result.added, "member import")
        s.commit()
    for line in found.skipped:
        err.print(f"{line}: skipped")
    for line in found.refused:
        err.print(f"{line}: refused")
    _report(result, "member")
    out.print(f"added {len(result.added)}, already members {len(result.existing)}, "
              f"invalid {len(result.invalid) + len(found.refused)}")
    if result.invalid or found.refused:
        raise typer.Exit(1)


def _welcome(s: Any, config: Any, mlist: Any, added: set[str]) -> None:
    """Queue the welcome for each member just added, in the import's transaction: the
    members and their welcomes are stored together or not at all."""
    from listserv import member_actions, roster
    from listserv.enums import Role

    for member in roster.members(s, mlist):
        if member.role is Role.MEMBER and member.address in added:
            member_actions.welcome(s, config, mlist, member.address, member.delivery)


@member_app.command("set")
def member_set(ctx: typer.Context, list_address: ListArg, address: AddressArg,
               moderated: Annotated[str | None, typer.Option(
                   "--moderated", metavar="true|false",
                   help="true: hold this address's posts for a moderator.")] = None,
               delivery: Annotated[str | None, typer.Option(
                   metavar="MODE", help="How posts arrive: regular, digest-mime, "
                   "digest-plain, summary or nomail.")] = None,
               role: Annotated[str | None, typer.Option(
                   metavar="ROLE", help="Change the address's role: member, moderator or "
                   "owner.")] = None,
               nomail_until: Annotated[str | None, typer.Option(
                   "--nomail-until", metavar="YYYY-MM-DD", help="No mail until that day "
                   "(UTC), then delivery resumes by itself; \"\" for mail again now."
               )] = None,
               own_posts: Annotated[str | None, typer.Option(
                   "--own-posts", metavar="yes|no",
                   help="yes: a copy of the member's own posts (the default).")] = None,
               skip_if_addressed: Annotated[str | None, typer.Option(
                   "--skip-if-addressed", metavar="yes|no", help="yes: no list copy of a "
                   "post whose To or Cc names the member already.")] = None,
               acknowledge: Annotated[str | None, typer.Option(
                   "--acknowledge", metavar="yes|no", help="yes: a short mail to the "
                   "member when their post went out.")] = None) -> None:
    """Change a member's moderation flag, delivery mode, role, pause or own options.

    \b
    Example:
      listserv member set dev@lists.example.org ann@example.org --delivery digest-mime
      listserv member set dev@lists.example.org ann@example.org --nomail-until 2027-01-10
      listserv member set dev@lists.example.org ann@example.org --own-posts no --acknowledge yes
    """
    from listserv import db, list_settings, roster
    from listserv.enums import DeliveryMode, Role

    mode = None if delivery is None else choice(DeliveryMode, delivery, "--delivery")
    kind = None if role is None else choice(Role, role, "--role")
    until = None if not nomail_until else day(nomail_until, "--nomail-until")
    with db.session(app_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address)
        flag = None if moderated is None else list_settings.parse_bool(moderated, "--moderated")
        changed = roster.set_member(s, mlist, address, moderated=flag, delivery=mode,
                                    role=kind)
        if nomail_until is not None:
            roster.pause(s, mlist, address, until)
        options = {name: None if text is None else list_settings.parse_bool(text, option)
                   for name, option, text in (
                       ("own_posts", "--own-posts", own_posts),
                       ("skip_if_addressed", "--skip-if-addressed", skip_if_addressed),
                       ("acknowledge", "--acknowledge", acknowledge))}
        if any(v is not None for v in options.values()):
            roster.set_options(s, mlist, address, **options)
        s.commit()
    out.print(f"{changed}: " + ", ".join(f"{k} = {v}" for k, v in (
        ("moderated", moderated), ("delivery", mode and mode.value),
        ("role", kind and kind.value), ("nomail_until", nomail_until),
        *((k, None if v is None else "yes" if v else "no") for k, v in options.items()))
        if v is not None))


@member_app.command("change-address")
def member_change_address(ctx: typer.Context, old: Annotated[str, typer.Argument(
                              metavar="OLD")], new: Annotated[str, typer.Argument(
                              metavar="NEW")]) -> None:
    """Move every role and muted thread of OLD, on every list, to NEW (what a member's
    confirmed change of address on the web does, without the mails).

    \b
    Example:
      listserv member change-address ann@old.example ann@new.example
    """
    from listserv import db, roster

    with db.session(app_state(ctx).engine) as s:
        moved = roster.change_address(s, old, new)
        s.commit()
    if not moved:
        raise roster.UserError(f"{old} is on no list")
    for mlist in moved:
        out.print(f"{mlist}: {old} is now {new}")


@member_app.command("forget")
def member_forget(ctx: typer.Context, address: AddressArg,
                  messages: Annotated[bool, typer.Option(
                      "--messages", help="Also erase everything the address posted, on "
                      "every list.")] = False,
                  anonymise: Annotated[bool, typer.Option(
                      "--anonymise", help="With --messages: keep the posts' text and take "
                      "the sender's name and address out instead of erasing.")] = False
                  ) -> None:
    """Forget an address (a request under privacy law): remove it from every list, with
    its bounce records, tokens and muted threads; nobody is mailed. With --messages,
    every post it sent is erased as `message erase` does, or with --anonymise kept
    without its From, Sender and Reply-To.

    \b
    Examples:
      listserv member forget ann@example.org
      listserv member forget ann@example.org --messages
      listserv member forget ann@example.org --messages --anonymise
    """
    from listserv import db, erasure, roster

    if anonymise and not messages:
        raise typer.BadParameter("--anonymise goes with --messages", param_hint="--anonymise")
    state = app_state(ctx)
    with db.session(state.engine) as s:
        done = erasure.forget(s, state.config, address, messages=messages,
                              anonymise_only=anonymise)
        s.commit()
    if not done.lists and not done.records and not done.messages:
        raise roster.UserError(f"{address} is on no list and left no records")
    verb = "anonymised" if anonymise else "erased"
    out.print(f"{address}: removed from {len(done.lists)} lists"
              f"{' (' + ', '.join(done.lists) + ')' if done.lists else ''}, "
              f"{done.records} records deleted"
              + (f", {done.messages} messages {verb}" if messages else ""))
