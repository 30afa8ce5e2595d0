"""Who gets a post and the copy they get: the members, less those who muted its
thread, and the list copy composed once (shared, or with slots for each member's
links); queued in the outbox with the post's digest item, in the caller's transaction.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence

from jinja2 import TemplateError
from sqlalchemy import bindparam, insert, or_, select
from sqlmodel import Session

from listserv import authenticity, compose, content_filter, db, outbox, slots
from listserv.address import ListAddresses, Purpose
from listserv.authenticity import Asked
from listserv.config import Config
from listserv.enums import ArchivePolicy, DeliveryMode, ReplyTo, Role, Verp
from listserv.footer import Footer, render_footer
from listserv.models import DigestItem, MailingList, Member, Message, Mute, ThreadNode, utcnow
from listserv.parse import Parsed

log = logging.getLogger("listserv.fanout")

# The statements run for every post received, built once: building one (and its cache
# key) cost more than running it. Core, on the session's connection: they read and
# write nothing the ORM holds.
_node, _mute, _member = ThreadNode.__table__.c, Mute.__table__.c, Member.__table__.c
_MUTED = select(_node.message_id, _mute.address).join(
    Mute.__table__, (_mute.list_id == _node.list_id) & (_mute.thread_id == _node.thread_id)).where(
    _node.list_id == bindparam("list_id"),
    _node.message_id.in_(bindparam("message_ids", expanding=True)))
_RECIPIENTS = (select(_member.address)
               .where(_member.list_id == bindparam("list_id"),
                      _member.role == Role.MEMBER,
                      _member.delivery == bindparam("mode"),
                      _member.disabled_by.is_(None),
                      or_(_member.nomail_until.is_(None),
                          _member.nomail_until <= bindparam("now")))
               .order_by(_member.address)
               .execution_options(yield_per=5000))
_INSERT_DIGEST_ITEM = insert(DigestItem.__table__)


def recipients(session: Session, list_id: int,
               mode: DeliveryMode = DeliveryMode.REGULAR) -> Iterator[str]:
    """Addresses that get each post (or, for a digest mode, each digest of that form),
    streamed from one query (never member by member). A member whose `nomail_until`
    is still ahead is left out, and is back once it has passed."""
    session.flush()  # members the ORM still holds count too
    yield from session.connection().execute(_RECIPIENTS, {
        "list_id": list_id, "mode": mode, "now": utcnow()}).scalars()



def muted(session: Session, list_id: int, message_ids: Iterable[str]) -> dict[str, set[str]]:
    """The members who muted the thread each of these messages belongs to, by message,
    in one query per thousand."""
    session.flush()  # the messages' nodes may still be in the ORM's hands
    found: dict[str, set[str]] = {}
    for chunk in db.chunks(set(message_ids)):
        for message_id, address in session.connection().execute(_MUTED, {
                "list_id": list_id, "message_ids": chunk}):
            found.setdefault(message_id, set()).add(address)
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
            base_url: str, batch: int, *, config: Config) -> int:
    """One post (see fan_out_all); its jobs."""
    return fan_out_all(session, mlist, [(message, parsed)], base_url, batch, config=config)[0]


def fan_out_all(session: Session, mlist: MailingList, posts: Sequence[tuple[Message, Parsed]],
                base_url: str, batch: int, *, config: Config,
                asked: Sequence[Asked | None] = (),
                handoff: outbox.Handoff | None = None) -> list[int]:
    """Queue the list copy of each accepted post for every member who gets posts, except
    those who muted its thread, and the post itself for the next digest; the jobs of
    each. Each copy is composed once, with slots for each member's unsubscribe and
    mute links, or shared (see shared_copies). The members, the mutes and each table's
    rows are read and written once for all the posts (a group of the receiver), which
    may come with what DNS said of each (`asked`, see authenticity), and with the
    `handoff` of the worker of this process (see outbox.Handoff)."""
    connection = session.connection()
    connection.execute(_INSERT_DIGEST_ITEM, [
        {"list_id": mlist.id, "message_pk": message.id, "size": message.size,
         "created_at": utcnow()} for message, _ in posts])
    members = list(recipients(session, mlist.id))
    quiet = muted(session, mlist.id, [message.message_id for message, _ in posts])
    bounces = mlist.addresses.at(Purpose.BOUNCES)
    verp = mlist.address if mlist.verp is Verp.ON else None
    sends = []
    for (message, parsed), known in zip(posts, asked or [None] * len(posts), strict=True):
        copy, shared = list_copy(mlist, message, parsed, base_url, config=config, asked=known)
        mutes = quiet.get(message.message_id, set())
        rcpts = [a for a in members if a not in mutes] if mutes else members
        if shared:  # a footer without links is still a slot: filled once, for everyone
            sends.append(outbox.Send(copy.personal("", ""), bounces, rcpts, message.id,
                              list_id=mlist.id))
        else:
            sends.append(outbox.Send(copy.data, bounces, rcpts, message.id, copy.slots_json(),
                              mlist.id))
    return outbox.queue_all(session, sends, batch, verp=verp, handoff=handoff)
