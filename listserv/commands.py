"""Member commands by email: LIST-request@ (one command a line), LIST-join@,
LIST-leave@ and LIST-confirm+TOKEN@ (answers to confirmations and notices); the web
routes call the same functions for confirm links, one-click unsubscribe and muting.
"""

from __future__ import annotations

import email
import email.policy
import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlmodel import Session

from listserv import (
    limits,
    loops,
    moderation,
    notices,
    notify_owners,
    owner_templates,
    policy,
    posting_rules,
    roster,
    store,
    thread,
    tokens,
    view,
)
from listserv.address import Purpose, Route
from listserv.config import Config
from listserv.models import (
    ArchivePolicy,
    DeliveryMode,
    MailingList,
    Member,
    Message,
    Mute,
    Role,
    Setting,
    Subscription,
    ThreadNode,
    Token,
    TokenKind,
    utcnow,
)
from listserv.parse import Parsed

log = logging.getLogger("listserv.commands")

# A reply quoting a whole conversation must not make us read it all as commands.
MAX_UNKNOWN_LINES = 5

_DIGEST = {"mime": DeliveryMode.DIGEST_MIME, "plain": DeliveryMode.DIGEST_PLAIN,
           "no": DeliveryMode.REGULAR}
_CONFIRMABLE = {TokenKind.SUBSCRIBE, TokenKind.UNSUBSCRIBE}  # what /confirm/ pages act on
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
    NO_THREAD = "no-thread"  # mute/unmute in a mail that replies to no archived post
    HELP = "help"
    BAD_ARGUMENT = "bad-argument"
    UNKNOWN = "unknown"  # not a command


@dataclass(frozen=True)
class Result:
    line: str  # the command as the person wrote it
    outcome: Outcome


@dataclass(frozen=True)
class Request:
    """One mail to LIST-request@: who sent it and what it replies to."""

    session: Session
    config: Config
    mlist: MailingList
    sender: str
    parsed: Parsed


# --- reading what a person typed --------------------------------------------------------

def body_text(raw: bytes) -> str:
    """The text a person typed: the text/plain part, else the HTML part without tags."""
    try:
        mail = email.message_from_bytes(raw, policy=email.policy.default)
        part = mail.get_body(preferencelist=("plain", "html"))
        if part is None:
            return ""
        text = part.get_content()
    except Exception as exc:  # noqa: BLE001  bad charsets and broken MIME raise many kinds
        log.info("cannot read the body of a command mail: %s", exc.__class__.__name__)
        return ""
    return view.html_text(text) if part.get_content_subtype() == "html" else text


def typed_lines(body: str) -> Iterator[str]:
    """Non-empty lines before the signature, without quoted lines ("> ...")."""
    for line in body.splitlines():
        if line.rstrip() == "--":  # "-- " starts a signature; some clients drop the space
            return
        line = line.strip()
        if line and not line.startswith(">"):
            yield line


def first_line(raw: bytes, subject: str) -> str:
    """The answer in a reply to a notice: its first typed line, else its subject."""
    return next(typed_lines(body_text(raw)), thread.strip_prefixes(subject))


# --- the domain actions (shared by email and web) ---------------------------------------

def _command_addresses(mlist: MailingList) -> dict[str, str]:
    """What the templates tell people to write to."""
    addresses = store.addresses_of(mlist)
    return {"request_address": addresses.at(Purpose.REQUEST),
            "join_address": addresses.at(Purpose.JOIN),
            "leave_address": addresses.at(Purpose.LEAVE),
            "owner_address": addresses.at(Purpose.OWNER)}


def _send(session: Session, config: Config, mlist: MailingList, to: str, template: str,
          **context: Any) -> bool:
    """notices.send with the list's command addresses in the template context."""
    return notices.send(session, config, mlist, to, template, **_command_addresses(mlist),
                        **context)


def is_member(session: Session, list_id: int, address: str) -> bool:
    """Subscribed to receive posts (owners and moderators may not be)."""
    return session.scalars(select(Member.id).where(
        Member.list_id == list_id, Member.address == address,
        Member.role == Role.MEMBER)).first() is not None


