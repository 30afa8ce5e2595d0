"""The archive read back whole: mbox exports (`listserv archive export` and the web's
download links), the list's feed, and the thread rows `archive threads` prints. Only
what went through store.archive is read: a post with a thread node.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, select
from sqlmodel import Session

from listserv import content_filter, mbox, privacy, thread, view
from listserv.archive import month_span
from listserv.enums import MessageKind
from listserv.models import MailingList, Message, ThreadNode

# --- mbox exports ----------------------------------------------------------------------

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


def export_mbox(session: Session, selection: Selection, *,
                public: content_filter.Rules | None = None) -> Iterator[bytes]:
    """The selected messages as mbox entries, oldest first; `listserv archive import`
    of them stores the same bytes again (see mbox). A `public` export, as the web
    serves it, is in the form the list's content filter gives its posts, and leaves out
    the fields that show where a poster was (see privacy)."""
    result = session.execute(_archived(selection).order_by(ThreadNode.date, Message.id)
                             .execution_options(yield_per=EXPORT_ROWS))
    for raw, mail_from, from_address, date in result:
        shown = raw if public is None else privacy.public(content_filter.apply(raw, public).data)
        yield mbox.entry(shown, mail_from or from_address, date)


# --- the feed -------------------------------------------------------------------------

@dataclass(frozen=True)
class FeedEntry:
    """One entry of the list's feed."""

    message_id: str
    subject: str
    author: str  # the sender's name, else the part of the address before "@"
    date: datetime
    summary: str


FEED_SUMMARY = 500  # characters of text per feed entry


def latest_posts(session: Session, mlist: MailingList, limit: int = 30) -> list[FeedEntry]:
    """The newest archived posts, newest first, with the start of their text (as the
    list's content filter gives it)."""
    content = content_filter.rules(mlist)
    list_id = mlist.id
    rows = session.execute(
        select(Message.message_id, Message.subject, Message.from_name, Message.from_address,
               ThreadNode.date, Message.raw)
        .join(ThreadNode, ThreadNode.message_pk == Message.id)
        .where(ThreadNode.list_id == list_id, Message.kind == MessageKind.POST)
        .order_by(ThreadNode.date.desc(), Message.id.desc()).limit(limit))
    posts = []
    for message_id, subject, name, address, date, raw in rows:
        text = " ".join(view.plain_text(content_filter.apply(raw, content).data,
                                        limit=FEED_SUMMARY * 2).split())
        summary = text if len(text) <= FEED_SUMMARY else text[:FEED_SUMMARY] + "…"
        posts.append(FeedEntry(message_id, subject, name or address.partition("@")[0], date,
                          summary))
    return posts


# --- `listserv archive threads` ----------------------------------------------------------

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
