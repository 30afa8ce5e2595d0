"""The delivery worker: claims jobs from the outbox, sends them through `relay`, and
records what happened.

Its parts: the claim loop and the queue of held jobs (here), the senders, one per
connection to the smarthost (here), the prepared copies (copies), and the sent-marks
and outcomes written back in shared commits (recorder). A job is recorded right after
the smarthost's 250, before its sender takes the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from listserv import claims, fanout, outbox, probes, resolver, signing, supervise, tokens
from listserv.claims import Job
from listserv.config import Config
from listserv.copies import Copies, Personal, Prepared
from listserv.lease import Leases
from listserv.mx_groups import MxGroups
from listserv.recorder import Progress, Recorder
from listserv.relay import Relay
from listserv.replies import ConnectionLost, RelayError, Reply
from listserv.shaping import Shaper
from listserv.smarthosts import Smarthosts

log = logging.getLogger("listserv.deliver")

# How long a stopping worker lets its transactions under way finish: less than the
# seconds `serve` allows for the whole shutdown.
STOP_GRACE = 5.0


class Room:
    """How many more jobs the worker's queue takes: reserved by the receiver of the
    same process (in its writer thread) for the jobs it hands over (outbox.Handoff),
    taken by the claim loop for what it claimed, given back as senders take jobs.
    Closed when the worker stops, so that nothing more is handed to it.

    A claim does not reserve while it runs: then every group written meanwhile found
    no room, its jobs were left for a claim, which woke the claim loop again, and so
    on. Instead a claim asks for what is free and takes its jobs after, which may go
    over the size by what a group reserved meanwhile."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._lock = threading.Lock()

    @property
    def free(self) -> int:
        return max(0, self.size - self.used)

    def reserve(self, wanted: int) -> int:
        with self._lock:
            granted = min(wanted, self.free)
            self.used += granted
            return granted

    def take(self, count: int) -> None:
        with self._lock:
            self.used += count

    def release(self, count: int) -> None:
        with self._lock:
            self.used -= count

    def close(self) -> None:
        with self._lock:
            self.size = 0




