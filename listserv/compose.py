"""What the server writes: the headers on the copies it sends out.

The body of a post is never decoded or re-encoded: header lines are edited as bytes
and the body bytes follow unchanged, only with CRLF line ends as SMTP requires.
"""

from __future__ import annotations

import re
from email.header import Header
from urllib.parse import quote

from listserv.address import ListAddresses, Purpose

_LINE_END = re.compile(rb"\r?\n")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")

# Headers a list replaces on every copy: ours must be the only ones (RFC 2369, 2919).
REPLACED = {
    b"list-id", b"list-post", b"list-help", b"list-subscribe", b"list-unsubscribe",
    b"list-unsubscribe-post", b"list-archive", b"list-owner", b"archived-at",
    b"precedence", b"return-path",
}


def crlf(data: bytes) -> bytes:
    """Normalise line ends to CRLF (mbox files and some clients use bare LF)."""
    return _LINE_END.sub(b"\r\n", data)


def split_message(raw: bytes) -> tuple[list[bytes], bytes]:
    """Header fields (each with its folded continuation lines, CRLF-ended) and the body."""
    data = crlf(raw)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, body = data, b""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += line + b"\r\n"
        elif line:
            fields.append(line + b"\r\n")
    return fields, body


def field_name(line: bytes) -> bytes:
    match = _FIELD.match(line)
    return match.group(1).lower() if match else b""


def _encode_phrase(text: str) -> str:
    if text.isascii():
        if re.search(r'[()<>\[\]:;@\\,."]', text):
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return text
    return Header(text, "utf-8").encode()


def subject_tag(name: str) -> str:
    return f"[{name}]"


def prefixed_subject(raw_value: bytes, decoded: str, name: str) -> bytes:
    """Put "[Name] " in front once: a reply that already carries it keeps its subject."""
    tag = subject_tag(name)
    if tag.casefold() in decoded.casefold():
        return raw_value
    prefix = tag if tag.isascii() else Header(tag, "utf-8").encode()
    stripped = raw_value.lstrip(b" \t")
    return b" " + prefix.encode("ascii") + (b" " + stripped if stripped.strip() else b"\r\n")


def archive_url(base_url: str, addresses: ListAddresses) -> str:
    return f"{base_url.rstrip('/')}/lists/{addresses.posting}/"


def message_url(base_url: str, addresses: ListAddresses, message_id: str) -> str:
    """RFC 5064 Archived-At: keyed by Message-ID, so the URL never changes."""
    return archive_url(base_url, addresses) + "m/" + quote(message_id, safe="@.-_+=") + "/"


def list_headers(addresses: ListAddresses, name: str, base_url: str,
                 message_id: str) -> list[tuple[str, str]]:
    """The list headers every copy carries (RFC 2369, RFC 2919, RFC 5064)."""
    return [
        ("List-Id", f"{_encode_phrase(name)} <{addresses.list_id}>"),
        ("List-Post", f"<mailto:{addresses.posting}>"),
        ("List-Help", f"<mailto:{addresses.at(Purpose.REQUEST)}?subject=help>"),
        ("List-Subscribe", f"<mailto:{addresses.at(Purpose.JOIN)}>"),
        ("List-Unsubscribe", f"<mailto:{addresses.at(Purpose.LEAVE)}>"),
        ("List-Archive", f"<{archive_url(base_url, addresses)}>"),
        ("List-Owner", f"<mailto:{addresses.at(Purpose.OWNER)}>"),
        ("Archived-At", f"<{message_url(base_url, addresses, message_id)}>"),
        ("Precedence", "list"),
        ("X-BeenThere", addresses.posting),
    ]


def render_fields(fields: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in fields)


def list_copy(raw: bytes, *, addresses: ListAddresses, name: str, base_url: str,
              message_id: str, subject: str, add_message_id: bool) -> bytes:
    """The copy members receive: the post's own headers and body, with list headers."""
    fields, body = split_message(raw)
    out: list[bytes] = []
    for line in fields:
        key = field_name(line)
        if key in REPLACED:
            continue
        if key == b"subject":
            colon = line.index(b":")
            line = line[: colon + 1] + prefixed_subject(line[colon + 1:], subject, name)
        out.append(line)
    if not any(field_name(line) == b"subject" for line in fields):
        out.append(f"Subject: {subject_tag(name)}\r\n".encode())
    if add_message_id:
        out.append(f"Message-ID: <{message_id}>\r\n".encode())
    headers = b"".join(out) + render_fields(list_headers(addresses, name, base_url, message_id))
    return headers + b"\r\n" + body
