"""Digests: the pending posts of a list gathered into numbered issues, sent to the
members who asked for digests, and kept for the archive.

`fan_out` queues a DigestItem for every accepted post; this module only reads the
store, and writes the issues and their delivery jobs. An issue is built in one
transaction with the list row locked, so two servers sharing a database never send
the same post twice (each item gets its issue once).

Replies to a digest as a whole ("Re: Dev Digest, Vol 3, Issue 12") would start a
thread of their own; `rethread` finds the item they answer and threads them under it.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime
from urllib.parse import quote

from sqlalchemy import and_, func, select, update
from sqlmodel import Session

from listserv import compose, headers, owner_templates, privacy, slots, store, thread, urls, view
from listserv.address import ListAddresses, Purpose
from listserv.config import Config
from listserv.models import (
    ArchivePolicy,
    DeliveryMode,
    DigestFrequency,
    DigestIssue,
    DigestItem,
    MailingList,
    Message,
    ThreadNode,
    ThreadSummary,
    VolumeFrequency,
)
from listserv.parse import Parsed, parse
from listserv.templating import render

# --- when ------------------------------------------------------------------------------

_ON_DAY: dict[DigestFrequency, Callable[[datetime], bool]] = {
    DigestFrequency.DAILY: lambda day: True,
    DigestFrequency.WEEKLY: lambda day: day.weekday() == 0,  # Monday
    DigestFrequency.MONTHLY: lambda day: day.day == 1,
}


def latest_slot(frequency: DigestFrequency, hour: int, now: datetime) -> datetime:
    """The last moment at or before `now` when the schedule came due (UTC)."""
    slot = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    while slot > now or not _ON_DAY[frequency](slot):
        slot -= timedelta(days=1)
    return slot


def due(mlist: MailingList, pending_bytes: int, oldest: datetime | None,
        now: datetime) -> bool:
    """Whether the list's next digest goes out now. `oldest` is when the oldest pending
    post came: a slot only counts when it passed after both that post and the last
    digest, so a post that arrives after today's slot waits for the next one, and a
    slot that found nothing pending simply passes."""
    if pending_bytes <= 0 or oldest is None:
        return False
    if mlist.digest_max_bytes and pending_bytes > mlist.digest_max_bytes:
        return True
    since = max(oldest, mlist.digest_last_sent_at or oldest)
    return latest_slot(mlist.digest_frequency, mlist.digest_send_hour, now) > since


_PERIOD: dict[VolumeFrequency, Callable[[datetime], tuple]] = {
    VolumeFrequency.YEARLY: lambda t: (t.year,),
    VolumeFrequency.QUARTERLY: lambda t: (t.year, (t.month - 1) // 3),
    VolumeFrequency.MONTHLY: lambda t: (t.year, t.month),
    VolumeFrequency.WEEKLY: lambda t: tuple(t.isocalendar()[:2]),
    VolumeFrequency.DAILY: lambda t: (t.year, t.month, t.day),
}


def numbering(mlist: MailingList, now: datetime) -> tuple[int, int]:
    """(volume, number) of the next issue: a new volume starts at issue 1 once the
    list's `digest_volume_frequency` period changed since the last digest."""
    last = mlist.digest_last_sent_at
    period = _PERIOD[mlist.digest_volume_frequency]
    if last is not None and period(last) != period(now):
        return mlist.digest_volume + 1, 1
    return mlist.digest_volume, mlist.digest_issue + 1


# --- what an issue holds ------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One post as a digest (and its archive page) shows it."""

    position: int
    message_id: str
    subject: str
    author: str
    from_header: str
    date: datetime
    thread_id: str
    thread_subject: str
    raw: bytes = b""


@dataclass(frozen=True)
class Group:
    subject: str
    entries: list[Entry]


@dataclass(frozen=True)
class Item:
    """A DigestItem row with its post."""

    id: int
    size: int
    created_at: datetime
    entry: Entry


