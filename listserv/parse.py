"""Bytes in, the fields we need out; the bytes themselves are never changed here.

flanker reads the header block (it decodes RFC 2047 words in odd charsets and
tolerates broken clients); when it gives up, the stdlib parser tries, and when both
fail the message is still stored raw and held by policy.
"""

from __future__ import annotations

import email
import email.policy
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from listserv._quiet import MimeHeaders, to_unicode
from listserv.address import parse_mailbox
from listserv.compose import one_line

_MSGID = re.compile(r"<([^<>\s]+)>")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# Mailman 2's text archives write "alice at example.org"; RFC 822 mail named the sender
# in a trailing comment: "alice@example.org (Alice)".
_OBFUSCATED = re.compile(r"(?<![\w.+-])([\w.+-]+) at ([\w-]+(?:\.[\w-]+)+)")
_COMMENT_NAME = re.compile(r"\(([^()]*)\)\s*$")
# PostgreSQL text cannot hold NUL, and neither database stores lone surrogates (how
# undecodable bytes come out of a parser): the fields get U+FFFD, the raw bytes keep all.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass
class Parsed:
    """What policy, threading and the archive need from a message."""

    message_id: str | None = None  # without angle brackets
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    subject: str = ""
    from_name: str = ""
    from_address: str = ""  # lower-case addr-spec, "" when there is no usable From
    date: datetime | None = None
    list_ids: list[str] = field(default_factory=list)  # the ids inside List-Id: <...>
    been_there: list[str] = field(default_factory=list)  # X-BeenThere values, lower case
    auto_submitted: str = ""  # lower case, "" when absent
    precedence: str = ""  # lower case, "" when absent
    error: str = ""  # set when no parser could read the message
    # Set by digest.rethread for a reply to a whole digest, whose in_reply_to,
    # references and subject are then the item's it answers, not its own headers'.
    inferred_parent: str = ""


def msgids(value: str | None) -> list[str]:
    """The message ids in a header value, in order; junk around them is ignored.

    Ids without "@" are dropped: git-send-email and some clients put tokens like
    <yes> in References, and threading on those would join unrelated threads.
    """
    if not value:
        return []
    return [m for m in _MSGID.findall(value) if "@" in m]


def header_block(raw: bytes) -> bytes:
    """The header section alone, so a 10 MB attachment is never walked for a Subject."""
    end = _HEADER_END.search(raw)
    return raw[: end.end()] if end else raw


def _message_id(value: str | None) -> str | None:
    if not value:
        return None
    ids = _MSGID.findall(value)
    if ids:
        return ids[0]
    # Some clients send a bare id without brackets; keep it if it looks like one,
    # and one without its closing ">" (corpus: mailman/bad_email_3.eml) is kept too.
    bare = value.strip().strip("<>")
    return bare if bare and " " not in bare and "@" in bare else None


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # RFC 5322 "-0000": UTC with no information about local time
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _sender(value: str) -> tuple[str, str]:
    """(name, address) of a From: field, "" for what cannot be read; also from the two
    old forms pipermail archives carry."""
    mailbox = parse_mailbox(value) or parse_mailbox(_OBFUSCATED.sub(r"\1@\2", value))
    if mailbox is None:
        return "", ""
    name, address = mailbox
    comment = _COMMENT_NAME.search(value) if not name else None
    # On one line: an encoded-word may hide a CR LF, and the name goes into headers we
    # write ("Alice via Dev", digests).
    return one_line(comment[1] if comment else name), address


# The fields parse() reads; the others (Received, DKIM-Signature, X-...) are most of a
# header block, and decoding them was a third of an import's parsing.
_WANTED = frozenset({"from", "message-id", "in-reply-to", "references", "subject", "date",
                     "list-id", "x-beenthere", "auto-submitted", "precedence"})
# Where flanker's header reader stops: a line that is neither a field, a continuation
# nor an mbox "From " line starts the body (a client forgot the blank line).
_FIELD_OR_FOLD = re.compile(r"(From |[\041-\071\073-\176]+:|[\t ])")


def _wanted_lines(text: str) -> tuple[str, int]:
    """The lines of the fields parse() reads, with their continuations, read as flanker
    reads a header block; and how many fields the block had in all."""
    kept: list[str] = []
    fields = 0
    keep = False
    for line in io.StringIO(text):
        if line in ("\r\n", "\r", "\n") or not _FIELD_OR_FOLD.match(line):
            break
        if line[0] in " \t":
            if keep:
                kept.append(line)
            continue
        if line.startswith("From "):
            keep = False
            continue
        fields += 1
        keep = line.partition(":")[0].rstrip().lower() in _WANTED
        if keep:
            kept.append(line)
    return "".join(kept), fields


def _headers_flanker(block: bytes) -> tuple[dict[str, list[str]], int]:
    # flanker's header parser alone: its whole-message parser, given a header block,
    # refuses every multipart message (no boundary follows) and sent one post in eight
    # to the slower fallback.
    text, fields = _wanted_lines(to_unicode(block))
    out: dict[str, list[str]] = {}
    for name, value in MimeHeaders.from_stream(io.StringIO(text)).iteritems(raw=False):
        out.setdefault(name.lower(), []).append(str(value))
    return out, fields


def _headers_stdlib(block: bytes) -> tuple[dict[str, list[str]], int]:
    message = email.message_from_bytes(block, policy=email.policy.default)
    out: dict[str, list[str]] = {}
    for name, value in message.items():
        if name.lower() in _WANTED:
            out.setdefault(name.lower(), []).append(str(value))
    return out, len(message)


def read_headers(raw: bytes) -> tuple[dict[str, list[str]], str]:
    """The decoded fields parse() reads, by lower-case name, and an error text when no
    parser managed."""
    block = header_block(raw)
    errors = []
    for reader in (_headers_flanker, _headers_stdlib):
        name = reader.__name__.removeprefix("_headers_")
        try:
            headers, fields = reader(block)
        except Exception as exc:  # noqa: BLE001  both parsers raise many kinds on bad input
            errors.append(f"{name}: {exc.__class__.__name__}")
            continue
        # Both parsers take any bytes as a body with no headers; mail has at least
        # From and Date (RFC 5322 3.6), so no header field at all means not mail.
        if fields:
            return {name: [_UNSTORABLE.sub("\ufffd", v) for v in values]
                    for name, values in headers.items()}, ""
        errors.append(f"{name}: no header fields")
    return {}, "unparseable message (" + "; ".join(errors) + ")"


def parse(raw: bytes) -> Parsed:
    """Read the fields we need from received bytes; never raises on bad mail."""
    headers, error = read_headers(raw)
    if error:
        return Parsed(error=error)

    def first(name: str) -> str | None:
        values = headers.get(name)
        return values[0] if values else None

    from_name, from_address = _sender(first("from") or "")
    return Parsed(
        message_id=_message_id(first("message-id")),
        in_reply_to=msgids(first("in-reply-to")),
        references=msgids(" ".join(headers.get("references", []))),
        subject=" ".join((first("subject") or "").split()),
        from_name=from_name,
        from_address=from_address,
        date=_date(first("date")),
        list_ids=[i for v in headers.get("list-id", []) for i in _MSGID.findall(v)],
        been_there=[v.strip().lower() for v in headers.get("x-beenthere", [])],
        auto_submitted=(first("auto-submitted") or "").split(";")[0].strip().lower(),
        precedence=(first("precedence") or "").strip().lower(),
    )
