"""Mail loops that RFC 3834 does not stop: autoresponders that mark their answers in
their own way (or not at all) and reply to the list, which sends the answer to every
member, whose autoresponder answers again.

Three defences, in policy's rule table: an autoresponder's own header field makes a
post automatic mail (discarded, like `Auto-Submitted`); a subject that reads like an
autoresponder's holds it for a moderator (a person may write "Out of office" too); and
a sender who posted `[lists] max_posts_per_sender_per_thread` times to one thread in
the last `thread_rate_minutes` has the next post held, so whatever slips past the
first two goes round a few times, not for ever.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, bindparam, func, or_, select
from sqlmodel import Session

from listserv.config import ListsConfig
from listserv.models import Message, ThreadNode, utcnow
from listserv.parse import Parsed
from listserv.thread import subject_key

# Subjects autoresponders write, at the start ("Automatic reply: [Dev] Hello") or, for
# Lotus Notes, "Alice is out of the office.".
_AUTOREPLY_SUBJECT = re.compile(
    r"^\s*(automatic reply|auto[- ]?reply|auto[- ]?response|autosvar|auto:|"
    r"out of (the )?office|abwesenheitsnotiz|automatische antwort|"
    r"r[ée]ponse automatique|respuesta autom[áa]tica|risposta automatica|"
    r"automatisch antwoord|vacation reply)|\bis out of the office\b",
    re.IGNORECASE)


def autoreply_subject(subject: str) -> str:
    """Why a subject reads like an autoresponder's answer, or ""."""
    found = _AUTOREPLY_SUBJECT.search(subject)
    if found is None:
        return ""
    return f'the subject reads like an autoresponder\'s ("{found.group(0).strip()}")'


@dataclass(frozen=True)
class ThreadRate:
    """A sender's posts to one thread lately, against the limit."""

    posts: int
    limit: int  # 0: no limit
    minutes: int

    @property
    def reached(self) -> bool:
        return bool(self.limit) and self.posts >= self.limit

    def reason(self, sender: str) -> str:
        return (f"{sender} already posted {self.posts} times to this thread in the last "
                f"{self.minutes} minutes (an autoresponder loop?)")


# The ids of a reply's References looked at: the nearest few find its thread.
_REFERENCES = 20

_message, _node = Message.__table__, ThreadNode.__table__
# The sender's messages of the window in the thread a post replies to (a node with one of
# its `parents`) or under its subject `key` (NULL for none: matches nothing), up to
# `limit`: found through the sender's recent messages (the index of the hourly limit).
# Built once: building it and running it through the ORM for every post cost a
# millisecond, many times what SQLite spends answering it.
_REPLIED = select(_node.c.thread_id).where(
    _node.c.list_id == bindparam("list_id"),
    _node.c.message_id.in_(bindparam("parents", expanding=True)))
_RECENT_IN_THREAD = select(func.count()).select_from(
    select(_message.c.id).join_from(_message, _node, and_(
        _node.c.list_id == _message.c.list_id, _node.c.message_id == _message.c.message_id,
        _node.c.message_pk == _message.c.id)).where(
        _message.c.sender_key == bindparam("sender"),
        _message.c.list_id == bindparam("list_id"),
        _message.c.received_at >= bindparam("since"),
        or_(_node.c.thread_id.in_(_REPLIED), _node.c.subject_key == bindparam("key")),
    ).limit(bindparam("limit")).subquery())


def thread_rate(session: Session, lists: ListsConfig, list_id: int, mail_from: str,
                parsed: Parsed) -> ThreadRate:
    """How many posts the envelope sender had archived in the last minutes in the
    thread a post replies to, or under its subject (autoresponders that drop
    In-Reply-To keep "Re: subject"): one query, over the sender's recent messages (the
    index of the hourly limit), counted up to the limit."""
    limit, minutes = lists.max_posts_per_sender_per_thread, lists.thread_rate_minutes
    parents = [*parsed.in_reply_to, *parsed.references[-_REFERENCES:]]
    key = subject_key(parsed.subject)
    if not limit or not mail_from or not (parents or key):
        return ThreadRate(0, limit, minutes)
    posts = session.connection().execute(_RECENT_IN_THREAD, {
        "sender": mail_from.lower(), "list_id": list_id, "parents": parents,
        "key": key or None, "since": utcnow() - timedelta(minutes=minutes),
        "limit": limit}).scalar_one()
    return ThreadRate(posts, limit, minutes)
