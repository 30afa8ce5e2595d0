"""What a reader sees of one stored message: its body as safe HTML, its readable text,
its attachments. Pure functions of the stored bytes, so the archive pages, the digests
and the search index all show the same thing, and a page can be rebuilt at any time.

The MIME tree is cut with a boundary search over bytes rather than the stdlib feed
parser: only each part's Content-* fields go into an `email.message.Message` (compat32,
the cheap policy), so an attachment is never read line by line, the search index never
decodes one, and nesting and breadth stop at MAX_DEPTH and MAX_PARTS instead of
following a hostile message wherever it goes.
"""

from __future__ import annotations

import binascii
import codecs
import html
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from email.header import decode_header
from email.message import Message
from functools import cached_property
from itertools import groupby

import nh3

# Real mail nests three or four levels (signed, mixed, alternative, related); a part
# deeper than this is shown as the raw text it is.
MAX_DEPTH = 16
MAX_PARTS = 1000  # parts of one multipart; the rest is shown raw in the last one

# Header field lines with their continuations (an mbox "From " line may come first).
_HEADER_LINES = re.compile(rb"(?:From [^\n]*\n)?(?:[!-9;-~]+[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*)*")
_CONTENT_FIELD = re.compile(rb"^(content-[!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)",
                            re.IGNORECASE | re.MULTILINE)
# "iso-8859-1" and "us-ascii" mail written on Windows holds cp1252 punctuation; like
# browsers (WHATWG Encoding), read the labels as the superset they mean in practice.
_CHARSET_ALIASES = {"iso-8859-1": "cp1252", "latin-1": "cp1252", "latin1": "cp1252",
                    "us-ascii": "cp1252", "ascii": "cp1252"}
# Labels clients write by default, whatever they send: bytes that are valid UTF-8 under
# one are UTF-8 (corpus: clients/luasocket-maven-dev-083, "Hervé" labelled iso-8859-1),
# since real cp1252 text is almost never also valid UTF-8.
_WEAK_LABELS = {"", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1", "windows-1252",
                "cp1252"}

_URL = re.compile(r"\b(?:https?://|mailto:)[^\s<>\"'`]+", re.IGNORECASE)
_URL_TRAILER = ".,;:!?*'\""
_BRACKETS = {")": "(", "]": "[", "}": "{"}

_HIDDEN_START = re.compile(r"<(style|script|head)\b|<!--", re.IGNORECASE)
_HIDDEN_END = {tag: re.compile(rf"</{tag}\s*>", re.IGNORECASE)
               for tag in ("style", "script", "head")} | {None: re.compile(r"-->")}
# [^<>] rather than [^>]: a "<" never closed must not make each later "<" scan to the end.
_HTML_BREAK = re.compile(r"<(?:br|/p|/div|/li|/tr|/h\d)\b[^<>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")

_LINK_SCHEMES = ("http://", "https://", "mailto:")
_HTML_ATTRIBUTES = {
    "a": {"href"},
    "img": {"alt"},  # never src: no image loads, not even a tracking pixel; alt shows
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align"},
    "ol": {"start"},
    "*": {"title", "lang"},
}


@dataclass(frozen=True)
class Attachment:
    """What a download link needs to say before anyone fetches the bytes."""

    index: int  # position among the message's attachments, 0-based; stable for the same bytes
    filename: str  # safe to offer as a download name; "attachment-N" (N = index + 1) if none
    content_type: str  # as declared, lower case
    size: int  # decoded size in bytes


@dataclass(frozen=True)
class View:
    """One message as the archive shows it, computed from the stored bytes alone."""

    text_html: str  # safe HTML of the body, ready for markupsafe.Markup
    attachments: tuple[Attachment, ...]
    plain: str  # the readable text, for digests and search


# --- the MIME tree ----------------------------------------------------------------------