async def _either(wanted: asyncio.Event, stop: asyncio.Event, poll: float) -> None:
    """Wait for `wanted` or `stop`, `poll` seconds at most."""
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(wanted.wait())]
    _, pending = await asyncio.wait(waiters, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()


def _ended(task: asyncio.Task) -> str:
    """Why a task ended, on one line."""
    exc = None if task.cancelled() else task.exception()
    return supervise.reason(exc) if exc is not None else "ended"


def _expand(session: Session, batch: int, chunk: int, handoff: outbox.Handoff
            ) -> int | None:
    """fanout.expand, with nothing left handed when its transaction fails (it is tried
    again, with the same handoff)."""
    try:
        return fanout.expand(session, batch, chunk, handoff)
    except BaseException:
        handoff.abandon()
        raise


class Worker:
    """Claims jobs and keeps `concurrency` connections to the smarthost busy."""

    def __init__(self, engine: Engine, config: Config, name: str | None = None,
                 idle_close: float = 5.0) -> None:
        self.config = config  # the whole config: `[web] secret` signs the members' links
        self.name = name or claims.worker_name()
        self.idle_close = idle_close
        self.wakeup = asyncio.Event()
        self.expansions = asyncio.Event()
        # None tells a sender to stop. The room bounds the jobs in it.
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self.room = Room(config.delivery.concurrency * 8)
        self._behind = False  # the last claim filled the room: more may be ready
        # Every database call waits out an outage (logged once for the worker); once
        # `run`'s stop is set, a failure is given up instead.
        self.calls = supervise.Calls(engine, "delivery")
        # The expansion's own: its outage is logged once for it, and its transactions
        # do not wait for the threads of the claims and the sent-marks.
        self.expansion_calls = supervise.Calls(engine, "expansion", threads=1)
        self.copies = Copies(self.calls, signing.Signer.from_config(config.dkim),
                             config.web.manage_link_hours)
        self.progress = Progress(self.calls, self.name)
        self.groups = MxGroups(resolver.for_config(config.dns)
                               if config.delivery.group_by_mx else None)
        self.shaper = Shaper(config.delivery.max_connections_per_domain,
                             config.delivery.max_copies_per_minute_per_domain, self._requeue,
                             self.groups.of)
        self.given_back: list[int] = []  # jobs to give back with the next claim, unsent
        self.recorder = Recorder(self.calls, config, self._hold_off, self.groups)
        self.smarthosts = Smarthosts(config.delivery.smarthosts())
        self.leases = Leases(self.name, config.delivery.lease_seconds, self.calls)

    def wake(self) -> None:
        """Called by the receiver after it queued jobs: claim now, not at the next poll."""
        self.wakeup.set()

    def expand_soon(self) -> None:
        """Called by the receiver after it stored posts: expand now, not at the next poll."""
        self.expansions.set()

    def handoff(self) -> outbox.Handoff:
        """For an expansion's transaction in this process: the jobs it queues that this
        worker has room for are claimed for it there, and sent once it commits (take)."""
        return outbox.Handoff(self.name, timedelta(seconds=self.config.delivery.lease_seconds),
                              self.room.reserve, self.room.release)

    def take(self, handoff: outbox.Handoff) -> None:
        """The jobs of a committed handoff: into the queue (their room is reserved),
        their copies prepared from the bytes the receiver had; a claim for the rest."""
        self.copies.add(handoff.copies)
        for row in handoff.jobs:
            self._enqueue(Job(row["id"], row["outgoing_id"], row["mail_from"],
                              row["recipients"].split("\n"), row["attempts"],
                              row["created_at"], row["domain"]))
        if handoff.queued:
            self.wake()

    def _server_secret(self, session: Session) -> str:
        secret = tokens.server_secret(session, self.config)
        session.commit()  # a secret generated here must be the one the web app reads
        return secret

    async def run(self, stop: asyncio.Event, poll: float = 1.0) -> None:
        """Claim and send until `stop` is set, then let the transactions under way finish
        and give back every job not sent, so no job waits for its lease to run out."""
        self.calls.stop = self.expansion_calls.stop = stop
        self.copies.secret = await self.calls.until_done(self._server_secret)
        recovered = await self.calls.until_done(claims.recover_dead_workers,
                                                socket.gethostname())
        if recovered:
            log.info("requeued %d deliveries left by stopped workers", recovered)
        senders = [asyncio.create_task(Sender(self).run())
                   for _ in range(self.config.delivery.concurrency)]
        renewing = asyncio.create_task(self.leases.keep(stop))
        expanding = asyncio.create_task(self._expand_until(stop, poll))
        claiming = asyncio.create_task(self._claim_until(stop, poll))
        try:
            await asyncio.wait([claiming, expanding], return_when=asyncio.FIRST_COMPLETED)
            if not claiming.done() and not stop.is_set():
                # Posts would stay accepted and never sent while the claims went on, with
                # nothing to say so: the worker, and with it the process, stops with the
                # reason (supervise.watch), for its supervisor to restart it. Its claims
                # under way are taken back at that start (recover_dead_workers).
                raise supervise.LoopDied(f"expansion stopped: {_ended(expanding)}")
            await claiming
        finally:
            claiming.cancel()
            await asyncio.gather(claiming, return_exceptions=True)
            renewing.cancel()
            expanding.cancel()
            await asyncio.gather(expanding, return_exceptions=True)
            self.room.close()
            unsent = [*self.given_back,
                      *(job.id for job in [*self._drain(), *self.shaper.drain()])]
            await self._stop_senders(senders)
            await self.recorder.flush()
            await self.progress.flush()
            await self._give_back(unsent)
            self.groups.close()
            self.calls.close()
            self.expansion_calls.close()

    async def _give_back(self, unsent: list[int]) -> None:
        try:
            released = await self.calls.write(claims.release, self.name, unsent)
        except SQLAlchemyError as exc:
            log.warning("could not give back the deliveries held here (%s): they resume "
                        "when their lease runs out, or at the next start on this host",
                        supervise.reason(exc))
            return
        if released:
            log.info("gave back %d deliveries not sent", released)

    async def _claim_until(self, stop: asyncio.Event, poll: float) -> None:
        lease = timedelta(seconds=self.config.delivery.lease_seconds)
        while not stop.is_set():
            # Cleared before claiming, so a wake() during the claim is not lost.
            self.wakeup.clear()
            room = self.room.free
            unsent, self.given_back = self.given_back, []
            try:
                jobs = (await self.calls.until_done(probes.claim, self.name, room, lease,
                                                    self.shaper.busy(), unsent)
                        if room or unsent else [])
            except SQLAlchemyError:
                self.given_back += unsent  # counted as unsent when the worker stops
                return  # stopping with the database away
            self.room.take(len(jobs))
            for job in jobs:
                self._enqueue(job)
            # Without the copies their senders read each one (the jobs are held already).
            with contextlib.suppress(SQLAlchemyError):
                await self.copies.load(jobs)
            # A full claim (or no room for one) may have left ready jobs behind: claim
            # again now, or when senders have made room (not for every job they take:
            # jobs handed over by the receiver need no claim).
            self._behind = len(jobs) == room
            if self._behind and room:
                continue
            await _either(self.wakeup, stop, poll)

    async def _expand_until(self, stop: asyncio.Event, poll: float) -> None:
        """Turn stored posts into delivery jobs, a chunk a transaction (fanout.expand),
        while there are any; then wait for the receiver, or poll (posts approved or
        received by another process)."""
        batch = self.config.delivery.max_recipients_per_transaction
        chunk = self.config.delivery.expansion_chunk
        while not stop.is_set():
            self.expansions.clear()
            handoff = self.handoff()
            try:
                jobs = await self.expansion_calls.until_done(_expand, batch, chunk, handoff)
            except SQLAlchemyError:
                return  # stopping with the database away
            self.take(handoff)
            if jobs is None:
                await _either(self.expansions, stop, poll)

    def _enqueue(self, job: Job) -> None:
        self.groups.of(job.domain)  # its MX asked now if need be, answered by its turn
        self.copies.pin(job.outgoing_id)
        self.leases.hold(job.id)
        self.queue.put_nowait(job)

    async def next_job(self) -> Job | None:
        """The next job a sender should send; None to stop. Waits `idle_close` at most
        (TimeoutError: the sender may close its idle connection)."""
        while True:
            job = await asyncio.wait_for(self.queue.get(), self.idle_close)
            if job is None:
                return None
            self.room.release(1)
            if self._behind and self.room.used <= self.room.size // 2:
                self.wakeup.set()  # room for more: the claimer should not wait its poll
            if job.id in self.leases.lost:
                self.done_with(job)  # another worker may be sending it
            elif self.shaper.admit(job):
                return job
            # else parked until its domain has room (shaping.Shaper), still held here

    def _requeue(self, job: Job) -> None:
        """A parked job whose domain has room now: back into the queue, in the room."""
        self.room.take(1)
        self.queue.put_nowait(job)

    def _hold_off(self, dest: str, seconds: float) -> None:
        """A destination deferred a copy: the jobs of it this worker holds, parked or
        queued, are given back unsent with the next claim (which comes at once), so that
        after the back-off one job tries it first (probes.py). A job of it claimed after
        this is that one: the shaper parks it while `seconds` last here."""
        held = self.shaper.hold_off(dest, seconds)
        kept: list[Job | None] = []
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if job is not None and job.domain and self.groups.of(job.domain) == dest:
                self.room.release(1)
                held.append(job)
            else:
                kept.append(job)  # None among them: a sender told to stop
        for job in kept:
            self.queue.put_nowait(job)
        for job in held:
            self.done_with(job)
            self.given_back.append(job.id)
        if held:
            self.wakeup.set()

    def done_with(self, job: Job) -> None:
        self.shaper.finish(job)
        self.leases.drop(job.id)
        self.copies.unpin(job.outgoing_id)

    def _drain(self) -> list[Job]:
        jobs = []
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if job is not None:
                jobs.append(job)
        return jobs

    async def _stop_senders(self, senders: list[asyncio.Task]) -> None:
        """Tell each sender to stop after its current transaction; cut off any that
        the smarthost keeps longer than STOP_GRACE (their jobs are given back)."""
        for _ in senders:
            self.queue.put_nowait(None)
        _, late = await asyncio.wait(senders, timeout=STOP_GRACE)
        for task in late:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)


