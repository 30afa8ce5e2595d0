"""What a person does about their membership, by mail, on the web or through an admin:
subscribe and unsubscribe (confirmed by the address itself), join and leave, the
moderators' approval, muting or following a thread, the link to a private archive. `commands`
(LIST-request@ and friends), the web's member pages and the CLI call these.
"""

from __future__ import annotations

import enum
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlmodel import Session

from listserv import (
    erasure,
    notices,
    notify_owners,
    owner_templates,
    posting_rules,
    roster,
    tokens,
    urls,
)
from listserv.address import Purpose
from listserv.config import Config
from listserv.enums import ArchivePolicy, DeliveryMode, Role, Subscription, TokenKind
from listserv.models import Follow, MailingList, Member, Message, Mute, ThreadNode, Token, utcnow
from listserv.parse import Parsed

log = logging.getLogger("listserv.commands")  # the name operators filter on, kept

# What /confirm/ pages act on.
_CONFIRMABLE = {TokenKind.SUBSCRIBE, TokenKind.UNSUBSCRIBE, TokenKind.ERASE}
_ANSWERABLE = {*_CONFIRMABLE, TokenKind.INVITE}  # what a reply or `confirm` line acts on

class Outcome(enum.StrEnum):
    """What one command came to; templates/mail/command_results.txt words each one."""

    # Said for members and strangers alike, so the reply reveals nothing about the roster:
    SUBSCRIBE_ASKED = "subscribe-asked"  # a confirmation is on its way (or was sent before)
    UNSUBSCRIBE_ASKED = "unsubscribe-asked"
    CLOSED = "closed"  # only admins add members to this list
    ARCHIVE_ASKED = "archive-asked"  # a private archive's link is on its way to members
    ARCHIVE_PUBLIC = "archive-public"  # anyone may read it: the reply gives its address
    ARCHIVE_OFF = "archive-off"  # the list keeps no web archive
    SUBSCRIBED = "subscribed"
    AWAITING_APPROVAL = "awaiting-approval"  # confirmed; a moderator decides now
    UNSUBSCRIBED = "unsubscribed"
    BAD_TOKEN = "bad-token"  # unknown, used, expired or of another list
    MODERATOR_TOKEN = "moderator-token"  # a notice's token: reply to the notice instead
    APPROVED = "approved"  # a moderator let a subscriber in
    REJECTED = "rejected"  # a moderator turned a subscriber away (they are told)
    DISCARDED = "discarded"  # a moderator dropped the request (no one is told)
    DELIVERY_SET = "delivery-set"
    NOT_MEMBER = "not-member"  # only said to the address itself
    MUTED = "muted"
    UNMUTED = "unmuted"
    FOLLOWED = "followed"
    UNFOLLOWED = "unfollowed"
    ERASE_ASKED = "erase-asked"  # the post's author is asked to confirm its removal
    ERASED = "erased"
    NOT_YOUR_POST = "not-your-post"  # erase in a mail that answers no archived post of its sender's
    NO_THREAD = "no-thread"  # (un)mute/(un)follow in a mail that replies to no archived post
    OPTION_SET = "option-set"  # set own_posts|skip_if_addressed|acknowledge yes|no
    NOMAIL_SET = "nomail-set"  # set nomail until YYYY-MM-DD
    NOMAIL_OFF = "nomail-off"  # set nomail off
    HELP = "help"
    BAD_ARGUMENT = "bad-argument"
    UNKNOWN = "unknown"  # not a command


def command_addresses(mlist: MailingList) -> dict[str, str]:
    """What the templates tell people to write to."""
    addresses = mlist.addresses
    return {"request_address": addresses.at(Purpose.REQUEST),
            "join_address": addresses.at(Purpose.JOIN),
            "leave_address": addresses.at(Purpose.LEAVE),
            "owner_address": addresses.at(Purpose.OWNER)}


def send(session: Session, config: Config, mlist: MailingList, to: str, template: str,
         **context: Any) -> bool:
    """notices.send with the list's command addresses in the template context."""
    return notices.send(session, config, mlist, to, template, **command_addresses(mlist),
                        **context)


def is_member(session: Session, list_id: int, address: str) -> bool:
    """Subscribed to receive posts (owners and moderators may not be)."""
    return session.scalars(select(Member.id).where(
        Member.list_id == list_id, Member.address == address,
        Member.role == Role.MEMBER)).first() is not None


