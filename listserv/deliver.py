"""The delivery worker: claim jobs from the database, send them, record what happened.

Jobs are claimed with a conditional UPDATE (and SKIP LOCKED on PostgreSQL), so any
number of workers on any number of machines can share one database without sending
a job twice. A job is marked done in its own commit right after the smarthost's 250.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import logging
import os
import re
import socket
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from listserv import bouncing, compose, db, metrics, signing, store, supervise, tokens
from listserv.address import ListAddresses
from listserv.config import Config, DeliveryConfig
from listserv.lease import Leases, log_takeovers, past_lease
from listserv.models import (
    Delivery,
    DeliveryState,
    MailingList,
    Outgoing,
    RecipientFailure,
    Verp,
    utcnow,
)
from listserv.relay import ConnectionLost, Relay, RelayError, Reply, prepare, stuff
from listserv.smarthost import Smarthost

log = logging.getLogger("listserv.deliver")

# Postfix's maximal_backoff_time is 4000 s; waiting longer between tries only delays
# mail once the smarthost is back.
MAX_BACKOFF = timedelta(hours=1)

# Copies kept after their last queued job went: the next claim may bring more of them.
SENT_COPIES_KEPT = 8

# How long a stopping worker lets its transactions under way finish: less than the
# seconds `serve` allows for the whole shutdown.
STOP_GRACE = 5.0


@dataclass
class Job:
    id: int
    outgoing_id: int
    mail_from: str
    recipients: list[str]
    attempts: int
    created_at: datetime


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_d = Delivery.__table__.c
# Ready jobs are queued ones whose time has come, or claimed ones whose lease ran out.
_READY = or_(and_(_d.state == DeliveryState.QUEUED, _d.next_attempt_at <= bindparam("now")),
             and_(_d.state == DeliveryState.SENDING, _d.lease_until < bindparam("now")))
# One statement, built once: the WHERE repeats the readiness test of the subquery, which
# stops two claimers taking the same job where there are no row locks (SQLite); on
# PostgreSQL the subquery locks the rows it picks and skips those others hold.
_CLAIM = (update(Delivery.__table__)
          .where(_d.id.in_(select(_d.id).where(_READY).order_by(_d.id)
                           .limit(bindparam("room")).with_for_update(skip_locked=True)
                           .scalar_subquery()), _READY)
          .values(state=DeliveryState.SENDING, worker=bindparam("worker"),
                  lease_until=bindparam("lease_until"), attempts=_d.attempts + 1)
          .returning(_d.id, _d.outgoing_id, _d.mail_from, _d.recipients, _d.attempts,
                     _d.created_at))


def claim(session: Session, worker: str, limit: int, lease: timedelta) -> list[Job]:
    """Reserve up to `limit` ready jobs for this worker and commit the reservation."""
    now = utcnow()
    connection = session.connection()
    expired = past_lease(connection, now)
    rows = connection.execute(_CLAIM, {
        "now": now, "room": limit, "worker": worker, "lease_until": now + lease}).all()
    session.commit()
    log_takeovers(expired, [r.id for r in rows])
    return [Job(r.id, r.outgoing_id, r.mail_from, r.recipients.split("\n"), r.attempts,
                r.created_at) for r in sorted(rows, key=lambda r: r.id)]


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


def backoff(config: DeliveryConfig, attempts: int) -> timedelta:
    seconds = config.retry_initial_seconds * 2 ** max(attempts - 1, 0)
    return min(timedelta(seconds=seconds), MAX_BACKOFF)


Attempt = tuple[Job, dict[str, Reply], RelayError | None]  # a job, its refusals, its error


def record_all(session: Session, config: DeliveryConfig, attempts: list[Attempt],
               server: Config) -> list[DeliveryState]:
    """Write the outcomes of several attempts in one commit (senders that finish jobs
    at about the same time share it), in job id order (see mark_sent). `server` is the
    whole config, for what a refusal does to a member (`[bounces]`)."""
    order = sorted(range(len(attempts)), key=lambda i: attempts[i][0].id)
    states: dict[int, DeliveryState] = {}
    done: list[dict] = []  # nearly every outcome: one statement for a run of them
    for i in order:
        job, refused, error = attempts[i]
        if refused or error is not None:
            _mark_done(session, done)
            states[i] = record(session, config, *attempts[i], server)
        else:
            done.append({"job_id": job.id, "done_at": utcnow()})
            states[i] = DeliveryState.DONE
    _mark_done(session, done)
    session.commit()
    return [states[i] for i in range(len(attempts))]


def _mark_done(session: Session, done: list[dict]) -> None:
    """What record writes for a job that went to everyone, for several in one statement
    (record's update is built and compiled anew for each job)."""
    if done:
        session.connection().execute(_DONE, done)
        done.clear()


_DONE = update(Delivery.__table__).where(_d.id == bindparam("job_id")).values(
    state=DeliveryState.DONE, done_at=bindparam("done_at"), worker=None, lease_until=None)


def record(session: Session, config: DeliveryConfig, job: Job, refused: dict[str, Reply],
           error: RelayError | None, server: Config) -> DeliveryState:
    """Write the outcome of one attempt: done, retry later (only the recipients that
    still need it), or failed for good, a recipient refused for good counted as a
    bounce. The caller commits."""
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
        bouncing.refused(session, server, job.outgoing_id, permanent, now)
    session.execute(update(Delivery).where(Delivery.id == job.id).values(**values))
    return values["state"]


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


def _undelivered(job: Job, refused: dict[str, Reply], error: RelayError | None,
                 state: DeliveryState) -> tuple[int, int]:
    """How many recipients of an attempt wait for another (deferred), and how many
    never get their copy (failed): all that were left, once the job gave up."""
    temporary, permanent = _outcome(job, refused, error)
    if state is DeliveryState.FAILED:
        return 0, len(temporary) + len(permanent)
    return len(temporary), len(permanent)


def mark_sent(session: Session, worker: str, remaining: dict[int, list[str]]) -> None:
    """Keep only the recipients still to send in each job, so a worker killed in the
    middle of a job does not send anyone their copy twice. Rows are updated in id order,
    as record_all does: two transactions that lock delivery rows in one order cannot
    deadlock (PostgreSQL detected exactly that when the orders differed)."""
    for job_id, rcpts in sorted(remaining.items()):
        session.execute(update(Delivery).where(
            Delivery.id == job_id, Delivery.worker == worker,
            Delivery.state == DeliveryState.SENDING).values(recipients="\n".join(rcpts)))
    session.commit()


# How long sent-marks gather before their shared commit; a kill -9 may resend the
# copies of this window (and no more), as it may between any 250 and its commit.
MARK_INTERVAL = 0.02


class Progress:
    """Recipients of personal copies marked sent as the smarthost takes them, before
    the next copy goes out. The senders share commits (a group commit), so a mark
    costs a share of one commit instead of a commit of its own."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.sent: dict[int, tuple[Job, set[str]]] = {}
        self.dirty: set[int] = set()
        self.writing: asyncio.Task | None = None

    def mark(self, job: Job, rcpt: str) -> None:
        """Note `rcpt` as sent; a shared commit writes it within MARK_INTERVAL while the
        next copies go out, so a kill -9 can resend only the copies of that window.
        The last recipient is left to `record`, which follows at once: the job's state
        changes in one place only."""
        sent = self.sent.setdefault(job.id, (job, set()))[1]
        sent.add(rcpt)
        if len(sent) == len(job.recipients):
            return
        self.dirty.add(job.id)
        if self.writing is None:
            self.writing = asyncio.create_task(self._write_all())

    async def _write_all(self) -> None:
        try:
            while self.dirty:
                # Gather the marks of a few milliseconds into one commit: a commit per
                # copy would cost more than sending it.
                await asyncio.sleep(MARK_INTERVAL)
                remaining = {job.id: [r for r in job.recipients if r not in sent]
                             for job, sent in (self.sent[i] for i in self.dirty
                                               if i in self.sent)
                             if len(sent) < len(job.recipients)}
                self.dirty.clear()
                # Kept through an outage, and written when the database is back.
                await self.worker._until_done(mark_sent, self.worker.name, remaining)
        except SQLAlchemyError:
            # Stopping with the database away: unrecorded marks only risk a resend of
            # those copies, as a kill would.
            log.exception("could not record recipients as sent")
        finally:
            self.writing = None

    async def flush(self) -> None:
        """Wait for marks being written (on stop, before jobs are given back)."""
        while self.writing is not None:
            await asyncio.shield(self.writing)

    def forget(self, job: Job) -> None:
        """The job's outcome is being recorded: its marks are of no more use."""
        self.sent.pop(job.id, None)
        self.dirty.discard(job.id)


class Personal:
    """A list copy with slots; each recipient's own links (signed tokens) are filled in
    as their transaction goes out, and with VERP their own envelope sender.

    The copy is cut and dot-stuffed once, when loaded: without DKIM, a recipient's
    bytes are two signatures joined with bytes prepared for everyone."""

    def __init__(self, copy: compose.Copy, secret: str, list_id: int,
                 message_pk: int | None, verp: ListAddresses | None = None,
                 signer: signing.Signer | None = None, manage_hours: int = 24) -> None:
        self.copy = copy
        self.secret = secret
        self.list_id = list_id
        self.message_pk = message_pk
        self.signer = signer
        self.verp = verp  # the list's addresses when its copies go out with VERP
        self.pieces = _stuffed_pieces(copy)
        self.manage_hours = manage_hours if copy.links_manage() else 0

    def mail_from(self, job: Job) -> Callable[[str], str]:
        """Each recipient's envelope sender: a bounce to it names the recipient."""
        if self.verp is None:
            return lambda rcpt: job.mail_from
        return self.verp.verp

    def _links(self, rcpt: str) -> tuple[str, str, str]:
        unsubscribe = tokens.unsubscribe_link(self.secret, self.list_id, rcpt)
        mute = (tokens.mute_link(self.secret, self.list_id, rcpt, self.message_pk)
                if self.message_pk is not None else "")
        manage = (tokens.manage_link(self.secret, rcpt, self.manage_hours)
                  if self.manage_hours else "")
        return unsubscribe, mute, manage

    def copy_for(self, rcpt: str) -> bytes:
        """The message one recipient gets: their own links filled in, then signed."""
        data = self.copy.personal(*self._links(rcpt))
        return self.signer.sign(data) if self.signer is not None else data

    def prepared_for(self, rcpt: str) -> bytes:
        """The dot-stuffed bytes for one recipient, end-of-data line included."""
        if self.signer is not None:
            return prepare(self.copy_for(rcpt))
        links = self._links(rcpt)
        return b"".join(p if isinstance(p, bytes) else p.fill(*links) for p in self.pieces)


@dataclass(frozen=True)
class _Line:
    """A line of a slot that holds a member's token: the only bytes of a copy encoded
    and dot-stuffed for each recipient (a quoted-printable line may break anywhere in
    the token, and a soft break can put a "." at the start of a line)."""

    text: str
    charset: str
    qp: bool
    line_start: bool

    def fill(self, unsubscribe: str, mute: str, manage: str) -> bytes:
        raw = compose.fill_links(self.text, unsubscribe, mute, manage).encode(self.charset)
        return stuff(compose.crlf(binascii.b2a_qp(raw) if self.qp else raw),
                     line_start=self.line_start)


@dataclass(frozen=True)
class _Whole:
    """A slot filled whole for each recipient: base64 cannot be cut at lines."""

    slot: compose.Slot
    line_start: bool

    def fill(self, unsubscribe: str, mute: str, manage: str) -> bytes:
        return stuff(self.slot.fill(unsubscribe, mute, manage), line_start=self.line_start)


Piece = bytes | _Line | _Whole


def _slot_pieces(slot: compose.Slot, line_start: bool) -> list[Piece]:
    """A slot as its lines: those without a token encoded and stuffed once (as
    compose.Slot.fill encodes them: line by line), the others left for each recipient."""
    if slot.encoding not in ("7bit", "8bit", "binary", "quoted-printable"):
        return [_Whole(slot, line_start)]
    qp = slot.encoding == "quoted-printable"
    pieces: list[Piece] = []
    for index, line in enumerate(re.findall(r"[^\n]*\n|[^\n]+$", slot.text)):
        first = line_start or index > 0
        if compose.UNSUBSCRIBE in line or compose.MUTE in line or compose.MANAGE in line:
            pieces.append(_Line(line, slot.charset, qp, first))
        else:
            raw = line.encode(slot.charset)
            pieces.append(stuff(compose.crlf(binascii.b2a_qp(raw) if qp else raw),
                                line_start=first))
    return pieces


def _stuffed_pieces(copy: compose.Copy) -> list[Piece]:
    """The copy cut at its tokens' lines, dot-stuffed, with the end-of-data line. The
    shared bytes begin lines (they open the copy or follow a slot, and fills end
    lines); a slot begins one when the bytes before it end one."""
    pieces: list[Piece] = []
    chunks = list(copy.chunks())
    for index, (chunk, slot) in enumerate(chunks):
        if index == len(chunks) - 1 and chunk and not chunk.endswith(b"\r\n"):
            chunk += b"\r\n"
        pieces.append(stuff(chunk))
        if slot is not None:
            pieces += _slot_pieces(slot, not chunk or chunk.endswith(b"\n"))
    pieces.append(b".\r\n")
    merged: list[Piece] = []
    for piece in pieces:  # one bytes object between two recipient lines
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


def _copies(session: Session, outgoing_ids: list[int]) -> dict[int, store.CopyOf]:
    rows = session.execute(
        select(Outgoing.id, Outgoing.data, Outgoing.slots, Outgoing.list_id,
               Outgoing.message_pk, MailingList.address, MailingList.verp)
        .outerjoin(MailingList, MailingList.id == Outgoing.list_id)
        .where(Outgoing.id.in_(outgoing_ids)))
    return {r.id: store.CopyOf(r.data, r.slots, r.list_id, r.message_pk,
                               r.address if r.verp is Verp.ON else None) for r in rows}


class Room:
    """How many more jobs the worker's queue takes: reserved by the receiver of the
    same process (in its writer thread) for the jobs it hands over (store.Handoff),
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


class Worker:
    """Claims jobs and keeps `concurrency` connections to the smarthost busy."""

    def __init__(self, engine: Engine, config: DeliveryConfig, name: str | None = None,
                 idle_close: float = 5.0, *, server_config: Config | None = None) -> None:
        self.engine = engine
        self.config = config
        # The whole config, for `[web] secret` that signs the members' links.
        self.server_config = server_config or Config()
        self._secret = ""  # [web] secret, for the members' links: read when run starts
        self.signer = signing.Signer.from_config(self.server_config.dkim)
        self.name = name or worker_name()
        self.idle_close = idle_close
        self.wakeup = asyncio.Event()
        # None tells a sender to stop. The room bounds the jobs in it.
        self.queue: asyncio.Queue[Job | None] = asyncio.Queue()
        self.room = Room(config.concurrency * 8)
        self._behind = False  # the last claim filled the room: more may be ready
        # The prepared copies: those of the jobs queued or being sent (counted in
        # _using), and a few more that were sent last. An LRU of the copies alone threw
        # out the copies of the jobs next in line, FIFO being its worst case.
        self._data: OrderedDict[int, bytes | Personal] = OrderedDict()
        self._using: Counter[int] = Counter()
        self.progress = Progress(self)
        self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="delivery-db")
        self._outcomes: list[Attempt] = []
        self._written: list[asyncio.Future[None]] = []  # one per outcome waiting
        self._recording: asyncio.Task | None = None
        self.sent = 0  # recipients handed to the smarthost, for logs and benchmarks
        self.smarthost = Smarthost(config.smarthost_host, config.smarthost_port)
        # Every database call waits out an outage (logged once for the worker); once
        # `_stop` is set, a failure is given up instead.
        self.outage = supervise.Outage("delivery")
        self._stop = asyncio.Event()
        self.leases = Leases(self.name, config.lease_seconds, self._db, self.outage)

    def wake(self) -> None:
        """Called by the receiver after it queued jobs: claim now, not at the next poll."""
        self.wakeup.set()

    def handoff(self) -> store.Handoff:
        """For a receiving transaction of this process: the jobs it queues that this
        worker has room for are claimed for it there, and sent once it commits (take)."""
        return store.Handoff(self.name, timedelta(seconds=self.config.lease_seconds),
                             self.room.reserve, self.room.release)

    def take(self, handoff: store.Handoff) -> None:
        """The jobs of a committed handoff: into the queue (their room is reserved),
        their copies prepared from the bytes the receiver had; a claim for the rest."""
        for outgoing_id, stored in handoff.copies.items():
            if outgoing_id not in self._data:
                self._remember(outgoing_id, self._prepare(stored))
        for row in handoff.jobs:
            self._enqueue(Job(row["id"], row["outgoing_id"], row["mail_from"],
                              row["recipients"].split("\n"), row["attempts"],
                              row["created_at"]))
        if handoff.queued:
            self.wake()

    def _session_call(self, fn, *args):  # type: ignore[no-untyped-def]
        with db.session(self.engine) as session:
            return fn(session, *args)

    def _read_call(self, fn, *args):  # type: ignore[no-untyped-def]
        with db.read_session(self.engine) as session:
            return fn(session, *args)

    async def _db(self, fn, *args):  # type: ignore[no-untyped-def]
        # Threads of its own: in the loop's default pool, bookkeeping queued behind the
        # receiver's work of hundreds of clients, and deliveries stalled under load.
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, self._session_call, fn, *args)

    async def _until_done(self, fn, *args):  # type: ignore[no-untyped-def]
        """_db, through any outage of the database (see supervise.retrying)."""
        return await supervise.retrying(self.outage, lambda: self._db(fn, *args), self._stop)

    async def _read(self, fn, *args):  # type: ignore[no-untyped-def]
        # A read: it needs no turn at the write lock (a receiver under load holds it
        # most of the time).
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, self._read_call, fn, *args)

    async def _prepared(self, outgoing_id: int) -> bytes | Personal:
        """The dot-stuffed copy, read once (through an outage) and kept while jobs of
        that copy are sent."""
        if outgoing_id not in self._data:
            self._remember(outgoing_id, await supervise.retrying(
                self.outage, lambda: self._read(self._load, outgoing_id), self._stop))
        self._data.move_to_end(outgoing_id)
        return self._data[outgoing_id]

    async def _load_missing(self, jobs: list[Job]) -> None:
        """The copies of claimed jobs, read in one query (with a backlog, each job of a
        claim is often a post of its own)."""
        missing = {job.outgoing_id for job in jobs} - set(self._data)
        if missing:
            found = await self._read(_copies, sorted(missing))
            for outgoing_id, stored in found.items():
                self._remember(outgoing_id, self._prepare(stored))

    def _remember(self, outgoing_id: int, data: bytes | Personal) -> None:
        self._data[outgoing_id] = data
        self._trim()

    def _trim(self) -> None:
        while len(self._data) - len(self._using) > SENT_COPIES_KEPT:
            oldest = next(i for i in self._data if i not in self._using)
            del self._data[oldest]

    def _enqueue(self, job: Job) -> None:
        self._using[job.outgoing_id] += 1
        self.leases.hold(job.id)
        self.queue.put_nowait(job)

    def _done_with(self, job: Job) -> None:
        self.leases.drop(job.id)
        self._using[job.outgoing_id] -= 1
        if not self._using[job.outgoing_id]:
            del self._using[job.outgoing_id]
            self._trim()

    def _server_secret(self, session: Session) -> str:
        secret = tokens.server_secret(session, self.server_config)
        session.commit()  # a secret generated here must be the one the web app reads
        return secret

    def _load(self, session: Session, outgoing_id: int) -> bytes | Personal:
        return self._prepare(_copies(session, [outgoing_id])[outgoing_id])

    def _prepare(self, stored: store.CopyOf) -> bytes | Personal:
        if not stored.slots:
            return prepare(self.signer.sign(stored.data) if self.signer else stored.data)
        verp = ListAddresses(stored.verp) if stored.verp else None
        return Personal(compose.Copy.load(stored.data, stored.slots), self._secret,
                        stored.list_id or 0, stored.message_pk, verp, self.signer,
                        self.server_config.web.manage_link_hours)

    async def run(self, stop: asyncio.Event, poll: float = 1.0) -> None:
        """Claim and send until `stop` is set, then let the transactions under way finish
        and give back every job not sent, so no job waits for its lease to run out."""
        self._stop = stop
        self._secret = await self._until_done(self._server_secret)
        recovered = await self._until_done(recover_dead_workers, socket.gethostname())
        if recovered:
            log.info("requeued %d deliveries left by stopped workers", recovered)
        senders = [asyncio.create_task(self._sender()) for _ in range(self.config.concurrency)]
        renewing = asyncio.create_task(self.leases.keep(stop))
        try:
            await self._claim_until(stop, poll)
        finally:
            renewing.cancel()
            self.room.close()
            unsent = [job.id for job in self._drain()]
            await self._stop_senders(senders)
            while self._recording is not None:  # outcomes being written
                await asyncio.shield(self._recording)
            await self.progress.flush()
            await self._give_back(unsent)
            self._threads.shutdown(wait=False)

    async def _give_back(self, unsent: list[int]) -> None:
        try:
            released = await self._db(release, self.name, unsent)
        except SQLAlchemyError as exc:
            log.warning("could not give back the deliveries held here (%s): they resume "
                        "when their lease runs out, or at the next start on this host",
                        supervise.reason(exc))
            return
        if released:
            log.info("gave back %d deliveries not sent", released)

    async def _claim_until(self, stop: asyncio.Event, poll: float) -> None:
        lease = timedelta(seconds=self.config.lease_seconds)
        while not stop.is_set():
            # Cleared before claiming, so a wake() during the claim is not lost.
            self.wakeup.clear()
            room = self.room.free
            try:
                jobs = await self._until_done(claim, self.name, room, lease) if room else []
            except SQLAlchemyError:
                return  # stopping with the database away
            self.room.take(len(jobs))
            for job in jobs:
                self._enqueue(job)
            # Without the copies their senders read each one (the jobs are held already).
            with contextlib.suppress(SQLAlchemyError):
                await self._load_missing(jobs)
            # A full claim (or no room for one) may have left ready jobs behind: claim
            # again now, or when senders have made room (not for every job they take:
            # jobs handed over by the receiver need no claim).
            self._behind = len(jobs) == room
            if self._behind and room:
                continue
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self.wakeup.wait())]
            _, pending = await asyncio.wait(waiters, timeout=poll,
                                            return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

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

    async def _sender(self) -> None:
        relay: Relay | None = None
        try:
            while True:
                try:
                    job = await asyncio.wait_for(self.queue.get(), self.idle_close)
                except TimeoutError:
                    if relay is not None:
                        await relay.close()
                        relay = None
                    continue
                if job is None:
                    return
                self.room.release(1)
                if self._behind and self.room.used <= self.room.size // 2:
                    self.wakeup.set()  # room for more: the claimer should not wait its poll
                if job.id in self.leases.lost:  # another worker may be sending it
                    self._done_with(job)
                    continue
                try:
                    relay = await self._send(relay, job)
                finally:
                    self._done_with(job)
        finally:
            if relay is not None:
                await asyncio.shield(relay.close())

    async def _send(self, relay: Relay | None, job: Job) -> Relay | None:
        """One attempt at one job; the connection to use for the next one is returned."""
        refused: dict[str, Reply] = {}
        error: RelayError | None = None
        try:
            data = await self._prepared(job.outgoing_id)
            try:
                relay = relay or await self._connect()
                refused = await self._transmit(relay, job, data)
            except ConnectionLost:
                await relay.close()
                relay = await self._connect()
                refused = await self._transmit(relay, job, data)
        except RelayError as exc:
            error = exc
            if relay is not None and relay.broken:
                await relay.close()
                relay = None
        except Exception:
            # Stopping with the database away, or a copy that cannot be prepared: the
            # job stays claimed and is retried when its lease runs out (it is no longer
            # renewed); this sender goes on with the next one.
            log.exception("delivery job=%d could not be sent", job.id)
            return relay
        await self._record(job, refused, error)
        return relay

    async def _transmit(self, relay: Relay, job: Job, data: bytes | Personal
                        ) -> dict[str, Reply]:
        """A personal copy goes in one transaction per recipient, anything else in one
        transaction for the whole job."""
        if not isinstance(data, Personal):
            return await relay.send(job.mail_from, job.recipients, data)
        try:
            return await relay.send_each(data.mail_from(job), job.recipients,
                                         data.prepared_for,
                                         lambda rcpt: self.progress.mark(job, rcpt))
        finally:
            self.progress.forget(job)

    async def _connect(self) -> Relay:
        return await self.smarthost.connect()

    async def _record(self, job: Job, refused: dict[str, Reply], error: RelayError | None
                      ) -> None:
        """Write the outcome in the next shared commit (senders that finish together
        share one), and wait for it before the next job: then a kill resends at most the
        one job each sender has in flight, the bound the crash tests hold."""
        written = asyncio.get_running_loop().create_future()
        self._outcomes.append((job, refused, error))
        self._written.append(written)
        if self._recording is None:
            self._recording = asyncio.create_task(self._record_all())
        await written

    async def _record_all(self) -> None:
        """Write the outcomes that wait, together; those that come meanwhile go next."""
        try:
            while self._outcomes:
                batch, self._outcomes = self._outcomes, []
                waiting, self._written = self._written, []
                states = await self._recorded(batch)
                for written in waiting:
                    written.set_result(None)
                if states is None:
                    continue
                for (job, refused, error), state in zip(batch, states, strict=True):
                    self._log(job, refused, error, state)
        finally:
            self._recording = None
            for written in self._written:  # stopped before their turn: let senders go
                if not written.done():
                    written.set_result(None)
            self._written = []

    async def _recorded(self, batch: list[Attempt]) -> list[DeliveryState] | None:
        """The batch written, tried again while the database is away (its senders wait:
        no more copies go out unrecorded than the jobs in flight); given up only when
        stopping, when the jobs stay claimed and their lease brings them back."""
        try:
            return await self._until_done(record_all, self.config, batch,
                                         self.server_config)
        except SQLAlchemyError:
            log.exception("%d delivery outcomes could not be recorded", len(batch))
            return None

    def _log(self, job: Job, refused: dict[str, Reply], error: RelayError | None,
             state: DeliveryState) -> None:
        delivered = len(job.recipients) - len(refused) if error is None else 0
        self.sent += delivered
        metrics.copies(delivered, *_undelivered(job, refused, error, state))
        log.info("delivery job=%d rcpts=%d delivered=%d refused=%d state=%s%s", job.id,
                 len(job.recipients), delivered, len(refused) if error is None else 0,
                 state.value, f" error={error}" if error else "")
