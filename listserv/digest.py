"""Digests: the pending posts of a list gathered into numbered issues, sent to the
members who asked for digests, and kept for the archive.

`fan_out` queues a DigestItem for every accepted post; this module only reads the
store, and writes the issues and their delivery jobs (`digest_format` writes their
bytes). An issue is built in one transaction with the list row locked, so two servers
sharing a database never send the same post twice (each item gets its issue once).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select, update
from sqlmodel import Session

from listserv import content_filter, db, fanout, headers, outbox, owner_templates, parse, summary
from listserv.address import Purpose
from listserv.config import Config
from listserv.digest_format import (
    Entry,
    Form,
    by_thread,
    form,
    issue_context,
    mime_body,
    plain_body,
)
from listserv.enums import DeliveryMode, DigestFrequency, Lane, VolumeFrequency
from listserv.models import (
    DigestIssue,
    DigestItem,
    DigestSummary,
    MailingList,
    Message,
    Mute,
    ThreadNode,
    ThreadSummary,
)

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


# --- the items of an issue ----------------------------------------------------------------

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
               Message.date, Message.received_at, Message.id.label("message_pk"),
               ThreadNode.thread_id,
               ThreadSummary.subject.label("thread_subject"), Message.erased_at,
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
            raw=row.raw if with_raw else b"", message_pk=row.message_pk,
            erased=row.erased_at is not None)
        found.append(Item(row.id, row.size, row.created_at, entry))
    return found


def pending(session: Session, list_id: int) -> list[Item]:
    """The posts waiting for the next issue, read thread by thread and numbered in that
    order, so a thread's items stand together in the digest."""
    found = {i.entry.message_id: i for i in _items(
        session, list_id, DigestItem.issue_id.is_(None), DigestItem.id, with_raw=True)}
    ordered = [e for g in by_thread(i.entry for i in found.values()) for e in g.entries]
    return [dataclasses.replace(found[e.message_id], entry=dataclasses.replace(e, position=n))
            for n, e in enumerate(ordered, 1)]


def issue_entries(session: Session, issue: DigestIssue, *, with_raw: bool = False
                  ) -> list[Entry]:
    """The posts of a sent issue in their order, for its archive page (and, with their
    bytes, for finding the one a reply to the issue answers)."""
    return [i.entry for i in _items(session, issue.list_id, DigestItem.issue_id == issue.id,
                                    DigestItem.position, with_raw=with_raw)]


def issues(session: Session, list_id: int) -> list[tuple[DigestIssue, int]]:
    """Every issue of a list, newest first, with how many posts it carries."""
    count = (select(func.count(DigestItem.id)).where(DigestItem.issue_id == DigestIssue.id)
             .scalar_subquery())
    rows = session.execute(
        select(DigestIssue, count).where(DigestIssue.list_id == list_id)
        .order_by(DigestIssue.created_at.desc(), DigestIssue.id.desc()))
    return [(issue, messages) for issue, messages in rows]


@dataclass(frozen=True)
class KeptSummary:
    """What a list of issues says of one's summary, without reading its bytes."""

    subject: str
    threads: int
    size: int  # bytes of the mail as kept (without the members' own links)


def summaries(session: Session, list_id: int) -> dict[int, KeptSummary]:
    """The summaries of a list's issues, by issue id; an issue with no summary members
    has none."""
    rows = session.execute(
        select(DigestSummary.issue_id, DigestSummary.subject, DigestSummary.threads,
               func.length(DigestSummary.data))
        .join(DigestIssue, DigestIssue.id == DigestSummary.issue_id)
        .where(DigestIssue.list_id == list_id))
    return {issue_id: KeptSummary(subject, threads, size)
            for issue_id, subject, threads, size in rows}


def find_summary(session: Session, issue: DigestIssue) -> DigestSummary | None:
    return session.scalars(select(DigestSummary).where(
        DigestSummary.issue_id == issue.id)).first()


def find_issue(session: Session, list_id: int, volume: int, number: int
               ) -> DigestIssue | None:
    return session.scalars(select(DigestIssue).where(
        DigestIssue.list_id == list_id, DigestIssue.volume == volume,
        DigestIssue.number == number)).first()


# --- building and sending ---------------------------------------------------------------

@dataclass(frozen=True)
class Sent:
    """What `build` did: the issue, and how many members each form went to."""

    issue: DigestIssue
    messages: int
    mime_members: int
    plain_members: int
    summary_members: int = 0


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
    entries = _filtered(mlist, [i.entry for i in found])
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
    mime_rcpts = list(fanout.recipients(session, mlist.id, DeliveryMode.DIGEST_MIME))
    plain_rcpts = list(fanout.recipients(session, mlist.id, DeliveryMode.DIGEST_PLAIN))
    _queue(session, config, mlist, mime_rcpts, mime)
    if plain_rcpts:  # made only for those who take it: the archive keeps the MIME form
        _queue(session, config, mlist, plain_rcpts,
               form(mlist, base_url, context, plain_body(context, entries), "plain", now))
    summarized = _summaries(session, config, mlist, issue, context, entries, now)
    return Sent(issue, len(entries), len(mime_rcpts), len(plain_rcpts), summarized)


