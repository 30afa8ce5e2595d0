"""Header fields and text as mail carries them: line ends, field names, one-line values,
mailboxes and encoded words, and the plain text entity. Pure functions that the parser,
the roster and every writer share; nothing here knows of lists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr

_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def crlf(data: bytes) -> bytes:
    """Normalise line ends to CRLF (mbox files and some clients use bare LF). Two
    replaces do what the regular expression r"\r?\n" would, several times faster: this
    runs on every line that carries a member's link, for every member."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def field_name(line: bytes) -> bytes:
    match = _FIELD.match(line)
    return match.group(1).lower() if match else b""


def split_head(data: bytes) -> tuple[list[bytes], int]:
    """Header fields (each with its continuation lines) and where the body starts.

    The header ends at the blank line, or, as the stdlib and mail clients read it, at
    the first line that is not a header field; mail with no field at all is all body.
    """
    fields: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n", pos)
        end = len(data) if end < 0 else end + 2
        line = data[pos:end]
        if line == b"\r\n":
            return fields, end
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line
        elif field_name(line) or (not fields and line.startswith(b"From ")):  # mbox
            fields.append(line)
        else:
            return [_line(f) for f in fields], pos
        pos = end
    return [_line(f) for f in fields], len(data)


def _line(field: bytes) -> bytes:
    return field if field.endswith(b"\r\n") else field + b"\r\n"


def render_fields(fields: Sequence[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in fields)


# What must never reach a header value from data: CR and LF end the field and start a
# forged one; the other C0 and C1 controls (and the Unicode line separators) confuse
# the readers that mail passes through.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def one_line(text: str) -> str:
    """Data made safe for a header value: controls become spaces, runs of space one.
    Every place that writes a header from data (a list name, an author's name, a
    subject) goes through this, so no value can split a header in two."""
    return " ".join(_CONTROL.sub(" ", text).split())


def encode_phrase(text: str, *, quote: bool = False) -> str:
    """A display name on one line: quoted when it has specials, RFC 2047 when not ASCII."""
    text = one_line(text)
    if text.isascii():
        if quote or re.search(r'[()<>\[\]:;@\\,."]', text):
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return text
    return Header(text, "utf-8").encode(linesep="\r\n")


def mailbox(name: str, address: str) -> str:
    """A From or To value for a name from data ("Dev", an author), on one line.
    formataddr refuses addresses that are not ASCII, which mail under RFC 6532 has."""
    if address.isascii():
        return formataddr((one_line(name), address))
    return f"{one_line(name)} <{address}>" if name.strip() else address


def unstructured(text: str) -> str:
    """A header value such as a subject, RFC 2047-encoded when it is not ASCII."""
    text = one_line(text)
    return text if text.isascii() else Header(text, "utf-8").encode(linesep="\r\n")


# Text taken from posts may hold lone surrogates (a charset such as unicode-escape makes
# them), which UTF-8 cannot carry.
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_part(text: str) -> bytes:
    """A text/plain entity in UTF-8. Lines up to RFC 5322's 998 octets go as they are
    (7bit, or 8bit), written here: the email package's generator cost half the time of
    building a digest, and, with the SMTP policy's 78, one longer line made it
    quoted-printable-encode the whole text in Python and readers got soft line breaks
    where the author had none. Longer lines are the email package's to encode."""
    text = _SURROGATE.sub("\ufffd", text)
    data = text.encode("utf-8")
    lines = data.splitlines()
    if max(map(len, lines), default=0) <= 998:
        return (b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: '
                + (b"7bit" if data.isascii() else b"8bit") + b"\r\n\r\n"
                + b"".join(line + b"\r\n" for line in lines))
    part = EmailMessage(policy=SMTP)
    part.set_content(text)
    del part["MIME-Version"]
    return part.as_bytes()
