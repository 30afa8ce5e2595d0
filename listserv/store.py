"""Writes that must happen together: a message, its thread, its place in the archive.

Every function here takes a session and leaves the commit to the caller, so the
receiver commits a whole SMTP transaction at once and only then answers 250. Who gets
the message is fanout's; its copies and jobs are the outbox's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Row, bindparam, delete, func, insert, select, text, update
from sqlmodel import Session

from listserv import bulk, content_filter, db, search, thread, view
from listserv.enums import ArchivePolicy, MessageKind, MessageState
from listserv.models import (
    Follow,
    MailingList,
    Message,
    Mute,
    ThreadNode,
    ThreadSummary,
    utcnow,
)
from listserv.parse import Parsed

# How far back a subject-only reply may find the thread it answers.
SUBJECT_FALLBACK_WINDOW = timedelta(days=60)


def generated_message_id(raw: bytes, domain: str) -> str:
    """For mail that came without one: derived from the bytes, so importing the same
    mbox twice finds the same id and skips the message as a duplicate."""
    return f"listserv-{hashlib.sha256(raw).hexdigest()[:32]}@{domain}"


def message_values(mlist: MailingList, raw: bytes, parsed: Parsed, *, kind: MessageKind,
                   state: MessageState, mail_from: str = "", rcpt_to: str = "",
                   reasons: Iterable[str] = ()) -> dict:
    """A message row's columns: for a Message, or for the Core insert of an import."""
    return {
        "list_id": mlist.id, "kind": kind, "state": state, "reasons": "\n".join(reasons),
        "message_id": parsed.message_id or generated_message_id(raw, mlist.domain),
        "mail_from": mail_from, "sender_key": mail_from.lower(), "rcpt_to": rcpt_to,
        "from_address": parsed.from_address, "from_name": parsed.from_name,
        "subject": parsed.subject, "inferred_parent": parsed.inferred_parent,
        "date": parsed.date,
        "received_at": utcnow(), "size": len(raw), "raw": raw,
    }


def new_message(mlist: MailingList, raw: bytes, parsed: Parsed, *, kind: MessageKind,
                state: MessageState, mail_from: str = "", rcpt_to: str = "",
                reasons: Iterable[str] = ()) -> Message:
    return Message(**message_values(mlist, raw, parsed, kind=kind, state=state,
                                    mail_from=mail_from, rcpt_to=rcpt_to, reasons=reasons))


def archived_ids(session: Session, list_id: int, message_ids: Iterable[str]) -> set[str]:
    """Those of `message_ids` the archive already holds a message for."""
    found: set[str] = set()
    for chunk in db.chunks(set(message_ids)):
        found.update(session.scalars(select(ThreadNode.message_id).where(
            ThreadNode.list_id == list_id, db.among(session, ThreadNode.message_id, chunk),
            ThreadNode.message_pk.is_not(None))))
    return found


# The statements run for every post received, built once: building one (and its cache
# key) cost more than running it. Core, on the session's connection: they read and
# write nothing the ORM holds.
_node = ThreadNode.__table__.c
_ARCHIVED = select(_node.id).where(
    _node.list_id == bindparam("list_id"), _node.message_id == bindparam("message_id"),
    _node.message_pk.is_not(None)).limit(1)
_INSERT_MESSAGE = insert(Message.__table__).returning(Message.__table__.c.id,
                                                     sort_by_parameter_order=True)
_MESSAGE_COLUMNS = [c.name for c in Message.__table__.c if c.name != "id"]


def is_archived(session: Session, list_id: int, message_id: str) -> bool:
    """True when the archive already holds a message with this Message-ID."""
    session.flush()  # nodes the ORM still holds count too
    return session.connection().execute(_ARCHIVED, {
        "list_id": list_id, "message_id": message_id}).first() is not None


@dataclass
class _Row:
    """A thread_node row in memory. Plain data: making an ORM object per node cost more
    than writing it (an import makes one or two per message)."""

    node: thread.Node
    message_pk: int | None = None
    subject_key: str = ""
    date: datetime | None = None
    stored: bool = True  # in the table already (else inserted at the next write)

    def values(self) -> dict:
        node = self.node
        return {"message_pk": self.message_pk, "parent_id": node.parent_id,
                "own_link": node.own_link, "thread_id": node.thread_id,
                "by_subject": node.by_subject, "subject_key": self.subject_key,
                "date": self.date}


_NODE = ThreadNode.__table__.c
_UPDATE_NODE = update(ThreadNode.__table__).where(
    _NODE.list_id == bindparam("w_list_id"), _NODE.message_id == bindparam("w_message_id"))