@dataclass
class _Part:
    headers: Message
    body: bytes  # as transferred: base64, quoted-printable or plain bytes
    content_type: str
    depth: int
    params: dict[str, str]  # Content-Type parameters by lower-case name
    children: list[_Part] | None = None  # None for a leaf

    @cached_property
    def payload(self) -> bytes:
        """The decoded bytes; a broken transfer encoding yields what it can."""
        encoding = str(self.headers.get("content-transfer-encoding", "")).strip().lower()
        if encoding == "quoted-printable":
            return binascii.a2b_qp(self.body)
        if encoding != "base64":
            return self.body
        for padding in (b"", b"=="):  # many clients cut the padding off
            try:
                return binascii.a2b_base64(self.body + padding)
            except binascii.Error:
                continue
        return self.body

    def param(self, name: str) -> str:
        return self.params.get(name, "").strip().lower()

    def disposition(self) -> str | None:
        return self.headers.get_content_disposition()


def _read_headers(data: bytes) -> tuple[Message, bytes]:
    """A part's Content-* fields and its body. Only those fields are parsed: the other
    header fields of a list post (Received, DKIM, ...) are most of its header and tell
    nothing about the body. The header ends at the blank line, or at the first line that
    is no field (some clients start a part's body with no blank line)."""
    block = _HEADER_LINES.match(data)
    end = block.end() if block else 0
    end += 2 if data.startswith(b"\r\n", end) else 1 if data.startswith(b"\n", end) else 0
    headers = Message()
    for name, value in _CONTENT_FIELD.findall(data, 0, end):
        unfolded = value.replace(b"\r", b"").replace(b"\n", b"").strip()
        headers[name.decode("ascii")] = _decode(unfolded, None)  # raw 8-bit names happen
    return headers, data[end:]


