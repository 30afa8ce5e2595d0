"""The delivery worker's side of the delivery jobs: claim, renew leases, give back,
mark sent and record each attempt (outbox.py queues them).

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
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql.base import ReadOnlyColumnCollection
from sqlalchemy.sql.dml import ReturningUpdate
from sqlmodel import Session, col

from listserv.config import DeliveryConfig
from listserv.enums import DeliveryState, Lane
from listserv.models import utcnow
from listserv.outbox import PAUSED
from listserv.queue_tables import NEW_JOBS, TRIED_JOBS, Delivery, RecipientFailure
from listserv.replies import RelayError, Reply

log = logging.getLogger("listserv.deliver")

# Postfix's maximal_backoff_time is 4000 s; waiting longer between tries only delays
# mail once the smarthost is back.
MAX_BACKOFF = timedelta(hours=1)


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


_READY = _ready(_d)
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
    picked = (select(_d.id).where(*(within or kind.ahead(_d)), _READY, _SHAPED)
              .order_by(*kind.order(_d)).limit(bindparam("room"))
              .with_for_update(skip_locked=True))
    return (update(_t)
            .where(_d.id.in_(picked.scalar_subquery()), _READY)
            .values(state=DeliveryState.SENDING, worker=bindparam("worker"),
                    lease_until=bindparam("lease_until"), attempts=_d.attempts + 1)
            .returning(_d.id, _d.outgoing_id, _d.mail_from, _d.recipients, _d.attempts,
                       _d.created_at, _d.domain))


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
    to the domains in `busy` or in back-off (read once here, a handful at most: with
    none, each kind of job is claimed by one statement; see _take)."""
    now = utcnow()
    connection = session.connection()
    expired = _past_lease(connection, now)
    shaped = sorted(set(busy).union(connection.execute(PAUSED, {"now": now}).scalars()))
    rows: list[Row] = []
    for lane in Lane:
        for claims in _CLAIMS:
            if len(rows) < limit:
                rows += _take(connection, claims, limit - len(rows), {
                    "now": now, "in_lane": lane, "worker": worker,
                    "lease_until": now + lease, "shaped": shaped})
    session.commit()
    _log_takeovers(expired, [r.id for r in rows])
    return [Job(r.id, r.outgoing_id, r.mail_from, r.recipients.split("\n"), r.attempts,
                r.created_at, r.domain) for r in sorted(rows, key=lambda r: r.id)]


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


def mark_sent(session: Session, worker: str, remaining: dict[int, list[str]]) -> None:
    """Keep only the recipients still to send in each job, so a worker killed in the
    middle of a job does not send anyone their copy twice. Rows are updated in id order,
    as record_all does: two transactions that lock delivery rows in one order cannot
    deadlock (PostgreSQL detected exactly that when the orders differed). One statement
    built once, run for every job (this runs every MARK_INTERVAL while copies go out:
    an ORM update built per job cost more than the rest of the commit)."""
    session.connection().execute(_MARK, [
        {"job_id": job_id, "holder": worker, "rcpts": "\n".join(rcpts)}
        for job_id, rcpts in sorted(remaining.items())])
    session.commit()


_MARK = update(Delivery.__table__).where(
    _d.id == bindparam("job_id"), _d.worker == bindparam("holder"),
    _d.state == DeliveryState.SENDING).values(recipients=bindparam("rcpts"))


def backoff(config: DeliveryConfig, attempts: int) -> timedelta:
    seconds = config.retry_initial_seconds * 2 ** max(attempts - 1, 0)
    return min(timedelta(seconds=seconds), MAX_BACKOFF)


Attempt = tuple[Job, dict[str, Reply], RelayError | None]  # a job, its refusals, its error
# The recipients of a copy refused for good: (outgoing id, their replies).
Refusal = tuple[int, dict[str, Reply]]


