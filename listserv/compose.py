"""What the server writes: the copies of a post that members receive.

Header lines are edited as bytes. Bodies are left as they came (CRLF line ends, as SMTP
requires) except where the list footer goes in: the part that takes it is edited in
its own charset and transfer encoding, every other part keeps its bytes, and signed
or encrypted mail is wrapped whole, so its signature still verifies.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import html
import json
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr
from urllib.parse import quote

from listserv import mime, privacy
from listserv.address import ListAddresses, Purpose
from listserv.templating import environment, owner_environment

_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")

# Headers a list replaces on every copy: ours must be the only ones (RFC 2369, 2919).
REPLACED = {
    b"list-id", b"list-post", b"list-help", b"list-subscribe", b"list-unsubscribe",
    b"list-unsubscribe-post", b"list-archive", b"list-owner", b"archived-at",
    b"precedence", b"return-path",
}


def crlf(data: bytes) -> bytes:
    """Normalise line ends to CRLF (mbox files and some clients use bare LF). Two
    replaces do what the regular expression r"\r?\n" would, several times faster: this
    runs on every line that carries a member's link, for every member."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def field_name(line: bytes) -> bytes:
    match = _FIELD.match(line)
    return match.group(1).lower() if match else b""


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


def _encode_phrase(text: str, *, quote: bool = False) -> str:
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


def archive_url(base_url: str, addresses: ListAddresses) -> str:
    return f"{base_url.rstrip('/')}/{addresses.posting}/"


def quote_id(message_id: str) -> str:
    """A Message-ID (or thread id) as one URL path segment: "/" and "%" escaped too."""
    return quote(message_id, safe="@!$&'()*+,;=:~")


def message_url(base_url: str, addresses: ListAddresses, message_id: str) -> str:
    """RFC 5064 Archived-At: keyed by Message-ID, so the URL never changes."""
    return f"{archive_url(base_url, addresses)}message/{quote_id(message_id)}/"


def thread_url(base_url: str, addresses: ListAddresses, thread_id: str) -> str:
    return f"{archive_url(base_url, addresses)}thread/{quote_id(thread_id)}/"


_REPLY_PREFIX = re.compile(r"\s*re\s*:", re.IGNORECASE)


def reply_mailto(list_address: str, message_id: str, subject: str) -> str:
    """An RFC 6068 link that starts a reply to a post in the reader's mail program,
    threaded under it (In-Reply-To) and with "Re: " added only if it is not there."""
    if not _REPLY_PREFIX.match(subject):
        subject = f"Re: {subject}"
    return (f"mailto:{quote(list_address, safe='@')}?In-Reply-To="
            f"{quote(f'<{message_id}>', safe='')}&subject={quote(subject, safe='')}")


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
        ("List-Id", f"{_encode_phrase(name)} <{addresses.list_id}>"),
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


