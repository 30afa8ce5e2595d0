"""Who gets a post and the copy they get: the list copy composed once (shared, or with
slots for each member's links), stored with the post's digest item, the author's
acknowledgement and one expansion in the receiver's transaction; then, after the 250,
the members read a chunk at a time by the delivery workers of any process (expand),
less those who muted its thread or whose own options leave it out (own_posts,
skip_if_addressed), plus the digest members who follow its thread, and their jobs
queued in the outbox.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses

from jinja2 import TemplateError
from sqlalchemy import Row, Select, bindparam, delete, insert, or_, select, update
from sqlmodel import Session

from listserv import authenticity, compose, content_filter, db, notices, outbox, slots, urls
from listserv.address import ListAddresses, Purpose
from listserv.authenticity import Asked
from listserv.config import Config
from listserv.enums import ArchivePolicy, DeliveryMode, Lane, ReplyTo, Role, Verp
from listserv.footer import Footer, render_footer
from listserv.models import (
    DigestItem,
    Follow,
    MailingList,
    Member,
    Message,
    Mute,
    ThreadNode,
    utcnow,
)
from listserv.parse import Parsed, read_headers
from listserv.queue_tables import Expansion, Outgoing

log = logging.getLogger("listserv.fanout")

# The statements run for every post received, built once: building one (and its cache
# key) cost more than running it. Core, on the session's connection: they read and
# write nothing the ORM holds.
_node, _mute, _member = ThreadNode.__table__.c, Mute.__table__.c, Member.__table__.c
_follow = Follow.__table__.c
# A member who gets mail now: delivery not switched off, no pause still ahead.
_RECEIVING = (_member.role == Role.MEMBER, _member.disabled_by.is_(None),
              or_(_member.nomail_until.is_(None), _member.nomail_until <= bindparam("now")))
_OF_MESSAGES = (_node.list_id == bindparam("list_id"),
                _node.message_id.in_(bindparam("message_ids", expanding=True)))
_MUTED = select(_node.message_id, _mute.address).join(
    Mute.__table__, (_mute.list_id == _node.list_id) & (_mute.thread_id == _node.thread_id)
).where(*_OF_MESSAGES)
_FOLLOWED = select(_node.message_id, _follow.address).join(
    Follow.__table__,
    (_follow.list_id == _node.list_id) & (_follow.thread_id == _node.thread_id)
).where(*_OF_MESSAGES)
# Of some followers, those whose delivery sends no single posts (a digest of any form):
# who gets each post anyway needs nothing more, and nomail means no mail. A query of
# its own: joined to the follows, SQLite walked every member of the list first.
_DIGEST_MEMBERS = select(_member.address).where(
    _member.list_id == bindparam("list_id"),
    _member.address.in_(bindparam("addresses", expanding=True)), *_RECEIVING,
    _member.delivery.not_in([DeliveryMode.REGULAR, DeliveryMode.NOMAIL]))
# Who gets a post, or a digest of a form: the one member query, read by keyset (member
# id after the last one read) down ix_member_list_id_id, a chunk at a time.
_MEMBERS = (select(_member.id, _member.address)
            .where(_member.list_id == bindparam("list_id"),
                   _member.delivery == bindparam("mode"), *_RECEIVING,
                   _member.id > bindparam("after"))
            .order_by(_member.id).limit(bindparam("chunk")))
# Of the authors and the addressed (To, Cc) of some posts: the few members whose own
# options are not the defaults.
_OPTIONS = select(_member.address, _member.own_posts, _member.skip_if_addressed,
                  _member.acknowledge).where(
    _member.list_id == bindparam("list_id"), _member.role == Role.MEMBER,
    _member.address.in_(bindparam("addresses", expanding=True)),
    or_(~_member.own_posts, _member.skip_if_addressed, _member.acknowledge))
_INSERT_DIGEST_ITEM = insert(DigestItem.__table__)
_INSERT_EXPANSION = insert(Expansion.__table__)
_x, _o = Expansion.__table__.c, Outgoing.__table__.c
# The expansion that waited longest since its last chunk, so posts take turns; on
# PostgreSQL one that another worker is expanding is skipped (its row is locked).
_NEXT = (select(_x.id, _x.list_id, _x.outgoing_id, _x.mail_from, _x.after, _x.jobs,
                Message.__table__.c.message_id, Message.__table__.c.from_address,
                Message.__table__.c.raw)
         .join(Outgoing.__table__, _o.id == _x.outgoing_id)
         .join(Message.__table__, Message.__table__.c.id == _o.message_pk)
         .order_by(_x.advanced_at, _x.id).limit(1)
         .with_for_update(skip_locked=True, of=Expansion.__table__))
_ADVANCE = update(Expansion.__table__).where(_x.id == bindparam("expansion_id")).values(
    after=bindparam("last"), jobs=bindparam("total"), advanced_at=bindparam("now"))
_DONE = delete(Expansion.__table__).where(_x.id == bindparam("expansion_id"))

# Members read at once: by the expansion, a few hundred kB of addresses and a few
# dozen jobs in one transaction (`[delivery] expansion_chunk`); by a digest, in turn.
CHUNK = 5000


def members(session: Session, list_id: int, after: int = 0, chunk: int = CHUNK,
            mode: DeliveryMode = DeliveryMode.REGULAR) -> list[tuple[int, str]]:
    """The next `chunk` members (id, address) after member id `after` who get each post
    (or, for a digest mode, each digest of that form). A member whose `nomail_until` is
    still ahead is left out, and is back once it has passed."""
    # Fetched whole: iterating the result fetched each row with a call of its own.
    return [(id_, address) for id_, address in session.connection().execute(_MEMBERS, {
        "list_id": list_id, "mode": mode, "now": utcnow(), "after": after,
        "chunk": chunk}).all()]


def recipients(session: Session, list_id: int,
               mode: DeliveryMode = DeliveryMode.REGULAR) -> Iterator[str]:
    """Every address `members` gives, chunk after chunk."""
    session.flush()  # members the ORM still holds count too
    after = 0
    while True:
        found = members(session, list_id, after, mode=mode)
        yield from (address for _, address in found)
        if len(found) < CHUNK:
            return
        after = found[-1][0]


def _by_message(session: Session, statement: Select, list_id: int,
                message_ids: Iterable[str]) -> dict[str, set[str]]:
    session.flush()  # the messages' nodes may still be in the ORM's hands
    found: dict[str, set[str]] = {}
    for chunk in db.chunks(set(message_ids)):
        for message_id, address in session.connection().execute(statement, {
                "list_id": list_id, "message_ids": chunk, "now": utcnow()}):
            found.setdefault(message_id, set()).add(address)
    return found


def muted(session: Session, list_id: int, message_ids: Iterable[str]) -> dict[str, set[str]]:
    """The members who muted the thread each of these messages belongs to, by message,
    in one query per thousand."""
    return _by_message(session, _MUTED, list_id, message_ids)


def following(session: Session, list_id: int, message_ids: Iterable[str]
              ) -> dict[str, set[str]]:
    """The digest members who follow the thread of each of these messages, by message:
    they get its posts one by one as well as the digest."""
    followed = _by_message(session, _FOLLOWED, list_id, message_ids)
    digest: set[str] = set()
    for chunk in db.chunks(set().union(*followed.values())):
        digest.update(session.connection().execute(_DIGEST_MEMBERS, {
            "list_id": list_id, "addresses": chunk, "now": utcnow()}).scalars())
    return {message_id: addresses & digest for message_id, addresses in followed.items()}


def addressed(raw: bytes) -> set[str]:
    """The lower-case addresses a post's To and Cc name."""
    fields, _ = read_headers(raw, frozenset({"to", "cc"}))
    values = fields.get("to", []) + fields.get("cc", [])
    return {address.lower() for _, address in getaddresses(values) if "@" in address}


