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
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError

from listserv import supervise
from listserv.claims import renew

log = logging.getLogger("listserv.deliver")


class Leases:
    """The jobs a worker holds, their leases kept alive, and those it lost: a job whose
    lease ran out during an outage may have been taken over by another worker, and is
    then not sent here."""

    def __init__(self, worker: str, seconds: float, calls: supervise.Calls) -> None:
        self.worker = worker
        self.lease = timedelta(seconds=seconds)
        self.calls = calls
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
                kept = await self.calls.until_done(renew, self.worker, held, self.lease)
            except SQLAlchemyError:
                return  # stopping with the database away: the leases run out
            gone = (set(held) - kept) & self.held - self.lost
            if gone:
                log.warning("%d deliveries held here are no longer ours (the lease ran "
                            "out while the database was away): not sending them", len(gone))
            self.lost |= gone
