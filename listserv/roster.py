"""Lists and their members: the writes behind `listserv list` and `listserv member`
(and, later, behind the commands members send by email).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import delete, insert, select
from sqlmodel import Session

from listserv import search
from listserv.address import parse_mailbox, split, valid_list_local
from listserv.compose import has_control
from listserv.models import DeliveryMode, DisabledBy, MailingList, Member, Role, utcnow


class UserError(Exception):
    """A mistake in what the user asked for; its text is shown as it is."""


# A plain addr-spec, the common case in imports: skip flanker's full grammar for it.
_SIMPLE = re.compile(r"^[A-Za-z0-9._%+'=-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def normalize(text: str) -> tuple[str, str] | None:
    """(display name, lower-case address) for "Name <a@b>" or "a@b"; None if invalid."""
    text = text.strip()
    if _SIMPLE.match(text):
        return "", text.lower()
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


def add_members(session: Session, mlist: MailingList, entries: Iterable[str],
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

    for entry in entries:
        mailbox = normalize(entry)
        if mailbox is None:
            result.invalid.append(entry.strip())
        elif mailbox[1] in seen:
            result.existing.append(mailbox[1])
        else:
            seen.add(mailbox[1])
            result.added.append(mailbox[1])
            pending.append({"list_id": mlist.id, "address": mailbox[1], "display_name":
                            mailbox[0], "role": role.value, "delivery": "regular",
                            "moderated": False, "created_at": now})
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


_COLUMNS = ("address", "email")
_DELIMITERS = ",;\t"


def _is_csv_header(line: str) -> bool:
    """A header names columns: it has no address in it, and a delimiter or a known name."""
    if "@" in line:
        return False
    return any(d in line for d in _DELIMITERS) or line.strip().lower() in _COLUMNS


def _read_csv(text: str, header: str) -> Iterator[str]:
    delimiters = "".join(d for d in _DELIMITERS if d in header)
    # A one-column CSV has no delimiter to sniff; the default dialect reads it.
    dialect = csv.Sniffer().sniff(header, delimiters) if delimiters else csv.excel
    reader = csv.DictReader(io.StringIO(text.strip()), dialect=dialect)
    columns = {c.strip().lower(): c for c in reader.fieldnames or [] if c}
    column = next((columns[name] for name in _COLUMNS if name in columns), None)
    if column is None:
        raise UserError(f"CSV has no 'address' or 'email' column (columns: {header.strip()})")
    for row in reader:
        value = (row.get(column) or "").strip()
        if value:
            yield value


def read_import(text: str) -> Iterator[str]:
    """Addresses from a CSV with an "address" (or "email") column, or one per line."""
    lines = [line.strip() for line in text.splitlines()]
    header = next((line for line in lines if line), "")
    if _is_csv_header(header):
        yield from _read_csv(text, header)
        return
    for line in lines:
        if line and not line.startswith("#"):
            yield line


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