class Threads:
    """The nodes of every thread some messages touch, read in two queries and then kept
    in step as those messages are linked one after the other, so each is linked exactly
    as if its threads had been read from the database just before (a batch of imported
    messages costs two queries, not two per message). What changed goes to the table
    in one statement per kind at `write`."""

    def __init__(self, session: Session, list_id: int, message_ids: Iterable[str]) -> None:
        self.session, self.list_id = session, list_id
        self.rows: dict[str, _Row] = {}
        self.members: dict[str, set[str]] = {}  # thread id -> message ids
        self.changed: set[str] = set()  # message ids whose rows the table does not have yet
        self.subjects: dict[str, list[_Row]] = {}  # subject key -> rows made real here
        self.archived_subjects: dict[str, list[Row]] = {}  # see _archived_subjects
        thread_ids: set[str] = set()
        for chunk in db.chunks(set(message_ids)):
            thread_ids.update(session.scalars(select(_NODE.thread_id).where(
                _NODE.list_id == list_id, db.among(session, _NODE.message_id, chunk))))
        self.load(thread_ids)

    def load(self, thread_ids: Iterable[str]) -> None:
        """Read the threads not read yet (a subject-only reply joins one of those)."""
        for chunk in db.chunks(set(thread_ids) - self.members.keys()):
            for r in self.session.execute(select(ThreadNode.__table__).where(
                    _NODE.list_id == self.list_id,
                    db.among(self.session, _NODE.thread_id, chunk))):
                if r.message_id not in self.rows:
                    node = thread.Node(r.message_id, real=r.message_pk is not None,
                                       parent_id=r.parent_id, thread_id=r.thread_id,
                                       by_subject=r.by_subject, own_link=r.own_link)
                    self.rows[r.message_id] = _Row(node, r.message_pk, r.subject_key, r.date)
                    self.members.setdefault(r.thread_id, set()).add(r.message_id)
            for thread_id in chunk:
                self.members.setdefault(thread_id, set())

    def of(self, message_ids: Iterable[str]) -> dict[str, thread.Node]:
        """Every node of every thread that one of `message_ids` belongs to."""
        thread_ids = {self.rows[mid].node.thread_id for mid in message_ids if mid in self.rows}
        return {mid: self.rows[mid].node for tid in thread_ids for mid in self.members[tid]}

    def put(self, node: thread.Node, old_thread_id: str | None) -> _Row:
        """A node made, changed, or moved to another thread."""
        row = self.rows.get(node.message_id)
        if row is None:
            row = self.rows[node.message_id] = _Row(node, stored=False)
        if old_thread_id is not None:
            self.members[old_thread_id].discard(node.message_id)
        self.members.setdefault(node.thread_id, set()).add(node.message_id)
        self.changed.add(node.message_id)
        return row

    def write(self) -> None:
        """Bring the table up to date: what reads threads from it (the subject fallback,
        the summaries, mutes, the pages) must see the links made so far."""
        rows = [self.rows[mid] for mid in sorted(self.changed)]
        self.changed.clear()
        connection = self.session.connection()
        new = [{"list_id": self.list_id, "message_id": r.node.message_id, **r.values()}
               for r in rows if not r.stored]
        bulk.insert_new(self.session, ThreadNode.__table__, new)
        old = [{"w_list_id": self.list_id, "w_message_id": r.node.message_id, **r.values()}
               for r in rows if r.stored]
        if old:
            connection.execute(_UPDATE_NODE, old)
        for r in rows:
            r.stored = True


def _since(message: Archivable) -> datetime:
    """How far back a subject-only reply may find its thread."""
    return (message.date or utcnow()) - SUBJECT_FALLBACK_WINDOW


# The newest two archived nodes of each subject key asked for (two: one of them may be
# the message looking), since the earliest date a message of the batch looks back to.
_SUBJECT_LATEST = (
    select(_NODE.subject_key, _NODE.date, _NODE.message_id, _NODE.thread_id,
           func.row_number().over(partition_by=_NODE.subject_key,
                                  order_by=(_NODE.date.desc(), _NODE.message_id.desc()))
           .label("n"))
    .where(_NODE.list_id == bindparam("list_id"), _NODE.message_pk.is_not(None),
           _NODE.date >= bindparam("since")))


def _archived_subjects(session: Session, list_id: int, messages: Iterable[Archivable]
                       ) -> dict[str, list[Row]]:
    """For the subject fallback of these messages: each subject key's newest archived
    nodes, newest first, read in one query per batch, not one per subject-only reply
    (1,119 of them took 6 s of a 20,000-message import on PostgreSQL). The table does
    not change while a batch is linked (Threads.write comes after), so this is what a
    lookup per message would have read."""
    since = {}
    for message in messages:
        if key := thread.subject_key(message.subject):
            since[key] = min(since.get(key, _since(message)), _since(message))
    found: dict[str, list[Row]] = {}
    for chunk in db.chunks(since):
        latest = _SUBJECT_LATEST.where(db.among(session, _NODE.subject_key, chunk)).subquery()
        for row in session.execute(select(latest).where(latest.c.n <= 2),
                                   {"list_id": list_id, "since": min(since[k] for k in chunk)}):
            found.setdefault(row.subject_key, []).append(row)
    return found