def _chunks(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between the delimiter lines (RFC 2046 5.1.1); without a closing
    delimiter the last part runs to the end, as mail clients read it."""
    marker = b"--" + boundary
    chunks: list[bytes] = []
    start = None
    pos = 0
    while (at := body.find(marker, pos)) >= 0:
        pos = at + len(marker)
        if at and body[at - 1] != 0x0A:
            continue  # the boundary text inside a line
        newline = body.find(b"\n", pos)
        line_end = len(body) if newline < 0 else newline + 1
        rest = body[pos:line_end].rstrip()
        if rest not in (b"", b"--"):
            continue  # a longer boundary
        if start is not None:
            if len(chunks) == MAX_PARTS - 1:
                break  # the rest, delimiters and all, is the last part
            chunks.append(_without_line_end(body, start, at))
        if rest == b"--":
            return chunks
        start = pos = line_end
    if start is not None:
        chunks.append(body[start:])
    return chunks


def _without_line_end(body: bytes, start: int, end: int) -> bytes:
    """body[start:end] without the line end before a delimiter, which belongs to it."""
    if end > start and body[end - 1] == 0x0A:
        end -= 2 if end - 1 > start and body[end - 2] == 0x0D else 1
    return body[start:end]


def _params(headers: Message) -> dict[str, str]:
    """The Content-Type parameters, read once per part (each get_param reparses them).
    Values are as written: Message.get_boundary() also strips a pair of angle brackets,
    and "<<001-3e1dcd5a-119e>>" is a real boundary (corpus: ponymail)."""
    params = headers.get_params(failobj=[])[1:]  # the first is the type itself
    return {key.lower(): (value[2] if isinstance(value, tuple) else value)  # RFC 2231
            for key, value in params}


def _tree(data: bytes, depth: int = 0, default_type: str = "text/plain") -> _Part:
    headers, body = _read_headers(data)
    headers.set_default_type(default_type)
    content_type = headers.get_content_type()
    params = _params(headers)
    if not content_type.startswith("multipart/"):
        return _Part(headers, body, content_type, depth, params)
    boundary = params.get("boundary", "").rstrip() if depth < MAX_DEPTH else ""
    chunks = _chunks(body, boundary.encode("utf-8", "surrogateescape")) if boundary else []
    if not chunks:  # shown raw, so nothing is hidden
        return _Part(headers, body, "text/plain", depth, params)
    child_type = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
    children = [_tree(chunk, depth + 1, child_type) for chunk in chunks]
    return _Part(headers, body, content_type, depth, params, children)


_Leaf = tuple[bool, _Part]  # (is the body, the part)


def _is_body(leaf: _Part) -> bool:
    return leaf.content_type.startswith("text/") and leaf.disposition() != "attachment"


def _leaves(part: _Part) -> list[_Leaf]:
    """The leaves a reader is shown, in order: body text or attachment. Of the versions
    in a multipart/alternative only the chosen one's text counts; the images and files
    of the others are still offered."""
    if part.children is None:
        return [(_is_body(part), part)]
    versions = [_leaves(child) for child in part.children]
    chosen = _choose(versions) if part.content_type == "multipart/alternative" else None
    return [(is_body, leaf) for i, version in enumerate(versions) for is_body, leaf in version
            if chosen is None or i == chosen or not is_body]


def _choose(versions: list[list[_Leaf]]) -> int:
    """The text/plain version unless it is blank; else the richest (last) with text."""
    texts = [[leaf for is_body, leaf in version if is_body] for version in versions]
    for i, leaves in enumerate(texts):
        if (leaves and all(leaf.content_type == "text/plain" for leaf in leaves)
                and any(leaf.payload.strip() for leaf in leaves)):
            return i
    return max((i for i, leaves in enumerate(texts) if leaves), default=0)


def _bodies(leaves: list[_Leaf]) -> list[_Part]:
    """The text parts shown; a message that is only a forward shows the forwarded one's."""
    bodies = [leaf for is_body, leaf in leaves if is_body]
    if bodies:
        return bodies
    forwarded = next((leaf for _, leaf in leaves if leaf.content_type == "message/rfc822"), None)
    if forwarded is None or forwarded.depth >= MAX_DEPTH:
        return []
    inner = _tree(forwarded.payload, forwarded.depth + 1)
    return [leaf for is_body, leaf in _leaves(inner) if is_body]


def _attachment_leaves(leaves: list[_Leaf]) -> Iterator[_Part]:
    return (leaf for is_body, leaf in leaves if not is_body)


# --- text -------------------------------------------------------------------------------

def _decode(data: bytes, charset: str | None, *, cut: bool = False) -> str:
    """The declared charset first (UTF-8 first under a weak label); mail lies about it
    often enough that a failure is read again as UTF-8 and then as cp1252, which takes
    any byte. With `cut`, the data was truncated, so a character cut in half at the end
    is dropped, not an error."""
    declared = charset or ""
    names = ["utf-8", declared] if declared in _WEAK_LABELS else [declared, "utf-8"]
    for name in filter(None, names):
        try:
            decoder = codecs.getincrementaldecoder(_CHARSET_ALIASES.get(name, name))()
            return _clean(decoder.decode(data, final=not cut))
        except (LookupError, ValueError, TypeError):  # unknown, lying, or not a text codec
            continue
    return _clean(data.decode("cp1252", "replace"))


def _clean(text: str) -> str:
    """One kind of line end, no NUL (PostgreSQL text refuses it) and no lone surrogates
    (UTF-7 and UTF-16 can leave them, and a page with one cannot be encoded)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _unflow(text: str, delsp: bool) -> str:
    """RFC 3676 format=flowed: a line ending in a space goes on in the next line of the
    same quote depth; space-stuffing is undone."""
    lines: list[str] = []
    open_depth = None  # the quote depth of the previous line, when it was soft-broken
    for line in text.split("\n"):
        content = line.lstrip(">")
        depth = len(line) - len(content)
        content = content.removeprefix(" ")
        soft = content.endswith(" ") and content != "-- "
        if soft and delsp:
            content = content[:-1]
        if open_depth == depth:
            lines[-1] += content
        else:
            lines.append(f"{'>' * depth} {content}" if depth and content else content)
        open_depth = depth if soft else None
    return "\n".join(lines)


def _leaf_text(leaf: _Part, max_bytes: int | None = None) -> str:
    """The part as text: HTML still HTML, flowed text unflowed."""
    data = leaf.payload if max_bytes is None else leaf.payload[:max_bytes]
    param = leaf.param
    text = _decode(data, param("charset"), cut=len(data) < len(leaf.payload))
    if leaf.content_type == "text/plain" and param("format") == "flowed":
        return _unflow(text, param("delsp") == "yes")
    return text


def _visible(markup: str) -> str:
    """The markup without what a browser never shows: style, script, head, comments.
    One forward scan, so a thousand unclosed <style> tags cost no more than one."""
    out: list[str] = []
    pos = 0
    while start := _HIDDEN_START.search(markup, pos):
        out.append(markup[pos:start.start()])
        tag = start.group(1)
        end = _HIDDEN_END[tag.lower() if tag else None].search(markup, start.end())
        if end is None:
            return "".join(out)
        pos = end.end()
    out.append(markup[pos:])
    return "".join(out)


def html_text(markup: str) -> str:
    """HTML as the words a reader sees, with its line breaks; for search, digests and
    commands sent from HTML-only mail clients."""
    text = _HTML_BREAK.sub("\n", _visible(markup))
    return html.unescape(_HTML_TAG.sub("", text)).replace("\xa0", " ")


def _readable(leaf: _Part, text: str) -> str:
    return html_text(text) if leaf.content_type == "text/html" else text


# --- HTML for the page ------------------------------------------------------------------

def _trim_url(url: str) -> str:
    """A URL without the punctuation of the sentence around it, closing brackets the
    URL never opened included: "(see http://x/)." and "[mailto:a@example.org]"."""
    unopened = {close: url.count(close) - url.count(open_) for close, open_ in _BRACKETS.items()}
    end = len(url)
    while end and (url[end - 1] in _URL_TRAILER or unopened.get(url[end - 1], 0) > 0):
        if url[end - 1] in unopened:
            unopened[url[end - 1]] -= 1
        end -= 1
    return url[:end]


def _linked(text: str) -> str:
    """Escaped text with http, https and mailto URLs as links, nothing else."""
    out: list[str] = []
    pos = 0
    for match in _URL.finditer(text):
        url = _trim_url(match.group())
        out.append(html.escape(text[pos:match.start()]))
        out.append(f'<a href="{html.escape(url)}" rel="nofollow noopener">{html.escape(url)}</a>')
        pos = match.start() + len(url)
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _pre(lines: list[str]) -> str:
    # The newline after <pre> is eaten by HTML parsers, so a leading blank line survives.
    return '<pre class="body">\n' + _linked("\n".join(lines)) + "</pre>"


def _fold_quotes(text: str) -> str:
    """Plain text as HTML, each run of quoted lines ("> ...") folded in a <details>, so
    a thread page shows what is new in each message without JavaScript."""
    if not text.strip():
        return ""
    runs = groupby(text.strip("\n").split("\n"), key=lambda line: line.startswith(">"))
    return "".join(_quote(list(lines)) if quoted else _pre(list(lines)) for quoted, lines in runs)


def _quote(lines: list[str]) -> str:
    count = f"{len(lines)} quoted line" + ("s" if len(lines) != 1 else "")
    return f'<details class="quote"><summary>… {count}</summary>{_pre(lines)}</details>'


def _safe_href(tag: str, attribute: str, value: str) -> str | None:
    """Only absolute http, https and mailto links: a relative one would point into the
    archive itself (an unsubscribe page, say) with the sender's choice of path."""
    if attribute == "href" and not value.strip().lower().startswith(_LINK_SCHEMES):
        return None
    return value


def _sanitised_html(markup: str) -> str:
    """An HTML part made safe to show in an archive page: no script, style, event
    handler, form or frame, no image loaded, links only to the web or to mail."""
    cleaned = nh3.clean(markup, attributes=_HTML_ATTRIBUTES, attribute_filter=_safe_href,
                        clean_content_tags={"script", "style", "head", "title"},
                        url_schemes={"http", "https", "mailto"},
                        link_rel="nofollow noopener noreferrer")
    return f'<div class="body html">{cleaned}</div>'


def _leaf_html(leaf: _Part, text: str) -> str:
    return _sanitised_html(text) if leaf.content_type == "text/html" else _fold_quotes(text)


# --- attachments ------------------------------------------------------------------------

def _header_words(value: str) -> str:
    """A header value with its RFC 2047 words decoded, each in its charset."""
    if "=?" not in value:
        return value
    try:
        words = decode_header(value)
    except ValueError:  # email.errors.HeaderParseError
        return value
    return "".join(_decode(w, charset) if isinstance(w, bytes) else w for w, charset in words)


def _safe_filename(name: str) -> str:
    """A name to save a download as: no directory part, no control or invisible
    characters (CR/LF would split the Content-Disposition header; a right-to-left
    override makes "gpj.exe" look like "exe.jpg"), no leading dot, at most 200 chars."""
    kept = "".join(" " if unicodedata.category(c)[0] == "Z" else c for c in name
                   if unicodedata.category(c)[0] != "C")
    base = kept.replace("\\", "/").rsplit("/", 1)[-1].strip(" .")
    if len(base) <= 200:
        return base
    stem, ext = os.path.splitext(base)
    return stem[:200 - len(ext[:20])] + ext[:20]


def _describe(index: int, leaf: _Part) -> Attachment:
    name = _safe_filename(_header_words(leaf.headers.get_filename() or ""))
    if not name:
        name = f"attachment-{index + 1}" + (".eml" if leaf.content_type == "message/rfc822"
                                            else "")
    return Attachment(index, name, leaf.content_type, len(leaf.payload))


# --- the public functions ---------------------------------------------------------------

def view(raw: bytes) -> View:
    """The message as an archive page shows it; never raises on bad mail (worst case,
    the raw text, escaped)."""
    try:
        return _view(raw)
    except Exception:  # noqa: BLE001  a page must show something for any stored bytes
        text = _decode(raw, None)
        return View(_fold_quotes(text), (), text)


def _view(raw: bytes) -> View:
    leaves = _leaves(_tree(raw))
    texts = [(leaf, text) for leaf in _bodies(leaves) if (text := _leaf_text(leaf)).strip()]
    return View(text_html="".join(_leaf_html(leaf, text) for leaf, text in texts),
                attachments=tuple(_describe(i, leaf)
                                  for i, leaf in enumerate(_attachment_leaves(leaves))),
                plain="\n\n".join(_readable(leaf, text) for leaf, text in texts))


def attachment(raw: bytes, index: int) -> tuple[Attachment, bytes] | None:
    """One attachment and its decoded bytes, for the download link; None if there is
    no attachment `index`."""
    try:
        leaves = list(_attachment_leaves(_leaves(_tree(raw))))
    except Exception:  # noqa: BLE001  same promise as view(): nothing is listed then
        return None
    if not 0 <= index < len(leaves):
        return None
    return _describe(index, leaves[index]), leaves[index].payload


def plain_text(raw: bytes, limit: int = 65536) -> str:
    """The readable text for the search index: attachments are never decoded and no
    more than `limit` characters are read, so an import can afford it per message."""
    out: list[str] = []
    size = 0
    try:
        for leaf in _bodies(_leaves(_tree(raw))):
            text = _readable(leaf, _leaf_text(leaf, max_bytes=4 * (limit - size)))
            if not text.strip():
                continue
            out.append(text)
            size += len(text) + 2
            if size >= limit:
                break
    except Exception:  # noqa: BLE001  same promise as view(): the raw text then
        return _decode(raw[:limit], None, cut=True)
    return "\n\n".join(out)[:limit]


def obfuscate(address: str) -> str:
    """A sender's addr-spec for a public page: "alice@example.org" -> "alice@e…".

    The domain is cut rather than spelled out ("alice at example org"): harvesters undo
    every spelling with one regular expression, but cannot restore what is not there,
    while readers still recognise the sender (the display name is shown beside it) and
    reply through the list, whose address is on every page.
    """
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain[:1]}…" if at else address
