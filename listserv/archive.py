"""What the archive's pages read: the lists on the front page, a list's threads (by
activity or by month), a thread in reading order, a message with its parent and
replies, its stored bytes. Each is one or two indexed queries returning plain data,
so a page costs the same at 100 or 100,000 messages. Only what went through
store.archive is shown: a post with a thread node.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    bindparam,
    column,
    func,
    literal,
    select,
    text,
    union_all,
)
from sqlalchemy.orm import aliased
from sqlmodel import Session
from sqlmodel.sql.sqltypes import UTCDateTime

from listserv import thread
from listserv.enums import ArchivePolicy, MessageKind
from listserv.models import MailingList, Message, ThreadNode, ThreadSummary


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
    erased: bool = False  # a tombstone: no sender, subject or text (erasure.py)
    pk: int = 0  # Message.id


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


@dataclass(frozen=True)
class Found:
    """An archived post as its message page first reads it: enough to tell a reader
    who holds the page already that it has not changed (web/caching), before the
    queries for its parent and replies."""

    pk: int
    post: Post
    thread_id: str
    parent_id: str | None
    thread_messages: int  # the thread's count and last date: a new reply changes them
    thread_last: datetime | None
    thread_version: int  # bumped by erasure: a reply's subject and sender may have gone


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


# Built once (see _NEIGHBOURS).
# The date and erasure come out as one datetime and a boolean: each datetime read is a
# conversion, and a thread page reads hundreds of rows.
_SKELETON = (select(ThreadNode.message_id, ThreadNode.parent_id, Message.id.label("pk"),
                    *_POST_COLUMNS[1:4],
                    func.coalesce(Message.date, ThreadNode.date, type_=UTCDateTime).label("date"),
                    Message.raw, Message.erased_at.is_not(None).label("erased"))
             .outerjoin(Message, (Message.id == ThreadNode.message_pk)
                        & (Message.kind == MessageKind.POST))
             .where(ThreadNode.list_id == bindparam("list_id"),
                    ThreadNode.thread_id == bindparam("thread_id")))


def _skeleton(session: Session, list_id: int, thread_id: str
              ) -> tuple[dict[str, thread.Node], dict[str, Row]]:
    """Every node of a thread (placeholders too, for the links through them) and its
    archived posts' rows, in one query."""
    nodes: dict[str, thread.Node] = {}
    posts: dict[str, Row] = {}
    # Core, not the ORM's execute, and all rows at once, not one fetch each: both cost
    # more than the query on PostgreSQL.
    rows = session.connection().execute(_SKELETON, {"list_id": list_id, "thread_id": thread_id})
    for row in rows.all():
        nodes[row.message_id] = thread.Node(row.message_id, real=row.pk is not None,
                                            parent_id=row.parent_id, thread_id=thread_id)
        if row.pk is not None:
            posts[row.message_id] = row
    return nodes, posts


