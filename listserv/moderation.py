"""Held posts: notices to moderators (and to the author, when it can be told); approve,
reject or discard by email or CLI; holds that expire. The rules that hold a post are
policy.py's and posting_rules.py's.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlmodel import Session

from listserv import digest_reply, fanout, notices, roster, store, tokens
from listserv.address import Purpose
from listserv.config import MAX_INT, Config
from listserv.enums import MessageState, Role, TokenKind
from listserv.models import MailingList, Message, Token, utcnow

log = logging.getLogger("listserv.moderation")

ACTIONS = ("approve", "reject", "discard")
# A hold token's data when the author may hear of decisions on the post: the decision
# hold() made (a member, or a From its domain vouched for), kept for when one is made.
TELL_AUTHOR = "tell-author"


def held(session: Session, mlist: MailingList | None) -> list[Message]:
    """The posts held on one list, or on every list (None), oldest first."""
    query = select(Message).where(Message.state == MessageState.HELD)
    if mlist is not None:
        query = query.where(Message.list_id == mlist.id)
    return list(session.scalars(query.order_by(Message.id)))


def held_message(session: Session, message_pk: int) -> Message:
    # An id no row can have is asked of no database (it would refuse the number).
    message = session.get(Message, message_pk) if 0 < message_pk <= MAX_INT else None
    if message is None or message.state is not MessageState.HELD:
        raise roster.UserError(f"no held message {message_pk}")
    return message


def hold(session: Session, config: Config, mlist: MailingList, message: Message, *,
         tell_author: bool) -> None:
    """Tell the moderators about a post just held, with a reply address to act on it;
    and its author, when that is a member (a non-member only once its From domain
    vouched for it, after the transaction: tell_author)."""
    lifetime = timedelta(days=config.lists.hold_expiry_days)
    token, value = tokens.new(session, TokenKind.HOLD, mlist.id, message.from_address,
                              lifetime, message_pk=message.id,
                              data=TELL_AUTHOR if tell_author else "")
    reply = mlist.addresses.at(Purpose.CONFIRM, value)
    for moderator in roster.role_addresses(session, mlist.id, [Role.OWNER, Role.MODERATOR]):
        notices.send(session, config, mlist, moderator, "held_notice", limit=False,
                     auto="auto-generated", reply_to=reply, attach=message.raw,
                     about=message.id,
                     message=message, reasons=message.reasons.splitlines(), token=value,
                     expires=token.expires_at)
    if tell_author:
        _tell_held(session, config, mlist, message)


def tell_author(session: Session, config: Config, message_pk: int) -> None:
    """A held non-member's From domain vouched for the post (authenticity.vouched): tell
    them it waits, and of the decision when one is made. Telling any non-member would
    send backscatter to every forged From of every spam run; a From its own domain
    vouched for is the sender's own. Nothing, should the post have been decided meanwhile."""
    told = session.execute(update(Token).where(
        Token.message_pk == message_pk, Token.kind == TokenKind.HOLD,
        Token.used_at.is_(None)).values(data=TELL_AUTHOR))
    message = session.get(Message, message_pk)
    mlist = session.get(MailingList, message.list_id) if message is not None else None
    if told.rowcount and message is not None and mlist is not None:
        _tell_held(session, config, mlist, message)


def _tell_held(session: Session, config: Config, mlist: MailingList, message: Message) -> None:
    if message.from_address:
        notices.send(session, config, mlist, message.from_address, "held_author",
                     message=message, reasons=message.reasons.splitlines())


def _spend_token(session: Session, message: Message) -> None:
    for token in session.scalars(select(Token).where(Token.message_pk == message.id,
                                                     Token.used_at.is_(None))):
        tokens.use(session, token)


def tells_author(session: Session, message: Message) -> bool:
    """Whether hold() found the author may be told (see TELL_AUTHOR): a member always,
    a non-member only when its From was authenticated, never a forged From."""
    return session.scalars(select(Token.id).where(
        Token.message_pk == message.id, Token.kind == TokenKind.HOLD,
        Token.data == TELL_AUTHOR)).first() is not None


def approve(session: Session, config: Config, message: Message) -> bool:
    """Send a held post on as if it had just been accepted, and tell its author when
    they may be told; whether it goes to the list (not a duplicate)."""
    mlist = session.get(MailingList, message.list_id)
    _spend_token(session, message)
    parsed = digest_reply.stored_fields(session, message)
    if store.is_archived(session, mlist.id, message.message_id):
        store.set_state(session, message, MessageState.DUPLICATE)
        return False
    store.set_state(session, message, MessageState.ACCEPTED)
    store.archive(session, mlist, message, parsed)
    if message.from_address and tells_author(session, message):
        notices.send(session, config, mlist, message.from_address, "approved",
                     message=message, in_reply_to=message.message_id)
    fanout.fan_out(session, mlist, message, parsed, config.web.base_url, config=config)
    return True


def reject(session: Session, config: Config, message: Message, reason: str = "") -> None:
    """Refuse a held post and tell its author why, when they may be told."""
    mlist = session.get(MailingList, message.list_id)
    told = tells_author(session, message)
    _spend_token(session, message)
    store.set_state(session, message, MessageState.REJECTED)
    author = message.from_address or message.mail_from
    if author and told:
        notices.send(session, config, mlist, author, "rejected", message=message,
                     reason=reason or "The moderators did not give a reason.",
                     in_reply_to=message.message_id)


def discard(session: Session, message: Message) -> None:
    """Drop a held post without a word to anyone (spam)."""
    _spend_token(session, message)
    store.set_state(session, message, MessageState.DISCARDED)


def act(session: Session, config: Config, message: Message, action: str,
        reason: str = "") -> str:
    """One moderator decision, the same for the CLI and for email; a line for the log."""
    if action == "approve":
        if approve(session, config, message):
            return f"approved message {message.id} (sent to the list)"
        return f"approved message {message.id} (a duplicate: not sent)"
    if action == "reject":
        reject(session, config, message, reason)
        return f"rejected message {message.id}"
    if action == "discard":
        discard(session, message)
        return f"discarded message {message.id}"
    raise roster.UserError(f"unknown action {action!r}; valid: {', '.join(ACTIONS)}")


def reply_to_notice(session: Session, config: Config, token: Token, text: str,
                    sender: str) -> str:
    """A moderator answered a held-post notice: the first line says what to do."""
    words = text.strip().split(None, 1)
    action = words[0].lower() if words else ""
    if action not in ACTIONS:
        log.info("moderation reply from %s not understood: %r", sender, text[:80])
        return f"not understood: {text.strip()[:80]!r}; answer approve, reject <reason> or discard"
    message = session.get(Message, token.message_pk) if token.message_pk else None
    if message is None or message.state is not MessageState.HELD:
        return "that message is no longer held"
    summary = act(session, config, message, action, words[1].strip() if len(words) > 1 else "")
    log.info("%s by %s by email", summary, sender)
    return summary


def expire_holds(session: Session, config: Config) -> int:
    """Discard holds older than `[lists] hold_expiry_days` and tell their authors."""
    cutoff = utcnow() - timedelta(days=config.lists.hold_expiry_days)
    expired = list(session.scalars(select(Message).where(
        Message.state == MessageState.HELD, Message.received_at < cutoff)))
    for message in expired:
        _spend_token(session, message)
        store.set_state(session, message, MessageState.DISCARDED)
        author = message.from_address or message.mail_from
        if author:
            notices.send(session, config, session.get(MailingList, message.list_id), author,
                         "hold_expired", message=message, days=config.lists.hold_expiry_days)
    return len(expired)
