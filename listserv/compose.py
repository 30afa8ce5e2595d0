"""The copy of a post that members receive: the post's own header fields and body,
with the list's headers, the subject prefix, the footer, DMARC's From and our
Authentication-Results. Header lines are edited as bytes; the body is left as it came
(CRLF line ends, as SMTP requires) except where the footer goes in (see `footer`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.header import Header

from listserv import content_filter, privacy
from listserv.address import ListAddresses, Purpose
from listserv.footer import Footer, with_footer
from listserv.headers import (
    crlf,
    encode_phrase,
    field_name,
    one_line,
    render_fields,
    split_head,
    unstructured,
)
from listserv.slots import UNSUBSCRIBE, Copy, Edit, Piece, Slot, apply_edits, assemble
from listserv.urls import archive_url, message_url, unsubscribe_url

# Headers a list replaces on every copy: ours must be the only ones (RFC 2369, 2919).
REPLACED = {
    b"list-id", b"list-post", b"list-help", b"list-subscribe", b"list-unsubscribe",
    b"list-unsubscribe-post", b"list-archive", b"list-owner", b"archived-at",
    b"precedence", b"return-path",
}


def subject_tag(name: str, setting: str | None = None) -> str:
    """The list's `subject_prefix`: None means "[name]", "" means none."""
    return one_line(f"[{name}]" if setting is None else setting)


def prefixed_subject(raw_value: bytes, decoded: str, tag: str) -> bytes:
    """Put "TAG " in front once: a reply that already carries it keeps its subject."""
    if not tag or tag.casefold() in decoded.casefold():
        return raw_value
    prefix = tag if tag.isascii() else Header(tag, "utf-8").encode()
    stripped = raw_value.lstrip(b" \t")
    return b" " + prefix.encode("ascii") + (b" " + stripped if stripped.strip() else b"\r\n")


def answer_fields(parent: str, references: list[str], subject: str) -> list[tuple[str, str]]:
    """The fields of a reply to `parent`: what the copies of a reply to a whole digest
    carry instead of its own, so readers see it under the item it answers."""
    return [("In-Reply-To", f"<{parent}>"),
            ("References", "\r\n ".join(f"<{m}>" for m in references)),
            ("Subject", unstructured(subject))]