def _items(session: Session, list_id: int, where: object, order: object,
           with_raw: bool) -> list[Item]:
    """The items `where` selects, with their posts and threads."""
    query = (
        select(DigestItem.id, DigestItem.size, DigestItem.created_at, DigestItem.position,
               Message.message_id, Message.subject, Message.from_name, Message.from_address,
               Message.date, Message.received_at, ThreadNode.thread_id,
               ThreadSummary.subject.label("thread_subject"),
               (Message.raw if with_raw else Message.size).label("raw"))
        .join(Message, Message.id == DigestItem.message_pk)
        .outerjoin(ThreadNode, and_(ThreadNode.list_id == DigestItem.list_id,
                                    ThreadNode.message_id == Message.message_id))
        .outerjoin(ThreadSummary, and_(ThreadSummary.list_id == DigestItem.list_id,
                                       ThreadSummary.thread_id == ThreadNode.thread_id))
        .where(DigestItem.list_id == list_id, where).order_by(order))
    found = []
    for row in session.execute(query):
        name, address = row.from_name, row.from_address
        entry = Entry(
            position=row.position or 0, message_id=row.message_id, subject=row.subject,
            author=name or address,
            from_header=headers.mailbox(name, address) if address else headers.one_line(name),
            date=row.date or row.received_at, thread_id=row.thread_id or row.message_id,
            thread_subject=row.thread_subject or row.subject,
            raw=row.raw if with_raw else b"")
        found.append(Item(row.id, row.size, row.created_at, entry))
    return found


def by_thread(entries: Iterable[Entry]) -> list[Group]:
    """Entries grouped by thread, threads in the order their first entry came."""
    groups: dict[str, Group] = {}
    for entry in entries:
        group = groups.setdefault(entry.thread_id, Group(entry.thread_subject, []))
        group.entries.append(entry)
    return list(groups.values())


def pending(session: Session, list_id: int) -> list[Item]:
    """The posts waiting for the next issue, read thread by thread and numbered in that
    order, so a thread's items stand together in the digest."""
    found = {i.entry.message_id: i for i in _items(
        session, list_id, DigestItem.issue_id.is_(None), DigestItem.id, with_raw=True)}
    ordered = [e for g in by_thread(i.entry for i in found.values()) for e in g.entries]
    return [dataclasses.replace(found[e.message_id], entry=dataclasses.replace(e, position=n))
            for n, e in enumerate(ordered, 1)]


def issue_entries(session: Session, issue: DigestIssue) -> list[Entry]:
    """The posts of a sent issue in their order, for its archive page."""
    return [i.entry for i in _items(session, issue.list_id, DigestItem.issue_id == issue.id,
                                    DigestItem.position, with_raw=False)]


def issues(session: Session, list_id: int) -> list[tuple[DigestIssue, int]]:
    """Every issue of a list, newest first, with how many posts it carries."""
    count = (select(func.count(DigestItem.id)).where(DigestItem.issue_id == DigestIssue.id)
             .scalar_subquery())
    rows = session.execute(
        select(DigestIssue, count).where(DigestIssue.list_id == list_id)
        .order_by(DigestIssue.created_at.desc(), DigestIssue.id.desc()))
    return [(issue, messages) for issue, messages in rows]


def find_issue(session: Session, list_id: int, volume: int, number: int
               ) -> DigestIssue | None:
    return session.scalars(select(DigestIssue).where(
        DigestIssue.list_id == list_id, DigestIssue.volume == volume,
        DigestIssue.number == number)).first()


# --- how it reads ---------------------------------------------------------------------

def reply_subject(subject: str) -> str:
    return "Re: " + thread.strip_prefixes(subject)


def reply_link(addresses: ListAddresses, message_id: str, subject: str) -> str:
    """A mailto: that answers one post on the list, in its thread (RFC 6068)."""
    return (f"mailto:{addresses.posting}?In-Reply-To={quote(f'<{message_id}>', safe='')}"
            f"&subject={quote(reply_subject(subject), safe='')}")


def issue_url(base_url: str, addresses: ListAddresses, volume: int, number: int) -> str:
    return f"{urls.archive_url(base_url, addresses)}digest/{volume}/{number}/"


_SEPARATOR = "-" * 30  # between messages (RFC 1153)
_STUFFED = re.compile(r"^(-{30})$", re.MULTILINE)


def _item_text(raw: bytes) -> str:
    """A post's readable text for the plain digest; a line that would read as the
    message separator gets a space in front (RFC 1153)."""
    return _STUFFED.sub(r" \1", view.plain_text(raw).replace("\r\n", "\n").strip("\n"))


def _context(mlist: MailingList, base_url: str, volume: int, number: int,
             entries: Sequence[Entry]) -> dict:
    addresses = store.addresses_of(mlist)
    web = mlist.archive is not ArchivePolicy.OFF

    def item(entry: Entry) -> dict:
        return {"position": entry.position, "message_id": entry.message_id,
                "subject": entry.subject, "author": entry.author, "from": entry.from_header,
                "date": format_datetime(entry.date),
                "reply_url": reply_link(addresses, entry.message_id, entry.subject),
                "web_url": urls.message_url(base_url, addresses, entry.message_id)
                if web else ""}
    groups = by_thread(entries)
    subject = subject_of(mlist.name, volume, number)
    url = issue_url(base_url, addresses, volume, number) if web else ""
    header = owner_templates.rendered(mlist, "digest_header", base_url, subject=subject,
                                      volume=volume, number=number, issue_url=url)
    return {"name": mlist.name, "addresses": addresses, "volume": volume, "number": number,
            "subject": subject, "header": (header or "").strip("\n"),
            "threads": [{"subject": g.subject, "entries": [item(e) for e in g.entries]}
                        for g in groups],
            "items": [item(e) for e in entries],
            "separator": _SEPARATOR,
            "issue_url": url}


