"""Reading the store: the threaded archive, its feed and mbox export, and the
moderation queue; plus importing old mail into the archive (stored and threaded,
never sent).

The archive's pages read through the functions below: each is one or two indexed
queries returning plain data, so a page costs the same at 100 or 100,000 messages.
Only what went through store.archive is shown: a post with a thread node.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Row, Select, column, func, literal, select, text
from sqlalchemy.orm import aliased
from sqlmodel import Session
from sqlmodel.sql.sqltypes import UTCDateTime

from listserv import mbox, privacy, store, thread, view
from listserv.models import (
    ArchivePolicy,
    MailingList,
    Message,
    MessageKind,
    MessageState,
    ThreadNode,
    ThreadSummary,
)
from listserv.parse import Parsed, parse


def held(session: Session, mlist: MailingList | None) -> list[Message]:
    """The posts held on one list, or on every list (None), oldest first."""
    query = select(Message).where(Message.state == MessageState.HELD)
    if mlist is not None:
        query = query.where(Message.list_id == mlist.id)
    return list(session.scalars(query.order_by(Message.id)))


_IMPORTED_FIELDS = [f for f in store.Imported.__dataclass_fields__ if f != "id"]


def import_mail(session: Session, mlist: MailingList, mails: Iterable[Read]) -> int:
    """Archive old messages (stored and threaded, never sent), given with what reading
    them found (see parsed_mails); how many were new. A Message-ID already archived, or
    met earlier in `mails`, is skipped. A message without a usable Date keeps its
    envelope's date, so it is shown when it was sent, not when it was imported."""
    rows: dict[str, tuple[dict, Read]] = {}
    for read in mails:
        values = store.message_values(mlist, read.mail.raw, read.parsed,
                                      kind=MessageKind.POST, state=MessageState.IMPORTED,
                                      mail_from=read.mail.sender)
        values["date"] = values["date"] or read.mail.date
        rows.setdefault(values["message_id"], (values, read))
    known = store.archived_ids(session, mlist.id, rows)
    new = [(values, read) for mid, (values, read) in rows.items() if mid not in known]
    if not new:
        return 0
    ids = store.insert_messages(session, [values for values, _ in new])
    posts = [(store.Imported(id=pk, **{f: values[f] for f in _IMPORTED_FIELDS}), read.parsed)
             for pk, (values, read) in zip(ids, new, strict=True)]
    store.archive_all(session, mlist, posts, [read.text for _, read in new])
    return len(posts)


@dataclass(frozen=True)
class Read:
    """A mail with what archiving it needs read out of its bytes: the fields, and the
    text for the search index."""

    mail: mbox.Mail
    parsed: Parsed
    text: str


def _read(raw: bytes) -> tuple[Parsed, str]:
    return parse(raw), view.plain_text(raw)


def _read_all(raws: list[bytes]) -> list[tuple[Parsed, str]]:
    return [_read(raw) for raw in raws]


# Mails handed to a parsing process at a time, and chunks read ahead per process: enough
# to keep the processes busy while the database is written, little enough to stay a
# few megabytes.
PARSE_CHUNK = 200
READ_AHEAD = 2
# Fewer mails than this are parsed here: starting a process (and flanker in it) takes
# longer than parsing them.
IN_PROCESS = 1000


def parsed_mails(mails: Iterable[mbox.Mail], workers: int = 0) -> Iterator[Read]:
    """Each mail with what reading it found, in order. Reading is half of an import's
    time and needs nothing from the database, so with `workers` other processes parse
    the next mails while this one stores the last ones (spawned, not forked: the
    database connection must not be shared with a child)."""
    mails = iter(mails)
    head = list(itertools.islice(mails, IN_PROCESS))
    if workers < 1 or len(head) < IN_PROCESS:
        yield from (Read(mail, *_read(mail.raw)) for mail in itertools.chain(head, mails))
        return
    mails = itertools.chain(head, mails)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[tuple[list[mbox.Mail], Future[list[tuple[Parsed, str]]]]] = deque()

        def submit() -> None:
            if chunk := list(itertools.islice(mails, PARSE_CHUNK)):
                pending.append((chunk, pool.submit(_read_all, [m.raw for m in chunk])))

        for _ in range(workers * READ_AHEAD):
            submit()
        while pending:
            chunk, done = pending.popleft()
            submit()
            yield from (Read(mail, *read) for mail, read in zip(chunk, done.result(),
                                                                strict=True))


