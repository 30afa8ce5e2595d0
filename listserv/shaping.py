"""How fast the delivery worker of one process sends to each destination domain: at
most `[delivery] max_connections_per_domain` transactions in flight to a domain, at most
`max_copies_per_minute_per_domain` copies a minute, and nothing while a deferral (421,
4.7.x) holds it back. A job that has to wait is parked here, not in a sender: the
senders go on with other domains' jobs, and the parked one goes back to the worker's
queue when its domain has room.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable

from listserv.claims import Job


class Shaper:
    """The domains of the jobs this worker sends: those in flight, those parked."""

    def __init__(self, connections: int, per_minute: int,
                 requeue: Callable[[Job], None]) -> None:
        self.connections = connections
        self.seconds_per_copy = 60 / per_minute if per_minute else 0.0
        self.requeue = requeue  # puts a parked job back into the worker's queue
        self.flying: dict[int, str] = {}  # job id -> domain, while a sender has it
        self.released: dict[int, str] = {}  # parked jobs sent back to the queue
        self.next_at: dict[str, float] = {}  # monotonic time a domain's next job may go
        self.parked: defaultdict[str, deque[Job]] = defaultdict(deque)
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def admit(self, job: Job) -> bool:
        """Whether a sender may send `job` now; if not, it is parked until it may. A
        job released from the park was given its domain's room: it goes."""
        domain = job.domain
        if not domain:
            return True  # queued before jobs had a domain: not shaped
        if self.released.pop(job.id, None) is None and not self._room(domain):
            self.parked[domain].append(job)
            return False
        self.flying[job.id] = domain
        if self.seconds_per_copy:
            self.next_at[domain] = time.monotonic() + self.seconds_per_copy * len(job.recipients)
            if self.parked.get(domain):
                self._wake_at(domain)
        return True

    def finish(self, job: Job) -> None:
        """A sender is done with `job` (sent, deferred, given up, or lost to another
        worker): room for the next of its domain."""
        domain = self.flying.pop(job.id, None) or self.released.pop(job.id, None)
        if domain is not None:
            self._release(domain)

    def hold_off(self, domain: str, seconds: float) -> None:
        """The domain deferred a copy: none of its jobs goes out for `seconds` (the
        back-off destinations.note set in the database for every worker)."""
        until = time.monotonic() + seconds
        if until > self.next_at.get(domain, 0.0):
            self.next_at[domain] = until

    def busy(self) -> list[str]:
        """The domains with parked jobs: a claim takes no more of theirs."""
        return [domain for domain, jobs in self.parked.items() if jobs]

    def drain(self) -> list[Job]:
        """Every parked job, taken out (the worker is stopping: they are given back)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        jobs = [job for parked in self.parked.values() for job in parked]
        self.parked.clear()
        return jobs

    def _going(self, domain: str) -> int:
        """The domain's transactions in flight, and those released to start one."""
        return sum(1 for jobs in (self.flying, self.released)
                   for d in jobs.values() if d == domain)

    def _room(self, domain: str) -> bool:
        """Whether a job of `domain` may start now; if only time stands in the way, a
        timer releases the parked ones when it has passed. Jobs parked before go first."""
        if self.next_at.get(domain, 0.0) > time.monotonic():
            self._wake_at(domain)
            return False
        return not self.parked.get(domain) and self._going(domain) < self.connections

    def _wake_at(self, domain: str) -> None:
        if domain not in self._timers:
            delay = max(0.0, self.next_at[domain] - time.monotonic())
            self._timers[domain] = asyncio.get_running_loop().call_later(
                delay, self._woken, domain)

    def _woken(self, domain: str) -> None:
        del self._timers[domain]
        self._release(domain)

    def _release(self, domain: str) -> None:
        """Give the domain's parked jobs back to the queue as far as it has room now
        (one at a time under a rate: each sets the time of the next)."""
        parked = self.parked.get(domain)
        while parked and self._going(domain) < self.connections:
            if self.next_at.get(domain, 0.0) > time.monotonic():
                self._wake_at(domain)
                break
            job = parked.popleft()
            self.released[job.id] = domain
            self.requeue(job)
            if self.seconds_per_copy:
                break
        if not parked:
            self.parked.pop(domain, None)
