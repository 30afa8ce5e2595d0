"""One address's subscriptions on every list of the server: what its page (web/manage.py)
shows, the link to that page mailed on request, leaving every list, and moving every
subscription to a new address. Each change per list is the email commands' and the
CLI's own function (commands, roster); this module only gathers them per address.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session

from listserv import member_actions, notices, roster, tokens
from listserv.address import Purpose
from listserv.config import Config
from listserv.enums import Role
from listserv.models import Follow, MailingList, Member, Mute, ThreadSummary

log = logging.getLogger("listserv.subscriptions")


@dataclass(frozen=True)
class Thread:
    """A thread a member muted or follows."""

    thread_id: str
    subject: str  # of the thread's first archived post; "" when not archived


@dataclass(frozen=True)
class Entry:
    """One list an address is on: its member row (None when it only owns or moderates
    the list), its other roles and the threads it muted and follows there."""

    mlist: MailingList
    member: Member | None
    roles: tuple[Role, ...]
    muted: tuple[Thread, ...] = ()
    followed: tuple[Thread, ...] = ()


def _threads(session: Session, table: type[Mute] | type[Follow], list_id: int,
             address: str) -> tuple[Thread, ...]:
    rows = session.execute(
        select(table.thread_id, ThreadSummary.subject)
        .outerjoin(ThreadSummary, (ThreadSummary.list_id == table.list_id)
                   & (ThreadSummary.thread_id == table.thread_id))
        .where(table.list_id == list_id, table.address == address)
        .order_by(table.id))
    return tuple(Thread(thread_id, subject or "") for thread_id, subject in rows)


def overview(session: Session, address: str) -> list[Entry]:
    """Every list `address` holds a role on, by list address."""
    by_list: dict[int, list[Member]] = {}
    lists: dict[int, MailingList] = {}
    for mlist, member in roster.memberships(session, address):
        by_list.setdefault(mlist.id, []).append(member)
        lists[mlist.id] = mlist
    entries = []
    for list_id, rows in by_list.items():
        member = next((r for r in rows if r.role is Role.MEMBER), None)
        roles = tuple(r.role for r in rows if r.role is not Role.MEMBER)
        entries.append(Entry(lists[list_id], member, roles) if member is None else Entry(
            lists[list_id], member, roles, _threads(session, Mute, list_id, address),
            _threads(session, Follow, list_id, address)))
    return entries


def member_of(session: Session, address: str, list_address: str) -> MailingList | None:
    """The list named in a form, when `address` is a member of it (else None: a page
    acts only on the lists its link's address is on)."""
    mlist = roster.find_list(session, list_address)
    if mlist is None or not member_actions.is_member(session, mlist.id, address):
        return None
    return mlist


def _sender_list(session: Session, address: str) -> MailingList | None:
    """The list a mail about all of an address's lists comes from (its first)."""
    found = roster.memberships(session, address)
    return found[0][0] if found else None


def send_link(session: Session, config: Config, address: str) -> None:
    """Mail `address` the link to its page, when it is on any list (nobody else gets a
    mail, and the page that asked says the same either way). The daily limit of
    automatic mail to one address applies."""
    mlist = _sender_list(session, address)
    if mlist is None:
        log.info("no manage link for %s: on no list", address)
        return
    notices.send(session, config, mlist, address, "manage_link", address=address,
                 url=member_actions.manage_url(session, config, address),
                 hours=config.web.manage_link_hours)


def ask_address_change(session: Session, config: Config, old: str, new: str) -> None:
    """Mail `new` the link that moves every subscription of `old` to it: a change of
    address takes effect only when the new mailbox's reader agrees."""
    mlist = _sender_list(session, old)
    if mlist is None:
        return
    hours = config.web.manage_link_hours
    value = tokens.address_change_link(tokens.server_secret(session, config), old, new, hours)
    url = f"{config.web.base_url.rstrip('/')}/manage/address/{value}"
    notices.send(session, config, mlist, new, "confirm_address", old=old, new=new, url=url,
                 hours=hours)


def change_address(session: Session, config: Config, old: str, new: str) -> list[str]:
    """Move every subscription of `old` to `new` (roster.change_address, as `listserv
    member change-address` does), and tell `old` that it happened; the lists moved."""
    mlist = _sender_list(session, old)
    moved = roster.change_address(session, old, new)
    if mlist is not None and moved:
        log.info("%s is now %s on %s", old, new, ", ".join(moved))
        notices.send(session, config, mlist, old, "address_changed", limit=False, old=old,
                     new=new, lists=moved,
                     owner_address=mlist.addresses.at(Purpose.OWNER))
    return moved


def leave_all(session: Session, config: Config, address: str) -> list[str]:
    """member_actions.leave on every list `address` is a member of; the lists it left."""
    left = []
    for entry in overview(session, address):
        if entry.member is not None:
            member_actions.leave(session, config, entry.mlist, address)
            left.append(entry.mlist.address)
    return left