def _pending(session: Session, mlist: MailingList, address: str, *kinds: TokenKind) -> bool:
    return any(tokens.pending(session, kind, mlist.id, address) for kind in kinds)


def _ask(session: Session, config: Config, mlist: MailingList, address: str, kind: TokenKind,
         template: str, data: str = "", message_pk: int | None = None,
         **context: Any) -> None:
    """Send a confirmation that a reply, a `confirm` line or a web click answers."""
    hours = config.lists.confirm_expiry_hours
    token, value = tokens.new(session, kind, mlist.id, address, timedelta(hours=hours),
                              data=data, message_pk=message_pk)
    confirm_address = mlist.addresses.at(Purpose.CONFIRM, value)
    if not send(session, config, mlist, address, template, reply_to=confirm_address,
                token=value, confirm_address=confirm_address, address=address,
                hours=hours, **context):
        session.delete(token)  # never sent: a later attempt must not find it pending


def subscribe(session: Session, config: Config, mlist: MailingList, address: str,
              mode: DeliveryMode = DeliveryMode.REGULAR) -> Outcome:
    """Start a double opt-in; the answer is the same whether or not `address` is a member,
    or banned (which gets no mail at all)."""
    ban = posting_rules.banned(session, address)
    if ban:
        log.info("%s may not subscribe to %s: banned (%s)", address, mlist.address, ban)
        return Outcome.SUBSCRIBE_ASKED
    if mlist.subscription is Subscription.CLOSED:
        send(session, config, mlist, address, "subscribe_closed", address=address)
        return Outcome.CLOSED
    if _pending(session, mlist, address, TokenKind.SUBSCRIBE, TokenKind.APPROVE_MEMBER):
        return Outcome.SUBSCRIBE_ASKED
    if is_member(session, mlist.id, address):
        send(session, config, mlist, address, "already_member", address=address)
    else:
        _ask(session, config, mlist, address, TokenKind.SUBSCRIBE, "confirm_subscribe",
             data=mode.value)
    return Outcome.SUBSCRIBE_ASKED


def unsubscribe(session: Session, config: Config, mlist: MailingList,
                address: str) -> Outcome:
    """Ask the address itself to confirm leaving, so a forged From removes no one."""
    if _pending(session, mlist, address, TokenKind.UNSUBSCRIBE):
        return Outcome.UNSUBSCRIBE_ASKED
    if is_member(session, mlist.id, address):
        _ask(session, config, mlist, address, TokenKind.UNSUBSCRIBE, "confirm_unsubscribe")
    else:
        send(session, config, mlist, address, "not_member", address=address)
    return Outcome.UNSUBSCRIBE_ASKED


def unsubscribe_url(session: Session, config: Config, mlist: MailingList, address: str) -> str:
    secret = tokens.server_secret(session, config)
    return (f"{config.web.base_url.rstrip('/')}/unsubscribe/"
            f"{tokens.unsubscribe_link(secret, mlist.id, address)}")


def manage_url(session: Session, config: Config, address: str) -> str:
    """The address's own link to its page of subscriptions (every list's), valid
    `[web] manage_link_hours`: for mail to that address only."""
    value = tokens.manage_link(tokens.server_secret(session, config), address,
                               config.web.manage_link_hours)
    return urls.manage_url(config.web.base_url, value)


def archive_access(session: Session, config: Config, mlist: MailingList,
                   address: str) -> Outcome:
    """Mail a member the signed link that opens a private archive in their browser; the
    answer is the same for strangers, who get no mail, so it reveals no one's membership."""
    if mlist.archive is ArchivePolicy.OFF:
        return Outcome.ARCHIVE_OFF
    if mlist.archive is ArchivePolicy.PUBLIC:
        return Outcome.ARCHIVE_PUBLIC
    if is_member(session, mlist.id, address):
        days = config.web.archive_link_days
        value = tokens.archive_pass(tokens.server_secret(session, config), mlist.id,
                                    address, days)
        url = f"{config.web.base_url.rstrip('/')}/{mlist.address}/access/{value}"
        send(session, config, mlist, address, "archive_access", address=address, url=url,
             days=days)
    return Outcome.ARCHIVE_ASKED


