"""`listserv bounce ...`: what the delivery reports say, one bounce or a list's recent
ones, and per member where bounces add up."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import FileArg, JsonOpt, ListArg, app_state, err, out, print_json

if TYPE_CHECKING:
    from listserv.bounces import Row

bounce_app = Typer(help="Delivery reports (bounces).")


@bounce_app.command("parse")
def bounce_parse(file: FileArg, as_json: JsonOpt = False) -> None:
    """The failed recipients of one bounce as a list would see them: address, RFC 3463
    status, class (mailbox, policy, transient, unknown) and the server's words.

    \b
    Example:
      listserv bounce parse bounce.eml
    """
    from rich.table import Table

    from listserv import dsn, roster

    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise roster.UserError(f"cannot read {file}: {exc.strerror}") from exc
    report = dsn.parse_bounce(raw)
    rows = [{"address": f.address, "status": f.status, "class": f.bounce_class.value,
             "diagnostic": f.diagnostic} for f in report.failures]
    if report.complaint:
        # A spam complaint is not a failure; say so where it cannot spoil --json.
        c = report.complaint
        (err if as_json else out).print(f"spam complaint ({c.feedback_type or 'unspecified'}) "
                                        f"from {c.address}: not a delivery failure")
    if as_json:
        return print_json(rows)
    if not rows:
        if not report.complaint:
            out.print("no failed recipients found")
        return None
    table = Table("address", "status", "class", "diagnostic")
    for r in rows:
        table.add_row(r["address"], r["status"], r["class"], r["diagnostic"])
    out.print(table)
    return None


def _by_member(rows: list[Row]) -> list[dict]:
    """One entry a member from bounces newest first: the newest says the last class."""
    members: dict[str, dict] = {}
    for r in rows:
        entry = members.setdefault(r.member, {
            "member": r.member, "bounces": 0, "score": r.score, "last_class": r.bounce_class,
            "last_time": r.time, "state": r.state})
        entry["bounces"] += 1
    return list(members.values())


def _print_bounces(rows: list[Row]) -> None:
    # One line a bounce, never a wrapped table cell: diagnostics are long, and an
    # admin greps this for an address.
    out.print("time  member  class  status  delivery score  diagnostic")
    for r in rows:
        kind = f"{r.bounce_class} ({r.sender_domain})" if r.sender_domain else r.bounce_class
        score = "" if r.score is None else f" score {r.score:g}"
        out.print(f"{r.time:%Y-%m-%d %H:%M}  {r.member}  {kind}  {r.status or '-'}  "
                  f"{r.state}{score}  {r.diagnostic}")


def _print_members(entries: list[dict]) -> None:
    out.print("member  bounces  score  last class  last bounce  delivery")
    for e in entries:
        score = "-" if e["score"] is None else f"{e['score']:g}"
        out.print(f"{e['member']}  {e['bounces']}  {score}  {e['last_class']}  "
                  f"{e['last_time']:%Y-%m-%d %H:%M}  {e['state']}")


@bounce_app.command("ls")
def bounce_ls(ctx: typer.Context, list_address: ListArg,
              days: Annotated[int | None, typer.Option(
                  min=1, max=36_500, metavar="DAYS",
                  help="How far back; default: as long as bounces are kept.")] = None,
              by_member: Annotated[bool, typer.Option(
                  "--by-member", help="One line a member: bounces, score, last class and "
                  "delivery status.")] = False,
              as_json: JsonOpt = False) -> None:
    """Recent bounces, newest first: member, class, status and the member's score and
    delivery status now; refusals for policy name the domain of the post's author.

    \b
    Examples:
      listserv bounce ls dev@lists.example.org --days 7
      listserv bounce ls dev@lists.example.org --by-member
    """
    from datetime import timedelta

    from listserv import bounces, db, roster
    from listserv.models import utcnow

    state = app_state(ctx)
    days = days or bounces.HISTORY_DAYS
    with db.session(state.engine) as s:
        mlist = roster.get_list(s, list_address)
        rows = bounces.recent(s, state.config, mlist, days=days)
        policy = bounces.policy_by_domain(s, mlist.id, utcnow() - timedelta(days=days))
    if as_json:
        return print_json(_by_member(rows) if by_member else [
            {"time": r.time, "member": r.member, "class": r.bounce_class, "status": r.status,
             "diagnostic": r.diagnostic, "sender_domain": r.sender_domain,
             "counted": r.counted, "score": r.score, "state": r.state} for r in rows])
    if not rows:
        out.print(f"no bounces in the last {days} days")
        return None
    if by_member:
        _print_members(_by_member(rows))
    else:
        _print_bounces(rows)
    for domain, count in policy:
        out.print(f"refused for policy, posts from {domain}: {count}")
    return None
