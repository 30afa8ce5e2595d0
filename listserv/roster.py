"""Lists and their members: the writes behind `listserv list` and `listserv member`
(and, later, behind the commands members send by email).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlmodel import Session, col

from listserv.address import parse_mailbox, split, valid_list_local
from listserv.enums import DeliveryMode, DisabledBy, Role
from listserv.models import Follow, MailingList, Member, Mute, utcnow


class UserError(Exception):
    """A mistake in what the user asked for; its text is shown as it is."""


# A plain addr-spec, the common case in imports: skip flanker's full grammar for it.
_SIMPLE = re.compile(r"^[A-Za-z0-9._%+'=-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def normalize(text: str) -> tuple[str, str] | None:
    """(display name, lower-case address) for "Name <a@b>" or "a@b"; None if invalid."""
    text = text.strip()
    if _SIMPLE.match(text):
        return "", text.lower()
    # Imported here: headers loads the email package, which a command line adding
    # plain addresses does not need.
    from listserv.headers import has_control

    if has_control(text):
        return None  # a CR or LF here would end up splitting a header
    mailbox = parse_mailbox(text)
    if mailbox is None or "." not in split(mailbox[1])[1] or has_control(mailbox[0]):
        return None  # the name may hide a control in an encoded-word
    return mailbox


def header_text(value: str, what: str) -> str:
    """A value that goes into the headers of list mail (name, description, subject
    prefix): refused whole when it holds a control character, since a CR or LF would
    start a header of the user's choosing in every copy."""
    from listserv.headers import has_control

    if has_control(value):
        raise UserError(f"invalid {what} {value!r}: it must be one line, without control "
                        "characters")
    return value


def get_list(session: Session, address: str) -> MailingList:
    mlist = session.scalars(select(MailingList).where(
        MailingList.address == address.strip().lower())).first()
    if mlist is None:
        raise UserError(f"no list {address}")
    return mlist


def find_list(session: Session, address: str) -> MailingList | None:
    return session.scalars(select(MailingList).where(MailingList.address == address)).first()


def hosts_domain(session: Session, domain: str) -> bool:
    return session.scalars(select(MailingList.id).where(
        MailingList.domain == domain).limit(1)).first() is not None


def all_lists(session: Session) -> list[MailingList]:
    return list(session.scalars(select(MailingList).order_by(MailingList.address)))


def create_list(session: Session, address: str, *, name: str | None = None,
                owner: str | None = None, description: str = "") -> MailingList:
    local, domain = split(address)
    if not local or "." not in domain or normalize(address) is None:
        raise UserError(f"invalid list address {address!r}")
    if not valid_list_local(local):
        raise UserError(f"invalid list name {local!r}: no '+', and it must not end in "
                        "-owner, -bounces, -request, -join, -leave or -confirm")
    if find_list(session, f"{local}@{domain}"):
        raise UserError(f"list {local}@{domain} already exists")
    if owner is not None and normalize(owner) is None:
        raise UserError(f"invalid owner address {owner!r}")
    header_text(name or "", "name")
    header_text(description, "description")
    mlist = MailingList(address=f"{local}@{domain}", domain=domain,
                        name=name or local.capitalize(), description=description)
    session.add(mlist)
    session.flush()
    if owner:
        add_members(session, mlist, [owner], Role.OWNER)
        add_members(session, mlist, [owner], Role.MEMBER)
    return mlist


def delete_list(session: Session, mlist: MailingList) -> None:
    """The list and all it has. Its posts still being expanded go first, on their own:
    a delivery worker holds a post's expansion row while it writes the chunk's jobs,
    whose list id locks the list's row, so deleting the list first (the expansion then
    by cascade) took the two locks the other way round, and PostgreSQL found a deadlock.
    """
    from listserv import search  # the search index's engine, only for this
    from listserv.queue_tables import Expansion

    session.execute(delete(Expansion).where(col(Expansion.list_id) == mlist.id))
    search.forget_list(session, mlist.id)
    session.delete(mlist)


