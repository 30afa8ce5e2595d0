"""The list footer in a copy: rendered once per post with slots for each member's
links, and put where a reader sees it without breaking the post. The part that takes it
is edited in its own charset and transfer encoding, every other part keeps its bytes,
and signed or encrypted mail is wrapped whole, so its signature still verifies.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import html
import re
import secrets
from dataclasses import dataclass

from listserv import mime
from listserv.address import ListAddresses
from listserv.headers import crlf, field_name
from listserv.slots import FOLLOW, MANAGE, MUTE, PLACEHOLDERS, UNSUBSCRIBE, Edit, Piece, Slot
from listserv.templating import environment, owner_environment
from listserv.urls import archive_url, follow_url, manage_url, mute_url, unsubscribe_url


@dataclass(frozen=True)
class Footer:
    """The list's footer for one post, rendered once with UNSUBSCRIBE and MUTE in it."""

    text: str  # "\n" line ends, ends with "\n"

    @property
    def personal(self) -> bool:
        """Whether it links to a member's own pages (unsubscribe_url, mute_url,
        manage_url, follow_url)."""
        return any(placeholder in self.text for placeholder in PLACEHOLDERS)

    @property
    def html(self) -> str:
        escaped = html.escape(self.text.rstrip("\n"), quote=False)
        linked = _URL.sub(r'<a href="\1">\1</a>', escaped)
        return '<div class="list-footer"><hr>\n' + linked.replace("\n", "<br>\n") + "</div>\n"


_URL = re.compile(r"(https?://[^\s<>&\"]+)")


def render_footer(template: str | None, *, name: str, addresses: ListAddresses,
                  base_url: str, archive: bool) -> Footer | None:
    """The list's own footer template, or templates/mail/footer.txt; None for no footer."""
    context = {
        "name": name, "address": addresses.posting,
        "archive_url": archive_url(base_url, addresses) if archive else None,
        "unsubscribe_url": unsubscribe_url(base_url, UNSUBSCRIBE),
        "mute_url": mute_url(base_url, MUTE),
        "manage_url": manage_url(base_url, MANAGE),
        "follow_url": follow_url(base_url, FOLLOW),
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
        for placeholder in PLACEHOLDERS:
            text = text.replace(placeholder, "x")
        encoded = text.encode(charset)
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


def with_footer(data: bytes, fields: list[bytes], body_at: int, footer: Footer
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

