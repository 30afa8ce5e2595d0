"""A message removed everywhere while its thread holds (`message erase`, the owners' page,
the author's confirmed request, `member forget --messages`): its row, Message-ID, date
and thread node stay, so replies keep their parent; its bytes become a tombstone, and
its text leaves the search index, the digest issues kept, and the copies not yet sent.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, exists, false, func, or_, select, update
from sqlmodel import Session

from listserv import db, digest, headers, roster, search, store, view
from listserv.config import Config
from listserv.enums import ArchivePolicy, DeliveryState, MessageKind, MessageState, TokenKind
from listserv.models import (
    AutoReply,
    BounceEvent,
    DigestIssue,
    DigestItem,
    Follow,
    MailingList,
    Member,
    Message,
    Mute,
    ThreadNode,
    ThreadSummary,
    Token,
    utcnow,
)
from listserv.queue_tables import Delivery, Expansion, Outgoing, RecipientFailure
from listserv.roster import UserError
from listserv.templating import render

log = logging.getLogger("listserv.erasure")


class By(enum.StrEnum):
    """Who had a message erased: the tombstone says so."""

    OWNERS = "owners"
    AUTHOR = "author"


# What a tombstone keeps of the header: what threading and the archive's order need.
KEPT_FIELDS = frozenset({b"message-id", b"date", b"in-reply-to", b"references"})
# What anonymising takes out of the header besides any field naming the address.
SENDER_FIELDS = frozenset({b"from", b"sender", b"reply-to"})
ANONYMOUS = "anonymous@invalid"  # RFC 2606: never anyone's address
# Fields that hold message ids, not people: an address-like id stays (threading).
_ID_FIELDS = frozenset({b"message-id", b"in-reply-to", b"references"})


def tombstone(raw: bytes, when: datetime, by: By) -> bytes:
    """What stays of the bytes: the threading fields as received, and a line saying when
    and by whom the message was removed (what every page, export and feed shows)."""
    fields, _ = headers.split_head(headers.crlf(raw))
    kept = b"".join(f for f in fields if headers.field_name(f) in KEPT_FIELDS)
    text = render("mail/tombstone.txt", by=by.value, date=when.strftime("%Y-%m-%d"))
    return kept + b"MIME-Version: 1.0\r\n" + headers.text_part(text)


def anonymous(raw: bytes, address: str) -> bytes:
    """The bytes without the sender's name and address in the header: From becomes
    ANONYMOUS, and Sender, Reply-To and any field naming the address (Return-Path,
    Received "for", DKIM's i=) go; the body stays byte for byte."""
    data = headers.crlf(raw)
    fields, body = headers.split_head(data)
    needle = address.lower().encode()
    kept = [f for f in fields if headers.field_name(f) not in SENDER_FIELDS
            and (headers.field_name(f) in _ID_FIELDS or not needle or needle not in f.lower())]
    return f"From: {ANONYMOUS}\r\n".encode() + b"".join(kept) + data[body:]


def find(session: Session, mlist: MailingList, message_id: str, *,
         archived: bool = False) -> Message | None:
    """The list's post with this Message-ID: the archived one before a held copy, or
    with `archived` only that one."""
    message_id = message_id.strip().removeprefix("<").removesuffix(">")
    query = (select(Message).outerjoin(ThreadNode, ThreadNode.message_pk == Message.id)
             .where(Message.list_id == mlist.id, Message.message_id == message_id,
                    Message.kind == MessageKind.POST)
             .order_by(ThreadNode.id.is_(None), Message.id))
    if archived:
        query = query.where(ThreadNode.id.is_not(None))
    return session.scalars(query).first()


def erase_id(session: Session, config: Config, mlist: MailingList, message_id: str,
             reason: str = "") -> Message:
    """`message erase` and the owners' page: UserError when there is nothing to erase."""
    message = find(session, mlist, message_id)
    if message is None:
        raise UserError(f"{mlist.address} has no post <{message_id.strip('<> ')}>")
    if not erase(session, config, message, reason=reason):
        raise UserError(f"<{message.message_id}> was erased already")
    return message


@dataclass(frozen=True)
class Listed:
    """An archived post as the owners' erase page lists it."""

    message_id: str
    subject: str
    sender: str
    date: datetime | None
    erased: bool


def recent(session: Session, mlist: MailingList, words: str = "", limit: int = 50
           ) -> list[Listed]:
    """The newest archived posts, or those whose Message-ID, subject or sender holds
    `words`: what an owner picks the post to erase from."""
    query = (select(Message.message_id, Message.subject, Message.from_name,
                    Message.from_address, ThreadNode.date, Message.erased_at)
             .join(ThreadNode, ThreadNode.message_pk == Message.id)
             .where(ThreadNode.list_id == mlist.id, Message.kind == MessageKind.POST))
    words = words.strip().strip("<>")
    if words:
        like = f"%{words.lower()}%"
        query = query.where(func.lower(Message.message_id).like(like)
                            | func.lower(Message.subject).like(like)
                            | func.lower(Message.from_name).like(like)
                            | Message.from_address.like(like))
    rows = session.execute(query.order_by(ThreadNode.date.desc(), Message.id.desc())
                           .limit(limit))
    return [Listed(mid, subject, name or address, date, erased is not None)
            for mid, subject, name, address, date, erased in rows]


def _thread_of(session: Session, message: Message) -> str | None:
    return session.scalars(select(ThreadNode.thread_id).where(
        ThreadNode.message_pk == message.id)).first()


def _stop_copies(session: Session, message: Message, *, cancel: bool) -> None:
    """With `cancel`, jobs not yet claimed are cancelled, and those not yet written
    (an expansion still going) never will be; then the bytes of every copy
    with no job left to send are emptied: the message's own copies and notices, and the
    copies of the digest issues and summaries that carry it (one still to go out
    carries the others' posts too, and keeps its bytes). A copy being sent at
    this moment keeps its bytes: the worker holds them already."""
    copies = select(Outgoing.id).where(Outgoing.message_pk == message.id)
    if cancel:  # members not yet given a job get none (fanout.expand)
        session.execute(delete(Expansion).where(Expansion.outgoing_id.in_(copies)))
        session.execute(update(Delivery).where(
            Delivery.outgoing_id.in_(copies), Delivery.state == DeliveryState.QUEUED)
            .values(state=DeliveryState.CANCELLED, done_at=utcnow(),
                    last_error="the message was erased"))
    sending = exists().where(Delivery.outgoing_id == Outgoing.id,
                             Delivery.state.in_([DeliveryState.QUEUED, DeliveryState.SENDING]))
    session.execute(update(Outgoing).where((Outgoing.message_pk == message.id)
                                           | _digest_copies(session, message), ~sending)
                    .values(data=b"", slots=""), execution_options={"synchronize_session": False})


def _digest_copies(session: Session, message: Message) -> ColumnElement[bool]:
    """The stored copies of the digest issues (and their summaries) that carry the
    message: each form's Message-ID names its list, volume and issue
    (digest_format.digest_message_id)."""
    local = session.get_one(MailingList, message.list_id).addresses.local
    named = [db.holds_bytes(session.get_bind(), Outgoing.data,
                            f"<{local}.digest.{volume}.{number}.".encode())
             for volume, number in session.execute(
                 select(DigestIssue.volume, DigestIssue.number).join(
                     DigestItem, DigestItem.issue_id == DigestIssue.id)
                 .where(DigestItem.message_pk == message.id))]
    return (Outgoing.message_pk.is_(None) & (Outgoing.list_id == message.list_id)
            & or_(false(), *named))


def _rewrite_issues(session: Session, config: Config, message: Message) -> None:
    """Digest issues already sent keep their MIME form for the archive: those carrying
    the message are written again from the posts as they are now."""
    issue_ids = session.scalars(select(DigestItem.issue_id).where(
        DigestItem.message_pk == message.id, DigestItem.issue_id.is_not(None))).all()
    for issue_id in issue_ids:
        digest.rewrite(session, config, session.get(DigestIssue, issue_id))


def _recount(session: Session, message: Message) -> None:
    """The search entry and the thread list's counts, from the message as it is now."""
    search.forget(session, [message])
    thread_id = _thread_of(session, message)
    if thread_id is None:
        return
    mlist = session.get_one(MailingList, message.list_id)
    store.summarize(session, message.list_id, [thread_id])
    session.execute(update(ThreadSummary).where(
        ThreadSummary.list_id == message.list_id, ThreadSummary.thread_id == thread_id)
        .values(version=ThreadSummary.version + 1))
    if message.erased_at is None and mlist.archive is not ArchivePolicy.OFF:
        search.index(session, [(message, view.plain_text(message.raw))])


def erase(session: Session, config: Config, message: Message, *, reason: str = "",
          by: By = By.OWNERS) -> bool:
    """Make `message` a tombstone everywhere, in the caller's transaction; False when it
    was erased already. A held post is discarded: no one approves a tombstone."""
    if message.erased_at is not None:
        return False
    now = utcnow()
    message.raw = tombstone(message.raw, now, by)
    message.size = len(message.raw)
    message.subject = message.from_name = message.from_address = ""
    message.mail_from = message.sender_key = ""
    message.erased_at, message.erased_reason = now, headers.one_line(reason)
    if message.state is MessageState.HELD:
        message.state = MessageState.DISCARDED
    session.add(message)
    session.execute(update(ThreadNode).where(ThreadNode.message_pk == message.id)
                    .values(subject_key=""))
    session.execute(delete(DigestItem).where(DigestItem.message_pk == message.id,
                                             DigestItem.issue_id.is_(None)))
    session.execute(delete(Token).where(Token.message_pk == message.id,
                                        Token.kind == TokenKind.HOLD))
    session.flush()
    _stop_copies(session, message, cancel=True)
    _recount(session, message)
    _rewrite_issues(session, config, message)
    log.info("erased <%s> of list %d (by %s): %s", message.message_id, message.list_id,
             by.value, message.erased_reason or "no reason given")
    return True


def anonymise(session: Session, config: Config, message: Message) -> None:
    """Keep the text, take the sender's name and address out of the bytes, the stored
    columns, the search index and the digest issues kept."""
    address = message.from_address or message.sender_key
    message.raw = anonymous(message.raw, address)
    message.size = len(message.raw)
    message.from_name = message.from_address = message.mail_from = message.sender_key = ""
    session.add(message)
    session.flush()
    _stop_copies(session, message, cancel=False)
    _recount(session, message)
    _rewrite_issues(session, config, message)


def posted_by(session: Session, address: str) -> list[Message]:
    """Every message stored from `address` (its From or its envelope sender), any list."""
    address = address.lower()
    return list(session.scalars(select(Message).where(
        (Message.from_address == address) | (Message.sender_key == address))
        .order_by(Message.id)))


@dataclass(frozen=True)
class Forgotten:
    """What `member forget` did."""

    lists: list[str]  # the lists the address was on
    records: int  # bounce records, tokens, mutes, follows and delivery failures deleted
    messages: int  # posts erased or anonymised


# The rows that name an address besides its memberships: deleted with it.
_RECORDS = (BounceEvent.address, Token.address, Mute.address, Follow.address,
            RecipientFailure.address, AutoReply.address)


def forget(session: Session, config: Config, address: str, *, messages: bool = False,
           anonymise_only: bool = False) -> Forgotten:
    """An address gone from every list with its bounce records, tokens and mutes; with
    `messages`, everything it posted erased (or, `anonymise_only`, kept without its
    sender). A request under privacy law, so nothing is mailed to anyone."""
    mailbox = roster.normalize(address)
    address = mailbox[1] if mailbox else address.strip().lower()
    lists = sorted({mlist.address for mlist, _ in roster.memberships(session, address)})
    session.execute(delete(Member).where(Member.address == address))
    records = sum(session.execute(delete(c.class_).where(c == address)).rowcount
                  for c in _RECORDS)
    done = 0
    for message in posted_by(session, address) if messages else []:
        if anonymise_only:
            anonymise(session, config, message)
            done += 1
        else:
            done += erase(session, config, message, reason="member forget")
    log.info("forgot %s: %d lists, %d records, %d messages %s", address, len(lists),
             records, done, "anonymised" if anonymise_only else "erased")
    return Forgotten(lists, records, done)
