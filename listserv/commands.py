"""Member commands by email: LIST-request@ (one command a line), LIST-join@,
LIST-leave@ and LIST-confirm+TOKEN@ (answers to confirmations and notices), read out
of a stored mail and answered in one reply. What each command does is in
`member_actions`, which the web's pages call too.
"""

from __future__ import annotations

import email
import email.policy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlmodel import Session

from listserv import (
    html_text,
    limits,
    loops,
    moderation,
    notices,
    policy,
    roster,
    thread,
    tokens,
)
from listserv.address import Purpose, Route
from listserv.config import Config
from listserv.enums import DeliveryMode, Role, TokenKind
from listserv.member_actions import (
    Outcome,
    archive_access,
    ask_erase,
    command_addresses,
    confirm,
    decide_member,
    follow,
    is_member,
    mute,
    replied_message,
    send,
    subscribe,
    thread_of_reply,
    unfollow,
    unmute,
    unsubscribe,
)
from listserv.models import MailingList, Message, Setting, utcnow
from listserv.parse import Parsed

log = logging.getLogger("listserv.commands")

# A reply quoting a whole conversation must not make us read it all as commands.
MAX_UNKNOWN_LINES = 5

_DIGEST = {"mime": DeliveryMode.DIGEST_MIME, "plain": DeliveryMode.DIGEST_PLAIN,
           "no": DeliveryMode.REGULAR}


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
    return html_text.to_text(text) if part.get_content_subtype() == "html" else text


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


_YES_NO = {"yes": True, "no": False}


def _set_command(req: Request, args: list[str]) -> Outcome:
    """set delivery MODE | set OPTION yes|no | set nomail until YYYY-MM-DD | set nomail off"""
    words = [a.lower() for a in args]
    change = _setting(words)
    if change is None:
        return Outcome.BAD_ARGUMENT
    if not is_member(req.session, req.mlist.id, req.sender):
        return Outcome.NOT_MEMBER
    try:
        return change(req)
    except roster.UserError:  # a date in the past or too far ahead
        return Outcome.BAD_ARGUMENT


def _setting(words: list[str]) -> Callable[[Request], Outcome] | None:
    """What a `set` line changes, or None when it is not one of its forms."""
    modes = {m.value: m for m in DeliveryMode}
    if len(words) == 2 and words[0] == "delivery" and words[1] in modes:
        return lambda req: _set_delivery(req, modes[words[1]])
    if len(words) == 2 and words[0] in roster.OPTIONS and words[1] in _YES_NO:
        return lambda req: _set_option(req, words[0], _YES_NO[words[1]])
    if words == ["nomail", "off"]:
        return lambda req: _set_nomail(req, None)
    if len(words) == 3 and words[:2] == ["nomail", "until"]:
        return lambda req: _set_nomail(req, words[2])
    return None


def _set_delivery(req: Request, mode: DeliveryMode) -> Outcome:
    roster.set_member(req.session, req.mlist, req.sender, delivery=mode)
    return Outcome.DELIVERY_SET


def _set_option(req: Request, name: str, value: bool) -> Outcome:
    roster.set_options(req.session, req.mlist, req.sender, **{name: value})
    return Outcome.OPTION_SET


def _set_nomail(req: Request, day: str | None) -> Outcome:
    until = None if day is None else roster.pause_until(day)
    roster.pause(req.session, req.mlist, req.sender, until)
    return Outcome.NOMAIL_OFF if until is None else Outcome.NOMAIL_SET


ThreadChange = Callable[[Session, int, str, str], None]


def _on_thread(req: Request, change: ThreadChange, outcome: Outcome) -> Outcome:
    """mute, unmute, follow, unfollow: in a reply to a post, about the post's thread."""
    if not is_member(req.session, req.mlist.id, req.sender):
        return Outcome.NOT_MEMBER
    thread_id = thread_of_reply(req.session, req.mlist.id, req.parsed)
    if thread_id is None:
        return Outcome.NO_THREAD
    change(req.session, req.mlist.id, req.sender, thread_id)
    return outcome


def _thread_command(change: ThreadChange, outcome: Outcome
                    ) -> Callable[[Request, list[str]], Outcome]:
    return lambda req, args: _on_thread(req, change, outcome)


def _archive_command(req: Request, args: list[str]) -> Outcome:
    return archive_access(req.session, req.config, req.mlist, req.sender)


def _erase_command(req: Request, args: list[str]) -> Outcome:
    """In a reply to one's own post: its author is asked to confirm (From may be forged,
    the confirmation goes to the post's own From address)."""
    message = replied_message(req.session, req.mlist.id, req.parsed)
    if message is None or message.from_address != req.sender:
        return Outcome.NOT_YOUR_POST
    return ask_erase(req.session, req.config, req.mlist, message)


def _help_command(req: Request, args: list[str]) -> Outcome:
    return Outcome.HELP


COMMANDS: dict[str, Callable[[Request, list[str]], Outcome]] = {
    "subscribe": _subscribe_command, "join": _subscribe_command,
    "unsubscribe": _unsubscribe_command, "leave": _unsubscribe_command,
    "confirm": _confirm_command, "set": _set_command, "help": _help_command,
    "archive": _archive_command,
    "mute": _thread_command(mute, Outcome.MUTED),
    "unmute": _thread_command(unmute, Outcome.UNMUTED),
    "follow": _thread_command(follow, Outcome.FOLLOWED),
    "unfollow": _thread_command(unfollow, Outcome.UNFOLLOWED),
    "erase": _erase_command,
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
            "help", mlist=mlist, addresses=mlist.addresses,
            base_url=config.web.base_url.rstrip("/"), **command_addresses(mlist))
    send(session, config, mlist, to, "command_results", in_reply_to=message.message_id,
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
        summary = moderation.reply_to_notice(session, config, token, answer, sender)
        send(session, config, mlist, sender, "moderation_done", limit=False,
             in_reply_to=message.message_id, summary=summary)
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
        for owner in roster.role_addresses(session, mlist.id, [Role.OWNER]):
            send(session, config, mlist, owner, "requests_capped", limit=False,
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