def subject_of(name: str, volume: int, number: int) -> str:
    return render("mail/digest_subject.txt", name=name, volume=volume, number=number).strip()


# A reply to the digest as a whole: its subject, or its In-Reply-To, names the issue.
_SUBJECT = re.compile(r"Digest, Vol (\d+), Issue (\d+)", re.IGNORECASE)
_MSGID = re.compile(r"^(.+)\.digest\.(\d+)\.(\d+)\.\w+\.[0-9a-f]+@")


def digest_message_id(addresses: ListAddresses, volume: int, number: int, form: str) -> str:
    """Names the list and the issue, so a reply's In-Reply-To leads back to it."""
    return f"{addresses.local}.digest.{volume}.{number}.{form}.{secrets.token_hex(6)}@" \
           f"{addresses.domain}"


def _boundary(parts: Sequence[bytes]) -> bytes:
    while True:
        boundary = b"=_digest_" + secrets.token_hex(12).encode()
        if not any(boundary in part for part in parts):
            return boundary


def _eight_bit(data: bytes) -> bytes:
    """The transfer encoding an entity holding `data` must declare (RFC 2045 6.4)."""
    return b"" if data.isascii() else b"Content-Transfer-Encoding: 8bit\r\n"


def _multipart(kind: str, parts: Sequence[bytes]) -> bytes:
    """A multipart entity (header and body) holding `parts` (each a whole entity)."""
    boundary = _boundary(parts)
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return (f'Content-Type: multipart/{kind}; boundary="'.encode() + boundary + b'"\r\n'
            + _eight_bit(body) + b"\r\n" + body + b"--" + boundary + b"--\r\n")


def mime_body(context: dict, entries: Sequence[Entry]) -> bytes:
    """multipart/mixed: the table of contents, then a multipart/digest of the posts as
    message/rfc822, each the stored bytes (RFC 2046 5.1.5) less the fields that show
    where its poster was (see privacy)."""
    posts = [b"Content-Type: message/rfc822\r\n" + _eight_bit(e.raw) + b"\r\n"
             + headers.crlf(privacy.public(e.raw)) for e in entries]
    toc = headers.text_part(render("mail/digest_toc.txt", **context))
    return _multipart("mixed", [toc, _multipart("digest", posts)])


def plain_body(context: dict, entries: Sequence[Entry]) -> bytes:
    """RFC 1153: one text/plain body in UTF-8, each post as its readable text (made
    here: only this form has it)."""
    items = [item | {"text": _item_text(e.raw)}
             for item, e in zip(context["items"], entries, strict=True)]
    return headers.text_part(render("mail/digest_plain.txt", **context | {"items": items}))


@dataclass(frozen=True)
class Form:
    """One form of an issue: the copy members get (with their own List-Unsubscribe in a
    slot) and the same bytes with the plain mailto: form, as the archive keeps it."""

    copy: slots.Copy
    archived: bytes


def form(mlist: MailingList, base_url: str, context: dict, body: bytes, kind: str,
         date: datetime) -> Form:
    addresses = context["addresses"]
    message_id = digest_message_id(addresses, context["volume"], context["number"], kind)
    fields = [("From", headers.mailbox(mlist.name, addresses.at(Purpose.REQUEST))),
              ("To", addresses.posting), ("Reply-To", addresses.posting),
              ("Subject", headers.unstructured(context["subject"])),
              ("Date", format_datetime(date)), ("Message-ID", f"<{message_id}>")]
    fields += [(k, v) for k, v in compose.list_headers(
        addresses, mlist.name, base_url, message_id,
        archived=mlist.archive is not ArchivePolicy.OFF) if k != "Archived-At"]
    if context["issue_url"]:
        fields.append(("Archived-At", f"<{context['issue_url']}>"))
    head = headers.render_fields(fields)
    rest = b"MIME-Version: 1.0\r\n" + body
    slot = compose.unsubscribe_header(addresses, base_url)
    leave = f"List-Unsubscribe: <mailto:{addresses.at(Purpose.LEAVE)}>\r\n".encode()
    return Form(slots.Copy(head + rest, (dataclasses.replace(slot, at=len(head)),)),
                head + leave + rest)


