"""The delivery queue as an admin sees it (`listserv queue`): jobs by list and state,
the oldest one waiting, and the two things an admin does to a job by hand: send it
again now, or take it out of the queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, update
from sqlmodel import Session

from listserv.address import split
from listserv.models import Delivery, DeliveryState, MailingList, Message, Outgoing, utcnow
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


def jobs(session: Session, list_address: str | None = None) -> list[Job]:
    """Every job not done, oldest first; with a list address, only that list's."""
    by_id = {m.id: m.address for m in session.scalars(select(MailingList))}
    rows = session.execute(
        select(Delivery, func.coalesce(Outgoing.list_id, Message.list_id))
        .join(Outgoing, Outgoing.id == Delivery.outgoing_id)
        .outerjoin(Message, Message.id == Outgoing.message_pk)
        .where(Delivery.state.in_(_SHOWN)).order_by(Delivery.id))
    found = []
    for d, list_id in rows:
        owner = _list_of(d.mail_from, by_id, list_id)
        if list_address is not None and owner != list_address:
            continue
        state = "deferred" if d.state is DeliveryState.QUEUED and d.attempts else d.state.value
        found.append(Job(d.id, owner, state, d.attempts, len(d.recipients.split("\n")),
                         d.created_at, d.next_attempt_at, d.last_error))
    return found


def summaries(found: list[Job]) -> list[Summary]:
    """Counts by state per list, by list address."""
    by_list: dict[str, Summary] = {}
    for job in found:
        summary = by_list.setdefault(job.list, Summary(job.list))
        summary.counts[job.state] += 1
        if job.state in _WAITING and (summary.oldest is None or job.created_at < summary.oldest):
            summary.oldest = job.created_at
    return [by_list[k] for k in sorted(by_list)]


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
    if ids is None:
        ids = list(session.scalars(select(Delivery.id).where(
            Delivery.state == DeliveryState.FAILED).order_by(Delivery.id)))
    done = [str(d.id) for d in _pick(session, ids) if d.state is DeliveryState.DONE]
    if done:
        raise UserError(f"job {', '.join(done)} was delivered already")
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
