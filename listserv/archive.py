"""Reading the store: the threaded archive, its feed and mbox export, and the
moderation queue; plus importing old mail into the archive (stored and threaded,
never sent).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Select, select
from sqlmodel import Session

from listserv import mbox, store, thread, view
from listserv.models import MailingList, Message, MessageKind, MessageState, ThreadNode
from listserv.parse import parse


def held(session: Session, mlist: MailingList) -> list[Message]:
    return list(session.scalars(select(Message).where(
        Message.list_id == mlist.id, Message.state == MessageState.HELD)
        .order_by(Message.id)))


def import_mail(session: Session, mlist: MailingList, mails: Iterable[mbox.Mail]) -> int:
    """Archive old messages (stored and threaded, never sent); how many were new. A
    Message-ID already archived, or met earlier in `mails`, is skipped. A message without
    a usable Date keeps its envelope's date, so it is shown when it was sent, not when
    it was imported."""
    seen: set[str] = set()
    posts = []
    for mail in mails:
        parsed = parse(mail.raw)
        message = store.new_message(mlist, mail.raw, parsed, kind=MessageKind.POST,
                                    state=MessageState.IMPORTED, mail_from=mail.sender)
        message.date = message.date or mail.date
        if message.message_id not in seen:
            seen.add(message.message_id)
            posts.append((message, parsed))
    known = store.archived_ids(session, mlist.id, seen)
    posts = [(message, parsed) for message, parsed in posts if message.message_id not in known]
    session.add_all(message for message, _ in posts)
    session.flush()
    store.archive_all(session, mlist, posts)
    return len(posts)


def import_message(session: Session, mlist: MailingList, raw: bytes) -> bool:
    """Archive one old message; False when its Message-ID is already archived."""
    return import_mail(session, mlist, [mbox.Mail(raw)]) == 1


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
    return [{"message_id": mid, "parent_id": thread.nearest_real_parent(nodes, mid),
             "thread_id": tid, "subject": subject} for mid, tid, subject in result]


# --- export and feed: what went through store.archive, read back -------------------------

@dataclass(frozen=True)
class Selection:
    """Which archived messages of a list: all, one thread, or a span of dates (by the
    message's Date, else when it was received: the date the archive orders by)."""

    list_id: int
    thread_id: str | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive


def month_span(month: str) -> tuple[datetime, datetime]:
    """The first instant of YYYY-MM and of the month after; ValueError if it is not one."""
    if not re.fullmatch(r"\d{4}-\d{2}", month):
        raise ValueError(month)
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    following = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start, following


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


def export_mbox(session: Session, selection: Selection) -> Iterator[bytes]:
    """The selected messages as mbox entries, oldest first; `listserv archive import`
    of them stores the same bytes again (see mbox)."""
    result = session.execute(_archived(selection).order_by(ThreadNode.date, Message.id)
                             .execution_options(yield_per=EXPORT_ROWS))
    for raw, mail_from, from_address, date in result:
        yield mbox.entry(raw, mail_from or from_address, date)


@dataclass(frozen=True)
class Post:
    """One entry of the list's feed."""

    message_id: str
    subject: str
    author: str  # the sender's name, else the part of the address before "@"
    date: datetime
    summary: str


FEED_SUMMARY = 500  # characters of text per feed entry


def latest_posts(session: Session, list_id: int, limit: int = 30) -> list[Post]:
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
        posts.append(Post(message_id, subject, name or address.partition("@")[0], date,
                          summary))
    return posts