@dataclass
class AddResult:
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


def _existing(session: Session, list_id: int, role: Role) -> set[str]:
    return set(session.scalars(select(Member.address).where(
        Member.list_id == list_id, Member.role == role)))


@dataclass(frozen=True)
class Entry:
    """One address to add, with the name and delivery an import file gave it."""

    text: str  # "a@b" or "Name <a@b>"
    name: str = ""  # wins over a name in `text`
    delivery: DeliveryMode = DeliveryMode.REGULAR


def add_members(session: Session, mlist: MailingList, entries: Iterable[str | Entry],
                role: Role = Role.MEMBER, progress: Callable[[int], None] | None = None,
                chunk: int = 5000) -> AddResult:
    """Add many addresses in bulk; each bad or repeated one is reported, none stops the rest."""
    result = AddResult()
    seen = _existing(session, mlist.id, role)
    now = utcnow()
    pending: list[dict] = []

    def flush() -> None:
        if pending:
            session.execute(insert(Member), pending)
            pending.clear()

    for item in entries:
        entry = item if isinstance(item, Entry) else Entry(item)
        mailbox = normalize(entry.text)
        if mailbox is None:
            result.invalid.append(entry.text.strip())
        elif mailbox[1] in seen:
            result.existing.append(mailbox[1])
        else:
            seen.add(mailbox[1])
            result.added.append(mailbox[1])
            pending.append({"list_id": mlist.id, "address": mailbox[1], "display_name":
                            entry.name or mailbox[0], "role": role.value,
                            "delivery": entry.delivery.value, "moderated": False,
                            "created_at": now})
            if len(pending) >= chunk:
                flush()
        if progress:
            progress(1)
    flush()
    return result


def remove_members(session: Session, mlist: MailingList,
                   addresses: Iterable[str]) -> tuple[list[str], list[str]]:
    """Remove every role of each address; (removed, not found)."""
    removed, missing = [], []
    for entry in addresses:
        mailbox = normalize(entry)
        address = mailbox[1] if mailbox else entry.strip().lower()
        gone = session.execute(delete(Member).where(
            Member.list_id == mlist.id, Member.address == address))
        (removed if gone.rowcount else missing).append(address)
    return removed, missing


def members(session: Session, mlist: MailingList) -> list[Member]:
    return list(session.scalars(select(Member).where(Member.list_id == mlist.id)
                                .order_by(Member.address, Member.role)))


_DISABLED = {DisabledBy.BOUNCES: "disabled-bounce", DisabledBy.MEMBER: "disabled-member",
             DisabledBy.MODERATOR: "disabled-moderator"}


def delivery_status(member: Member) -> str:
    """`enabled`, or who switched delivery off: `disabled-bounce`, `disabled-member`,
    `disabled-moderator` (the delivery mode, such as nomail, is shown apart)."""
    return _DISABLED[member.disabled_by] if member.disabled_by else "enabled"


def roles_of(session: Session, list_id: int, addresses: list[str]) -> list[Member]:
    """Every role these addresses hold; members, moderators and owners may all post."""
    return list(session.scalars(select(Member).where(
        Member.list_id == list_id, Member.address.in_(addresses))))


def set_member(session: Session, mlist: MailingList, address: str, *,
               moderated: bool | None = None, delivery: DeliveryMode | None = None,
               role: Role | None = None) -> str:
    """Change one address's flags; --role needs an address holding exactly one role."""
    mailbox = normalize(address)
    key = mailbox[1] if mailbox else address.strip().lower()
    rows = roles_of(session, mlist.id, [key])
    if not rows:
        raise UserError(f"{key} is not on {mlist.address}")
    if role is not None and role not in {r.role for r in rows}:
        if len(rows) > 1:
            held = ", ".join(sorted(r.role.value for r in rows))
            raise UserError(f"{key} holds several roles ({held}); use member add/remove")
        rows[0].role = role
    for row in rows:
        if moderated is not None:
            row.moderated = moderated
        if delivery is not None:
            row.delivery = delivery
            row.disabled_by = None
        session.add(row)
    return key