def record_all(session: Session, config: DeliveryConfig, attempts: list[Attempt]
               ) -> tuple[list[DeliveryState], list[Refusal]]:
    """Write the outcomes of several attempts (senders that finish jobs at about the
    same time share a commit), in job id order (see mark_sent); the state of each, and
    the recipients refused for good, for what that does to a member (bouncing). The
    caller commits."""
    order = sorted(range(len(attempts)), key=lambda i: attempts[i][0].id)
    states: dict[int, DeliveryState] = {}
    refusals: list[Refusal] = []
    done: list[dict] = []  # nearly every outcome: one statement for a run of them
    for i in order:
        job, refused, error = attempts[i]
        if refused or error is not None:
            _mark_done(session, done)
            states[i], permanent = record(session, config, *attempts[i])
            if permanent:
                refusals.append((job.outgoing_id, permanent))
        else:
            done.append({"job_id": job.id, "done_at": utcnow()})
            states[i] = DeliveryState.DONE
    _mark_done(session, done)
    return [states[i] for i in range(len(attempts))], refusals


def _mark_done(session: Session, done: list[dict]) -> None:
    """What record writes for a job that went to everyone, for several in one statement
    (record's update is built and compiled anew for each job)."""
    if done:
        session.connection().execute(_DONE, done)
        done.clear()


_DONE = update(Delivery.__table__).where(_d.id == bindparam("job_id")).values(
    state=DeliveryState.DONE, done_at=bindparam("done_at"), worker=None, lease_until=None)


def record(session: Session, config: DeliveryConfig, job: Job, refused: dict[str, Reply],
           error: RelayError | None) -> tuple[DeliveryState, dict[str, Reply]]:
    """Write the outcome of one attempt: done, retry later (only the recipients that
    still need it), or failed for good; the recipients refused for good (kept as
    recipient failures here, counted as bounces by the caller). The caller commits."""
    now = utcnow()
    temporary, permanent = _outcome(job, refused, error)
    values: dict = {"worker": None, "lease_until": None}
    expired = now - job.created_at >= timedelta(hours=config.retry_max_hours)
    if temporary and expired:
        permanent.update({r: Reply(rep.code, f"gave up after {config.retry_max_hours} h: "
                                             f"{rep.text}") for r, rep in temporary.items()})
        values.update(state=DeliveryState.FAILED, done_at=now,
                      last_error=str(next(iter(temporary.values()))))
    elif temporary:
        values.update(state=DeliveryState.QUEUED, recipients="\n".join(temporary),
                      next_attempt_at=now + backoff(config, job.attempts),
                      last_error=str(next(iter(temporary.values()))))
    elif error is not None:
        values.update(state=DeliveryState.FAILED, done_at=now, last_error=str(error))
    else:
        values.update(state=DeliveryState.DONE, done_at=now)
    if permanent:
        session.execute(insert(RecipientFailure), [
            {"delivery_id": job.id, "address": r, "code": rep.code, "text": rep.text,
             "created_at": now} for r, rep in permanent.items()])
    session.execute(update(Delivery).where(Delivery.id == job.id).values(**values))
    return values["state"], permanent


def _outcome(job: Job, refused: dict[str, Reply], error: RelayError | None
             ) -> tuple[dict[str, Reply], dict[str, Reply]]:
    """The recipients to try again and those refused for good, each with its reply. A
    failed transaction reached nobody, so its error stands for every recipient."""
    if error is not None:
        reply = Reply(error.code or (451 if error.temporary else 554), str(error))
        everyone = dict.fromkeys(job.recipients, reply)
        return (everyone, {}) if error.temporary else ({}, everyone)
    return ({r: rep for r, rep in refused.items() if rep.temporary},
            {r: rep for r, rep in refused.items() if not rep.temporary})


def undelivered(job: Job, refused: dict[str, Reply], error: RelayError | None,
                state: DeliveryState) -> tuple[int, int]:
    """How many recipients of an attempt wait for another (deferred), and how many
    never get their copy (failed): all that were left, once the job gave up."""
    temporary, permanent = _outcome(job, refused, error)
    if state is DeliveryState.FAILED:
        return 0, len(temporary) + len(permanent)
    return len(temporary), len(permanent)