def _subject_thread(threads: Threads, message: Archivable) -> str | None:
    """The thread of the latest message with the same subject in the window before this
    one: the best of those archived before (the table, read by _archived_subjects) and
    of those just linked (here, not written yet: writing them for every subject-only
    reply cost a statement each)."""
    key = thread.subject_key(message.subject)
    if not key:
        return None
    since = _since(message)
    candidates = [(row.date, row.node.message_id) for row in threads.subjects.get(key, ())
                  if row.date is not None and row.date >= since
                  and row.node.message_id != message.message_id]
    found = next((row for row in threads.archived_subjects.get(key, ())
                  if row.message_id != message.message_id), None)
    if found is not None and found.date >= since:
        candidates.append((found.date, found.message_id))
    if not candidates:
        return None
    _, best = max(candidates)
    if best in threads.rows:  # linked here since: its thread may have changed
        return threads.rows[best].node.thread_id
    return found.thread_id  # type: ignore[union-attr]  (best came from the table)


def _follow_mutes(session: Session, list_id: int, moves: set[tuple[str, str]]) -> None:
    """A thread renamed by a late parent keeps its mutes and follows (they name the
    thread's root). A member who had muted (or followed) both threads keeps one row: two
    would break the table's unique constraint, and the post that merged them with it."""
    for table in (Mute, Follow):
        for old, new in moves:
            there = select(table.address).where(table.list_id == list_id,
                                                table.thread_id == new)
            session.execute(delete(table).where(table.list_id == list_id,
                                                table.thread_id == old,
                                                table.address.in_(there)))
            session.execute(update(table).where(table.list_id == list_id,
                                                table.thread_id == old)
                            .values(thread_id=new))


def thread_message(session: Session, threads: Threads, message: Archivable,
                   parsed: Parsed) -> set[str]:
    """Place a stored message in its thread, creating placeholders for absent parents;
    the ids of the threads it changed (a late parent can merge or rename threads).
    `threads` must hold the threads of thread.touched(message)."""
    nodes = threads.of(thread.touched(message.message_id, parsed))
    before = {mid: node.thread_id for mid, node in nodes.items()}
    joined = None
    if thread.wants_subject_fallback(parsed):
        joined = _subject_thread(threads, message)
        if joined is not None:
            threads.load([joined])
    changed = thread.link(nodes, message.message_id, parsed, subject_thread=joined)
    moves = {(before[mid], nodes[mid].thread_id) for mid in changed
             if mid in before and before[mid] != nodes[mid].thread_id}
    _follow_mutes(session, message.list_id, moves)
    for mid in changed:
        threads.put(nodes[mid], before.get(mid))
    row = threads.put(nodes[message.message_id], None)
    row.message_pk = message.id
    row.subject_key = thread.subject_key(message.subject)
    row.date = message.date or message.received_at
    threads.subjects.setdefault(row.subject_key, []).append(row)
    return {nodes[message.message_id].thread_id} | {old for old, _ in moves}


# How many sender names a thread's summary keeps for the list page.
SUMMARY_AUTHORS = 4
_SUMMARY = ThreadSummary.__table__.c
_UPDATE_SUMMARY = update(ThreadSummary.__table__).where(_SUMMARY.id == bindparam("w_id"))


def _summary_rows(session: Session, list_id: int, thread_ids: list[str]
                  ) -> tuple[dict[str, list], dict[str, int]]:
    """The archived messages of these threads in date order, and their summaries' ids."""
    messages: dict[str, list] = {tid: [] for tid in thread_ids}
    summaries: dict[str, int] = {}
    for chunk in db.chunks(thread_ids):
        for row in session.execute(
                select(_NODE.thread_id, Message.from_name, Message.from_address,
                       Message.subject, _NODE.date)
                .join(Message, Message.id == _NODE.message_pk)
                .where(_NODE.list_id == list_id, db.among(session, _NODE.thread_id, chunk))
                .order_by(_NODE.thread_id, _NODE.date, Message.id)):
            messages[row.thread_id].append(row)
        summaries.update((tid, pk) for tid, pk in session.execute(
            select(_SUMMARY.thread_id, _SUMMARY.id).where(
                _SUMMARY.list_id == list_id, db.among(session, _SUMMARY.thread_id, chunk))))
    return messages, summaries