def render_fields(fields: Sequence[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in fields)


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


# --- personal copies --------------------------------------------------------------------
#
# Every member's copy differs only in a few signed tokens, so a post is composed once
# with slots, and the delivery worker fills them for each recipient in microseconds.

UNSUBSCRIBE = "\x00unsubscribe\x00"  # stands for the member's unsubscribe token
MUTE = "\x00mute\x00"  # stands for the member's mute token for this post's thread
MANAGE = "\x00manage\x00"  # stands for the member's token to their page of subscriptions


def fill_links(text: str, unsubscribe: str, mute: str, manage: str) -> str:
    """A slot's text with one recipient's tokens in place of the placeholders."""
    return text.replace(UNSUBSCRIBE, unsubscribe).replace(MUTE, mute).replace(MANAGE, manage)


@dataclass(frozen=True)
class Slot:
    """Where one recipient's own text goes in a copy, and how to encode it there."""

    at: int  # byte offset in the copy's data
    text: str  # "\n" line ends, with UNSUBSCRIBE and MUTE in it
    charset: str = "utf-8"
    encoding: str = "8bit"  # the Content-Transfer-Encoding of the part it lands in
    carry: bytes = b""  # base64: decoded bytes before the text, short of a 3-byte group
    rest: bytes = b""  # base64: decoded bytes after the text ("</body></html>")

    def fill(self, unsubscribe: str, mute: str, manage: str = "") -> bytes:
        """The bytes this slot holds for one recipient; they always end a line."""
        raw = fill_links(self.text, unsubscribe, mute, manage).encode(self.charset)
        if self.encoding == "base64":
            return crlf(base64.encodebytes(self.carry + crlf(raw) + self.rest))
        if self.encoding == "quoted-printable":
            return crlf(binascii.b2a_qp(raw))
        return crlf(raw)


@dataclass(frozen=True)
class Copy:
    """A copy with slots: `data` is what everyone gets, each slot one member's text."""

    data: bytes
    slots: tuple[Slot, ...] = ()

    def chunks(self) -> Iterator[tuple[bytes, Slot | None]]:
        """The data cut at the slots: (shared bytes, the slot after them or None)."""
        pos = 0
        for slot in self.slots:
            yield self.data[pos:slot.at], slot
            pos = slot.at
        yield self.data[pos:], None

    def personal(self, unsubscribe: str, mute: str, manage: str = "") -> bytes:
        """The bytes one recipient gets."""
        return b"".join(chunk + (slot.fill(unsubscribe, mute, manage) if slot else b"")
                        for chunk, slot in self.chunks())

    def links_manage(self) -> bool:
        """Whether a slot holds the manage link (signed per recipient only then)."""
        return any(MANAGE in slot.text for slot in self.slots)

    def slots_json(self) -> str:
        """For Outgoing.slots; "" when everyone gets the same bytes."""
        if not self.slots:
            return ""
        return json.dumps([{**dataclasses.asdict(slot), "carry": _b64(slot.carry),
                            "rest": _b64(slot.rest)} for slot in self.slots])

    @classmethod
    def load(cls, data: bytes, slots: str) -> Copy:
        loaded = [Slot(**{**s, "carry": base64.b64decode(s["carry"]),
                          "rest": base64.b64decode(s["rest"])}) for s in json.loads(slots or "[]")]
        return cls(data, tuple(loaded))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


Piece = bytes | Slot  # a Slot in a list of pieces has no offset yet


def _assemble(pieces: list[Piece]) -> Copy:
    out: list[bytes] = []
    slots: list[Slot] = []
    size = 0
    for piece in pieces:
        if isinstance(piece, Slot):
            slots.append(dataclasses.replace(piece, at=size))
        elif piece:
            out.append(piece)
            size += len(piece)
    return Copy(b"".join(out), tuple(slots))


Edit = tuple[int, int, list[Piece]]  # replace data[start:end] with the pieces


def _apply(data: bytes, edits: list[Edit]) -> list[Piece]:
    pieces: list[Piece] = []
    pos = 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1])):
        pieces.append(data[pos:start])
        pieces.extend(replacement)
        pos = end
    pieces.append(data[pos:])
    return pieces


# --- the footer -------------------------------------------------------------------------

@dataclass(frozen=True)
class Footer:
    """The list's footer for one post, rendered once with UNSUBSCRIBE and MUTE in it."""

    text: str  # "\n" line ends, ends with "\n"

    @property
    def personal(self) -> bool:
        """Whether it links to a member's own pages (unsubscribe_url, mute_url,
        manage_url)."""
        return UNSUBSCRIBE in self.text or MUTE in self.text or MANAGE in self.text

    @property
    def html(self) -> str:
        escaped = html.escape(self.text.rstrip("\n"), quote=False)
        linked = _URL.sub(r'<a href="\1">\1</a>', escaped)
        return '<div class="list-footer"><hr>\n' + linked.replace("\n", "<br>\n") + "</div>\n"


_URL = re.compile(r"(https?://[^\s<>&\"]+)")


def render_footer(template: str | None, *, name: str, addresses: ListAddresses,
                  base_url: str, archive: bool) -> Footer | None:
    """The list's own footer template, or templates/mail/footer.txt; None for no footer."""
    base = base_url.rstrip("/")
    context = {
        "name": name, "address": addresses.posting,
        "archive_url": archive_url(base_url, addresses) if archive else None,
        "unsubscribe_url": f"{base}/unsubscribe/{UNSUBSCRIBE}",
        "mute_url": f"{base}/mute/{MUTE}",
        "manage_url": f"{base}/manage/{MANAGE}",
    }
    compiled = (environment().get_template("mail/footer.txt") if template is None
                else owner_environment().from_string(template))
    text = compiled.render(**context)
    text = text.replace("\r\n", "\n").rstrip()
    return Footer(text + "\n") if text else None


