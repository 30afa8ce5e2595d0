"""Reading the store: the threaded archive and the moderation queue, plus importing
old mail into the archive (stored and threaded, never sent).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlmodel import Session

from listserv import mbox, store, thread
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
