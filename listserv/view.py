"""What a reader sees of a stored message: its readable text (a first cut; the archive
pages' rendering lands with the web archive)."""

from __future__ import annotations

import email
import email.policy


def plain_text(raw: bytes, limit: int = 65536) -> str:
    """The readable text of a message for the search index: its text/plain body."""
    try:
        mail = email.message_from_bytes(raw, policy=email.policy.default)
        part = mail.get_body(preferencelist=("plain",))
        return part.get_content()[:limit] if part is not None else ""
    except Exception:  # noqa: BLE001  bad charsets and broken MIME raise many kinds
        return ""


# --- stand-in until the `view` branch lands (same interface, less care) -----------------

import html as _html  # noqa: E402
import re as _re  # noqa: E402
from dataclasses import dataclass as _dataclass  # noqa: E402

import nh3 as _nh3  # noqa: E402

_LINK = _re.compile(r"(https?://[^\s<>&\"']+)")


@_dataclass(frozen=True)
class Attachment:
    index: int
    filename: str
    content_type: str
    size: int


@_dataclass(frozen=True)
class View:
    text_html: str
    attachments: tuple[Attachment, ...]
    plain: str


def _mail(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def _parts(raw: bytes) -> list[tuple[Attachment, bytes]]:
    found = []
    try:
        for index, part in enumerate(_mail(raw).iter_attachments(), 1):
            data = part.get_payload(decode=True) or b""
            found.append((Attachment(index, part.get_filename() or f"part-{index}",
                                     part.get_content_type(), len(data)), data))
    except Exception:  # noqa: BLE001  broken MIME
        return []
    return found


def _text_html(text: str) -> str:
    out, quote = [], []
    for line in text.splitlines():
        escaped = _LINK.sub(r'<a href="\1" rel="nofollow">\1</a>', _html.escape(line))
        if line.startswith(">"):
            quote.append(escaped)
            continue
        if quote:
            out.append('<details class="quote"><summary>quoted text</summary>'
                       + "\n".join(quote) + "</details>")
            quote = []
        out.append(escaped)
    if quote:
        out.append('<details class="quote"><summary>quoted text</summary>'
                   + "\n".join(quote) + "</details>")
    return '<pre class="body">' + "\n".join(out) + "</pre>"


def view(raw: bytes) -> View:
    try:
        part = _mail(raw).get_body(preferencelist=("plain", "html"))
        content = part.get_content() if part is not None else ""
        is_html = part is not None and part.get_content_subtype() == "html"
    except Exception:  # noqa: BLE001
        content, is_html = "", False
    content = _re.sub("[\ud800-\udfff]", "\ufffd", content)
    if is_html:
        body = _nh3.clean(content, tags=set(_nh3.ALLOWED_TAGS) - {"img"})
    else:
        body = _text_html(content)
    return View(body, tuple(a for a, _ in _parts(raw)), content)


def attachment(raw: bytes, index: int) -> tuple[Attachment, bytes] | None:
    return next((p for p in _parts(raw) if p[0].index == index), None)


def obfuscate(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local}@{domain[:1]}…" if domain else local