# What a member's tokens and URLs are made of: a charset we write the footer in must
# encode these as ASCII does, or the links would come out wrong.
_PROBE = "abcxyzABCXYZ0123456789-_.:/?=<>\n"
_CLOSE_BODY = re.compile(rb"</body\s*>", re.IGNORECASE)
# Parts that hold the footer, directly or inside.
_TEXT = {"text/plain", "text/html"}
_HOLDERS = _TEXT | {"multipart/alternative", "multipart/related"}


def _encodes(text: str, charset: str, cte: str) -> bool:
    """Whether `text` can go into a part in `charset` sent with `cte`, links intact."""
    try:
        encoded = text.replace(UNSUBSCRIBE, "x").replace(MUTE, "x").encode(charset)
        same = _PROBE.encode(charset) == _PROBE.encode("ascii")
    except (LookupError, UnicodeError):
        return False
    if cte not in ("7bit", "8bit", "binary", "quoted-printable", "base64"):
        return False
    return same and (cte != "7bit" or encoded.isascii())


def _edits(data: bytes, part: mime.Part, footer: Footer) -> list[Edit] | None:
    """Where the footer goes in this entity, or None when it cannot go in here."""
    ctype = part.declared_type
    if ctype in _TEXT:
        if part.disposition() == "attachment":
            return None
        return _text_edits(data, part, footer, html=ctype == "text/html")
    if ctype not in ("multipart/alternative", "multipart/related", "multipart/mixed"):
        return None
    parts = part.children
    if not parts:
        return None
    if ctype == "multipart/alternative":
        return _alternative_edits(data, parts, footer)
    first = parts[0]
    inside = _edits(data, first, footer) if first.declared_type in _HOLDERS else None
    if inside or ctype == "multipart/related" or part.close is None:
        return inside
    # multipart/mixed whose first part cannot take it: a part of its own at the end.
    marker = b"\r\n--" + (part.boundary or b"") + b"\r\n"
    return [(part.close, part.close, [marker, *_footer_part(footer)])]


def _alternative_edits(data: bytes, parts: list[mime.Part], footer: Footer
                       ) -> list[Edit] | None:
    """Every text and HTML version gets it, or none does (each alternative is the post)."""
    edits: list[Edit] = []
    for part in parts:
        if part.declared_type in _HOLDERS:
            found = _edits(data, part, footer)
            if found is None:
                return None
            edits += found
    return edits or None


def _text_edits(data: bytes, part: mime.Part, footer: Footer, *, html: bool
                ) -> list[Edit] | None:
    charset = part.headers.get_content_charset() or "us-ascii"
    cte = part.transfer_encoding or "7bit"
    text = footer.html if html else footer.text
    if not _encodes(text, charset, cte):
        return None
    slot = Slot(0, text, charset, cte)
    if cte == "base64":
        return _base64_edits(part, slot, html=html)
    close = _CLOSE_BODY.search(data, part.body, part.end) if html else None
    if close:
        at = close.start()
        soft = cte == "quoted-printable" and data[at - 2:at] != b"\r\n"
        return [(at, at, [b"=\r\n" if soft else b"", slot])]
    return [(part.end, part.end, [_line_end(data[part.body:part.end], cte), slot])]


def _line_end(body: bytes, cte: str) -> bytes:
    """What must go between a body and the footer so that the footer starts a line."""
    if cte == "quoted-printable" and body.endswith(b"=\r\n"):
        return b"\r\n"  # a soft line break: the text itself does not end its line
    if cte == "quoted-printable" and body.endswith(b"="):
        return b"\r\n\r\n"
    return b"" if not body or body.endswith(b"\r\n") else b"\r\n"


def _base64_edits(part: mime.Part, slot: Slot, *, html: bool) -> list[Edit] | None:
    """Decode, and encode again with the footer: the only way into a base64 body."""
    try:
        decoded = binascii.a2b_base64(part.raw_body)
    except binascii.Error:
        return None
    close = list(_CLOSE_BODY.finditer(decoded)) if html else []
    cut = close[-1].start() if close else len(decoded)
    before, after = decoded[:cut], decoded[cut:]
    if not html and before and not before.endswith(b"\n"):
        before += b"\r\n"
    whole = len(before) // 3 * 3
    static = crlf(base64.encodebytes(before[:whole]))
    return [(part.body, part.end,
             [static, dataclasses.replace(slot, carry=before[whole:], rest=after)])]


def _footer_part(footer: Footer) -> list[Piece]:
    """The footer as a text/plain part of its own, in UTF-8."""
    cte = "7bit" if footer.text.isascii() else "quoted-printable"
    head = (f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}'
            "\r\nContent-Disposition: inline\r\n\r\n")
    return [head.encode("ascii"), Slot(0, footer.text, "utf-8", cte)]