def import_message(session: Session, mlist: MailingList, raw: bytes) -> bool:
    """Archive one old message; False when its Message-ID is already archived."""
    return import_mail(session, mlist, parsed_mails([mbox.Mail(raw)])) == 1


def thread_rows(session: Session, mlist: MailingList) -> list[dict]:
    """One row per archived message: its nearest archived ancestor and its thread."""
    nodes = {}
    for row in session.scalars(select(ThreadNode).where(ThreadNode.list_id == mlist.id)):
        nodes[row.message_id] = thread.Node(row.message_id, real=row.message_pk is not None,
                                            parent_id=row.parent_id, thread_id=row.thread_id)
    result = session.execute(
        select(ThreadNode.message_id, ThreadNode.thread_id, Message.subject)
        .join(Message, Message.id == ThreadNode.message_pk)
        .where(ThreadNode.list_id == mlist.id).order_by(Message.id))
    parents = thread.nearest_real_parents(nodes)
    return [{"message_id": mid, "parent_id": parents[mid], "thread_id": tid,
             "subject": subject} for mid, tid, subject in result]


# --- what the archive's pages read ------------------------------------------------------

@dataclass(frozen=True)
class ListEntry:
    """A list on the front page."""

    mlist: MailingList
    messages: int
    last_date: datetime | None


@dataclass(frozen=True)
class ThreadPage:
    threads: list[ThreadSummary]
    number: int  # 1-based
    has_next: bool


# --- export and feed: what went through store.archive, read back -------------------------

@dataclass(frozen=True)
class Selection:
    """Which archived messages of a list: all, one thread, or a span of dates (by the
    message's Date, else when it was received: the date the archive orders by)."""

    list_id: int
    thread_id: str | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive


def month_of(month: str) -> tuple[datetime, datetime]:
    """The span of a YYYY-MM a reader typed; ValueError if it is not one."""
    if not re.fullmatch(r"\d{4}-\d{2}", month):
        raise ValueError(month)
    return month_span(int(month[:4]), int(month[5:]))


def _archived(selection: Selection) -> Select:
    """Messages with a real thread node are exactly those store.archive took in: held,
    discarded, looped and duplicate mail never gets one."""
    query = (select(Message.raw, Message.mail_from, Message.from_address, ThreadNode.date)
             .join(ThreadNode, ThreadNode.message_pk == Message.id)
             .where(ThreadNode.list_id == selection.list_id,
                    Message.kind == MessageKind.POST))
    if selection.thread_id is not None:
        query = query.where(ThreadNode.thread_id == selection.thread_id)
    if selection.start is not None:
        query = query.where(ThreadNode.date >= selection.start)
    if selection.end is not None:
        query = query.where(ThreadNode.date < selection.end)
    return query


def any_archived(session: Session, selection: Selection) -> bool:
    return session.execute(_archived(selection).with_only_columns(Message.id).limit(1)
                           ).first() is not None


# Rows fetched at a time when exporting: a 100,000-message list is never all in memory.
EXPORT_ROWS = 200


def export_mbox(session: Session, selection: Selection, *, public: bool = False
                ) -> Iterator[bytes]:
    """The selected messages as mbox entries, oldest first; `listserv archive import`
    of them stores the same bytes again (see mbox). A `public` export, as the web
    serves it, leaves out the fields that show where a poster was (see privacy)."""
    result = session.execute(_archived(selection).order_by(ThreadNode.date, Message.id)
                             .execution_options(yield_per=EXPORT_ROWS))
    for raw, mail_from, from_address, date in result:
        yield mbox.entry(privacy.public(raw) if public else raw, mail_from or from_address,
                         date)