def join(session: Session, config: Config, mlist: MailingList, address: str,
         mode: DeliveryMode = DeliveryMode.REGULAR) -> Outcome:
    """Make `address` a member now and welcome it (confirmed, and approved if need be)."""
    if not is_member(session, mlist.id, address):
        session.add(Member(list_id=mlist.id, address=address, role=Role.MEMBER, delivery=mode))
        session.flush()
        log.info("%s subscribed to %s (%s)", address, mlist.address, mode.value)
        welcome(session, config, mlist, address, mode)
        notify_owners.tell(session, config, mlist, notify_owners.Change.JOINED, [address])
    return Outcome.SUBSCRIBED


def welcome(session: Session, config: Config, mlist: MailingList, address: str,
            mode: DeliveryMode) -> None:
    """The mail a new member gets, whether they joined or an admin imported them: how to
    post, change delivery and leave; or the text the list's owners wrote instead."""
    owner_templates.send(session, config, mlist, address, "welcome", delivery=mode.value,
                         unsubscribe_url=unsubscribe_url(session, config, mlist, address),
                         manage_url=manage_url(session, config, address),
                         hours=config.web.manage_link_hours)


def leave(session: Session, config: Config, mlist: MailingList, address: str) -> Outcome:
    """Stop posts to `address` now; an owner or moderator keeps that role."""
    gone = session.execute(delete(Member).where(
        Member.list_id == mlist.id, Member.address == address, Member.role == Role.MEMBER))
    if gone.rowcount:
        log.info("%s unsubscribed from %s", address, mlist.address)
        owner_templates.send(session, config, mlist, address, "goodbye")
        notify_owners.tell(session, config, mlist, notify_owners.Change.LEFT, [address])
    return Outcome.UNSUBSCRIBED


def _ask_moderators(session: Session, config: Config, mlist: MailingList,
                    token: Token) -> Outcome:
    lifetime = timedelta(days=config.lists.hold_expiry_days)
    _, approval = tokens.new(session, TokenKind.APPROVE_MEMBER, mlist.id, token.address,
                             lifetime, data=token.data)
    reply_to = mlist.addresses.at(Purpose.CONFIRM, approval)
    moderators = roster.role_addresses(session, mlist.id, [Role.OWNER, Role.MODERATOR])
    if not moderators:
        log.warning("%s waits for approval on %s, which has no owner or moderator",
                    token.address, mlist.address)
    for moderator in moderators:
        send(session, config, mlist, moderator, "approve_member", limit=False,
             reply_to=reply_to, auto="auto-generated", subscriber=token.address,
             confirm_address=reply_to)
    send(session, config, mlist, token.address, "awaiting_approval", address=token.address)
    return Outcome.AWAITING_APPROVAL


def ask_erase(session: Session, config: Config, mlist: MailingList, message: Message) -> Outcome:
    """The author's way to have a post erased: a confirmation mailed to the post's From
    address, so no one else's request removes it. The link on the message page and the
    `erase` command both come here; a second request while one waits sends nothing."""
    author = message.from_address
    if message.erased_at is not None or not author:
        return Outcome.NOT_YOUR_POST
    waiting = session.scalars(select(Token.id).where(
        Token.kind == TokenKind.ERASE, Token.message_pk == message.id,
        Token.used_at.is_(None), Token.expires_at > utcnow())).first()
    if waiting is None:
        _ask(session, config, mlist, author, TokenKind.ERASE, "confirm_erase",
             message_pk=message.id, message_date=message.date or message.received_at,
             message_url=urls.message_url(config.web.base_url, mlist.addresses,
                                          message.message_id))
    return Outcome.ERASE_ASKED


def _erase_confirmed(session: Session, config: Config, token: Token) -> Outcome:
    message = session.get(Message, token.message_pk) if token.message_pk else None
    if message is None:
        return Outcome.BAD_TOKEN
    erasure.erase(session, config, message, reason="asked for by its author",
                  by=erasure.By.AUTHOR)
    return Outcome.ERASED


def find_confirmable(session: Session, value: str) -> tuple[Token, MailingList] | None:
    """A usable subscribe or unsubscribe token and its list (what a web link may act on)."""
    token = tokens.find(session, value)
    if token is None or token.kind not in _CONFIRMABLE:
        return None
    return token, session.get(MailingList, token.list_id)


