"""The outgoing copies and their delivery jobs as they are queued: the one writer of
new rows in those two tables (claims.py is the delivery worker's side of them).

Fan-out, notices and digests queue here: a copy is stored once, and its recipients
become jobs of one destination domain each, numbered in turns so that lists share the
workers (lanes: mail a person waits for first).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, insert, select
from sqlalchemy.engine import Connection
from sqlmodel import Session

from listserv import headers
from listserv.address import split
from listserv.enums import Lane, Verp
from listserv.models import MailingList, utcnow
from listserv.queue_tables import NEW_JOBS, Delivery, DestinationDomain, Outgoing

log = logging.getLogger("listserv.deliver")


@dataclass(frozen=True)
class Send:
    """One outgoing copy and who gets it. `slots` (see slots.Copy) makes the copy
    personal: the worker then fills each recipient's links into `data` and sends every
    recipient a transaction of their own."""

    data: bytes
    mail_from: str
    rcpts: Iterable[str]
    message_pk: int | None = None
    slots: str = ""
    list_id: int | None = None
    lane: Lane = Lane.WAITING


def _jobs(rcpts: Iterable[str], batch: int) -> list[tuple[str, str]]:
    """The domain and the recipients (one per line) of each delivery job: `batch` at
    most, all of one domain, so that a domain that defers copies holds back its own
    jobs only, and the worker can count the transactions in flight to each. Sorted by
    the domain's labels from the top down, a domain's recipients are together, and its
    subdomains next to it. (Each address is split once, and each domain once: this
    runs for every member of a post's expansion.)"""
    keyed = [(split(r)[1], r) for r in rcpts]
    top_down = {domain: domain.split(".")[::-1] for domain in {d for d, _ in keyed}}
    keyed.sort(key=lambda pair: top_down[pair[0]])
    jobs: list[tuple[str, str]] = []
    chunk: list[str] = []
    domain = ""
    for rcpt_domain, rcpt in keyed:
        if chunk and (len(chunk) == batch or rcpt_domain != domain):
            jobs.append((domain, "\n".join(chunk)))
            chunk = []
        domain = rcpt_domain
        chunk.append(rcpt)
    if chunk:
        jobs.append((domain, "\n".join(chunk)))
    return jobs


@dataclass(frozen=True)
class CopyOf:
    """An outgoing copy as the delivery worker needs it to send its jobs: `verp` is the
    list's address when its personal copies go out with VERP."""

    data: bytes
    slots: str
    list_id: int | None
    message_pk: int | None
    verp: str | None


@dataclass
class Handoff:
    """Jobs claimed for the delivery worker of this process in the transaction that
    queues them (a chunk of a post's expansion, see fanout.expand), as far as its queue
    has room (`reserve` says how many): once it commits, the worker sends them with the
    copy read there, instead of finding them with a claim of its own. They are stored claimed
    (state sending, this worker's name and lease), so a crash before they go out
    leaves them to the same recovery as any claimed job. `queued` counts the jobs left
    for a claim, for which the worker must be woken."""

    worker: str
    lease: timedelta
    reserve: Callable[[int], int]
    release: Callable[[int], None]
    jobs: list[dict] = field(default_factory=list)  # the delivery rows, with their ids
    copies: dict[int, CopyOf] = field(default_factory=dict)
    queued: int = 0

    def abandon(self) -> None:
        """The transaction did not commit: nothing was handed."""
        self.release(len(self.jobs))
        self.jobs, self.copies, self.queued = [], {}, 0


_INSERT_OUTGOING = insert(Outgoing.__table__).returning(Outgoing.__table__.c.id,
                                                       sort_by_parameter_order=True)
_INSERT_DELIVERY = insert(Delivery.__table__)
_INSERT_HANDED = insert(Delivery.__table__).returning(Delivery.__table__.c.id,
                                                      sort_by_parameter_order=True)


def queue_all(session: Session, sends: Sequence[Send], batch: int) -> list[int]:
    """Store outgoing copies and a delivery job per `batch` recipients of each, in two
    statements however many there are; the count of jobs of each."""
    if not sends:
        return []
    return queue_jobs(session, list(zip(store(session, sends), sends, strict=True)), batch)


def _crlf(send: Send) -> bytes:
    """What is stored of a copy: a copy with slots is CRLF already (see slots.Copy)."""
    return send.data if send.slots else headers.crlf(send.data)


def store(session: Session, sends: Sequence[Send]) -> list[int]:
    """Store outgoing copies without their jobs (a post's come later: fanout.expand);
    their ids."""
    # Core inserts, not ORM objects: nothing reads them back in this transaction, and
    # an ORM flush costs more than the insert (this runs for every post received).
    now = utcnow()
    return list(session.connection().execute(_INSERT_OUTGOING, [
        {"message_pk": s.message_pk, "list_id": s.list_id, "slots": s.slots,
         "data": _crlf(s), "created_at": now} for s in sends]).scalars().all())


def queue_jobs(session: Session, stored: Sequence[tuple[int, Send]], batch: int,
               handoff: Handoff | None = None, copies: dict[int, CopyOf] | None = None
               ) -> list[int]:
    """A delivery job per `batch` recipients of each stored copy (its id, and the Send
    that says who gets it, in which lane), in one statement; the count of jobs of each.
    With `handoff`, the jobs its worker has room for are stored claimed by it, and their
    `copies` handed with them."""
    now = utcnow()
    connection = session.connection()
    turns = _Turns(connection)
    jobs = [_jobs(s.rcpts, batch) for _, s in stored]
    rows = [{"outgoing_id": outgoing_id, "lane": send.lane, "list_id": send.list_id,
             "turn": turn, "mail_from": send.mail_from, "recipients": job, "domain": domain,
             "state": "queued", "attempts": 0, "next_attempt_at": now, "last_error": "",
             "created_at": now}
            for (outgoing_id, send), its in zip(stored, jobs, strict=True)
            for (domain, job), turn in zip(its, turns.next(send, len(its)), strict=True)]
    if handoff is not None:
        rows = _handed_first(connection, handoff, rows)
    handed = handoff.reserve(len(rows)) if handoff is not None else 0
    if handoff is not None and handed:
        _hand(connection, handoff, rows[:handed], now)
        handoff.copies.update((row["outgoing_id"], (copies or {})[row["outgoing_id"]])
                              for row in rows[:handed])
    if rows[handed:]:
        connection.execute(_INSERT_DELIVERY, rows[handed:])
        if handoff is not None:
            handoff.queued += len(rows) - handed
    return [len(its) for its in jobs]


# The domains no claim takes a job of, those of the destinations that deferred copies
# (destinations.py): in back-off, or tried by one job at a time since it ended until a
# copy goes through (probes.py, which claims that job). A handful at most, usually none.
PAUSED = select(DestinationDomain.__table__.c.domain)


def _handed_first(connection: Connection, handoff: Handoff, rows: list[dict]) -> list[dict]:
    """`rows` with those the handoff may take first: a job to a domain in back-off is
    left for a claim, which waits for the back-off's end and its probe (probes.py), and
    counted as left."""
    paused = set(connection.execute(PAUSED).scalars())
    if not paused:
        return rows
    held = [row for row in rows if row["domain"] in paused]
    if not held:
        return rows  # an empty list of rows executes as one row of no values
    handoff.queued += len(held)
    connection.execute(_INSERT_DELIVERY, held)
    return [row for row in rows if row["domain"] not in paused]


class _Turns:
    """The turns of new jobs: none in the lane a person waits in; in the posts' lane,
    each list's numbered on from its last new job (never tried), and never before the
    head of the new jobs. A list with nothing queued thus starts level with the others'
    next jobs, one with thousands queued goes on after them, and the claim (by turn)
    takes the lists' jobs in turn; jobs deferred (tried) go by their retry time instead,
    and do not hold back their list's next post. Each is one step down an index
    (ix_delivery_*)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.last: dict[int, int] = {}
        self._head: int | None = None

    def next(self, send: Send, count: int) -> Sequence[int]:
        if send.lane is not Lane.POSTS or send.list_id is None:
            return [0] * count
        if send.list_id not in self.last:
            last = self.connection.execute(_LAST_TURN, {"list_id": send.list_id}).scalar()
            self.last[send.list_id] = max(self.head() - 1, -1 if last is None else last)
        start = self.last[send.list_id] + 1
        self.last[send.list_id] += count
        return range(start, start + count)

    def head(self) -> int:
        if self._head is None:
            self._head = self.connection.execute(_HEAD_TURN).scalar() or 0
        return self._head


def _hand(connection: Connection, handoff: Handoff, rows: list[dict], now: datetime) -> None:
    """Insert `rows` as claimed by the handoff's worker (claim's values: the attempt
    counts from the claim) and hand them over with their ids."""
    for row in rows:
        row.update(state="sending", worker=handoff.worker, lease_until=now + handoff.lease,
                   attempts=1)
    ids = connection.execute(_INSERT_HANDED, rows).scalars().all()
    handoff.jobs += [row | {"id": i} for row, i in zip(rows, ids, strict=True)]


_HEAD_TURN = select(func.min(Delivery.__table__.c.turn)).where(
    Delivery.__table__.c.lane == Lane.POSTS, NEW_JOBS)
_LAST_TURN = select(func.max(Delivery.__table__.c.turn)).where(
    Delivery.__table__.c.list_id == bindparam("list_id"), NEW_JOBS)


def queue(session: Session, data: bytes, mail_from: str, rcpts: Iterable[str],
          batch: int, message_pk: int | None = None, *, slots: str = "",
          list_id: int | None = None, lane: Lane = Lane.WAITING) -> int:
    """Store one outgoing copy and a delivery job per `batch` recipients; the count
    (see Send)."""
    return queue_all(session, [Send(data, mail_from, rcpts, message_pk, slots, list_id, lane)],
                     batch)[0]


def copies(session: Session, outgoing_ids: list[int]) -> dict[int, CopyOf]:
    """The stored copies of claimed jobs, read back in one query."""
    rows = session.execute(
        select(Outgoing.id, Outgoing.data, Outgoing.slots, Outgoing.list_id,
               Outgoing.message_pk, MailingList.address, MailingList.verp)
        .outerjoin(MailingList, MailingList.id == Outgoing.list_id)
        .where(Outgoing.id.in_(outgoing_ids)))
    return {r.id: CopyOf(r.data, r.slots, r.list_id, r.message_pk,
                         r.address if r.verp is Verp.ON else None) for r in rows}