@dataclass
class Options:
    """The members' own options that bear on a group of posts, read in one query."""

    no_own_posts: set[str] = field(default_factory=set)
    skip_if_addressed: set[str] = field(default_factory=set)
    acknowledge: set[str] = field(default_factory=set)

    def left_out(self, author: str, to_cc: set[str]) -> set[str]:
        """Who gets no list copy of this post for options of their own."""
        left = (to_cc & self.skip_if_addressed) if self.skip_if_addressed else set()
        if author in self.no_own_posts:
            left.add(author)
        return left


def options(session: Session, list_id: int, addresses: set[str]) -> Options:
    """The options of those of `addresses` who are members and changed one."""
    found = Options()
    for chunk in db.chunks(addresses):
        for address, own_posts, skip, ack in session.connection().execute(_OPTIONS, {
                "list_id": list_id, "addresses": chunk}):
            if not own_posts:
                found.no_own_posts.add(address)
            if skip:
                found.skip_if_addressed.add(address)
            if ack:
                found.acknowledge.add(address)
    return found


def footer(mlist: MailingList, base_url: str) -> Footer | None:
    """The list's footer; a template an owner broke falls back to the default one, so
    posts still go out (and the log says why)."""
    if mlist.footer == "":
        return None
    key = (mlist.name, mlist.address, base_url, mlist.archive is not ArchivePolicy.OFF)
    try:
        return _rendered_footer(mlist.footer, *key)
    except TemplateError as exc:
        log.warning("list %s: footer template failed (%s); using the default", mlist.address,
                    exc)
        return _rendered_footer(None, *key)