@dataclass(frozen=True)
class Post:
    """An archived message as a page shows it; `depth` is its nesting in a thread."""

    message_id: str
    subject: str
    from_name: str
    from_address: str
    date: datetime | None
    raw: bytes
    depth: int = 0


@dataclass(frozen=True)
class Ref:
    """A link to another message: its parent or a reply."""

    message_id: str
    subject: str
    from_name: str


@dataclass(frozen=True)
class MessagePage:
    post: Post
    thread_id: str
    parent: Ref | None
    replies: list[Ref]


def listed(session: Session) -> list[ListEntry]:
    """The lists whose archive the front page names (private ones as members-only), with
    their counts summed over the thread summaries rather than counted message by message."""
    totals = (select(ThreadSummary.list_id, func.sum(ThreadSummary.messages).label("n"),
                     func.max(ThreadSummary.last_date).label("last"))
              .group_by(ThreadSummary.list_id).subquery())
    rows = session.execute(
        select(MailingList, totals.c.n, totals.c.last)
        .outerjoin(totals, totals.c.list_id == MailingList.id)
        .where(MailingList.archive != ArchivePolicy.OFF).order_by(MailingList.address))
    return [ListEntry(mlist, n or 0, last) for mlist, n, last in rows]


def threads(session: Session, list_id: int, number: int, size: int = 50) -> ThreadPage:
    """Page `number` of the list's threads, latest activity first (one index range)."""
    rows = list(session.scalars(
        select(ThreadSummary).where(ThreadSummary.list_id == list_id)
        .order_by(ThreadSummary.last_date.desc(), ThreadSummary.id.desc())
        .limit(size + 1).offset((number - 1) * size)))
    return ThreadPage(rows[:size], number, len(rows) > size)


# A loose index scan: each step seeks ix_thread_node_date for the first message dated
# after the month before, so listing the months costs one seek per month, not a scan of
# every message. Only the month arithmetic differs between the databases.
_MONTHS = """
    WITH RECURSIVE month(d) AS (
        SELECT (SELECT date FROM thread_node WHERE list_id = :list_id AND date IS NOT NULL
                ORDER BY date LIMIT 1)
        UNION ALL
        SELECT (SELECT date FROM thread_node WHERE list_id = :list_id AND date >= {next}
                ORDER BY date LIMIT 1)
        FROM month WHERE month.d IS NOT NULL)
    SELECT d FROM month WHERE d IS NOT NULL"""
_NEXT_MONTH = {"sqlite": "date(month.d, 'start of month', '+1 month')",
               "postgresql": "date_trunc('month', month.d, 'UTC') + interval '1 month'"}


def months(session: Session, list_id: int) -> list[tuple[int, int]]:
    """The (year, month) pairs that have messages, newest first."""
    dialect = session.get_bind().dialect.name
    statement = text(_MONTHS.format(next=_NEXT_MONTH[dialect])).columns(
        column("d", UTCDateTime()))
    dates = session.scalars(statement, {"list_id": list_id})
    return sorted({(d.year, d.month) for d in dates}, reverse=True)


def month_span(year: int, month: int) -> tuple[datetime, datetime]:
    """The first instant of the month and of the next one, UTC."""
    start = datetime(year, month, 1, tzinfo=UTC)
    return start, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


def month_threads(session: Session, list_id: int, year: int, month: int, number: int,
                  size: int = 50) -> ThreadPage:
    """Page `number` of the threads with a message dated in that month, latest activity
    first."""
    start, end = month_span(year, month)
    active = (select(ThreadNode.thread_id)
              .where(ThreadNode.list_id == list_id, ThreadNode.date >= start,
                     ThreadNode.date < end))
    rows = list(session.scalars(
        select(ThreadSummary)
        .where(ThreadSummary.list_id == list_id, ThreadSummary.thread_id.in_(active))
        .order_by(ThreadSummary.last_date.desc(), ThreadSummary.id.desc())
        .limit(size + 1).offset((number - 1) * size)))
    return ThreadPage(rows[:size], number, len(rows) > size)


