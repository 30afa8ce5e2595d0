"""Owners and moderators acting on the web: who is staff of a list, the admin link
mailed to them, and each decision they make there. Every decision is made by the
functions the CLI and the email commands use (moderation, member_actions, roster,
posting_rules, list_settings) and logged with who made it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session

from listserv import member_actions, moderation, notices, posting_rules, roster, tokens
from listserv.config import MAX_INT, Config
from listserv.enums import DeliveryMode, Role, SenderAction, TokenKind
from listserv.models import MailingList, Token, utcnow
from listserv.roster import UserError

log = logging.getLogger("listserv.staff")

ADMIN_LINK_HOURS = 12
NOT_HELD = ("This post is no longer held: a moderator decided on it already, or it "
            "expired. Nothing was changed.")
# What a held post's buttons do: a moderation.act action, and the sender rule set with it.
HELD_ACTIONS: dict[str, tuple[str, SenderAction | None]] = {
    "approve": ("approve", None), "reject": ("reject", None), "discard": ("discard", None),
    "approve-allow": ("approve", SenderAction.ALLOW),
    "discard-deny": ("discard", SenderAction.DENY)}


def role(session: Session, list_id: int, address: str) -> Role | None:
    """OWNER or MODERATOR, the higher when an address holds both; None for anyone else."""
    roles = {m.role for m in roster.roles_of(session, list_id, [address])}
    return next((r for r in (Role.OWNER, Role.MODERATOR) if r in roles), None)


def admin_url(session: Session, config: Config, mlist: MailingList, address: str) -> str:
    value = tokens.staff_link(tokens.server_secret(session, config), mlist.id, address,
                              ADMIN_LINK_HOURS)
    return f"{config.web.base_url.rstrip('/')}/{mlist.address}/admin/{value}"


def send_admin_link(session: Session, config: Config, mlist: MailingList, text: str) -> None:
    """Mail the admin link when `text` names an owner or moderator of the list, nothing
    otherwise: the page answers the same either way, so it tells no one who runs it.
    The mail counts toward the address's daily share like every automatic mail."""
    mailbox = roster.normalize(text)
    found = role(session, mlist.id, mailbox[1]) if mailbox else None
    if mailbox is None or found is None:
        log.info("admin link for %s asked by %r: not an owner or moderator", mlist.address,
                 text[:80])
        return
    address = mailbox[1]
    notices.send(session, config, mlist, address, "admin_link", auto="auto-generated",
                 url=admin_url(session, config, mlist, address), hours=ADMIN_LINK_HOURS,
                 role=found.value, address=address)
    log.info("admin link for %s mailed to %s (%s)", mlist.address, address, found.value)


@dataclass(frozen=True)
class Staff:
    """Who a signed admin or held link speaks for, on which list, as what now."""

    mlist: MailingList
    address: str
    role: Role
    extra: tuple[str, ...] = ()

    @property
    def owner(self) -> bool:
        return self.role is Role.OWNER


def staff_of(session: Session, config: Config, purpose: str, value: str,
             list_address: str) -> Staff | None:
    """The holder of a link made for this list, if it is ours, unexpired, and the
    address is still its owner or moderator; None otherwise."""
    found = tokens.staff_link_holder(tokens.server_secret(session, config), purpose, value)
    if found is None:
        return None
    list_id, address, extra = found
    mlist = session.get(MailingList, list_id) if list_id <= MAX_INT else None
    if mlist is None or mlist.address != list_address:
        return None
    now = role(session, mlist.id, address)
    return Staff(mlist, address, now, tuple(extra)) if now is not None else None


def decide_held(session: Session, config: Config, staff: Staff, message_pk: int,
                action: str, reason: str = "") -> str:
    """One decision on a held post of the staff's list; a UserError when it is no longer
    held (decided by someone else, or this button pressed twice)."""
    if action not in HELD_ACTIONS:
        raise UserError(f"unknown action {action!r}; nothing was changed")
    try:
        message = moderation.held_message(session, message_pk)
    except UserError:
        raise UserError(NOT_HELD) from None
    if message.list_id != staff.mlist.id:
        raise UserError(NOT_HELD)
    act, sender_rule = HELD_ACTIONS[action]
    summary = moderation.act(session, config, message, act, reason.strip())
    sender = message.from_address or message.mail_from
    if sender_rule is not None and sender:
        added = posting_rules.set_sender(session, staff.mlist, sender, sender_rule)
        summary += f"; {added} set to {sender_rule.value}"
    log.info("%s on %s by %s on the web", summary, staff.mlist.address, staff.address)
    return summary


