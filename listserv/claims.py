"""The delivery worker's side of the delivery jobs: claim, renew leases, give back
(outbox.py queues them; outcomes.py records what became of them).

Jobs are claimed with a conditional UPDATE (and SKIP LOCKED on PostgreSQL), so any
number of workers on any number of machines share one database without sending a job
twice.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    TextClause,
    bindparam,
    case,
    false,
    func,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.dml import ReturningUpdate
from sqlmodel import Session, col

from listserv.enums import DeliveryState, Lane
from listserv.models import utcnow
from listserv.outbox import PAUSED
from listserv.queue_tables import NEW_JOBS, TRIED_JOBS, Delivery

log = logging.getLogger("listserv.deliver")



@dataclass
class Job:
    id: int
    outgoing_id: int
    mail_from: str
    recipients: list[str]
    attempts: int
    created_at: datetime
    domain: str = ""  # the recipients' (see Delivery.domain)


def worker_name() -> str:
    """host:pid, which recover_dead_workers reads back."""
    return f"{socket.gethostname()}:{os.getpid()}"


_t = Delivery.__table__
_d = _t.c


def _ready(c: ReadOnlyColumnCollection) -> ColumnElement[bool]:
    """Whether a job (columns `c`) may be claimed: queued and its time come, or claimed
    and its lease run out."""
    return case((c.state == DeliveryState.QUEUED, c.next_attempt_at <= bindparam("now")),
                (c.state == DeliveryState.SENDING, c.lease_until < bindparam("now")),
                else_=false())


# probes.py takes a probe exactly as a claim takes a job: these are shared.
READY = _ready(_d)
TAKE = {"state": DeliveryState.SENDING, "worker": bindparam("worker"),
        "lease_until": bindparam("lease_until"), "attempts": _d.attempts + 1}
JOB_COLUMNS = (_d.id, _d.outgoing_id, _d.mail_from, _d.recipients, _d.attempts,
               _d.created_at, _d.domain)
# A job to a domain in back-off (destinations.py) waits for its end, and one to a domain
# this worker holds jobs for that wait already (`busy`) is left to other workers: the
# claim reads both sets of domains (`shaped`) first.
_SHAPED = _d.domain.not_in(bindparam("shaped", expanding=True))
# How many of a kind's jobs, per job wanted, a claim that leaves some domains alone reads
# in order before it looks for where the other domains' jobs start.
WINDOW = 4


@dataclass(frozen=True)
class _Kind:
    """New or tried jobs: the partial index's WHERE, word for word (SQLite uses a
    partial index only for a query that says so), the order they are claimed in (the
    first of those columns, then id), and what that index tells of their readiness."""

    where: TextClause
    first: str  # the column the claim orders by before id
    due: bool  # only those whose next attempt's time has come (a range of the index)
    start: object  # lower than any value of `first`

    def ahead(self, c: ReadOnlyColumnCollection) -> tuple[ColumnElement[bool], ...]:
        """The kind's jobs in the lane being claimed, those the index can tell are due."""
        due = (c.next_attempt_at <= bindparam("now"),) if self.due else ()
        return (self.where, c.lane == bindparam("in_lane"), *due)

    def order(self, c: ReadOnlyColumnCollection) -> tuple[ColumnElement, ColumnElement]:
        return c[self.first], c.id


def _claim_of(kind: _Kind, *within: ColumnElement[bool]) -> ReturningUpdate:
    """One claim statement, built once, for the jobs of one `kind` in one lane (`in_lane`),
    taken in the kind's order, among those `within` says. The WHERE repeats the
    readiness test of the subquery, which stops two claimers taking the same job where
    there are no row locks (SQLite); on PostgreSQL the subquery locks the rows it picks
    and skips those others hold.

    Each kind is read down an index of its own, whose WHERE is the kind's: a claim reads
    only jobs it may take, whatever waits for a later time. The readiness test is a CASE,
    which no index serves: written as an OR, SQLite (which has no statistics) read it
    down ix_delivery_ready and went through every ready job, 1.1 s a claim among
    1,000,000 queued (bench/claim.py)."""
    picked = (select(_d.id).where(*(within or kind.ahead(_d)), READY, _SHAPED)
              .order_by(*kind.order(_d)).limit(bindparam("room"))
              .with_for_update(skip_locked=True))
    return (update(_t)
            .where(_d.id.in_(picked.scalar_subquery()), READY)
            .values(TAKE).returning(*JOB_COLUMNS))


