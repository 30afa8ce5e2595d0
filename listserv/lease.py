"""Leases on claimed delivery jobs, renewed while their worker holds them.

A job claimed by a worker is reserved until its lease runs out; then any worker's claim
takes it over (and logs it). Renewed every third of a lease while the worker holds the
job (queued in its memory or being sent), a lease runs out only for a worker that is
gone or cut off from the database: so the lease can be short (30 s by default), and the
members of a dead worker's jobs wait that long, not five minutes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import bindparam, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from listserv import supervise
from listserv.models import Delivery, DeliveryState, utcnow

log = logging.getLogger("listserv.deliver")


# Jobs whose lease ran out, and who held them, read by a claim before it takes them: a
# takeover is logged. (No RETURNING gives a row's old values, and SQLite's RETURNING
# cannot name an UPDATE's FROM.) Only jobs being sent are read: the few in flight.
_EXPIRED = select(col(Delivery.id), col(Delivery.worker)).where(
    col(Delivery.state) == DeliveryState.SENDING, col(Delivery.lease_until) < bindparam("now"))


def past_lease(connection: Connection, now: datetime) -> dict[int, str]:
    """The jobs whose lease ran out by `now`, and their workers: read in the claim's
    transaction, before its UPDATE."""
    return {r.id: r.worker for r in connection.execute(_EXPIRED, {"now": now})}


def log_takeovers(expired: dict[int, str], claimed: list[int]) -> None:
    """One line per worker whose jobs a claim took over: a worker died, or was cut off
    from the database for longer than a lease."""
    for previous, count in Counter(expired[i] for i in claimed if i in expired).items():
        log.warning("took over %d deliveries from worker %s, whose lease ran out",
                    count, previous)


def renew(session: Session, worker: str, ids: list[int], lease: timedelta) -> set[int]:
    """Extend the lease of the jobs `worker` still holds among `ids`; those it still
    holds (a job recorded meanwhile, or taken over after an outage, is not among them)."""
    kept = session.scalars(
        update(Delivery).where(col(Delivery.id).in_(ids), col(Delivery.worker) == worker,
                               col(Delivery.state) == DeliveryState.SENDING)
        .values(lease_until=utcnow() + lease).returning(col(Delivery.id))).all()
    session.commit()
    return {job_id for job_id in kept if job_id is not None}


class Leases:
    """The jobs a worker holds, their leases kept alive, and those it lost: a job whose
    lease ran out during an outage may have been taken over by another worker, and is
    then not sent here."""

    def __init__(self, worker: str, seconds: float,
                 call: Callable[..., Awaitable[set[int]]], outage: supervise.Outage) -> None:
        self.worker = worker
        self.lease = timedelta(seconds=seconds)
        self.call = call  # runs a database function off the event loop
        self.outage = outage
        self.held: set[int] = set()
        self.lost: set[int] = set()

    def hold(self, job_id: int) -> None:
        self.held.add(job_id)

    def drop(self, job_id: int) -> None:
        """The job is recorded or given back: no lease of ours to keep."""
        self.held.discard(job_id)
        self.lost.discard(job_id)

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew the leases of the jobs held, every third of a lease, until `stop`."""
        while not stop.is_set():
            await supervise.pause(self.lease.total_seconds() / 3, stop)
            held = sorted(self.held)
            if not held or stop.is_set():
                continue
            try:
                kept = await supervise.retrying(
                    self.outage, partial(self.call, renew, self.worker, held, self.lease), stop)
            except SQLAlchemyError:
                return  # stopping with the database away: the leases run out
            gone = (set(held) - kept) & self.held - self.lost
            if gone:
                log.warning("%d deliveries held here are no longer ours (the lease ran "
                            "out while the database was away): not sending them", len(gone))
            self.lost |= gone