_POST_COLUMNS = (Message.message_id, Message.subject, Message.from_name,
                 Message.from_address, Message.date)


def _skeleton(session: Session, list_id: int, thread_id: str
              ) -> tuple[dict[str, thread.Node], dict[str, Post]]:
    """Every node of a thread (placeholders too, for the links through them) and its
    archived posts, in one query."""
    rows = session.execute(
        select(ThreadNode.message_id, ThreadNode.parent_id, ThreadNode.date, Message.id,
               *_POST_COLUMNS[1:], Message.raw)
        .outerjoin(Message, (Message.id == ThreadNode.message_pk)
                   & (Message.kind == MessageKind.POST))
        .where(ThreadNode.list_id == list_id, ThreadNode.thread_id == thread_id))
    nodes: dict[str, thread.Node] = {}
    posts: dict[str, Post] = {}
    for mid, parent_id, node_date, pk, subject, name, address, date, data in rows:
        nodes[mid] = thread.Node(mid, real=pk is not None, parent_id=parent_id,
                                 thread_id=thread_id)
        if pk is not None:
            posts[mid] = Post(mid, subject, name, address, date or node_date, data or b"")
    return nodes, posts


def _children(nodes: dict[str, thread.Node], posts: dict[str, Post]
              ) -> dict[str | None, list[str]]:
    """Each post's replies, re-attached past placeholders, oldest first; None: roots."""
    children: dict[str | None, list[str]] = defaultdict(list)
    parents = thread.nearest_real_parents(nodes)
    for mid in posts:
        children[parents[mid]].append(mid)
    oldest = datetime.min.replace(tzinfo=UTC)
    for replies in children.values():
        replies.sort(key=lambda m: (posts[m].date or oldest, m))
    return children


def tree_order(nodes: dict[str, thread.Node], posts: dict[str, Post]) -> list[Post]:
    """The posts depth-first, each reply after its parent, siblings by date; iterative,
    since a long back-and-forth nests hundreds deep."""
    children = _children(nodes, posts)
    ordered: list[Post] = []
    stack = [(mid, 0) for mid in reversed(children[None])]
    seen: set[str] = set()
    while stack:
        mid, depth = stack.pop()
        if mid in seen:
            continue
        seen.add(mid)
        post = posts[mid]
        ordered.append(Post(post.message_id, post.subject, post.from_name, post.from_address,
                            post.date, post.raw, depth))
        stack.extend((child, depth + 1) for child in reversed(children.get(mid, [])))
    return ordered


def thread_posts(session: Session, list_id: int, thread_id: str) -> list[Post]:
    """A thread's archived posts in reading order; empty for an unknown thread."""
    return tree_order(*_skeleton(session, list_id, thread_id))


# Placeholders a message page walks through to a post's archived parent or replies. A
# client leaves out a message or two; a chain longer than this is a References bomb,
# and the page shows no link through it rather than spend a lookup on each.
MAX_PLACEHOLDER_HOPS = 32