def confirm(session: Session, config: Config, token: Token) -> Outcome:
    """The address owner answered a confirmation or an invitation: by reply, `confirm`
    line or web POST. An invitation subscribes whatever the list's subscription policy:
    its owners asked."""
    if token.kind not in _ANSWERABLE:
        return Outcome.MODERATOR_TOKEN
    leaving = {TokenKind.UNSUBSCRIBE, TokenKind.ERASE}
    if token.kind not in leaving and posting_rules.banned(session, token.address):
        return Outcome.BAD_TOKEN  # banned since it asked, or was invited
    if not tokens.use(session, token):
        return Outcome.BAD_TOKEN
    if token.kind is TokenKind.ERASE:
        return _erase_confirmed(session, config, token)
    mlist = session.get(MailingList, token.list_id)
    if token.kind is TokenKind.UNSUBSCRIBE:
        return leave(session, config, mlist, token.address)
    if token.kind is TokenKind.INVITE:
        return join(session, config, mlist, token.address, DeliveryMode(token.data))
    if mlist.subscription is Subscription.CLOSED:  # closed since the request
        send(session, config, mlist, token.address, "subscribe_closed", address=token.address)
        return Outcome.CLOSED
    if (mlist.subscription is Subscription.MODERATE
            and not is_member(session, mlist.id, token.address)):
        return _ask_moderators(session, config, mlist, token)
    return join(session, config, mlist, token.address, DeliveryMode(token.data))


def decide_member(session: Session, config: Config, token: Token, answer: str) -> Outcome:
    """A moderator answered an approve-member notice: approve, reject [reason] or discard."""
    word, reason = [*answer.split(None, 1), "", ""][:2]
    verdict = {"approve": Outcome.APPROVED, "reject": Outcome.REJECTED,
               "discard": Outcome.DISCARDED}.get(word.lower())
    if verdict is None:
        return Outcome.UNKNOWN
    if not tokens.use(session, token):
        return Outcome.BAD_TOKEN
    mlist = session.get(MailingList, token.list_id)
    if verdict is Outcome.APPROVED:
        join(session, config, mlist, token.address, DeliveryMode(token.data))
    elif verdict is Outcome.REJECTED:
        send(session, config, mlist, token.address, "subscription_rejected",
             address=token.address, reason=reason.strip())
    return verdict


def thread_of_reply(session: Session, list_id: int, parsed: Parsed) -> str | None:
    """The thread of the nearest archived message a mail replies to."""
    for message_id in [*parsed.in_reply_to, *reversed(parsed.references)]:
        thread_id = session.scalars(select(ThreadNode.thread_id).where(
            ThreadNode.list_id == list_id, ThreadNode.message_id == message_id,
            ThreadNode.message_pk.is_not(None))).first()
        if thread_id:
            return thread_id
    return None


def replied_message(session: Session, list_id: int, parsed: Parsed) -> Message | None:
    """The archived post a mail answers (its In-Reply-To, else its last reference)."""
    for message_id in [*parsed.in_reply_to, *reversed(parsed.references)]:
        found = session.scalars(select(Message).join(
            ThreadNode, ThreadNode.message_pk == Message.id).where(
            ThreadNode.list_id == list_id, ThreadNode.message_id == message_id)).first()
        if found is not None:
            return found
    return None


def thread_of_message(session: Session, list_id: int, message_pk: int) -> str | None:
    return session.scalars(select(ThreadNode.thread_id).where(
        ThreadNode.list_id == list_id, ThreadNode.message_pk == message_pk)).first()


def _mark(session: Session, model: type[Mute] | type[Follow], list_id: int, address: str,
          thread_id: str) -> None:
    """A member's mark on one thread (asking twice is harmless)."""
    exists = session.scalars(select(model.id).where(
        model.list_id == list_id, model.address == address,
        model.thread_id == thread_id)).first()
    if exists is None:
        session.add(model(list_id=list_id, address=address, thread_id=thread_id))
        session.flush()


def _unmark(session: Session, model: type[Mute] | type[Follow], list_id: int, address: str,
            thread_id: str) -> None:
    session.execute(delete(model).where(
        model.list_id == list_id, model.address == address, model.thread_id == thread_id))


def mute(session: Session, list_id: int, address: str, thread_id: str) -> None:
    """No more posts of this thread for `address`."""
    _mark(session, Mute, list_id, address, thread_id)


def unmute(session: Session, list_id: int, address: str, thread_id: str) -> None:
    _unmark(session, Mute, list_id, address, thread_id)


def follow(session: Session, list_id: int, address: str, thread_id: str) -> None:
    """Each post of this thread as it is sent, even to a digest member (who still gets
    the digest)."""
    _mark(session, Follow, list_id, address, thread_id)


def unfollow(session: Session, list_id: int, address: str, thread_id: str) -> None:
    _unmark(session, Follow, list_id, address, thread_id)