# --- building and sending ---------------------------------------------------------------

@dataclass(frozen=True)
class Sent:
    """What `build` did: the issue, and how many members each form went to."""

    issue: DigestIssue
    messages: int
    mime_members: int
    plain_members: int


def _locked(session: Session, list_id: int) -> MailingList | None:
    """The list row, locked until commit: on PostgreSQL a second server building the
    same list's digest waits here, then finds nothing pending (SQLite's BEGIN
    IMMEDIATE already lets one writer in at a time)."""
    return session.scalars(select(MailingList).where(MailingList.id == list_id)
                           .with_for_update().execution_options(populate_existing=True)
                           ).first()


def build(session: Session, config: Config, list_id: int, now: datetime, *,
          force: bool = False) -> Sent | None:
    """Make the list's next issue from its pending posts and queue it for its digest
    members, if it is due (or `force`, for `digest send`) and anything is pending."""
    mlist = _locked(session, list_id)
    found = pending(session, list_id) if mlist is not None else []
    if not found:
        return None
    size = sum(i.size for i in found)
    if not force and not due(mlist, size, min(i.created_at for i in found), now):
        return None
    volume, number = numbering(mlist, now)
    base_url = config.web.base_url
    entries = [i.entry for i in found]
    context = _context(mlist, base_url, volume, number, entries)
    mime = form(mlist, base_url, context, mime_body(context, entries), "mime", now)
    issue = DigestIssue(list_id=list_id, volume=volume, number=number,
                        subject=context["subject"], created_at=now, size=size,
                        data=mime.archived)
    session.add(issue)
    session.flush()
    session.execute(update(DigestItem), [{"id": i.id, "issue_id": issue.id,
                                          "position": i.entry.position} for i in found])
    mlist.digest_volume, mlist.digest_issue, mlist.digest_last_sent_at = volume, number, now
    session.add(mlist)
    mime_rcpts = list(store.recipients(session, mlist.id, DeliveryMode.DIGEST_MIME))
    plain_rcpts = list(store.recipients(session, mlist.id, DeliveryMode.DIGEST_PLAIN))
    _queue(session, config, mlist, mime_rcpts, mime)
    if plain_rcpts:  # made only for those who take it: the archive keeps the MIME form
        _queue(session, config, mlist, plain_rcpts,
               form(mlist, base_url, context, plain_body(context, entries), "plain", now))
    return Sent(issue, len(entries), len(mime_rcpts), len(plain_rcpts))


def _queue(session: Session, config: Config, mlist: MailingList, rcpts: list[str],
           copy: Form) -> None:
    if rcpts:
        store.queue(session, copy.copy.data, store.addresses_of(mlist).at(Purpose.BOUNCES),
                    rcpts, config.delivery.max_recipients_per_transaction,
                    slots=copy.copy.slots_json(), list_id=mlist.id)


def due_lists(session: Session, now: datetime) -> list[int]:
    """The lists whose digest is due, from one aggregate over the pending items."""
    rows = session.execute(
        select(MailingList, func.sum(DigestItem.size), func.min(DigestItem.created_at))
        .join(DigestItem, DigestItem.list_id == MailingList.id)
        .where(DigestItem.issue_id.is_(None)).group_by(MailingList.id))
    return [mlist.id for mlist, size, oldest in rows if due(mlist, size or 0, oldest, now)]


# --- replies to a digest as a whole -------------------------------------------------------

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
        addresses = store.addresses_of(mlist)
        if not match or match.group(1) != addresses.local or \
                not parent.endswith("@" + addresses.domain):
            return None
    else:
        match = _SUBJECT.search(parsed.subject)
        if not match:
            return None
    return find_issue(session, mlist.id, int(match.group(2 if parent else 1)),
                      int(match.group(3 if parent else 2)))


def rethread(session: Session, mlist: MailingList, raw: bytes, parsed: Parsed) -> Parsed:
    """A reply to a digest as a whole, threaded under the item it answers: its fields
    as if it answered the item (inferred_parent set); the bytes are not touched, only
    the copies carry the item's In-Reply-To, References and subject.
    Any other post, and a reply whose item cannot be told, comes back as it was."""
    issue = replied_issue(session, mlist, parsed)
    if issue is None:
        return parsed
    entries = {i.entry.position: i.entry for i in _items(
        session, mlist.id, DigestItem.issue_id == issue.id, DigestItem.position, True)}
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