def _pending(session: Session, mlist: MailingList, address: str, *kinds: TokenKind) -> bool:
    return any(tokens.pending(session, kind, mlist.id, address) for kind in kinds)


def _ask(session: Session, config: Config, mlist: MailingList, address: str, kind: TokenKind,
         template: str, data: str = "") -> None:
    """Send a confirmation that a reply, a `confirm` line or a web click answers."""
    hours = config.lists.confirm_expiry_hours
    token, value = tokens.new(session, kind, mlist.id, address, timedelta(hours=hours),
                              data=data)
    confirm_address = store.addresses_of(mlist).at(Purpose.CONFIRM, value)
    if not _send(session, config, mlist, address, template, reply_to=confirm_address,
                 token=value, confirm_address=confirm_address, address=address,
                 hours=hours):
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
        _send(session, config, mlist, address, "subscribe_closed", address=address)
        return Outcome.CLOSED
    if _pending(session, mlist, address, TokenKind.SUBSCRIBE, TokenKind.APPROVE_MEMBER):
        return Outcome.SUBSCRIBE_ASKED
    if is_member(session, mlist.id, address):
        _send(session, config, mlist, address, "already_member", address=address)
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
        _send(session, config, mlist, address, "not_member", address=address)
    return Outcome.UNSUBSCRIBE_ASKED