def _through_placeholders(session: Session, list_id: int, start: str, *, up: bool
                          ) -> list[Row]:
    """The archived posts nearest to node `start` going up (the node itself, or its
    nearest archived ancestor) or down (its children, and through placeholders theirs):
    one recursive query, at most MAX_PLACEHOLDER_HOPS deep, where a lookup per
    placeholder took seconds for a post with 5,000 References."""
    def nodes(node: type[ThreadNode], hops: ColumnElement[int]) -> Select:
        return (select(node.message_id, node.parent_id, Message.id.label("pk"),
                       Message.subject, Message.from_name, node.date, hops.label("hops"))
                .outerjoin(Message, (Message.id == node.message_pk)
                           & (Message.kind == MessageKind.POST))
                .where(node.list_id == list_id))
    walk = nodes(ThreadNode, literal(1)).where(
        (ThreadNode.message_id if up else ThreadNode.parent_id) == start
    ).cte("walk", recursive=True)
    node = aliased(ThreadNode)
    link = node.message_id == walk.c.parent_id if up else node.parent_id == walk.c.message_id
    walk = walk.union_all(nodes(node, walk.c.hops + 1).join(walk, link).where(
        walk.c.pk.is_(None), walk.c.hops < MAX_PLACEHOLDER_HOPS))
    return list(session.execute(
        select(walk.c.message_id, walk.c.subject, walk.c.from_name, walk.c.date)
        .where(walk.c.pk.is_not(None))))


def _parent(session: Session, list_id: int, message_id: str, parent_id: str | None
            ) -> Ref | None:
    """The nearest archived ancestor; None past a loop back to the post itself."""
    rows = _through_placeholders(session, list_id, parent_id, up=True) if parent_id else []
    return next((Ref(mid, subject, name) for mid, subject, name, _ in rows
                 if mid != message_id), None)


def _replies(session: Session, list_id: int, message_id: str) -> list[Ref]:
    """The posts whose nearest archived ancestor is this one, oldest first."""
    oldest = datetime.min.replace(tzinfo=UTC)
    found = {mid: (date or oldest, Ref(mid, subject, name))
             for mid, subject, name, date in _through_placeholders(
                 session, list_id, message_id, up=False) if mid != message_id}
    return [ref for _, ref in sorted(found.values(), key=lambda p: (p[0], p[1].message_id))]


def message_page(session: Session, list_id: int, message_id: str) -> MessagePage | None:
    """An archived post with its parent and replies, whatever the size of its thread."""
    row = session.execute(
        select(*_POST_COLUMNS, Message.raw, ThreadNode.thread_id, ThreadNode.parent_id)
        .join(ThreadNode, ThreadNode.message_pk == Message.id)
        .where(ThreadNode.list_id == list_id, ThreadNode.message_id == message_id,
               Message.kind == MessageKind.POST)).first()
    if row is None:
        return None
    *fields, thread_id, parent_id = row
    return MessagePage(Post(*fields), thread_id,
                       _parent(session, list_id, message_id, parent_id),
                       _replies(session, list_id, message_id))


def raw_message(session: Session, list_id: int, message_id: str) -> bytes | None:
    """The stored bytes of an archived post."""
    return session.scalars(
        select(Message.raw).join(ThreadNode, ThreadNode.message_pk == Message.id)
        .where(ThreadNode.list_id == list_id, ThreadNode.message_id == message_id,
               Message.kind == MessageKind.POST)).first()


@dataclass(frozen=True)
class FeedEntry:
    """One entry of the list's feed."""

    message_id: str
    subject: str
    author: str  # the sender's name, else the part of the address before "@"
    date: datetime
    summary: str


FEED_SUMMARY = 500  # characters of text per feed entry


def latest_posts(session: Session, list_id: int, limit: int = 30) -> list[FeedEntry]:
    """The newest archived posts, newest first, with the start of their text."""
    rows = session.execute(
        select(Message.message_id, Message.subject, Message.from_name, Message.from_address,
               ThreadNode.date, Message.raw)
        .join(ThreadNode, ThreadNode.message_pk == Message.id)
        .where(ThreadNode.list_id == list_id, Message.kind == MessageKind.POST)
        .order_by(ThreadNode.date.desc(), Message.id.desc()).limit(limit))
    posts = []
    for message_id, subject, name, address, date, raw in rows:
        text = " ".join(view.plain_text(raw, limit=FEED_SUMMARY * 2).split())
        summary = text if len(text) <= FEED_SUMMARY else text[:FEED_SUMMARY] + "…"
        posts.append(FeedEntry(message_id, subject, name or address.partition("@")[0], date,
                          summary))
    return posts