def _children(nodes: dict[str, thread.Node], posts: dict[str, Row]
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


def tree_order(nodes: dict[str, thread.Node], posts: dict[str, Row]) -> list[Post]:
    """The posts depth-first, each reply after its parent, siblings by date; iterative,
    since a long back-and-forth nests hundreds deep. Each Post is made here, with its
    depth, once: made in _skeleton and copied with it, they cost as much as the query."""
    children = _children(nodes, posts)
    ordered: list[Post] = []
    stack = [(mid, 0) for mid in reversed(children[None])]
    seen: set[str] = set()
    while stack:
        mid, depth = stack.pop()
        if mid in seen:
            continue
        seen.add(mid)
        r = posts[mid]
        ordered.append(Post(mid, r.subject, r.from_name, r.from_address, r.date, r.raw or b"",
                            depth, r.erased, r.pk))
        stack.extend((child, depth + 1) for child in reversed(children.get(mid, [])))
    return ordered


def thread_posts(session: Session, list_id: int, thread_id: str) -> list[Post]:
    """A thread's archived posts in reading order; empty for an unknown thread."""
    return tree_order(*_skeleton(session, list_id, thread_id))


# Placeholders a message page walks through to a post's archived parent or replies. A
# client leaves out a message or two; a chain longer than this is a References bomb,
# and the page shows no link through it rather than spend a lookup on each.
MAX_PLACEHOLDER_HOPS = 32


def _walk(*, up: bool) -> Select:
    """The archived posts nearest to a node going up (from node :parent: the node
    itself, or its nearest archived ancestor) or down (from node :message: its
    children, and through placeholders theirs): a recursive query, at most
    MAX_PLACEHOLDER_HOPS deep, where a lookup per placeholder took seconds for a post
    with 5,000 References. Each row says which way it was found (`up`).

    The walk carries its list id, and each step joins on it: with `list_id = :list_id`
    instead, SQLite without statistics (ANALYZE) read the step's nodes down the list id
    index, every node of the list per step, 3 s a page at 1,000,000 messages."""
    def nodes(node: type[ThreadNode], hops: ColumnElement[int]) -> Select:
        return (select(node.list_id, node.message_id, node.parent_id, Message.id.label("pk"),
                       Message.subject, Message.from_name, node.date, hops.label("hops"))
                .outerjoin(Message, (Message.id == node.message_pk)
                           & (Message.kind == MessageKind.POST)))
    walk = nodes(ThreadNode, literal(1)).where(
        ThreadNode.list_id == bindparam("list_id"),
        (ThreadNode.message_id if up else ThreadNode.parent_id)
        == bindparam("parent" if up else "message")
    ).cte("walk_up" if up else "walk_down", recursive=True)
    node = aliased(ThreadNode)
    link = node.message_id == walk.c.parent_id if up else node.parent_id == walk.c.message_id
    walk = walk.union_all(nodes(node, walk.c.hops + 1).join(
        walk, (node.list_id == walk.c.list_id) & link).where(
        walk.c.pk.is_(None), walk.c.hops < MAX_PLACEHOLDER_HOPS))
    return (select(literal(up).label("up"), walk.c.message_id, walk.c.subject,
                   walk.c.from_name, walk.c.date)
            .where(walk.c.pk.is_not(None)))


# Both walks in one statement (a round trip fewer), built once: building them (and
# their cache keys) for each page took 12 ms median of a message page on a loaded
# machine, where PostgreSQL ran them in 0.1 ms.
_NEIGHBOURS = union_all(_walk(up=True), _walk(up=False))


def _neighbours(session: Session, list_id: int, message_id: str, parent_id: str | None
                ) -> tuple[Ref | None, list[Ref]]:
    """A post's nearest archived ancestor (None past a loop back to the post itself)
    and the posts whose nearest archived ancestor it is, oldest first."""
    rows = [row for row in session.execute(_NEIGHBOURS, {
        "list_id": list_id, "parent": parent_id, "message": message_id})
        if row.message_id != message_id]
    parent = next((Ref(r.message_id, r.subject, r.from_name) for r in rows if r.up), None)
    oldest = datetime.min.replace(tzinfo=UTC)
    found = {r.message_id: (r.date or oldest, Ref(r.message_id, r.subject, r.from_name))
             for r in rows if not r.up}
    replies = [ref for _, ref in sorted(found.values(), key=lambda p: (p[0], p[1].message_id))]
    return parent, replies


# A message page's first query, built once (see _NEIGHBOURS).
_FIND = (select(Message.id, *_POST_COLUMNS, Message.raw, Message.erased_at, ThreadNode.thread_id,
                ThreadNode.parent_id, ThreadSummary.messages, ThreadSummary.last_date,
                ThreadSummary.version)
         .join(ThreadNode, ThreadNode.message_pk == Message.id)
         .outerjoin(ThreadSummary, (ThreadSummary.list_id == ThreadNode.list_id)
                    & (ThreadSummary.thread_id == ThreadNode.thread_id))
         .where(ThreadNode.list_id == bindparam("list_id"),
                ThreadNode.message_id == bindparam("message_id"),
                Message.kind == MessageKind.POST))


def find_message(session: Session, list_id: int, message_id: str) -> Found | None:
    """An archived post with its thread's state, in one query."""
    row = session.execute(_FIND, {"list_id": list_id, "message_id": message_id}).first()
    if row is None:
        return None
    pk, *fields, erased_at, thread_id, parent_id, count, last, version = row
    return Found(pk, Post(*fields, erased=erased_at is not None), thread_id, parent_id,
                 count or 0, last, version or 0)


def message_page(session: Session, list_id: int, found: Found) -> MessagePage:
    """An archived post with its parent and replies, whatever the size of its thread."""
    return MessagePage(found.post, found.thread_id, *_neighbours(
        session, list_id, found.post.message_id, found.parent_id))


_RAW = (select(Message.id, Message.raw, Message.erased_at)
        .join(ThreadNode, ThreadNode.message_pk == Message.id)
        .where(ThreadNode.list_id == bindparam("list_id"),
               ThreadNode.message_id == bindparam("message_id"),
               Message.kind == MessageKind.POST))


def raw_message(session: Session, list_id: int, message_id: str
                ) -> tuple[int, bytes] | None:
    """The id and stored bytes of an archived post; b"" for an erased one (its tombstone
    is no message as received: /raw and its attachments answer 410 Gone)."""
    row = session.execute(_RAW, {"list_id": list_id, "message_id": message_id}).first()
    if row is None:
        return None
    return row.id, b"" if row.erased_at is not None else row.raw