def _window_of(kind: _Kind) -> ReturningUpdate:
    """The claim among the first `window` jobs of the kind in order from (`from_key`,
    `from_id`) on, ready or not: with domains left alone, a claim reads no further
    than that, so that thousands of their jobs first in order are not read one by one.
    Read as two ranges of the index, the rest of the jobs at `from_key` from `from_id`
    on and those after it: SQLite seeks a row value such as (turn, id) >= (?, ?) by its
    first column only, and every job in the lane a person waits in has turn 0. (Not the
    kind's WHERE again around them: SQLite would then read the index in order until it
    met the ids, through all of those jobs.)"""
    key, job_id = kind.order(_d)
    # typed: a datetime left to the driver is not written as the column's values are
    at = bindparam("from_key", type_=key.type)
    # (not its due range too: SQLite would read that range rather than one key's jobs)
    same = (select(job_id, key).where(*kind.ahead(_d)[:2], key == at,
                                      job_id >= bindparam("from_id", type_=job_id.type))
            .order_by(job_id).limit(bindparam("window")).subquery())
    after = (select(job_id, key).where(*kind.ahead(_d), key > at)
             .order_by(key, job_id).limit(bindparam("window")).subquery())
    both = union_all(select(same), select(after)).subquery()
    first = select(both.c.id).order_by(both.c[key.name], both.c.id).limit(bindparam("window"))
    return _claim_of(kind, _d.id.in_(first.scalar_subquery()))


def _floor_of(kind: _Kind) -> Select:
    """Where in the kind's order the first ready job of a domain not left alone is: the
    smallest of each such domain's first, each one step down the kind's index by domain
    (ix_delivery_*_domain), the domains found a step each from the last (a loose index
    scan: neither database skips through an index by itself). It costs a step per domain
    with jobs of the kind in the lane, however many jobs the domains left alone have."""
    step, head = _t.alias("step"), _t.alias("head")
    domains = (select(func.min(_d.domain).label("domain")).where(*kind.ahead(_d)[:2])
               .cte("domains", recursive=True))
    after = (select(func.min(step.c.domain)).where(
        *kind.ahead(step.c)[:2], step.c.domain > domains.c.domain).scalar_subquery())
    domains = domains.union_all(select(after).where(domains.c.domain.is_not(None)))
    first = (select(head.c.id).where(*kind.ahead(head.c), head.c.domain == domains.c.domain,
                                     _ready(head.c))
             .order_by(*kind.order(head.c)).limit(1).scalar_subquery())
    heads = (select(first.label("id"))
             .where(domains.c.domain.not_in(bindparam("shaped", expanding=True))).subquery())
    # each head's key by its id (joined instead, PostgreSQL read the whole table when it
    # guessed more heads than there are)
    key = (select(_d[kind.first]).where(_d.id == heads.c.id).scalar_subquery()
           .label("key"))
    return (select(key, heads.c.id).where(heads.c.id.is_not(None))
            .order_by(key, heads.c.id).limit(1))


@dataclass(frozen=True)
class _Claims:
    """A kind's statements: the claim as it reads when no domain is left alone, and
    when some are, the claim of a window and where to start the next one."""

    whole: ReturningUpdate
    window: ReturningUpdate
    floor: Select
    start: object


def _claims(kind: _Kind) -> _Claims:
    return _Claims(_claim_of(kind), _window_of(kind), _floor_of(kind), kind.start)


# In each lane, first the tried jobs whose next attempt is due (deferred ones, and
# claimed ones whose lease ran out, which were due when claimed), oldest due first, down
# ix_delivery_retry from its start to `now`; then the new ones by turn, then id, down
# ix_delivery_claim (all due: a job is queued for now).
_CLAIMS = (_claims(_Kind(TRIED_JOBS, "next_attempt_at", True, datetime(1970, 1, 1, tzinfo=UTC))),
           _claims(_Kind(NEW_JOBS, "turn", False, -1)))


def _take(connection: Connection, claims: _Claims, wanted: int, values: dict) -> list[Row]:
    """Up to `wanted` jobs of one kind in one lane. With no domain left alone, one
    statement. With some, window after window: the first from the start of the order,
    each next from the first ready job of another domain, so that any number of jobs
    of the domains left alone before it cost one step down an index
    (bench/claim.py --paused)."""
    values = values | {"room": wanted}
    if not values["shaped"]:
        return connection.execute(claims.whole, values).all()
    rows: list[Row] = []
    start: tuple = (claims.start, 0)
    while True:
        got = connection.execute(claims.window, values | {
            "room": wanted - len(rows), "window": WINDOW * (wanted - len(rows)),
            "from_key": start[0], "from_id": start[1]}).all()
        rows += got
        if len(rows) >= wanted:
            return rows
        floor = connection.execute(claims.floor, values).first()
        if floor is None or (not got and tuple(floor) == start):
            return rows  # none left, or the next is held by another claim
        start = tuple(floor)