@functools.lru_cache(maxsize=256)
def _rendered_footer(template: str | None, name: str, address: str, base_url: str,
                     archive: bool) -> Footer | None:
    """A list's footer is the same for all its posts until its settings change, and
    those are the key: rendering made a Jinja environment and compiled the template
    again for every post. (A template that fails raises, and is not remembered.)"""
    return render_footer(template, name=name, addresses=ListAddresses(address),
                                 base_url=base_url, archive=archive)


def shared_copies(mlist: MailingList, list_footer: Footer | None) -> bool:
    """Whether every member gets the same copy of a post: only when nothing in it is
    the member's own, that is `verp` off (one envelope sender) and a footer without
    `unsubscribe_url` or `mute_url`. The copy then goes to up to
    `max_recipients_per_transaction` members at once, and its List-Unsubscribe is the
    list's leave address alone: members lose the one-click unsubscribe (RFC 8058), the
    mute link and bounces that name them without parsing."""
    return mlist.verp is Verp.OFF and not (list_footer and list_footer.personal)


def list_copy(mlist: MailingList, message: Message, parsed: Parsed, base_url: str, *,
              config: Config, asked: Asked | None = None) -> tuple[slots.Copy, bool]:
    """The copy of a post that members get, with slots for each member's links, and
    whether it is shared (see shared_copies); also what `listserv doctor` inspects, so
    it checks the very headers members see. `asked`: what DNS said of the post, when
    the receiver asked before its transaction (see authenticity)."""
    addresses = mlist.addresses
    via, results = authenticity.copy_identity(mlist, message, config, asked)
    list_footer = footer(mlist, base_url)
    shared = shared_copies(mlist, list_footer)
    return compose.list_copy(
        message.raw, addresses=addresses, name=mlist.name, base_url=base_url,
        message_id=message.message_id, subject=message.subject,
        add_message_id=parsed.message_id is None, subject_prefix=mlist.subject_prefix,
        reply_to=addresses.posting if mlist.reply_to is ReplyTo.LIST else None,
        footer=list_footer, via=via, authentication=results,
        archived=mlist.archive is not ArchivePolicy.OFF, one_click=not shared,
        replaced=compose.answer_fields(parsed.inferred_parent, parsed.references,
                                       parsed.subject) if parsed.inferred_parent else [],
        content=content_filter.rules(mlist)
    ), shared


def fan_out(session: Session, mlist: MailingList, message: Message, parsed: Parsed,
            base_url: str, *, config: Config) -> None:
    """One post (see fan_out_all)."""
    fan_out_all(session, mlist, [(message, parsed)], base_url, config=config)


