"""`listserv queue ...`: what waits to be delivered, and sending or cancelling a job by
hand."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from listserv.cli_help import Typer
from listserv.cli_shared import JsonOpt, app_state, out, print_json

if TYPE_CHECKING:
    from datetime import datetime

    from listserv.delivery_queue import ByDomain, Job

queue_app = Typer(help="Delivery jobs waiting for the smarthost, deferred or failed.")

IdsArg = Annotated[list[int], typer.Argument(metavar="ID...")]


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min" if minutes < 2880 else f"{minutes // 1440} d"


def _ago(seconds: float) -> str:
    """Seconds while they count (chunks follow each other within a second or so)."""
    return f"{int(seconds)} s ago" if seconds < 60 else f"{_age(seconds)} ago"


@queue_app.command("ls")
def queue_ls(ctx: typer.Context, list_address: Annotated[str | None, typer.Argument(
        metavar="LIST", help="Only this list's, one line a job.")] = None,
        by_domain: Annotated[bool, typer.Option(
            "--by-domain", help="Copies waiting per destination instead (a recipient "
            "domain, or the domains that share MX hosts), with the deferrals and back-off "
            "of each.")] = False,
        as_json: JsonOpt = False) -> None:
    """Delivery jobs by state per list (queued, sending, deferred, failed) and the age
    of the oldest still to be sent, then the posts whose jobs are still being written.
    With LIST, each of its jobs too, with the ID that `queue retry` and `queue cancel`
    take and, for a job being sent, the worker (host:pid) holding it and when its lease
    runs out (once it has, any worker takes the job again). With --by-domain, per
    destination (a recipient domain; a destination in back-off names the domains that
    share its MX hosts, and the first of them): copies waiting, copies deferred,
    back-off (421 or 4.7.x from its servers) and last reply.

    \b
    Examples:
      listserv queue ls
      listserv queue ls dev@lists.example.org --json
      listserv queue ls --by-domain
    """
    from listserv import db, delivery_queue, roster
    from listserv.models import utcnow

    if by_domain:
        if list_address:
            raise roster.UserError("--by-domain counts every list's copies: give no LIST")
        return _by_domain(ctx, as_json)
    with db.read_session(app_state(ctx).engine) as s:
        mlist = roster.get_list(s, list_address) if list_address else None
        summaries = delivery_queue.summaries(s)
        expanding = delivery_queue.expansions(s)
        jobs = delivery_queue.jobs(s, mlist) if mlist else []
    address = mlist.address if mlist else None
    now = utcnow()
    lists = [{"list": x.list, **x.counts, "oldest_age_seconds": None if x.oldest is None
              else int((now - x.oldest).total_seconds())}
             for x in summaries if address is None or x.list == address]
    posts = [{"list": x.list, "message": x.message_pk, "message_id": x.message_id,
              "jobs": x.jobs,
              "age_seconds": int((now - x.created_at).total_seconds()),
              "last_chunk_seconds": int((now - x.advanced_at).total_seconds())}
             for x in expanding if address is None or x.list == address]
    if as_json:
        return print_json({"lists": lists, "expanding": posts, "jobs": [
            vars(j) | {"lease_seconds_left": None if j.lease_until is None
                       else int((j.lease_until - now).total_seconds())} for j in jobs]})
    if not lists and not posts:
        out.print("the queue is empty")
        return None
    if lists:
        out.print("list  " + "  ".join(delivery_queue.STATES) + "  oldest")
    for x in lists:
        age = "-" if x["oldest_age_seconds"] is None else _age(x["oldest_age_seconds"])
        out.print(f"{x['list'] or '(no list)'}  "
                  + "  ".join(str(x[k]) for k in delivery_queue.STATES) + f"  {age}")
    if posts:
        out.print(("\n" if lists else "") + "expanding: list  message  jobs written  age  "
                  "last chunk")
    for p in posts:
        # The jobs written so far alone looked the same whether the expansion went on
        # or had stopped (no process with the deliver role, or its database away).
        # The post by its Message-ID: the row id it was shown by before no command takes.
        out.print(f"{p['list']}  <{p['message_id']}>  {p['jobs']}  {_age(p['age_seconds'])}"
                  f"  {_ago(p['last_chunk_seconds'])}")
    if address:
        out.print("\nid  state  attempts  recipients  age  last error  held by")
        for j in jobs:
            out.print(f"{j.id}  {j.state}  {j.attempts}  {j.recipients}  "
                      f"{_age((now - j.created_at).total_seconds())}  {j.last_error or '-'}  "
                      f"{_holder(j, now)}")
    return None


def _holder(job: Job, now: datetime) -> str:
    """Who is sending a job, and whether it still may: a worker killed (kill -9) leaves
    its jobs `sending` until their lease runs out, when any worker claims them again
    (claims.py); without this they looked the same as jobs on their way."""
    if job.worker is None or job.lease_until is None:
        return "-"
    left = (job.lease_until - now).total_seconds()
    if left >= 0:
        return f"{job.worker}, lease runs out in {int(left)} s"
    return f"{job.worker}, lease ran out {_ago(-left)}, another worker will take it"


def _by_domain(ctx: typer.Context, as_json: bool) -> None:
    from listserv import db, delivery_queue
    from listserv.models import utcnow

    with db.read_session(app_state(ctx).engine) as s:
        rows = delivery_queue.by_domain(s)
    now = utcnow()
    if as_json:
        return print_json({"domains": [
            vars(r) | {"backoff_until": r.backoff_until.isoformat() if r.backoff_until
                       else None} for r in rows]})
    if not rows:
        out.print("the queue is empty")
        return None
    out.print("domain  waiting  deferred  back-off  deferrals  last reply")
    for r in rows:
        # over, the destination is still held until a job tried first takes a copy
        backoff = ("-" if r.backoff_until is None else "probing" if r.backoff_until <= now
                   else f"until {r.backoff_until:%Y-%m-%d %H:%M:%S} UTC")
        out.print(f"{_destination(r)}  {r.waiting}  {r.deferred}  {backoff}  "
                  f"{r.deferrals}  {r.last_reply or '-'}")
    return None


SHOWN_DOMAINS = 3  # of a destination's domains on its line; --json lists them all


def _destination(row: ByDomain) -> str:
    """A destination's domains, then the MX hosts they share (the first, and how many
    more): `gmail.com,googlemail.com (mx gmail-smtp-in.l.google.com +4)`."""
    shown = ",".join(d or "(unknown)" for d in row.domains[:SHOWN_DOMAINS])
    if len(row.domains) > SHOWN_DOMAINS:
        shown += f" +{len(row.domains) - SHOWN_DOMAINS} more"
    if row.mx:
        shown += f" (mx {row.mx[0]}" + (f" +{len(row.mx) - 1}" if len(row.mx) > 1 else "") + ")"
    return shown


@queue_app.command("retry")
def queue_retry(ctx: typer.Context, ids: Annotated[list[int] | None, typer.Argument(
        metavar="ID...")] = None, failed: Annotated[bool, typer.Option(
            "--failed", help="Every failed job.")] = False) -> None:
    """Send jobs again at once: failed, cancelled or deferred ones, with a fresh retry
    window. `listserv serve` sends them.

    \b
    Examples:
      listserv queue retry 17 18
      listserv queue retry --failed
    """
    from listserv import db, delivery_queue, roster

    if bool(ids) == failed:
        raise roster.UserError("give the job IDs or --failed, not both nor neither")
    with db.session(app_state(ctx).engine) as s:
        retried = delivery_queue.retry(s, None if failed else ids)
        s.commit()
    out.print(f"{len(retried)} jobs queued again" + (
        f": {' '.join(map(str, retried))}" if retried else ""))


@queue_app.command("cancel")
def queue_cancel(ctx: typer.Context, ids: IdsArg) -> None:
    """Take jobs out of the queue: they are not sent (a job being sent right now cannot
    be taken back; `queue retry` puts a cancelled one back).

    \b
    Example:
      listserv queue cancel 17
    """
    from listserv import db, delivery_queue

    with db.session(app_state(ctx).engine) as s:
        cancelled = delivery_queue.cancel(s, ids)
        s.commit()
    out.print(f"cancelled {' '.join(map(str, cancelled))}")