def _summaries(session: Session, config: Config, mlist: MailingList, issue: DigestIssue,
               context: dict, entries: list[Entry], now: datetime) -> int:
    """Queue the issue's summary for the summary members, and keep it (only when the
    list has any). A member who muted a thread does not see it listed again: members are
    grouped by the threads they muted, one copy written a group, and most mute none."""
    rcpts = list(fanout.recipients(session, mlist.id, DeliveryMode.SUMMARY))
    if not rcpts:
        return 0
    base_url = config.web.base_url
    made = summary.mail(mlist, base_url, context, entries, now)
    session.add(DigestSummary(issue_id=issue.id, subject=made.subject, threads=made.topics,
                              data=made.form.archived))
    muted = _muted(session, mlist.id, {e.thread_id for e in entries})
    groups: dict[frozenset[str], list[str]] = {}
    for address in rcpts:
        groups.setdefault(muted.get(address, frozenset()), []).append(address)
    for threads, members in groups.items():
        kept = [e for e in entries if e.thread_id not in threads]
        if kept:
            _queue(session, config, mlist, members, made.form if len(kept) == len(entries)
                   else summary.mail(mlist, base_url, context, kept, now).form)
    return len(rcpts)


def _muted(session: Session, list_id: int, thread_ids: set[str]) -> dict[str, frozenset[str]]:
    """Which of these threads each member muted."""
    found: dict[str, set[str]] = {}
    for chunk in db.chunks(thread_ids):
        for address, thread_id in session.execute(select(Mute.address, Mute.thread_id).where(
                Mute.list_id == list_id, Mute.thread_id.in_(chunk))):
            found.setdefault(address, set()).add(thread_id)
    return {address: frozenset(threads) for address, threads in found.items()}


def _context(mlist: MailingList, base_url: str, volume: int, number: int,
             entries: list[Entry]) -> dict:
    """issue_context with the owners' digest header rendered into it."""
    context = issue_context(mlist, base_url, volume, number, entries)
    context["header"] = (owner_templates.rendered(
        mlist, "digest_header", base_url, subject=context["subject"], volume=volume,
        number=number, issue_url=context["issue_url"]) or "").strip("\n")
    return context


def _filtered(mlist: MailingList, entries: list[Entry]) -> list[Entry]:
    """The posts as the list's content filter gives them to members."""
    content = content_filter.rules(mlist)
    return [dataclasses.replace(e, raw=content_filter.apply(e.raw, content).data)
            for e in entries]


def rewrite(session: Session, config: Config, issue: DigestIssue) -> None:
    """The MIME form an issue keeps, and its summary, written again from its posts as
    they are now (one was erased or anonymised since), with the issue's date and
    Message-ID as sent."""
    mlist = session.get_one(MailingList, issue.list_id)
    base_url = config.web.base_url
    entries = _filtered(mlist, issue_entries(session, issue, with_raw=True))
    context = _context(mlist, base_url, issue.volume, issue.number, entries)
    sent_id = parse.parse(issue.data).message_id
    issue.data = form(mlist, base_url, context, mime_body(context, entries), "mime",
                      issue.created_at, message_id=sent_id).archived
    session.add(issue)
    kept = find_summary(session, issue)
    if kept is not None:
        made = summary.mail(mlist, base_url, context, entries, issue.created_at)
        kept.threads, kept.data = made.topics, made.form.archived
        session.add(kept)


def _queue(session: Session, config: Config, mlist: MailingList, rcpts: list[str],
           copy: Form) -> None:
    if rcpts:
        outbox.queue(session, copy.copy.data, mlist.addresses.at(Purpose.BOUNCES),
                    rcpts, config.delivery.max_recipients_per_transaction,
                    slots=copy.copy.slots_json(), list_id=mlist.id, lane=Lane.POSTS)


def due_lists(session: Session, now: datetime) -> list[int]:
    """The lists whose digest is due, from one aggregate over the pending items."""
    rows = session.execute(
        select(MailingList, func.sum(DigestItem.size), func.min(DigestItem.created_at))
        .join(DigestItem, DigestItem.list_id == MailingList.id)
        .where(DigestItem.issue_id.is_(None)).group_by(MailingList.id))
    return [mlist.id for mlist, size, oldest in rows if due(mlist, size or 0, oldest, now)]
