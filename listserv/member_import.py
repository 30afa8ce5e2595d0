"""Member lists as people bring them from the systems they leave (`listserv member
import`): one address a line (Mailman 3's `mailman members` writes "Name <address>"),
any CSV with an address column and optional name and delivery columns, Mailman 3's
members CSV, and Google Groups' members export as downloaded, title line included.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from listserv.enums import DeliveryMode
from listserv.headers import has_control
from listserv.roster import Entry, UserError

_ADDRESS = ("address", "email", "email address", "e-mail", "e-mail address")
_NAME = ("name", "display_name", "display name", "nickname", "full name")
_DELIVERY = ("delivery", "delivery_mode", "email preference")
_STATUS = ("group status",)  # Google Groups: member, manager, owner, invited, pending
_DELIMITERS = ",;\t"
# Google Groups puts "Members for group NAME" above the header; NAME may hold a comma.
_GOOGLE_TITLE = "members for group"

# Delivery values as each system writes them (lower case). Google's "Abridged" (a daily
# summary) has no equal here: the nearest is one plain-text digest a day.
DELIVERY_NAMES = {
    "": DeliveryMode.REGULAR, "regular": DeliveryMode.REGULAR,
    "email": DeliveryMode.REGULAR, "all email": DeliveryMode.REGULAR,
    "each email": DeliveryMode.REGULAR,
    "digest": DeliveryMode.DIGEST_MIME, "digest-mime": DeliveryMode.DIGEST_MIME,
    "mime_digests": DeliveryMode.DIGEST_MIME,
    "digest-plain": DeliveryMode.DIGEST_PLAIN, "plaintext_digests": DeliveryMode.DIGEST_PLAIN,
    "abridged": DeliveryMode.SUMMARY, "summary_digests": DeliveryMode.SUMMARY,
    "summary": DeliveryMode.SUMMARY,
    "nomail": DeliveryMode.NOMAIL, "no email": DeliveryMode.NOMAIL,
}
# Google Groups lists people who were invited or asked to join; they are not members.
_NOT_JOINED = ("invited", "pending")


@dataclass
class ImportFile:
    entries: list[Entry] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "line 4: why", for the user
    skipped: list[str] = field(default_factory=list)  # not members where they come from


def _is_csv_header(line: str) -> bool:
    """A header names columns: it has no address in it, and a delimiter or a known name."""
    if "@" in line:
        return False
    return any(d in line for d in _DELIMITERS) or line.strip().lower() in _ADDRESS


def _column(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((columns[n] for n in names if n in columns), None)


def _read_csv(lines: list[str], start: int, found: ImportFile) -> None:
    """The CSV whose header is lines[start]; rows are reported by their line in the file."""
    header = lines[start]
    delimiters = "".join(d for d in _DELIMITERS if d in header)
    # A one-column CSV has no delimiter to sniff; the default dialect reads it.
    dialect = csv.Sniffer().sniff(header, delimiters) if delimiters else csv.excel
    reader = csv.DictReader(io.StringIO("\n".join(lines[start:])), dialect=dialect)
    columns = {c.strip().lower(): c for c in reader.fieldnames or [] if c}
    address = _column(columns, _ADDRESS)
    if address is None:
        raise UserError(f"CSV has no 'address' or 'email' column (columns: {header.strip()})")
    name, delivery, status = (_column(columns, n) for n in (_NAME, _DELIVERY, _STATUS))
    for row in reader:
        value = (row.get(address) or "").strip()
        if value:
            _add_row(found, f"line {start + reader.line_num}: {value}", row, value,
                     (name, delivery, status))


def _add_row(found: ImportFile, where: str, row: dict[str, str], value: str,
             columns: tuple[str | None, ...]) -> None:
    name, delivery, status = (((row.get(c) or "").strip() if c else "") for c in columns)
    mode = DELIVERY_NAMES.get(delivery.lower())
    if has_control(name):
        found.refused.append(f"{where}: the name has control characters")
    elif status.lower() in _NOT_JOINED:
        found.skipped.append(f"{where}: {status.lower()}, not a member")
    elif mode is None:
        found.refused.append(f"{where}: unknown delivery {delivery!r}")
    else:
        found.entries.append(Entry(value, name, mode))


def read(text: str) -> ImportFile:
    """The entries of an import file, and the lines refused or skipped, by line number."""
    found = ImportFile()
    lines = text.splitlines()
    filled = [i for i, line in enumerate(lines) if line.strip()]
    if filled and lines[filled[0]].strip().lower().startswith(_GOOGLE_TITLE):
        filled = filled[1:]
    if filled and _is_csv_header(lines[filled[0]]):
        _read_csv(lines, filled[0], found)
        return found
    found.entries = [Entry(lines[i].strip()) for i in filled
                     if not lines[i].lstrip().startswith("#")]
    return found