def pause(session: Session, mlist: MailingList, address: str, until: datetime | None) -> str:
    """No posts or digests to this member until `until` (None: from now on again).
    Nothing switches delivery back on: the fan-out skips a date still ahead."""
    member = _member_row(session, mlist, address)
    member.nomail_until = until
    session.add(member)
    return member.address


# What a member may switch for themself (by mail, CLI or their page); each a bool.
OPTIONS = ("own_posts", "skip_if_addressed", "acknowledge")
MAX_PAUSE = timedelta(days=366)  # a member's "no mail until" at most this far ahead


def set_options(session: Session, mlist: MailingList, address: str,
                **options: bool | None) -> str:
    """Switch a member's own options (OPTIONS; None leaves one as it is)."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise UserError(f"no such option: {', '.join(sorted(unknown))}")
    member = _member_row(session, mlist, address)
    for name, value in options.items():
        if value is not None:
            setattr(member, name, value)
    session.add(member)
    return member.address


def pause_until(text: str) -> datetime:
    """A member's "no mail until" day as they type it (YYYY-MM-DD, UTC): after today and
    within a year, so a typo does not stop their mail for good."""
    try:
        day = date.fromisoformat(text.strip())
    except ValueError:
        raise UserError("Give the date as YYYY-MM-DD.") from None
    until = datetime(day.year, day.month, day.day, tzinfo=UTC)
    now = datetime.now(UTC)
    if not now < until <= now + MAX_PAUSE:
        raise UserError("Choose a date after today and within a year.")
    return until


def _member_row(session: Session, mlist: MailingList, address: str) -> Member:
    key = _key(address)
    rows = [r for r in roles_of(session, mlist.id, [key]) if r.role is Role.MEMBER]
    if not rows:
        raise UserError(f"{key} is not a member of {mlist.address}")
    return rows[0]


def change_address(session: Session, old: str, new: str) -> list[str]:
    """Move every role, muted and followed thread of `old`, on every list, to `new`; the lists
    changed. A role `new` already holds on a list stays as it is, and `old`'s goes."""
    old_key, found = _key(old), normalize(new)
    if found is None:
        raise UserError(f"invalid address {new!r}")
    new_key = found[1]
    if new_key == old_key:
        raise UserError(f"{new_key} is already the address")
    lists: set[str] = set()
    for mlist, member in memberships(session, old_key):
        lists.add(mlist.address)
        if any(r.role is member.role for r in roles_of(session, mlist.id, [new_key])):
            session.delete(member)
        else:
            member.address = new_key
            session.add(member)
        session.flush()
    for table in (Mute, Follow):
        for row in session.scalars(select(table).where(table.address == old_key)):
            clash = session.scalars(select(table.id).where(
                table.list_id == row.list_id, table.address == new_key,
                table.thread_id == row.thread_id)).first()
            if clash is None:
                row.address = new_key
                session.add(row)
            else:
                session.delete(row)
    session.flush()
    return sorted(lists)


def _key(address: str) -> str:
    """The lower-case addr-spec an address is stored under."""
    mailbox = normalize(address)
    return mailbox[1] if mailbox else address.strip().lower()


def memberships(session: Session, address: str) -> list[tuple[MailingList, Member]]:
    """Every role an address holds on any list, by list address then role."""
    mailbox = normalize(address)
    key = mailbox[1] if mailbox else address.strip().lower()
    return [(mlist, member) for member, mlist in session.execute(
        select(Member, MailingList).join(MailingList, Member.list_id == MailingList.id)
        .where(Member.address == key).order_by(MailingList.address, Member.role))]

def role_addresses(session: Session, list_id: int, roles: Iterable[Role]) -> list[str]:
    return sorted(set(session.scalars(select(Member.address).where(
        Member.list_id == list_id, Member.role.in_(list(roles))))))
