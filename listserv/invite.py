"""Invitations (`listserv member invite`): the owners ask addresses to join, and each
gets a mail that subscribes it only when it is answered: a reply (to the list's
LIST-confirm+TOKEN@ address), a `confirm TOKEN` line to LIST-request@, or the button
on the /invite/TOKEN page. member_actions.confirm does the subscribing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select
from sqlmodel import Session

from listserv import member_actions, notices, posting_rules, roster, tokens
from listserv.address import ListAddresses, Purpose
from listserv.config import Config
from listserv.enums import DeliveryMode, TokenKind
from listserv.models import MailingList, Token, utcnow

log = logging.getLogger("listserv.invite")


@dataclass
class Invited:
    """What became of each address asked; only `sent` were mailed."""

    sent: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)  # already on the list
    pending: list[str] = field(default_factory=list)  # invited before, not answered yet
    banned: list[str] = field(default_factory=list)  # `listserv ban`: never invited
    limited: list[str] = field(default_factory=list)  # had their automatic mails today
    invalid: list[str] = field(default_factory=list)

    def refused(self) -> list[tuple[str, str]]:
        """Each address not mailed, with why, as the CLI and the owners' page say it."""
        return [(a, why) for group, why in (
            (self.members, "already a member"),
            (self.pending, "already invited (the invitation is unanswered)"),
            (self.banned, "banned"), (self.limited, "had its automatic mails for today"),
            (self.invalid, "not a valid address")) for a in group]


def invite(session: Session, config: Config, mlist: MailingList,
           entries: Iterable[str]) -> Invited:
    """Mail an invitation to each address that is no member, not banned and not already
    invited; the others are reported, so the owner knows why they got none."""
    result = Invited()
    for entry in entries:
        mailbox = roster.normalize(entry)
        address = mailbox[1] if mailbox else entry.strip()
        if mailbox is None:
            result.invalid.append(address)
        elif posting_rules.banned(session, address):
            result.banned.append(address)
        elif member_actions.is_member(session, mlist.id, address):
            result.members.append(address)
        elif tokens.pending(session, TokenKind.INVITE, mlist.id, address):
            result.pending.append(address)
        elif _send(session, config, mlist, address):
            result.sent.append(address)
        else:
            result.limited.append(address)
    return result


def _send(session: Session, config: Config, mlist: MailingList, address: str) -> bool:
    hours = config.lists.confirm_expiry_hours
    token, value = tokens.new(session, TokenKind.INVITE, mlist.id, address,
                              timedelta(hours=hours), data=DeliveryMode.REGULAR.value)
    confirm_address = ListAddresses(mlist.address).at(Purpose.CONFIRM, value)
    if notices.send(session, config, mlist, address, "invite", reply_to=confirm_address,
                    token=value, confirm_address=confirm_address, address=address,
                    hours=hours):
        log.info("%s invited to %s", address, mlist.address)
        return True
    session.delete(token)  # never sent: a later invitation must not find it pending
    return False


def pending(session: Session, mlist: MailingList) -> list[Token]:
    """The invitations of a list not answered yet and not expired, oldest first."""
    return list(session.scalars(select(Token).where(
        Token.list_id == mlist.id, Token.kind == TokenKind.INVITE, Token.used_at.is_(None),
        Token.expires_at > utcnow()).order_by(Token.id)))


def find(session: Session, value: str) -> tuple[Token, MailingList] | None:
    """A usable invitation and its list (what the /invite/ page acts on)."""
    token = tokens.find(session, value)
    if token is None or token.kind is not TokenKind.INVITE:
        return None
    mlist = session.get(MailingList, token.list_id)
    return None if mlist is None else (token, mlist)