class Sender:
    """One connection to the smarthost: the worker's jobs sent one after the other,
    each recorded before the next; closed when idle for the worker's `idle_close`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.relay: Relay | None = None

    async def run(self) -> None:
        try:
            while True:
                try:
                    job = await self.worker.next_job()
                except TimeoutError:
                    if self.relay is not None:
                        await self.relay.close()
                        self.relay = None
                    continue
                if job is None:
                    return
                try:
                    await self._send(job)
                finally:
                    self.worker.done_with(job)
        finally:
            if self.relay is not None:
                await asyncio.shield(self.relay.close())

    async def _send(self, job: Job) -> None:
        """One attempt at one job, and its outcome recorded."""
        refused: dict[str, Reply] = {}
        error: RelayError | None = None
        if self.relay is not None and (self.relay.broken
                                       or self.worker.smarthosts.worn(self.relay)):
            # Closed by the smarthost (a 421), or the next connection goes where the
            # weights say.
            await self._close()
        try:
            data = await self.worker.copies.get(job.outgoing_id)
            try:
                refused = await self._transmit(job, data)
            except ConnectionLost:
                await self._close()
                refused = await self._transmit(job, data)
        except RelayError as exc:
            error = exc
            if self.relay is not None and self.relay.broken:
                await self._close()
        except Exception:
            # Stopping with the database away, or a copy that cannot be prepared: the
            # job stays claimed and is retried when its lease runs out (it is no longer
            # renewed); this sender goes on with the next one.
            log.exception("delivery job=%d could not be sent", job.id)
            return
        await self.worker.recorder.record(job, refused, error)

    async def _close(self) -> None:
        if self.relay is not None:
            relay, self.relay = self.relay, None
            await relay.close()

    async def _transmit(self, job: Job, data: Prepared) -> dict[str, Reply]:
        """A personal copy goes in one transaction per recipient, anything else in one
        transaction for the whole job (on the open connection, or a new one)."""
        if self.relay is None:
            self.relay = await self.worker.smarthosts.connect()
        if not isinstance(data, Personal):
            return await self.relay.send(job.mail_from, job.recipients, data)
        progress = self.worker.progress
        try:
            return await self.relay.send_each(data.mail_from(job), job.recipients,
                                              data.prepared_for,
                                              lambda rcpt: progress.mark(job, rcpt))
        finally:
            progress.forget(job)