def fan_out_all(session: Session, mlist: MailingList, posts: Sequence[tuple[Message, Parsed]],
                base_url: str, *, config: Config, asked: Sequence[Asked | None] = ()) -> None:
    """Store the list copy of each accepted post and one expansion of it, which the
    delivery workers turn into jobs for its members after the 250 (expand); queue the
    post for the next digest, and an acknowledgement to an author who asked for one.
    However many members the list has, this writes a row or two a post. Each copy is
    composed once, with slots for each member's own links, or shared (see
    shared_copies); the posts come from a group of the receiver, with what DNS said of
    each (`asked`, see authenticity)."""
    now = utcnow()
    connection = session.connection()
    connection.execute(_INSERT_DIGEST_ITEM, [
        {"list_id": mlist.id, "message_pk": message.id, "size": message.size,
         "created_at": now} for message, _ in posts])
    bounces = mlist.addresses.at(Purpose.BOUNCES)
    sends = []
    for (message, parsed), known in zip(posts, asked or [None] * len(posts), strict=True):
        copy, shared = list_copy(mlist, message, parsed, base_url, config=config, asked=known)
        if shared:  # a footer without links is still a slot: filled once, for everyone
            sends.append(outbox.Send(copy.personal(slots.Links()), bounces, (), message.id,
                                     list_id=mlist.id))
        else:
            sends.append(outbox.Send(copy.data, bounces, (), message.id, copy.slots_json(),
                                     mlist.id))
    connection.execute(_INSERT_EXPANSION, [
        {"list_id": mlist.id, "outgoing_id": outgoing_id, "mail_from": bounces, "after": 0,
         "jobs": 0, "created_at": now, "advanced_at": now}
        for outgoing_id in outbox.store(session, sends)])
    chosen = options(session, mlist.id, {parsed.from_address for _, parsed in posts})
    for message, parsed in posts:
        if parsed.from_address in chosen.acknowledge:
            acknowledge(session, config, mlist, message, parsed.from_address)


def acknowledge(session: Session, config: Config, mlist: MailingList, message: Message,
                author: str) -> None:
    """Tell an author who asked for it that their post went out to the list: a notice,
    through the outbox like the others, and within their daily share of them."""
    archived = mlist.archive is not ArchivePolicy.OFF
    notices.send(session, config, mlist, author, "acknowledge", auto="auto-generated",
                 subject=message.subject, in_reply_to=message.message_id,
                 request_address=mlist.addresses.at(Purpose.REQUEST),
                 message_url=urls.message_url(config.web.base_url, mlist.addresses,
                                              message.message_id) if archived else "")


def _chunk_of(session: Session, row: Row, chunk: int) -> tuple[list[tuple[int, str]],
                                                                 list[str]]:
    """The next members of a post's expansion and who of them (with, in the first
    chunk, the digest members who follow its thread) get it: not those who muted its
    thread, nor those whose own options leave it out."""
    found = members(session, row.list_id, row.after, chunk)
    named = addressed(row.raw)
    left = (muted(session, row.list_id, [row.message_id]).get(row.message_id, set())
            | options(session, row.list_id, {row.from_address, *named}).left_out(
                row.from_address, named))
    rcpts = [a for _, a in found if a not in left]
    if row.after == 0:
        rcpts += sorted(following(session, row.list_id, [row.message_id])
                        .get(row.message_id, set()) - left)
    return found, rcpts


def expand(session: Session, batch: int, chunk: int = CHUNK,
           handoff: outbox.Handoff | None = None) -> int | None:
    """Write the delivery jobs of the next `chunk` members of the post whose expansion
    waited longest and move its cursor past them, in one transaction: killed at any
    point, it has written both or neither, so nobody is lost or served twice. The jobs
    written; None when no post waits. With `handoff`, the jobs this worker has room for
    are claimed for it (see outbox.Handoff)."""
    row = session.connection().execute(_NEXT).first()
    if row is None:
        session.rollback()
        return None
    copy = outbox.copies(session, [row.outgoing_id])[row.outgoing_id]
    found, rcpts = _chunk_of(session, row, chunk)
    send = outbox.Send(copy.data, row.mail_from, rcpts, copy.message_pk, copy.slots,
                       row.list_id, Lane.POSTS)
    [jobs] = outbox.queue_jobs(session, [(row.outgoing_id, send)], batch, handoff,
                               {row.outgoing_id: copy})
    if len(found) < chunk:
        session.connection().execute(_DONE, {"expansion_id": row.id})
    else:
        session.connection().execute(_ADVANCE, {
            "expansion_id": row.id, "last": found[-1][0], "total": row.jobs + jobs,
            "now": utcnow()})
    session.commit()
    return jobs
