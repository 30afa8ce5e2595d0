"""The mbox format (RFC 4155), as old archives come in and `archive export` writes out.

We read and write mboxrd: a message line that starts with "From " after any number of
">" gets one more ">" when written and loses one when read, so reading gives back the
exact bytes written. Python's `mailbox` module writes mboxo (only "From " is quoted)
and never unquotes on reading; the mboxo files of Mailman 2's pipermail, mod_mbox and
Python read here get their quoted "From " lines back as they were sent, and only a
line that was ">From " already before quoting (which mboxo cannot tell apart) loses
its ">".
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import BinaryIO

# The envelope line: "From SENDER DATE", the date in asctime form (Google writes a zone
# before the year). A body line that starts with "From " but was never quoted (Mailman 2
# archives have them: its `cleanarch` tool exists for that) is not mistaken for one.
_ENVELOPE = re.compile(
    rb"From (?P<sender>.*?)\s+(?P<date>\w{3}\s+\w{3}\s+\d{1,2}\s+\d{1,2}:\d\d(:\d\d)?"
    rb"(\s+[-+]?\w+)?\s+\d{4})(\s+[-+]?\w+)?\s*$")
_QUOTED = re.compile(rb"^>+From ")
_TO_QUOTE = re.compile(rb"^(>*From )", re.MULTILINE)
_BLANK = (b"\n", b"\r\n")


@dataclass(frozen=True)
class Mail:
    """One message of a mailbox, and what its envelope line said."""

    raw: bytes
    sender: str = ""  # envelope sender, "" when unknown
    date: datetime | None = None  # envelope date, UTC


def _envelope_date(value: bytes) -> datetime | None:
    """None also for the epoch, which converters write when they know no date."""
    try:
        date = parsedate_to_datetime(value.decode("ascii", "replace"))
    except (TypeError, ValueError, IndexError):
        return None
    date = date.replace(tzinfo=date.tzinfo or UTC).astimezone(UTC)
    return date if date.timestamp() > 0 else None


def _mail(envelope: re.Match[bytes], lines: list[bytes]) -> Mail:
    """The message between two envelope lines; the blank line that separates messages
    is not part of it, and a last line without its line end gets one (mbox cannot
    keep the difference, and this way exporting gives back what was imported)."""
    if lines and lines[-1] in _BLANK:
        lines.pop()
    raw = b"".join(lines)
    if raw and not raw.endswith(b"\n"):
        raw += b"\r\n" if b"\r\n" in raw else b"\n"
    sender = envelope["sender"].decode("utf-8", "replace").strip()
    return Mail(raw, "" if sender == "MAILER-DAEMON" else sender,
                _envelope_date(envelope["date"]))


def read(stream: BinaryIO) -> Iterator[Mail]:
    """The messages of an mbox file, one at a time, however large the file; text before
    the first envelope line is not mail and is skipped."""
    envelope: re.Match[bytes] | None = None
    lines: list[bytes] = []
    for line in stream:
        found = _ENVELOPE.match(line) if line.startswith(b"From ") else None
        if found:
            if envelope is not None:
                yield _mail(envelope, lines)
            envelope, lines = found, []
        elif envelope is not None:
            lines.append(line[1:] if line[:1] == b">" and _QUOTED.match(line) else line)
    if envelope is not None:
        yield _mail(envelope, lines)


def envelope_line(sender: str, date: datetime) -> bytes:
    """RFC 4155's "From " line: the sender (one word, else MAILER-DAEMON) and an asctime
    date in UTC."""
    word = sender if sender and not any(c.isspace() for c in sender) else "MAILER-DAEMON"
    stamp = time.asctime(date.astimezone(UTC).timetuple())
    return f"From {word} {stamp}\n".encode()


def entry(raw: bytes, sender: str, date: datetime) -> bytes:
    """One message as an mbox entry: envelope line, the bytes quoted, a blank line."""
    body = _TO_QUOTE.sub(rb">\1", raw)
    if not body.endswith(b"\n"):
        body += b"\n"
    return envelope_line(sender, date) + body + b"\n"