def pending_requests(session: Session, mlist: MailingList) -> list[Token]:
    """Subscriptions confirmed by their address that wait for a moderator's approval."""
    return list(session.scalars(select(Token).where(
        Token.list_id == mlist.id, Token.kind == TokenKind.APPROVE_MEMBER,
        Token.used_at.is_(None), Token.expires_at > utcnow()).order_by(Token.id)))


def decide_request(session: Session, config: Config, staff: Staff, token_id: int,
                   answer: str) -> str:
    """Approve or reject one pending subscription, as a reply to its notice would."""
    token = session.get(Token, token_id) if 0 < token_id <= MAX_INT else None
    if (token is None or token.list_id != staff.mlist.id
            or token not in pending_requests(session, staff.mlist)
            or answer not in ("approve", "reject")):
        raise UserError("that request was already answered or has expired")
    outcome = member_actions.decide_member(session, config, token, answer)
    if outcome is member_actions.Outcome.BAD_TOKEN:
        raise UserError("that request was already answered or has expired")
    summary = f"{answer}d the subscription of {token.address}"
    log.info("%s on %s by %s on the web", summary, staff.mlist.address, staff.address)
    return summary


def add_member(session: Session, config: Config, staff: Staff, text: str,
               welcome: bool) -> str:
    """`listserv member add`, and the welcome `member import --welcome` sends."""
    result = roster.add_members(session, staff.mlist, [text])
    if result.invalid:
        raise UserError(f"{text.strip()!r} is not a valid address")
    if result.existing:
        raise UserError(f"{result.existing[0]} is already a member")
    address = result.added[0]
    if welcome:
        member_actions.welcome(session, config, staff.mlist, address, DeliveryMode.REGULAR)
    summary = f"added {address}" + (" with the welcome" if welcome else "")
    log.info("%s on %s by %s on the web", summary, staff.mlist.address, staff.address)
    return summary


def remove_member(session: Session, staff: Staff, address: str) -> str:
    """`listserv member remove`: every role of the address."""
    removed, _ = roster.remove_members(session, staff.mlist, [address])
    if not removed:
        raise UserError(f"{address} is not on the list")
    summary = f"removed {removed[0]}"
    log.info("%s on %s by %s on the web", summary, staff.mlist.address, staff.address)
    return summary


def set_member(session: Session, staff: Staff, address: str, delivery: str,
               moderated: bool) -> str:
    """`listserv member set --delivery --moderated`."""
    try:
        mode = DeliveryMode(delivery)
    except ValueError:
        raise UserError(f"valid deliveries: {', '.join(m.value for m in DeliveryMode)}"
                        ) from None
    key = roster.set_member(session, staff.mlist, address, delivery=mode, moderated=moderated)
    summary = f"{key}: delivery = {mode.value}, moderated = {str(moderated).lower()}"
    log.info("%s on %s by %s on the web", summary, staff.mlist.address, staff.address)
    return summary


def change_setting(session: Session, staff: Staff, key: str, text: str) -> str:
    """`listserv list set`: the same parsing, the same refusals."""
    from listserv import list_settings  # loads the footer's sandbox, only for this

    value = list_settings.set_setting(staff.mlist, key, text)
    session.add(staff.mlist)
    summary = f"{key} = {value if value is not None else 'default'}"
    log.info("%s on %s by %s on the web", summary, staff.mlist.address, staff.address)
    return summary


def invite_addresses(session: Session, config: Config, staff: Staff, text: str) -> str:
    """`listserv member invite`, one address a line. Refused when none was mailed;
    otherwise the ones not mailed are named with why."""
    from listserv import invite

    entries = [line for line in text.splitlines() if line.strip()]
    if not entries:
        raise UserError("no address to invite")
    result = invite.invite(session, config, staff.mlist, entries)
    refused = "; ".join(f"{a}: {why}" for a, why in result.refused())
    if not result.sent:
        raise UserError(f"nobody was invited ({refused})")
    summary = f"invited {', '.join(result.sent)}" + (
        f"; not invited: {refused}" if refused else "")
    log.info("%s on %s by %s on the web", summary, staff.mlist.address, staff.address)
    return summary


def change_template(session: Session, staff: Staff, name: str, text: str | None) -> str:
    """`listserv template set` (checked the same way), or with no text `template reset`."""
    from listserv import owner_templates  # the owners' sandbox, only for this

    if text is None:
        owner_templates.reset(staff.mlist, name)
        summary = f"{name} is the built-in one again"
    else:
        owner_templates.set_template(staff.mlist, name, text)
        summary = f"{name} saved"
    session.add(staff.mlist)
    log.info("%s on %s by %s on the web", summary, staff.mlist.address, staff.address)
    return summary
