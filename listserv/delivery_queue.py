"""The delivery queue as an admin sees it (`listserv queue`): jobs by list and state,
the oldest one waiting, the posts still being expanded into jobs, and the two things an
admin does to a job by hand: send it again now, or take it out of the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, Subquery, and_, case, func, or_, select, update
from sqlmodel import Session

from listserv.address import split
from listserv.enums import DeliveryState
from listserv.models import MailingList, Message, utcnow
from listserv.mx_groups import Group, hosts
from listserv.queue_tables import Delivery, Destination, DestinationDomain, Expansion, Outgoing
from listserv.roster import UserError

# What `queue ls` counts; "deferred" is a queued job that already failed for the moment.
STATES = ("queued", "sending", "deferred", "failed")
_WAITING = ("queued", "sending", "deferred")
_SHOWN = [DeliveryState.QUEUED, DeliveryState.SENDING, DeliveryState.FAILED]


@dataclass
class Job:
    id: int
    list: str  # the list address, or "" for mail of no list
    state: str  # one of STATES
    attempts: int
    recipients: int
    created_at: datetime
    next_attempt_at: datetime
    last_error: str
    # While being sent: the "host:pid" that claimed it and the end of its lease. A
    # worker killed keeps both, and an operator must tell its jobs from live ones.
    worker: str | None = None
    lease_until: datetime | None = None


@dataclass
class Summary:
    list: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATES, 0))
    oldest: datetime | None = None  # created_at of the oldest job still to be sent


def _list_of(mail_from: str, by_id: dict[int, str], list_id: int | None) -> str:
    """A job's list: its copy's, its post's, or for a notice the list whose bounce
    address sends it (LIST-bounces@)."""
    if list_id is not None:
        return by_id.get(list_id, "")
    local, domain = split(mail_from)
    return f"{local.removesuffix('-bounces')}@{domain}" if local.endswith("-bounces") else ""


def shown_state() -> ColumnElement[str]:
    """A job's state the way `queue ls` and /metrics both name it, so that an operator
    reading one sees the other's numbers. The states are spelled out so that both
    databases compare the same strings."""
    queued = Delivery.state == DeliveryState.QUEUED
    return case((and_(queued, Delivery.attempts > 0), "deferred"),
                *((Delivery.state == s, s.value) for s in DeliveryState
                  if s is not DeliveryState.QUEUED), else_="queued")


def _unfinished() -> Subquery:
    """Each job not done with its list id (the copy's, else its post's; None for a
    notice), the mail_from that names a notice's list, and its state as `queue ls` shows
    it."""
    list_id = func.coalesce(Outgoing.list_id, Message.list_id)
    return (select(Delivery.id, Delivery.created_at, list_id.label("list_id"),
                   case((list_id.is_(None), Delivery.mail_from), else_="").label("notice_from"),
                   shown_state().label("state"))
            .join(Outgoing, Outgoing.id == Delivery.outgoing_id)
            .outerjoin(Message, Message.id == Outgoing.message_pk)
            .where(Delivery.state.in_(_SHOWN)).subquery())


def summaries(session: Session) -> list[Summary]:
    """Counts by state per list, by list address, counted by the database: a queue
    backed up behind a dead smarthost holds 10^5 jobs or more, and loading each as an
    object took seconds. Jobs are grouped by list and state, notices by their sender."""
    by_id = {m.id: m.address for m in session.scalars(select(MailingList))}
    jobs = _unfinished()
    oldest = func.min(case((jobs.c.state.in_(_WAITING), jobs.c.created_at)))
    rows = session.execute(
        select(jobs.c.list_id, jobs.c.notice_from, jobs.c.state, func.count(), oldest)
        .group_by(jobs.c.list_id, jobs.c.notice_from, jobs.c.state))
    by_list: dict[str, Summary] = {}
    for list_id, notice_from, state, count, created in rows:
        owner = _list_of(notice_from, by_id, list_id)
        summary = by_list.setdefault(owner, Summary(owner))
        summary.counts[state] += count
        if created is not None and (summary.oldest is None or created < summary.oldest):
            summary.oldest = created
    return [by_list[k] for k in sorted(by_list)]


@dataclass
class Expanding:
    """A post stored and answered whose members are still being given their jobs."""

    list: str
    message_pk: int | None
    message_id: str | None  # what the operator knows the post by (`message erase` takes it)
    jobs: int  # written so far
    created_at: datetime
    advanced_at: datetime  # its last chunk: long ago, no worker is expanding it


def expansions(session: Session) -> list[Expanding]:
    """The posts still being expanded into jobs (fanout.expand), oldest first."""
    rows = session.execute(
        select(MailingList.address, Outgoing.message_pk, Message.message_id, Expansion.jobs,
               Expansion.created_at, Expansion.advanced_at)
        .join(MailingList, MailingList.id == Expansion.list_id)
        .join(Outgoing, Outgoing.id == Expansion.outgoing_id)
        .outerjoin(Message, Message.id == Outgoing.message_pk).order_by(Expansion.id))
    return [Expanding(*row) for row in rows]


def jobs(session: Session, mlist: MailingList) -> list[Job]:
    """Every job of one list not done, oldest first: its copies and its notices."""
    local, domain = split(mlist.address)
    unfinished = _unfinished()
    rows = session.execute(
        select(Delivery, unfinished.c.state).join(unfinished, unfinished.c.id == Delivery.id)
        .where(or_(unfinished.c.list_id == mlist.id,
                   unfinished.c.notice_from == f"{local}-bounces@{domain}"))
        .order_by(Delivery.id))
    return [Job(d.id, mlist.address, state, d.attempts, len(d.recipients.split("\n")),
                d.created_at, d.next_attempt_at, d.last_error,
                *((d.worker, d.lease_until) if state == "sending" else ()))
            for d, state in rows]


@dataclass
class ByDomain:
    """One destination as `queue ls --by-domain` shows it: a recipient domain, or the
    MX hosts of the domains it groups while it is in back-off (mx_groups.py)."""

    destination: str  # its name: the domain ("" for jobs queued before jobs had one)
    domains: list[str] = field(default_factory=list)  # the recipient domains it groups
    mx: list[str] = field(default_factory=list)  # the MX hosts it is named after, if so
    waiting: int = 0  # copies (recipients) not sent yet: queued, being sent or deferred
    deferred: int = 0  # of those, copies already tried and deferred
    backoff_until: datetime | None = None  # no job of it is claimed before this
    deferrals: int = 0  # back-offs in a row (421, 4.7.x)
    last_reply: str = ""


# A job's copies: its recipients, one a line, counted without reading them out.
_COPIES = (func.length(Delivery.recipients)
           - func.length(func.replace(Delivery.recipients, "\n", "")) + 1)


def by_domain(session: Session) -> list[ByDomain]:
    """Copies waiting and deferred per destination, counted per recipient domain by the
    database (the domain index serves it): a destination in back-off with the domains
    it groups, each other domain on its own; most copies waiting first."""
    deferred = and_(Delivery.state == DeliveryState.QUEUED, Delivery.attempts > 0)
    rows = session.execute(
        select(Delivery.domain, func.sum(_COPIES), func.sum(case((deferred, _COPIES), else_=0)))
        .where(Delivery.state.in_([DeliveryState.QUEUED, DeliveryState.SENDING]))
        .group_by(Delivery.domain))
    counts = {domain: (int(waiting), int(late)) for domain, waiting, late in rows}
    found: dict[str, ByDomain] = {}
    for d, domain in session.execute(select(Destination, DestinationDomain.domain).join(
            DestinationDomain, DestinationDomain.destination == Destination.name)
            .order_by(DestinationDomain.domain)):
        shown = found.setdefault(d.name, ByDomain(d.name, [], [], 0, 0, d.backoff_until,
                                                  d.deferrals, d.last_reply))
        shown.domains.append(domain)
        waiting, late = counts.pop(domain, (0, 0))
        shown.waiting, shown.deferred = shown.waiting + waiting, shown.deferred + late
    for shown in found.values():
        shown.mx = hosts(Group(shown.destination, tuple(shown.domains)))
    for domain, (waiting, late) in counts.items():
        found.setdefault(domain, ByDomain(domain, [domain], [], waiting, late))
    return sorted(found.values(), key=lambda x: (-x.waiting, x.destination))


def _pick(session: Session, ids: list[int]) -> list[Delivery]:
    rows = {d.id: d for d in session.scalars(select(Delivery).where(Delivery.id.in_(ids)))}
    missing = [str(i) for i in ids if i not in rows]
    if missing:
        raise UserError(f"no delivery job {', '.join(missing)}")
    sending = [str(i) for i in ids if rows[i].state is DeliveryState.SENDING]
    if sending:
        raise UserError(f"job {', '.join(sending)} is being sent now; try again in a minute")
    return [rows[i] for i in ids]


def retry(session: Session, ids: list[int] | None) -> list[int]:
    """Send these jobs (None: every failed one) at the next claim, with a fresh retry
    window: a job that gave up after retry_max_hours would otherwise give up again at
    its first temporary failure."""
    # A copy emptied by erasure.py carried an erased message: nothing to send again.
    emptied = select(Delivery.id).join(Outgoing, Outgoing.id == Delivery.outgoing_id).where(
        func.length(Outgoing.data) == 0)
    if ids is None:
        ids = list(session.scalars(select(Delivery.id).where(
            Delivery.state == DeliveryState.FAILED, Delivery.id.not_in(emptied))
            .order_by(Delivery.id)))
    done = [str(d.id) for d in _pick(session, ids) if d.state is DeliveryState.DONE]
    if done:
        raise UserError(f"job {', '.join(done)} was delivered already")
    gone = [str(i) for i in session.scalars(emptied.where(Delivery.id.in_(ids)))]
    if gone:
        raise UserError(f"job {', '.join(gone)} carried a message erased since")
    now = utcnow()
    if ids:
        session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(
            state=DeliveryState.QUEUED, attempts=0, next_attempt_at=now, created_at=now,
            done_at=None, worker=None, lease_until=None))
    return ids


def cancel(session: Session, ids: list[int]) -> list[int]:
    """Take jobs out of the queue for good; they stay listed as cancelled, and `retry`
    puts one back."""
    finished = [str(d.id) for d in _pick(session, ids)
                if d.state in (DeliveryState.DONE, DeliveryState.CANCELLED)]
    if finished:
        raise UserError(f"job {', '.join(finished)} is not in the queue any more")
    session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(
        state=DeliveryState.CANCELLED, done_at=utcnow(), worker=None, lease_until=None))
    return ids