def _wrap(data: bytes, fields: list[bytes], body_at: int, footer: Footer
          ) -> tuple[list[bytes], list[Edit]]:
    """Leave the post whole as the first part of a new multipart/mixed, the footer after
    it: a signature over the post still verifies (RFC 1847, RFC 8551)."""
    boundary = b"=_listserv_" + secrets.token_hex(12).encode()
    inner = [f for f in fields if field_name(f).startswith(b"content-")]
    outer = [f for f in fields if not field_name(f).startswith(b"content-")]
    if not any(field_name(f) == b"mime-version" for f in outer):
        outer.append(b"MIME-Version: 1.0\r\n")
    outer.append(b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n')
    opening = b"--" + boundary + b"\r\n" + b"".join(inner) + b"\r\n"
    closing = [b"\r\n--" + boundary + b"\r\n", *_footer_part(footer),
               b"\r\n--" + boundary + b"--\r\n"]
    return outer, [(body_at, body_at, [opening]), (len(data), len(data), closing)]


def _with_footer(data: bytes, fields: list[bytes], body_at: int, footer: Footer
                 ) -> tuple[list[bytes], list[Edit]]:
    """The header fields and body edits that carry the footer. A post deeper or broader
    than the MIME limits goes without it, its body as it came: a footer that could not
    be placed must not keep the post from its members."""
    top = mime.parse(data)
    if not top.within_limits:
        return fields, []
    edits = None
    if top.declared_type in _HOLDERS | {"multipart/mixed"}:
        edits = _edits(data, top, footer)
    if edits is None:
        return _wrap(data, fields, body_at, footer)
    return fields, edits


# --- the list copy ----------------------------------------------------------------------

def _split_head(data: bytes) -> tuple[list[bytes], int]:
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


def _replace_fields(fields: list[bytes], replaced: Sequence[tuple[str, str]]) -> list[bytes]:
    if not replaced:
        return fields
    names = {name.lower().encode() for name, _ in replaced}
    return [f for f in fields if field_name(f) not in names] + _split_head(
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
    base = base_url.rstrip("/")
    return Slot(0, f"List-Unsubscribe: <{base}/unsubscribe/{UNSUBSCRIBE}>,\n"
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
    mailbox = f"From: {_encode_phrase(via, quote=True)} <{posting}>\r\n".encode("ascii")
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
              one_click: bool = True, replaced: Sequence[tuple[str, str]] = ()) -> Copy:
    """The copy members receive: the post's own headers and body with list headers, the
    footer, and slots for each member's links. Parts the footer does not go into keep
    their bytes. `via` rewrites From to the list (see `dmarc`); `authentication` is the
    Authentication-Results value ARC seals. Without `one_click`, List-Unsubscribe is
    the list's leave address alone, the same for everyone (a shared copy). `replaced`
    fields take the place of the post's own of the same names (see answer_fields)."""
    data = crlf(raw)
    original, body_at = _split_head(data)
    fields = _replace_fields(original, replaced)
    fields = _edit_fields(fields, subject=subject, tag=subject_tag(name, subject_prefix),
                          reply_to=reply_to)
    if via is not None:
        fields = _from_the_list(fields, via, addresses.posting, reply_to_list=bool(reply_to))
    if authentication is not None:
        fields = _authentication(fields, authentication)
    edits: list[Edit] = []
    if footer is not None:
        fields, edits = _with_footer(data, fields, body_at, footer)
    if add_message_id:
        fields.append(f"Message-ID: <{message_id}>\r\n".encode())
    headers = render_fields([(k, v) for k, v in list_headers(addresses, name, base_url,
                                                             message_id, archived=archived)
                             if one_click or k != "List-Unsubscribe-Post"])
    unsubscribe: Piece = (unsubscribe_header(addresses, base_url) if one_click else
                          f"List-Unsubscribe: <mailto:{addresses.at(Purpose.LEAVE)}>\r\n"
                          .encode())
    added = _split_head(headers + b"List-Unsubscribe: <one per member>\r\n")[0]
    broken = _broken_signatures(original, fields + added, bool(edits))
    fields = [f for f in fields if f not in broken]
    head: list[Piece] = [*fields, headers, unsubscribe, b"\r\n"]
    return _assemble(_apply(data, [(0, body_at, head), *edits]))