def unsubscribe_url(session: Session, config: Config, mlist: MailingList, address: str) -> str:
    secret = tokens.server_secret(session, config)
    return (f"{config.web.base_url.rstrip('/')}/unsubscribe/"
            f"{tokens.unsubscribe_link(secret, mlist.id, address)}")


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
        _send(session, config, mlist, address, "archive_access", address=address, url=url,
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
                         unsubscribe_url=unsubscribe_url(session, config, mlist, address))


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
    reply_to = store.addresses_of(mlist).at(Purpose.CONFIRM, approval)
    moderators = store.role_addresses(session, mlist.id, [Role.OWNER, Role.MODERATOR])
    if not moderators:
        log.warning("%s waits for approval on %s, which has no owner or moderator",
                    token.address, mlist.address)
    for moderator in moderators:
        _send(session, config, mlist, moderator, "approve_member", limit=False,
              reply_to=reply_to, auto="auto-generated", subscriber=token.address,
              confirm_address=reply_to)
    _send(session, config, mlist, token.address, "awaiting_approval", address=token.address)
    return Outcome.AWAITING_APPROVAL


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
    if token.kind is not TokenKind.UNSUBSCRIBE and posting_rules.banned(session, token.address):
        return Outcome.BAD_TOKEN  # banned since it asked, or was invited
    if not tokens.use(session, token):
        return Outcome.BAD_TOKEN
    mlist = session.get(MailingList, token.list_id)
    if token.kind is TokenKind.UNSUBSCRIBE:
        return leave(session, config, mlist, token.address)
    if token.kind is TokenKind.INVITE:
        return join(session, config, mlist, token.address, DeliveryMode(token.data))
    if mlist.subscription is Subscription.CLOSED:  # closed since the request
        _send(session, config, mlist, token.address, "subscribe_closed", address=token.address)
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
        _send(session, config, mlist, token.address, "subscription_rejected",
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


def thread_of_message(session: Session, list_id: int, message_pk: int) -> str | None:
    return session.scalars(select(ThreadNode.thread_id).where(
        ThreadNode.list_id == list_id, ThreadNode.message_pk == message_pk)).first()


def mute(session: Session, list_id: int, address: str, thread_id: str) -> None:
    """No more posts of this thread for `address` (asking twice is harmless)."""
    exists = session.scalars(select(Mute.id).where(
        Mute.list_id == list_id, Mute.address == address, Mute.thread_id == thread_id)).first()
    if exists is None:
        session.add(Mute(list_id=list_id, address=address, thread_id=thread_id))
        session.flush()


def unmute(session: Session, list_id: int, address: str, thread_id: str) -> None:
    session.execute(delete(Mute).where(
        Mute.list_id == list_id, Mute.address == address, Mute.thread_id == thread_id))


# --- LIST-request@: one command a line ---------------------------------------------------

def _subscribe_command(req: Request, args: list[str]) -> Outcome:
    mode = DeliveryMode.REGULAR
    for arg in args:
        key, _, value = arg.lower().partition("=")
        if key != "digest" or value not in _DIGEST:
            return Outcome.BAD_ARGUMENT
        mode = _DIGEST[value]
    return subscribe(req.session, req.config, req.mlist, req.sender, mode)


def _unsubscribe_command(req: Request, args: list[str]) -> Outcome:
    return unsubscribe(req.session, req.config, req.mlist, req.sender)


def _confirm_command(req: Request, args: list[str]) -> Outcome:
    # Words after the token are allowed: a reply to a confirmation sent to its From
    # (LIST-request@) brings "Re: confirm TOKEN to join ..." in the subject.
    if not args:
        return Outcome.BAD_ARGUMENT
    token = tokens.find(req.session, args[0])
    if token is None or token.list_id != req.mlist.id:
        return Outcome.BAD_TOKEN
    return confirm(req.session, req.config, token)


def _set_command(req: Request, args: list[str]) -> Outcome:
    modes = {m.value: m for m in DeliveryMode}
    if len(args) != 2 or args[0].lower() != "delivery" or args[1].lower() not in modes:
        return Outcome.BAD_ARGUMENT
    if not is_member(req.session, req.mlist.id, req.sender):
        return Outcome.NOT_MEMBER
    roster.set_member(req.session, req.mlist, req.sender, delivery=modes[args[1].lower()])
    return Outcome.DELIVERY_SET


def _mute_command(req: Request, args: list[str], *, on: bool = True) -> Outcome:
    if not is_member(req.session, req.mlist.id, req.sender):
        return Outcome.NOT_MEMBER
    thread_id = thread_of_reply(req.session, req.mlist.id, req.parsed)
    if thread_id is None:
        return Outcome.NO_THREAD
    (mute if on else unmute)(req.session, req.mlist.id, req.sender, thread_id)
    return Outcome.MUTED if on else Outcome.UNMUTED


def _unmute_command(req: Request, args: list[str]) -> Outcome:
    return _mute_command(req, args, on=False)


def _archive_command(req: Request, args: list[str]) -> Outcome:
    return archive_access(req.session, req.config, req.mlist, req.sender)


def _help_command(req: Request, args: list[str]) -> Outcome:
    return Outcome.HELP


COMMANDS: dict[str, Callable[[Request, list[str]], Outcome]] = {
    "subscribe": _subscribe_command, "join": _subscribe_command,
    "unsubscribe": _unsubscribe_command, "leave": _unsubscribe_command,
    "confirm": _confirm_command, "set": _set_command, "help": _help_command,
    "mute": _mute_command, "unmute": _unmute_command, "archive": _archive_command,
}


def command_lines(subject: str, body: str) -> Iterator[str]:
    """The subject, when it is a command, then the lines typed in the body."""
    subject = thread.strip_prefixes(subject)
    words = subject.split()
    if words and words[0].lower() in {*COMMANDS, "end"}:
        yield subject
    yield from typed_lines(body)


def run(req: Request, lines: Iterator[str]) -> list[Result]:
    """Carry out each command once, until `end` or too many lines that are not commands."""
    results: list[Result] = []
    seen: set[str] = set()
    unknown = 0
    for line in lines:
        words = line.split()
        name = words[0].lower()
        if name == "end":
            break
        command = COMMANDS.get(name)
        if command is None:
            results.append(Result(line, Outcome.UNKNOWN))
            unknown += 1
            if unknown >= MAX_UNKNOWN_LINES:
                break
            continue
        key = " ".join(words).lower()  # "subscribe" in the subject and again in the body
        if key not in seen:
            seen.add(key)
            results.append(Result(line, command(req, words[1:])))
    return results


def _reply(session: Session, config: Config, mlist: MailingList, to: str,
           results: list[Result], message: Message) -> None:
    """The one reply that says what each command did."""
    help_text = ""
    if not results or any(r.outcome is Outcome.HELP for r in results):
        _, help_text = notices.render_mail(
            "help", mlist=mlist, addresses=store.addresses_of(mlist),
            base_url=config.web.base_url.rstrip("/"), **_command_addresses(mlist))
    _send(session, config, mlist, to, "command_results", in_reply_to=message.message_id,
          results=results, address=to, help_text=help_text)


def _request(session: Session, config: Config, mlist: MailingList, sender: str,
             message: Message, parsed: Parsed) -> None:
    req = Request(session, config, mlist, sender, parsed)
    results = run(req, command_lines(parsed.subject, body_text(message.raw)))
    _reply(session, config, mlist, sender, results, message)


def _answer(session: Session, config: Config, mlist: MailingList, target: Route,
            sender: str, message: Message, parsed: Parsed) -> None:
    """A mail to LIST-confirm+TOKEN@: a reply to a confirmation or to a notice."""
    value = target.detail
    token = tokens.find(session, value)
    line = f"confirm {value}"
    if token is None or token.list_id != mlist.id:
        _reply(session, config, mlist, sender, [Result(line, Outcome.BAD_TOKEN)], message)
        return
    answer = first_line(message.raw, parsed.subject)
    if token.kind is TokenKind.HOLD:
        moderation.reply_to_notice(session, config, token, answer, sender)
        return
    if token.kind is TokenKind.APPROVE_MEMBER:
        outcome = decide_member(session, config, token, answer)
        _reply(session, config, mlist, sender, [Result(answer, outcome)], message)
        return
    outcome = confirm(session, config, token)
    if outcome is Outcome.BAD_TOKEN:  # spent by a click or reply that came first
        _reply(session, config, mlist, sender, [Result(line, outcome)], message)


def over_the_cap(session: Session, config: Config, mlist: MailingList, target: Route) -> str:
    """Why a request is not answered: the list had `[lists] max_confirmations_per_hour`
    requests in the last hour, which a forged-From flood makes it send to strangers.
    The owners hear of it once an hour; "" when the request may be answered."""
    limit = config.lists.max_confirmations_per_hour
    if (not limit or target.purpose not in limits.REQUEST_PURPOSES
            or limits.requests_this_hour(session, mlist.id, limit) <= limit):
        return ""
    key = f"requests_capped:{mlist.id}"
    hour = str(int(utcnow().timestamp() // 3600))
    told = session.get(Setting, key)
    if told is None or told.value != hour:
        session.merge(Setting(key=key, value=hour))
        for owner in store.role_addresses(session, mlist.id, [Role.OWNER]):
            _send(session, config, mlist, owner, "requests_capped", limit=False,
                  auto="auto-generated", requests=limit)
        log.warning("%s: more than %d requests in an hour; not answering more",
                    mlist.address, limit)
    return f"more than {limit} requests to the list in the last hour"


def handle(session: Session, config: Config, mlist: MailingList, target: Route,
           message: Message, parsed: Parsed) -> None:
    """Act on a stored mail to one of the list's command addresses."""
    sender = parsed.from_address or message.mail_from.lower()
    # Automatic mail is never answered (RFC 3834; Mailman drops autoreplies to -request
    # too), and a flood of requests only up to the cap.
    why = (policy.automatic_reason(message.mail_from, parsed)
           or loops.autoreply_subject(parsed.subject)
           or ("" if sender else "no sender address")
           or over_the_cap(session, config, mlist, target))
    if why:
        log.info("no answer to mail <%s> to %s: %s", message.message_id, message.rcpt_to, why)
        return
    if target.purpose is Purpose.JOIN:
        subscribe(session, config, mlist, sender)
    elif target.purpose is Purpose.LEAVE:
        unsubscribe(session, config, mlist, sender)
    elif target.purpose is Purpose.CONFIRM:
        _answer(session, config, mlist, target, sender, message, parsed)
    else:
        _request(session, config, mlist, sender, message, parsed)
