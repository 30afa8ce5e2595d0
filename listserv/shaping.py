"""How fast the delivery worker of one process sends to each destination (a recipient
domain, or the MX hosts several share: mx_groups.py): at most `[delivery]
max_connections_per_domain` transactions in flight to it, at most
`max_copies_per_minute_per_domain` copies a minute, and nothing while a deferral (421,
4.7.x) holds it back. A job that has to wait is parked here, not in a sender: the
senders go on with other destinations' jobs, and the parked one goes back to the
worker's queue when its destination has room; those a deferral holds back go back to
the database instead (after the back-off, one job tries the destination: probes.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable

from listserv.claims import Job


class Shaper:
    """The destinations of the jobs this worker sends: those in flight, those parked."""

    def __init__(self, connections: int, per_minute: int, requeue: Callable[[Job], None],
                 destination_of: Callable[[str], str] = str) -> None:
        self.connections = connections
        self.seconds_per_copy = 60 / per_minute if per_minute else 0.0
        self.requeue = requeue  # puts a parked job back into the worker's queue
        self.destination_of = destination_of  # a recipient domain's destination now
        self.flying: dict[int, str] = {}  # job id -> destination, while a sender has it
        self.released: dict[int, str] = {}  # parked jobs sent back to the queue
        self.next_at: dict[str, float] = {}  # monotonic time a destination's next job may go
        self.parked: defaultdict[str, deque[Job]] = defaultdict(deque)
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def admit(self, job: Job) -> bool:
        """Whether a sender may send `job` now; if not, it is parked until it may. A
        job released from the park was given its destination's room: it goes."""
        if not job.domain:
            return True  # queued before jobs had a domain: not shaped
        dest = self.released.pop(job.id, None)
        if dest is None:
            dest = self.destination_of(job.domain)
            if not self._room(dest):
                self.parked[dest].append(job)
                return False
        self.flying[job.id] = dest
        if self.seconds_per_copy:
            self.next_at[dest] = time.monotonic() + self.seconds_per_copy * len(job.recipients)
            if self.parked.get(dest):
                self._wake_at(dest)
        return True

    def finish(self, job: Job) -> None:
        """A sender is done with `job` (sent, deferred, given up, or lost to another
        worker): room for the next of its destination."""
        dest = self.flying.pop(job.id, None) or self.released.pop(job.id, None)
        if dest is not None:
            self._release(dest)

    def hold_off(self, dest: str, seconds: float) -> list[Job]:
        """The destination deferred a copy: none of its jobs goes out for `seconds` (the
        back-off destinations.note set in the database for every worker); its jobs
        parked here, taken out, for the worker to give back: after the back-off one job
        tries the destination first, whichever worker claims it (probes.py), not every
        job held here at once."""
        until = time.monotonic() + seconds
        if until > self.next_at.get(dest, 0.0):
            self.next_at[dest] = until
        return list(self.parked.pop(dest, ()))

    def busy(self) -> list[str]:
        """The recipient domains of the parked jobs: a claim takes no more of theirs."""
        return sorted({job.domain for jobs in self.parked.values() for job in jobs})

    def drain(self) -> list[Job]:
        """Every parked job, taken out (the worker is stopping: they are given back)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        jobs = [job for parked in self.parked.values() for job in parked]
        self.parked.clear()
        return jobs

    def _going(self, dest: str) -> int:
        """The destination's transactions in flight, and those released to start one."""
        return sum(1 for jobs in (self.flying, self.released)
                   for d in jobs.values() if d == dest)

    def _room(self, dest: str) -> bool:
        """Whether a job of `dest` may start now; if only time stands in the way, a
        timer releases the parked ones when it has passed. Jobs parked before go first."""
        if self.next_at.get(dest, 0.0) > time.monotonic():
            self._wake_at(dest)
            return False
        return not self.parked.get(dest) and self._going(dest) < self.connections

    def _wake_at(self, dest: str) -> None:
        if dest not in self._timers:
            delay = max(0.0, self.next_at[dest] - time.monotonic())
            self._timers[dest] = asyncio.get_running_loop().call_later(
                delay, self._woken, dest)

    def _woken(self, dest: str) -> None:
        del self._timers[dest]
        self._release(dest)

    def _release(self, dest: str) -> None:
        """Give the destination's parked jobs back to the queue as far as it has room now
        (one at a time under a rate: each sets the time of the next)."""
        parked = self.parked.get(dest)
        while parked and self._going(dest) < self.connections:
            if self.next_at.get(dest, 0.0) > time.monotonic():
                self._wake_at(dest)
                break
            job = parked.popleft()
            self.released[job.id] = dest
            self.requeue(job)
            if self.seconds_per_copy:
                break
        if not parked:
            self.parked.pop(dest, None)