def list_headers(addresses: ListAddresses, name: str, base_url: str,
                 message_id: str, *, archived: bool = True) -> list[tuple[str, str]]:
    """The list headers every copy carries (RFC 2369, RFC 2919, RFC 5064); the member's
    own List-Unsubscribe is a slot (see `unsubscribe_header`). A list with no web
    archive points at none (the links would be 404)."""
    fields = [
        ("List-Id", f"{encode_phrase(name)} <{addresses.list_id}>"),
        ("List-Post", f"<mailto:{addresses.posting}>"),
        ("List-Help", f"<mailto:{addresses.at(Purpose.REQUEST)}?subject=help>"),
        ("List-Subscribe", f"<mailto:{addresses.at(Purpose.JOIN)}>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("List-Archive", f"<{archive_url(base_url, addresses)}>"),
        ("List-Owner", f"<mailto:{addresses.at(Purpose.OWNER)}>"),
        ("Archived-At", f"<{message_url(base_url, addresses, message_id)}>"),
        ("Precedence", "list"),
        ("X-BeenThere", addresses.posting),
    ]
    if archived:
        return fields
    return [(k, v) for k, v in fields if k not in ("List-Archive", "Archived-At")]


def _replace_fields(fields: list[bytes], replaced: Sequence[tuple[str, str]]) -> list[bytes]:
    if not replaced:
        return fields
    names = {name.lower().encode() for name, _ in replaced}
    return [f for f in fields if field_name(f) not in names] + split_head(
        render_fields(replaced))[0]


def _edit_fields(fields: list[bytes], *, subject: str, tag: str, reply_to: str | None
                 ) -> list[bytes]:
    out: list[bytes] = []
    for line in fields:
        key = field_name(line)
        if key in REPLACED or key in privacy.POSTER_ADDRESS or (reply_to and key == b"reply-to"):
            continue
        if key == b"subject":
            colon = line.index(b":")
            line = line[: colon + 1] + prefixed_subject(line[colon + 1:], subject, tag)
        out.append(line)
    if not any(field_name(line) == b"subject" for line in fields):
        out.append(f"Subject: {tag}\r\n".encode())
    if reply_to:
        out.append(f"Reply-To: {reply_to}\r\n".encode())
    return out


def unsubscribe_header(addresses: ListAddresses, base_url: str) -> Slot:
    """RFC 8058: the member's own one-click link, and the mailto for older clients."""
    return Slot(0, f"List-Unsubscribe: <{unsubscribe_url(base_url, UNSUBSCRIBE)}>,\n"
                   f" <mailto:{addresses.at(Purpose.LEAVE)}>\n")


def _from_the_list(fields: list[bytes], via: str, posting: str, *, reply_to_list: bool
                   ) -> list[bytes]:
    """DMARC mitigation: From becomes the list's posting address under the author's name
    ("Alice via Dev"); the author's own From value goes to Reply-To, or to Cc when the
    list points Reply-To at itself. An author's own Reply-To already says where replies
    go, and stays."""
    author = next((f for f in fields if field_name(f) == b"from"), None)
    if author is None:
        return fields
    value = author[author.index(b":") + 1:]
    value = value if value[:1] in (b" ", b"\t") else b" " + value
    mailbox = f"From: {encode_phrase(via, quote=True)} <{posting}>\r\n".encode("ascii")
    out = [mailbox if f is author else f for f in fields
           if f is author or field_name(f) != b"from"]
    target = b"cc" if reply_to_list else b"reply-to"
    at = next((i for i, f in enumerate(out) if field_name(f) == target), None)
    if at is None:
        out.append((b"Cc:" if reply_to_list else b"Reply-To:") + value)
    elif reply_to_list:
        out[at] = out[at].rstrip(b"\r\n") + b",\r\n" + value
    return out


def _authentication(fields: list[bytes], results: str) -> list[bytes]:
    """Our Authentication-Results on top, and none of the post's that claims to be ours
    (RFC 8601 §5: a forged one would be sealed into the ARC chain as our word)."""
    ours = results.partition(";")[0].strip().lower().encode()

    def claimed(f: bytes) -> bytes:
        return f[f.index(b":") + 1:].partition(b";")[0].strip().lower()
    kept = [f for f in fields
            if field_name(f) != b"authentication-results" or claimed(f) != ours]
    return [f"Authentication-Results: {results}\r\n".encode(), *kept]


_H_TAG = re.compile(rb"(?:^|;)\s*h\s*=([^;]*)")


def _broken_signatures(before: list[bytes], after: list[bytes], body_changed: bool
                       ) -> set[bytes]:
    """The post's DKIM-Signature fields that the copy would fail: all of them when the
    body changed, else those signing a field the list added, removed or changed. A
    broken signature hurts delivery more than none (receivers may count it against
    the author), so these are removed; the rest still verify and are kept."""
    def instances(fields: list[bytes], name: bytes) -> list[bytes]:
        return [f for f in fields if field_name(f) == name]

    def survives(signature: bytes) -> bool:
        found = _H_TAG.search(signature[signature.index(b":") + 1:])
        names = {n.strip().lower() for n in found.group(1).split(b":")} if found else set()
        return bool(names) and all(instances(before, n) == instances(after, n)
                                   for n in names)
    signatures = instances(after, b"dkim-signature")
    return set(signatures) if body_changed else {s for s in signatures if not survives(s)}


def list_copy(raw: bytes, *, addresses: ListAddresses, name: str, base_url: str,
              message_id: str, subject: str, add_message_id: bool,
              subject_prefix: str | None = None, reply_to: str | None = None,
              footer: Footer | None = None, via: str | None = None,
              authentication: str | None = None, archived: bool = True,
              one_click: bool = True, replaced: Sequence[tuple[str, str]] = (),
              content: content_filter.Rules = content_filter.OFF) -> Copy:
    """The copy members receive: the post's own headers and body with list headers, the
    footer, and slots for each member's links. Parts the footer does not go into keep
    their bytes. `via` rewrites From to the list (see `dmarc`); `authentication` is the
    Authentication-Results value ARC seals. Without `one_click`, List-Unsubscribe is
    the list's leave address alone, the same for everyone (a shared copy). `replaced`
    fields take the place of the post's own of the same names (see answer_fields).
    `content`: the list's content filter, applied before all else."""
    received = crlf(raw)
    original, body_at = split_head(received)
    data = content_filter.apply(received, content).data
    filtered = data is not received
    fields = original
    if filtered:
        fields, body_at = split_head(data)
    fields = _replace_fields(fields, replaced)
    fields = _edit_fields(fields, subject=subject, tag=subject_tag(name, subject_prefix),
                          reply_to=reply_to)
    if via is not None:
        fields = _from_the_list(fields, via, addresses.posting, reply_to_list=bool(reply_to))
    if authentication is not None:
        fields = _authentication(fields, authentication)
    edits: list[Edit] = []
    if footer is not None:
        fields, edits = with_footer(data, fields, body_at, footer)
    if add_message_id:
        fields.append(f"Message-ID: <{message_id}>\r\n".encode())
    headers = render_fields([(k, v) for k, v in list_headers(addresses, name, base_url,
                                                             message_id, archived=archived)
                             if one_click or k != "List-Unsubscribe-Post"])
    unsubscribe: Piece = (unsubscribe_header(addresses, base_url) if one_click else
                          f"List-Unsubscribe: <mailto:{addresses.at(Purpose.LEAVE)}>\r\n"
                          .encode())
    added = split_head(headers + b"List-Unsubscribe: <one per member>\r\n")[0]
    broken = _broken_signatures(original, fields + added, bool(edits) or filtered)
    fields = [f for f in fields if f not in broken]
    head: list[Piece] = [*fields, headers, unsubscribe, b"\r\n"]
    return assemble(apply_edits(data, [(0, body_at, head), *edits]))