def _summary(rows: list) -> dict:
    """What the list page shows of a thread, from its messages in date order."""
    authors: dict[str, str] = {}
    for row in rows:
        if row.from_address or row.from_name:  # an erased message has no sender
            authors.setdefault(row.from_address or row.from_name,
                               row.from_name or row.from_address.partition("@")[0])
    dates = [r.date for r in rows if r.date is not None]
    return {"subject": rows[0].subject, "messages": len(rows), "participants": len(authors),
            "authors": "\n".join(list(authors.values())[:SUMMARY_AUTHORS]),
            "first_date": min(dates, default=None), "last_date": max(dates, default=None)}


def summarize(session: Session, list_id: int, thread_ids: Iterable[str]) -> None:
    """Recount what the archive's thread list shows for these threads; a thread that a
    late parent merged into another has no messages left and loses its summary."""
    session.flush()
    messages, summaries = _summary_rows(session, list_id, sorted(set(thread_ids)))
    connection = session.connection()
    gone = [summaries[tid] for tid, rows in messages.items() if not rows and tid in summaries]
    for chunk in db.chunks(gone):
        connection.execute(delete(ThreadSummary.__table__).where(_SUMMARY.id.in_(chunk)))
    new = [{"list_id": list_id, "thread_id": tid, **_summary(rows)}
           for tid, rows in messages.items() if rows and tid not in summaries]
    if new:
        connection.execute(insert(ThreadSummary.__table__), new)
    old = [{"w_id": summaries[tid], **_summary(rows)}
           for tid, rows in messages.items() if rows and tid in summaries]
    if old:
        connection.execute(_UPDATE_SUMMARY, old)


@dataclass
class Imported:
    """An imported message as archiving reads it: imports write their rows with one
    insert per batch (insert_messages), since making a Message each cost more than
    storing it."""

    id: int
    list_id: int
    message_id: str
    from_address: str
    from_name: str
    subject: str
    date: datetime | None
    received_at: datetime
    raw: bytes


# What archiving reads of a stored message: a Message, or an imported one's row.
Archivable = Message | Imported


def archive_all(session: Session, mlist: MailingList,
                posts: Sequence[tuple[Archivable, Parsed]],
                texts: Sequence[str] | None = None) -> None:
    """Everything that makes stored posts part of the archive, in the caller's
    transaction, in order: their threads, the thread list's counts, and (unless the
    list keeps no web archive) the search index of their `texts` (view.plain_text of
    each as the list's content filter leaves it, made here unless the caller made them
    elsewhere: an import does that in other processes). Many at once is much faster
    than one by one (an import): each thread is read and recounted once."""
    threads = Threads(session, mlist.id, {mid for message, parsed in posts
                                          for mid in thread.touched(message.message_id,
                                                                    parsed)})
    threads.archived_subjects = _archived_subjects(
        session, mlist.id, [message for message, parsed in posts
                            if thread.wants_subject_fallback(parsed)])
    touched: set[str] = set()
    for message, parsed in posts:
        touched |= thread_message(session, threads, message, parsed)
    threads.write()
    summarize(session, mlist.id, touched)
    if mlist.archive is not ArchivePolicy.OFF:
        if texts is None:
            texts = [view.plain_text(content_filter.filtered(message.raw, mlist))
                     for message, _ in posts]
        search.index(session, zip([message for message, _ in posts], texts, strict=True))


def archive(session: Session, mlist: MailingList, message: Message, parsed: Parsed) -> None:
    """One post into the archive (see archive_all)."""
    archive_all(session, mlist, [(message, parsed)])


def save(session: Session, message: Message) -> Message:
    """Insert a message just received and give it its id. A Core insert: the ORM's
    flush cost more than the insert, for every mail. The object stays out of the
    session (nothing changes it after this; `set_state` writes by id)."""
    (message.id,) = insert_messages(session, [{c: getattr(message, c)
                                                for c in _MESSAGE_COLUMNS}])
    return message


# Ids for many rows at once, taken from the message table's own sequence.
_NEXT_IDS = text("SELECT nextval(pg_get_serial_sequence('message', 'id')) "
                 "FROM generate_series(1, :n)")


def insert_messages(session: Session, rows: list[dict]) -> list[int]:
    """Insert message rows (message_values); their ids, in order. SQLite takes them in
    one INSERT ... RETURNING. On PostgreSQL many rows are given ids from the sequence
    first and copied (bulk.insert_new): the single INSERT of a thousand rows (17,000
    placeholders) cost psycopg more to rewrite in Python than the server took to store
    it."""
    connection = session.connection()
    if len(rows) < 2 or connection.dialect.name != "postgresql":
        return list(connection.execute(_INSERT_MESSAGE, rows).scalars())
    ids = sorted(connection.execute(_NEXT_IDS, {"n": len(rows)}).scalars())
    bulk.insert_new(session, Message.__table__,
                  [{**row, "id": pk} for row, pk in zip(rows, ids, strict=True)])
    return ids


def set_state(session: Session, message: Message, state: MessageState) -> None:
    session.execute(update(Message).where(Message.id == message.id).values(state=state))
    message.state = state
