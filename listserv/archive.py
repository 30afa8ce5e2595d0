"""Reading the store: the threaded archive and the moderation queue, plus importing
old mail into the archive (stored and threaded, never sent).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import Session

from listserv import store, thread
from listserv.models import MailingList, Message, MessageKind, MessageState, ThreadNode
from listserv.parse import parse


def held(session: Session, mlist: MailingList) -> list[Message]:
    return list(session.scalars(select(Message).where(
        Message.list_id == mlist.id, Message.state == MessageState.HELD)
        .order_by(Message.id)))


def import_message(session: Session, mlist: MailingList, raw: bytes) -> bool:
    """Archive one old message; False when its Message-ID is already archived."""
    parsed = parse(raw)
    message = store.new_message(mlist, raw, parsed, kind=MessageKind.POST,
                                state=MessageState.IMPORTED)
    if store.is_archived(session, mlist.id, message.message_id):
        return False
    store.save(session, message)
    store.archive(session, mlist, message, parsed)
    session.flush()
    return True


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