# Jobs whose lease ran out, and who held them, read by a claim before it takes them: a
# takeover is logged. (No RETURNING gives a row's old values, and SQLite's RETURNING
# cannot name an UPDATE's FROM.) Only jobs being sent are read: the few in flight.
_EXPIRED = select(col(Delivery.id), col(Delivery.worker)).where(
    col(Delivery.state) == DeliveryState.SENDING, col(Delivery.lease_until) < bindparam("now"))


def _past_lease(connection: Connection, now: datetime) -> dict[int, str]:
    """The jobs whose lease ran out by `now`, and their workers: read in the claim's
    transaction, before its UPDATE."""
    return {r.id: r.worker for r in connection.execute(_EXPIRED, {"now": now})}


def _log_takeovers(expired: dict[int, str], claimed: list[int]) -> None:
    """One line per worker whose jobs a claim took over: a worker died, or was cut off
    from the database for longer than a lease."""
    for previous, count in Counter(expired[i] for i in claimed if i in expired).items():
        log.warning("took over %d deliveries from worker %s, whose lease ran out",
                    count, previous)


def claim(session: Session, worker: str, limit: int, lease: timedelta,
          busy: Sequence[str] = ()) -> list[Job]:
    """Reserve up to `limit` ready jobs for this worker and commit the reservation; none
    to the domains in `busy` or held after a deferral (outbox.PAUSED: in back-off, or
    tried by a probe; read once here, a handful at most: with none, each kind of job is
    claimed by one statement; see _take)."""
    now = utcnow()
    connection = session.connection()
    expired = _past_lease(connection, now)
    shaped = sorted(set(busy).union(connection.execute(PAUSED).scalars()))
    rows: list[Row] = []
    for lane in Lane:
        for claims in _CLAIMS:
            if len(rows) < limit:
                rows += _take(connection, claims, limit - len(rows), {
                    "now": now, "in_lane": lane, "worker": worker,
                    "lease_until": now + lease, "shaped": shaped})
    session.commit()
    _log_takeovers(expired, [r.id for r in rows])
    return [job_of(r) for r in sorted(rows, key=lambda r: r.id)]


def job_of(row: Row) -> Job:
    """A job as claimed, from its JOB_COLUMNS."""
    return Job(row.id, row.outgoing_id, row.mail_from, row.recipients.split("\n"),
               row.attempts, row.created_at, row.domain)


def recover_dead_workers(session: Session, host: str) -> int:
    """After a crash or kill -9 on this host, give back the jobs its dead processes held,
    so a restart resumes them at once instead of waiting for their lease to run out."""
    workers = set(session.scalars(select(Delivery.worker).where(
        Delivery.state == DeliveryState.SENDING, Delivery.worker.like(f"{host}:%")).distinct()))
    dead = [w for w in workers if not _alive(int(w.rsplit(":", 1)[1]))]
    if not dead:
        return 0
    result = session.execute(
        update(Delivery).where(Delivery.state == DeliveryState.SENDING,
                               Delivery.worker.in_(dead))
        .values(state=DeliveryState.QUEUED, worker=None, lease_until=None))
    session.commit()
    return result.rowcount


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release(session: Session, worker: str, unsent: list[int]) -> int:
    """Give back the jobs a stopping worker still holds. The unsent ones were never
    tried, so their attempt does not count; a cut-off transaction's attempt does."""
    if unsent:
        session.execute(update(Delivery).where(
            Delivery.id.in_(unsent), Delivery.worker == worker,
            Delivery.state == DeliveryState.SENDING).values(attempts=Delivery.attempts - 1))
    result = session.execute(update(Delivery).where(
        Delivery.worker == worker, Delivery.state == DeliveryState.SENDING)
        .values(state=DeliveryState.QUEUED, worker=None, lease_until=None))
    session.commit()
    return result.rowcount


def renew(session: Session, worker: str, ids: list[int], lease: timedelta) -> set[int]:
    """Extend the lease of the jobs `worker` still holds among `ids`; those it still
    holds (a job recorded meanwhile, or taken over after an outage, is not among them).
    The rows are locked in id order first, as mark_sent and record_all lock them: an
    UPDATE of several rows locks them in the order its plan reads them, which can
    deadlock with those shared commits on PostgreSQL (test_outage once saw a deadlock
    among this process's writers under load)."""
    held = (col(Delivery.id).in_(ids), col(Delivery.worker) == worker,
            col(Delivery.state) == DeliveryState.SENDING)
    session.execute(select(col(Delivery.id)).where(*held).order_by(col(Delivery.id))
                    .with_for_update())
    kept = session.scalars(update(Delivery).where(*held).values(
        lease_until=utcnow() + lease).returning(col(Delivery.id))).all()
    session.commit()
    return {job_id for job_id in kept if job_id is not None}
