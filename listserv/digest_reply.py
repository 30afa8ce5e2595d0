"""Replies to a digest as a whole ("Re: Dev Digest, Vol 3, Issue 12"), which would
start a thread of their own: `rethread` finds the item they answer, from the evidence
in their text, and threads them under it. Ingest asks before a post is stored;
moderation asks again when a held reply is approved.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import select
from sqlmodel import Session

from listserv import digest, thread, urls, view
from listserv.digest_format import reply_subject
from listserv.models import DigestIssue, MailingList, Message, ThreadNode
from listserv.parse import Parsed, parse

# A reply to the digest as a whole: its subject, or its In-Reply-To (see
# digest_format.digest_message_id), names the issue.
_SUBJECT = re.compile(r"Digest, Vol (\d+), Issue (\d+)", re.IGNORECASE)
_MSGID = re.compile(r"^(.+)\.digest\.(\d+)\.(\d+)\.\w+\.[0-9a-f]+@")


@dataclass(frozen=True)
class Candidate:
    """An item a reply to its digest may be answering."""

    position: int
    message_id: str
    subject: str
    text: str  # its readable text


_QUOTED = re.compile(r"^\s*>[>\s]*(.*)$")
_MESSAGE_NO = re.compile(r"^message:\s*(\d+)$")  # RFC 1153 digests, ours and Mailman's
_TOC_LINE = re.compile(r"^(\d+)\.\s+(.+)$")
_SUBJECT_LINE = re.compile(r"^subject:\s*(.+)$")
_MENTION = re.compile(r"(?:\bmessage|\bitem|\bno\.|#)\s*(\d+)\b", re.IGNORECASE)
# Shorter quoted lines ("Hi all,", "Thanks!") say nothing about which post is answered.
_MIN_LINE = 12


def _norm(line: str) -> str:
    return " ".join(line.split()).casefold()


def _split_quote(text: str) -> tuple[list[str], str]:
    """The quoted lines (normalised, without their ">"), and the reply's own text."""
    quoted, own = [], []
    for line in text.splitlines():
        match = _QUOTED.match(line)
        if match:
            if match.group(1).strip():
                quoted.append(_norm(match.group(1)))
        else:
            own.append(line)
    return quoted, "\n".join(own)


def _id_forms(message_id: str) -> tuple[str, ...]:
    """How a Message-ID appears in a digest: bare, in a web link, in a mailto: link."""
    return message_id, urls.quote_id(message_id), quote(f"<{message_id}>", safe="")


def _evidence(text: str, items: Sequence[Candidate]) -> Iterable[dict[int, int]]:
    """Scores per item position, from the most telling evidence to the least."""
    quoted, own = _split_quote(text)
    subjects = {c.position: _norm(c.subject) for c in items}
    yield {c.position: 1 for c in items if any(f in text for f in _id_forms(c.message_id))}
    yield {int(m.group(1)): 1 for line in quoted if (m := _MESSAGE_NO.match(line))}
    yield {int(m.group(1)): 1 for line in quoted if (m := _TOC_LINE.match(line))
           and subjects.get(int(m.group(1))) and m.group(2).startswith(
               subjects[int(m.group(1))])}
    lines = {line for line in quoted if len(line) >= _MIN_LINE}
    yield {c.position: len(lines & {_norm(t) for t in c.text.splitlines()}) for c in items}
    said = {m.group(1) for line in quoted if (m := _SUBJECT_LINE.match(line))}
    yield {c.position: 1 for c in items if subjects[c.position] in said}
    yield {int(n): 1 for n in _MENTION.findall(own)}


def answered(text: str, items: Sequence[Candidate]) -> int | None:
    """The position of the item a reply to the whole digest answers, or None when it
    cannot tell. Each kind of evidence narrows the items the earlier ones left (the
    best scored stay); the first to leave exactly one decides."""
    left = {c.position for c in items}
    for scores in _evidence(text, items):
        scores = {p: s for p, s in scores.items() if p in left and s > 0}
        if not scores:
            continue
        best = max(scores.values())
        left = {p for p, s in scores.items() if s == best}
        if len(left) == 1:
            return left.pop()
    return None


def replied_issue(session: Session, mlist: MailingList, parsed: Parsed) -> DigestIssue | None:
    """The issue a post answers as a whole: its own parent is a digest of this list, or
    it names no parent and its subject names an issue. A reply to another reply of the
    digest answers that reply, not the digest."""
    parent = thread.own_parent(parsed)
    if parent is not None:
        match = _MSGID.match(parent)
        addresses = mlist.addresses
        if not match or match.group(1) != addresses.local or \
                not parent.endswith("@" + addresses.domain):
            return None
    else:
        match = _SUBJECT.search(parsed.subject)
        if not match:
            return None
    return digest.find_issue(session, mlist.id, int(match.group(2 if parent else 1)),
                             int(match.group(3 if parent else 2)))


def rethread(session: Session, mlist: MailingList, raw: bytes, parsed: Parsed) -> Parsed:
    """A reply to a digest as a whole, threaded under the item it answers: its fields
    as if it answered the item (inferred_parent set); the bytes are not touched, only
    the copies carry the item's In-Reply-To, References and subject.
    Any other post, and a reply whose item cannot be told, comes back as it was."""
    issue = replied_issue(session, mlist, parsed)
    if issue is None:
        return parsed
    entries = {e.position: e for e in digest.issue_entries(session, issue, with_raw=True)}
    candidates = [Candidate(e.position, e.message_id, e.subject, view.plain_text(e.raw))
                  for e in entries.values()]
    position = answered(view.plain_text(raw), candidates)
    if position is None:
        return parsed
    item = entries[position]
    return _answering(parsed, item.message_id, item.raw, item.subject)


def _answering(parsed: Parsed, item_id: str, item_raw: bytes, item_subject: str) -> Parsed:
    return dataclasses.replace(parsed, in_reply_to=[item_id], inferred_parent=item_id,
                               references=[*parse(item_raw).references, item_id],
                               subject=reply_subject(item_subject))


def stored_fields(session: Session, message: Message) -> Parsed:
    """A stored post's fields, a digest reply's inferred ones again (a held post,
    approved), from the item it answers as the archive holds it."""
    parsed = parse(message.raw)
    if not message.inferred_parent:
        return parsed
    item = session.execute(
        select(Message.raw, Message.subject).join(ThreadNode, ThreadNode.message_pk == Message.id)
        .where(ThreadNode.list_id == message.list_id,
               ThreadNode.message_id == message.inferred_parent)).first()
    if item is None:  # no longer archived: its id is still the parent
        return dataclasses.replace(parsed, in_reply_to=[message.inferred_parent],
                                   references=[message.inferred_parent],
                                   subject=message.subject,
                                   inferred_parent=message.inferred_parent)
    return _answering(parsed, message.inferred_parent, *item)

