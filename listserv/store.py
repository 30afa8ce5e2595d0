"""Writes that must happen together: a message, its thread, its delivery jobs.

Every function here takes a session and leaves the commit to the caller, so the
receiver commits a whole SMTP transaction at once and only then answers 250.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from jinja2 import TemplateError
from sqlalchemy import bindparam, insert, select, update
from sqlmodel import Session

from listserv import compose, dmarc, resolver, search, signing, thread, view
from listserv.address import ListAddresses, Purpose
from listserv.config import Config
from listserv.models import (
    ArchivePolicy,
    Delivery,
    DeliveryMode,
    DigestItem,
    MailingList,
    Member,
    Message,
    MessageKind,
    MessageState,
    Mute,
    Outgoing,
    ReplyTo,
    Role,
    ThreadNode,
    ThreadSummary,
    Verp,
    utcnow,
)
from listserv.parse import Parsed

log = logging.getLogger("listserv.store")

# How far back a subject-only reply may find the thread it answers.
SUBJECT_FALLBACK_WINDOW = timedelta(days=60)


@dataclass(frozen=True)
class Stored:
    message: Message
    deliveries: int = 0  # delivery jobs queued for it


def addresses_of(mlist: MailingList) -> ListAddresses:
    return ListAddresses(mlist.address)


def generated_message_id(raw: bytes, domain: str) -> str:
    """For mail that came without one: derived from the bytes, so importing the same
    mbox twice finds the same id and skips the message as a duplicate."""
    return f"listserv-{hashlib.sha256(raw).hexdigest()[:32]}@{domain}"


def new_message(mlist: MailingList, raw: bytes, parsed: Parsed, *, kind: MessageKind,
                state: MessageState, mail_from: str = "", rcpt_to: str = "",
                reasons: Iterable[str] = ()) -> Message:
    return Message(
        list_id=mlist.id, kind=kind, state=state, reasons="\n".join(reasons),
        message_id=parsed.message_id or generated_message_id(raw, mlist.domain),
        mail_from=mail_from, rcpt_to=rcpt_to, from_address=parsed.from_address,
        from_name=parsed.from_name, subject=parsed.subject, date=parsed.date,
        size=len(raw), raw=raw,
    )


# Ids per IN (...) list: well under SQLite's and PostgreSQL's limits on bound values.
_IN_CHUNK = 1000


def _chunks(values: Iterable[str]) -> Iterator[list[str]]:
    values = list(values)
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start:start + _IN_CHUNK]


def archived_ids(session: Session, list_id: int, message_ids: Iterable[str]) -> set[str]:
    """Those of `message_ids` the archive already holds a message for."""
    found: set[str] = set()
    for chunk in _chunks(set(message_ids)):
        found.update(session.scalars(select(ThreadNode.message_id).where(
            ThreadNode.list_id == list_id, ThreadNode.message_id.in_(chunk),
            ThreadNode.message_pk.is_not(None))))
    return found


# The statements run for every post received, built once: building one (and its cache
# key) cost more than running it. Core, on the session's connection: they read and
# write nothing the ORM holds.
_node, _mute = ThreadNode.__table__.c, Mute.__table__.c
_ARCHIVED = select(_node.id).where(
    _node.list_id == bindparam("list_id"), _node.message_id == bindparam("message_id"),
    _node.message_pk.is_not(None)).limit(1)
_MUTED = select(_node.message_id, _mute.address).join(
    Mute.__table__, (_mute.list_id == _node.list_id) & (_mute.thread_id == _node.thread_id)).where(
    _node.list_id == bindparam("list_id"),
    _node.message_id.in_(bindparam("message_ids", expanding=True)))
_RECIPIENTS = (select(Member.__table__.c.address)
               .where(Member.__table__.c.list_id == bindparam("list_id"),
                      Member.__table__.c.role == Role.MEMBER,
                      Member.__table__.c.delivery == bindparam("mode"),
                      Member.__table__.c.disabled_by.is_(None))
               .order_by(Member.__table__.c.address)
               .execution_options(yield_per=5000))
_INSERT_MESSAGE = insert(Message.__table__).returning(Message.__table__.c.id)
_MESSAGE_COLUMNS = [c.name for c in Message.__table__.c if c.name != "id"]
_INSERT_OUTGOING = insert(Outgoing.__table__).returning(Outgoing.__table__.c.id,
                                                       sort_by_parameter_order=True)
_INSERT_DELIVERY = insert(Delivery.__table__)
_INSERT_DIGEST_ITEM = insert(DigestItem.__table__)


def is_archived(session: Session, list_id: int, message_id: str) -> bool:
    """True when the archive already holds a message with this Message-ID."""
    session.flush()  # nodes the ORM still holds count too
    return session.connection().execute(_ARCHIVED, {
        "list_id": list_id, "message_id": message_id}).first() is not None


class Threads:
    """The nodes of every thread some messages touch, read in two queries and then kept
    in step as those messages are linked one after the other, so each is linked exactly
    as if its threads had been read from the database just before (a batch of imported
    messages costs two queries, not two per message)."""

    def __init__(self, session: Session, list_id: int, message_ids: Iterable[str]) -> None:
        self.session, self.list_id = session, list_id
        self.rows: dict[str, ThreadNode] = {}
        self.members: dict[str, set[str]] = {}  # thread id -> message ids
        thread_ids: set[str] = set()
        for chunk in _chunks(set(message_ids)):
            thread_ids.update(session.scalars(select(ThreadNode.thread_id).where(
                ThreadNode.list_id == list_id, ThreadNode.message_id.in_(chunk))))
        self.load(thread_ids)

    def load(self, thread_ids: Iterable[str]) -> None:
        """Read the threads not read yet (a subject-only reply joins one of those)."""
        for chunk in _chunks(set(thread_ids) - self.members.keys()):
            for row in self.session.scalars(select(ThreadNode).where(
                    ThreadNode.list_id == self.list_id, ThreadNode.thread_id.in_(chunk))):
                self.put(row, None)
            for thread_id in chunk:
                self.members.setdefault(thread_id, set())

    def of(self, message_ids: Iterable[str]) -> dict[str, ThreadNode]:
        """Every node of every thread that one of `message_ids` belongs to."""
        thread_ids = {self.rows[mid].thread_id for mid in message_ids if mid in self.rows}
        return {mid: self.rows[mid] for tid in thread_ids for mid in self.members[tid]}

    def put(self, row: ThreadNode, old_thread_id: str | None) -> None:
        """A node read, made, or moved to another thread."""
        if old_thread_id is not None:
            self.members[old_thread_id].discard(row.message_id)
        self.rows[row.message_id] = row
        self.members.setdefault(row.thread_id, set()).add(row.message_id)


def _subject_thread(session: Session, message: Message) -> str | None:
    key = thread.subject_key(message.subject)
    if not key:
        return None
    since = (message.date or utcnow()) - SUBJECT_FALLBACK_WINDOW
    return session.scalars(
        select(ThreadNode.thread_id)
        .where(ThreadNode.list_id == message.list_id, ThreadNode.subject_key == key,
               ThreadNode.message_pk.is_not(None), ThreadNode.date >= since,
               ThreadNode.message_id != message.message_id)
        .order_by(ThreadNode.date.desc()).limit(1)).first()


def _follow_mutes(session: Session, list_id: int, moves: set[tuple[str, str]]) -> None:
    """A thread renamed by a late parent keeps its mutes (they name the thread's root)."""
    for old, new in moves:
        session.execute(update(Mute).where(Mute.list_id == list_id, Mute.thread_id == old)
                        .values(thread_id=new))


def thread_message(session: Session, threads: Threads, message: Message,
                   parsed: Parsed) -> set[str]:
    """Place a stored message in its thread, creating placeholders for absent parents;
    the ids of the threads it changed (a late parent can merge or rename threads).
    `threads` must hold the threads of thread.touched(message)."""
    rows = threads.of(thread.touched(message.message_id, parsed))
    nodes = {
        mid: thread.Node(mid, real=row.message_pk is not None, parent_id=row.parent_id,
                         thread_id=row.thread_id, by_subject=row.by_subject,
                         own_link=row.own_link)
        for mid, row in rows.items()
    }
    joined = None
    if thread.wants_subject_fallback(parsed):
        joined = _subject_thread(session, message)
        if joined is not None:
            threads.load([joined])
    changed = thread.link(nodes, message.message_id, parsed, subject_thread=joined)
    moves = {(rows[mid].thread_id, nodes[mid].thread_id) for mid in changed
             if mid in rows and rows[mid].thread_id != nodes[mid].thread_id}
    _follow_mutes(session, message.list_id, moves)
    for mid in changed:
        node = nodes[mid]
        row = rows.get(mid)
        old_thread_id = row.thread_id if row is not None else None
        row = row or ThreadNode(list_id=message.list_id, message_id=mid,
                                thread_id=node.thread_id)
        row.parent_id, row.thread_id = node.parent_id, node.thread_id
        row.own_link, row.by_subject = node.own_link, node.by_subject
        if mid == message.message_id:
            row.message_pk = message.id
            row.subject_key = thread.subject_key(message.subject)
            row.date = message.date or message.received_at
        session.add(row)
        threads.put(row, old_thread_id)
    return {nodes[message.message_id].thread_id} | {old for old, _ in moves}


# How many sender names a thread's summary keeps for the list page.
SUMMARY_AUTHORS = 4


def _summary_rows(session: Session, list_id: int, thread_ids: list[str]
                  ) -> tuple[dict[str, list], dict[str, ThreadSummary]]:
    """The archived messages of these threads in date order, and their summaries."""
    messages: dict[str, list] = {tid: [] for tid in thread_ids}
    summaries: dict[str, ThreadSummary] = {}
    for chunk in _chunks(thread_ids):
        for row in session.execute(
                select(ThreadNode.thread_id, Message.from_name, Message.from_address,
                       Message.subject, ThreadNode.date)
                .join(Message, Message.id == ThreadNode.message_pk)
                .where(ThreadNode.list_id == list_id, ThreadNode.thread_id.in_(chunk))
                .order_by(ThreadNode.thread_id, ThreadNode.date, Message.id)):
            messages[row.thread_id].append(row)
        summaries.update((s.thread_id, s) for s in session.scalars(select(ThreadSummary).where(
            ThreadSummary.list_id == list_id, ThreadSummary.thread_id.in_(chunk))))
    return messages, summaries


def summarize(session: Session, list_id: int, thread_ids: Iterable[str]) -> None:
    """Recount what the archive's thread list shows for these threads; a thread that a
    late parent merged into another has no messages left and loses its summary."""
    session.flush()
    messages, summaries = _summary_rows(session, list_id, list(set(thread_ids)))
    for thread_id, rows in messages.items():
        summary = summaries.get(thread_id)
        if not rows:
            if summary is not None:
                session.delete(summary)
            continue
        summary = summary or ThreadSummary(list_id=list_id, thread_id=thread_id)
        authors: dict[str, str] = {}
        for row in rows:
            authors.setdefault(row.from_address or row.from_name,
                               row.from_name or row.from_address.partition("@")[0])
        dates = [r.date for r in rows if r.date is not None]
        summary.subject, summary.messages = rows[0].subject, len(rows)
        summary.participants = len(authors)
        summary.authors = "\n".join(list(authors.values())[:SUMMARY_AUTHORS])
        summary.first_date = min(dates, default=None)
        summary.last_date = max(dates, default=None)
        session.add(summary)


def archive_all(session: Session, mlist: MailingList,
                posts: Sequence[tuple[Message, Parsed]]) -> None:
    """Everything that makes stored posts part of the archive, in the caller's
    transaction, in order: their threads, the thread list's counts, and (unless the
    list keeps no web archive) the search index. Many at once is much faster than one
    by one (an import): each thread is read and recounted once."""
    threads = Threads(session, mlist.id, {mid for message, parsed in posts
                                          for mid in thread.touched(message.message_id,
                                                                    parsed)})
    touched: set[str] = set()
    for message, parsed in posts:
        touched |= thread_message(session, threads, message, parsed)
    summarize(session, mlist.id, touched)
    if mlist.archive is not ArchivePolicy.OFF:
        search.index(session, [(message, view.plain_text(message.raw))
                               for message, _ in posts])


def archive(session: Session, mlist: MailingList, message: Message, parsed: Parsed) -> None:
    """One post into the archive (see archive_all)."""
    archive_all(session, mlist, [(message, parsed)])


def recipients(session: Session, list_id: int,
               mode: DeliveryMode = DeliveryMode.REGULAR) -> Iterator[str]:
    """Addresses that get each post (or, for a digest mode, each digest of that form),
    streamed from one query (never member by member)."""
    session.flush()  # members the ORM still holds count too
    yield from session.connection().execute(_RECIPIENTS, {
        "list_id": list_id, "mode": mode}).scalars()


def role_addresses(session: Session, list_id: int, roles: Iterable[Role]) -> list[str]:
    return sorted(set(session.scalars(select(Member.address).where(
        Member.list_id == list_id, Member.role.in_(list(roles))))))


@dataclass(frozen=True)
class Send:
    """One outgoing copy and who gets it. `slots` (see compose.Copy) makes the copy
    personal: the worker then fills each recipient's links into `data` and sends every
    recipient a transaction of their own."""

    data: bytes
    mail_from: str
    rcpts: Iterable[str]
    message_pk: int | None = None
    slots: str = ""
    list_id: int | None = None


def _jobs(rcpts: Iterable[str], batch: int) -> list[str]:
    """The recipients of each delivery job: `batch` at most, one per line."""
    jobs, chunk = [], []
    for rcpt in rcpts:
        chunk.append(rcpt)
        if len(chunk) == batch:
            jobs.append("\n".join(chunk))
            chunk = []
    if chunk:
        jobs.append("\n".join(chunk))
    return jobs


def queue_all(session: Session, sends: Sequence[Send], batch: int) -> list[int]:
    """Store outgoing copies and a delivery job per `batch` recipients of each, in two
    statements however many there are; the count of jobs of each."""
    if not sends:
        return []
    now = utcnow()
    # Core inserts, not ORM objects: nothing reads them back in this transaction, and
    # an ORM flush costs more than the insert (this runs for every post received).
    connection = session.connection()
    ids = connection.execute(_INSERT_OUTGOING, [
        {"message_pk": s.message_pk, "list_id": s.list_id, "slots": s.slots,
         "data": s.data if s.slots else compose.crlf(s.data), "created_at": now}
        for s in sends]).scalars().all()
    jobs = [_jobs(s.rcpts, batch) for s in sends]
    rows = [{"outgoing_id": outgoing_id, "mail_from": send.mail_from, "recipients": job,
             "state": "queued", "attempts": 0, "next_attempt_at": now, "last_error": "",
             "created_at": now}
            for outgoing_id, send, its in zip(ids, sends, jobs, strict=True) for job in its]
    if rows:
        connection.execute(_INSERT_DELIVERY, rows)
    return [len(its) for its in jobs]


def queue(session: Session, data: bytes, mail_from: str, rcpts: Iterable[str],
          batch: int, message_pk: int | None = None, *, slots: str = "",
          list_id: int | None = None) -> int:
    """Store one outgoing copy and a delivery job per `batch` recipients; the count
    (see Send)."""
    return queue_all(session, [Send(data, mail_from, rcpts, message_pk, slots, list_id)],
                     batch)[0]


def muted(session: Session, list_id: int, message_ids: Iterable[str]) -> dict[str, set[str]]:
    """The members who muted the thread each of these messages belongs to, by message,
    in one query per thousand."""
    session.flush()  # the messages' nodes may still be in the ORM's hands
    found: dict[str, set[str]] = {}
    for chunk in _chunks(set(message_ids)):
        for message_id, address in session.connection().execute(_MUTED, {
                "list_id": list_id, "message_ids": chunk}):
            found.setdefault(message_id, set()).add(address)
    return found


def footer(mlist: MailingList, base_url: str) -> compose.Footer | None:
    """The list's footer; a template an owner broke falls back to the default one, so
    posts still go out (and the log says why)."""
    if mlist.footer == "":
        return None
    key = (mlist.name, mlist.address, base_url, mlist.archive is not ArchivePolicy.OFF)
    try:
        return _rendered_footer(mlist.footer, *key)
    except TemplateError as exc:
        log.warning("list %s: footer template failed (%s); using the default", mlist.address,
                    exc)
        return _rendered_footer(None, *key)


@functools.lru_cache(maxsize=256)
def _rendered_footer(template: str | None, name: str, address: str, base_url: str,
                     archive: bool) -> compose.Footer | None:
    """A list's footer is the same for all its posts until its settings change, and
    those are the key: rendering made a Jinja environment and compiled the template
    again for every post. (A template that fails raises, and is not remembered.)"""
    return compose.render_footer(template, name=name, addresses=ListAddresses(address),
                                 base_url=base_url, archive=archive)


def _authenticity(mlist: MailingList, message: Message, config: Config
                  ) -> tuple[str | None, str | None]:
    """Asked of DNS once per post, before the copy is composed: the display name of a
    From rewritten to the list (DMARC), and what we can say of the post's authentication
    for our ARC set to seal."""
    dns = resolver.for_config(config.dns)
    via = (dmarc.via_name(message.from_name, message.from_address, mlist.name)
           if dmarc.rewrites_from(mlist.dmarc, message.from_address, dns) else None)
    results = (signing.inbound_results(message.raw, config.dkim.domain, dns)
               if config.dkim.arc else None)
    return via, results


def shared_copies(mlist: MailingList, list_footer: compose.Footer | None) -> bool:
    """Whether every member gets the same copy of a post: only when nothing in it is
    the member's own, that is `verp` off (one envelope sender) and a footer without
    `unsubscribe_url` or `mute_url`. The copy then goes to up to
    `max_recipients_per_transaction` members at once, and its List-Unsubscribe is the
    list's leave address alone: members lose the one-click unsubscribe (RFC 8058), the
    mute link and bounces that name them without parsing."""
    return mlist.verp is Verp.OFF and not (list_footer and list_footer.personal)


def list_copy(mlist: MailingList, message: Message, parsed: Parsed, base_url: str, *,
              config: Config) -> tuple[compose.Copy, bool]:
    """The copy of a post that members get, with slots for each member's links, and
    whether it is shared (see shared_copies); also what `listserv doctor` inspects, so
    it checks the very headers members see."""
    addresses = addresses_of(mlist)
    via, results = _authenticity(mlist, message, config)
    list_footer = footer(mlist, base_url)
    shared = shared_copies(mlist, list_footer)
    return compose.list_copy(
        message.raw, addresses=addresses, name=mlist.name, base_url=base_url,
        message_id=message.message_id, subject=message.subject,
        add_message_id=parsed.message_id is None, subject_prefix=mlist.subject_prefix,
        reply_to=addresses.posting if mlist.reply_to is ReplyTo.LIST else None,
        footer=list_footer, via=via, authentication=results,
        archived=mlist.archive is not ArchivePolicy.OFF, one_click=not shared), shared


def fan_out(session: Session, mlist: MailingList, message: Message, parsed: Parsed,
            base_url: str, batch: int, *, config: Config) -> int:
    """One post (see fan_out_all); its jobs."""
    return fan_out_all(session, mlist, [(message, parsed)], base_url, batch, config=config)[0]


def fan_out_all(session: Session, mlist: MailingList, posts: Sequence[tuple[Message, Parsed]],
                base_url: str, batch: int, *, config: Config) -> list[int]:
    """Queue the list copy of each accepted post for every member who gets posts, except
    those who muted its thread, and the post itself for the next digest; the jobs of
    each. Each copy is composed once, with slots for each member's unsubscribe and
    mute links, or shared (see shared_copies). The members, the mutes and each table's
    rows are read and written once for all the posts (a group of the receiver)."""
    connection = session.connection()
    connection.execute(_INSERT_DIGEST_ITEM, [
        {"list_id": mlist.id, "message_pk": message.id, "size": message.size,
         "created_at": utcnow()} for message, _ in posts])
    members = list(recipients(session, mlist.id))
    quiet = muted(session, mlist.id, [message.message_id for message, _ in posts])
    bounces = addresses_of(mlist).at(Purpose.BOUNCES)
    sends = []
    for message, parsed in posts:
        copy, shared = list_copy(mlist, message, parsed, base_url, config=config)
        mutes = quiet.get(message.message_id, set())
        rcpts = [a for a in members if a not in mutes] if mutes else members
        if shared:  # a footer without links is still a slot: filled once, for everyone
            sends.append(Send(copy.personal("", ""), bounces, rcpts, message.id,
                              list_id=mlist.id))
        else:
            sends.append(Send(copy.data, bounces, rcpts, message.id, copy.slots_json(),
                              mlist.id))
    return queue_all(session, sends, batch)


def save(session: Session, message: Message) -> Message:
    """Insert a message just received and give it its id. A Core insert: the ORM's
    flush cost more than the insert, for every mail. The object stays out of the
    session (nothing changes it after this; `set_state` writes by id)."""
    message.id = session.connection().execute(_INSERT_MESSAGE, {
        c: getattr(message, c) for c in _MESSAGE_COLUMNS}).scalar_one()
    return message


def set_state(session: Session, message: Message, state: MessageState) -> None:
    session.execute(update(Message).where(Message.id == message.id).values(state=state))
    message.state = state
