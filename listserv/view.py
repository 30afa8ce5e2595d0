"""What a reader sees of one stored message: its body as safe HTML, its attachments,
and (plain_text) its readable text. Pure functions of the stored bytes, so the archive
pages, the digests and the search index all show the same thing, and a page can be
rebuilt at any time.

The MIME tree comes from listserv.mime, which stops at its depth and part limits
instead of following a hostile message wherever it goes; past them, the rest is shown
as the raw text it is. The search index never decodes an attachment.
"""

from __future__ import annotations

import codecs
import html
import os
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from email.header import decode_header

import nh3

from listserv import html_text, mime

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
# Where the scheme ("http", "https", "mailto") ends: before the colon that _urls seeks.
_SHORTEST_SCHEME, _LONGEST_SCHEME = 4, 6
# A run of quoted lines: each starts with ">", and the run is as long as they go.
_QUOTED_RUN = re.compile(r"^>[^\n]*(?:\n>[^\n]*)*", re.MULTILINE)
_URL_TRAILER = ".,;:!?*'\""
_BRACKETS = {")": "(", "]": "[", "}": "{"}

_LINK_SCHEMES = ("http://", "https://", "mailto:")
_HTML_ATTRIBUTES = {
    "a": {"href"},
    "img": {"alt"},  # never src: no image loads, not even a tracking pixel; alt shows
    "td": {"colspan", "rowspan", "align"},
    "th": {"colspan", "rowspan", "align"},
    "ol": {"start"},
    "*": {"title", "lang"},
}


INLINE_IMAGES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


@dataclass(frozen=True)
class Attachment:
    """What a download link needs to say before anyone fetches the bytes."""

    index: int  # position among the message's attachments, 0-based; stable for the same bytes
    filename: str  # safe to offer as a download name; "attachment-N" (N = index + 1) if none
    content_type: str  # as declared, lower case
    size: int  # decoded size in bytes

    @property
    def image(self) -> bool:
        """Shown in the message page as an image: PNG, JPEG, GIF or WebP. Never SVG,
        an image that can carry script and links."""
        return self.content_type in INLINE_IMAGES


@dataclass(frozen=True)
class View:
    """One message as the archive shows it, computed from the stored bytes alone."""

    text_html: str  # safe HTML of the body, ready for markupsafe.Markup
    attachments: tuple[Attachment, ...]


# --- the MIME tree (listserv.mime) ----------------------------------------------------

_Leaf = tuple[bool, mime.Part]  # (is the body, the part)


def is_body(leaf: mime.Part) -> bool:
    """Text a reader is shown as the post (not offered as a file): also what the
    content filter never counts as an attachment."""
    return leaf.content_type.startswith("text/") and leaf.disposition() != "attachment"


def _leaves(part: mime.Part) -> list[_Leaf]:
    """The leaves a reader is shown, in order: body text or attachment. Of the versions
    in a multipart/alternative only the chosen one's text counts; the images and files
    of the others are still offered."""
    if part.children is None:
        return [(is_body(part), part)]
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


def _bodies(leaves: list[_Leaf]) -> list[mime.Part]:
    """The text parts shown; a message that is only a forward shows the forwarded one's."""
    bodies = [leaf for is_body, leaf in leaves if is_body]
    if bodies:
        return bodies
    forwarded = next((leaf for _, leaf in leaves if leaf.content_type == "message/rfc822"), None)
    if forwarded is None or forwarded.depth >= mime.MAX_DEPTH:
        return []
    inner = mime.parse(forwarded.payload, forwarded.depth + 1)
    return [leaf for is_body, leaf in _leaves(inner) if is_body]


def _attachment_leaves(leaves: list[_Leaf]) -> Iterator[mime.Part]:
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


def leaf_text(leaf: mime.Part, max_bytes: int | None = None) -> str:
    """The part as text: HTML still HTML, flowed text unflowed."""
    data = leaf.payload if max_bytes is None else leaf.payload[:max_bytes]
    param = leaf.param
    text = _decode(data, param("charset"), cut=len(data) < len(leaf.payload))
    if leaf.content_type == "text/plain" and param("format") == "flowed":
        return _unflow(text, param("delsp") == "yes")
    return text


def _readable(leaf: mime.Part, text: str) -> str:
    return html_text.to_text(text) if leaf.content_type == "text/html" else text


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


def _urls(text: str) -> Iterator[re.Match[str]]:
    """_URL's matches in `text`, as finditer finds them, tried only where a scheme would
    end at a colon: scanned position by position, the regex was most of the time spent
    drawing a long thread page (4 ms of a 200-post thread's 26), for text that has no
    URL at all more often than not."""
    end = 0
    colon = text.find(":")
    while colon >= 0:
        for start in range(max(colon - _LONGEST_SCHEME, end), colon - _SHORTEST_SCHEME + 1):
            match = _URL.match(text, start)
            if match:
                yield match
                end = match.end()
                break
        colon = text.find(":", colon + 1)


def _linked(text: str) -> str:
    """Escaped text with http, https and mailto URLs as links, nothing else."""
    out: list[str] = []
    pos = 0
    for match in _urls(text):
        url = _trim_url(match.group())
        out.append(html.escape(text[pos:match.start()]))
        out.append(f'<a href="{html.escape(url)}" rel="nofollow noopener">{html.escape(url)}</a>')
        pos = match.start() + len(url)
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _pre(text: str) -> str:
    # The newline after <pre> is eaten by HTML parsers, so a leading blank line survives.
    return '<pre class="body">\n' + _linked(text) + "</pre>"


def _fold_quotes(text: str) -> str:
    """Plain text as HTML, each run of quoted lines ("> ...") folded in a <details>, so
    a thread page shows what is new in each message without JavaScript. The runs are
    found by one regex rather than line by line: a thread page does this for every post."""
    if not text.strip():
        return ""
    text = text.strip("\n")
    out: list[str] = []
    pos = 0
    for run in _quoted_runs(text):
        if run.start() > pos:  # the lines before it, less the line break that ends them
            out.append(_pre(text[pos:run.start() - 1]))
        out.append(_quote(run.group()))
        pos = run.end() + 1  # past the line break that ends the run
    if pos < len(text):  # the lines after the last run (the text ends with no line break)
        out.append(_pre(text[pos:]))
    return "".join(out)


def _quoted_runs(text: str) -> Iterator[re.Match[str]]:
    """_QUOTED_RUN's matches, as finditer finds them, sought only where a line starts
    with ">": tried at every position, the regex took most of _fold_quotes' time."""
    at = 0 if text.startswith(">") else _next_quoted_line(text, 0)
    while at >= 0:
        run = _QUOTED_RUN.match(text, at)
        assert run is not None  # a line starting with ">" starts a run
        yield run
        at = _next_quoted_line(text, run.end())


def _next_quoted_line(text: str, pos: int) -> int:
    found = text.find("\n>", pos)
    return found + 1 if found >= 0 else -1


def _quote(run: str) -> str:
    lines = run.count("\n") + 1
    count = f"{lines} quoted line" + ("s" if lines != 1 else "")
    return f'<details class="quote"><summary>… {count}</summary>{_pre(run)}</details>'


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


def _leaf_html(leaf: mime.Part, text: str) -> str:
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


def describe(index: int, leaf: mime.Part) -> Attachment:
    """What a download link says of a part, and the content filter's note of one it
    removed."""
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
        return View(_fold_quotes(_decode(raw, None)), ())


def _view(raw: bytes) -> View:
    leaves = _leaves(mime.parse(raw))
    texts = [(leaf, text) for leaf in _bodies(leaves) if (text := leaf_text(leaf)).strip()]
    return View(text_html="".join(_leaf_html(leaf, text) for leaf, text in texts),
                attachments=tuple(describe(i, leaf)
                                  for i, leaf in enumerate(_attachment_leaves(leaves))))


def attachment(raw: bytes, index: int) -> tuple[Attachment, bytes] | None:
    """One attachment and its decoded bytes, for the download link; None if there is
    no attachment `index`."""
    try:
        leaves = list(_attachment_leaves(_leaves(mime.parse(raw))))
    except Exception:  # noqa: BLE001  same promise as view(): nothing is listed then
        return None
    if not 0 <= index < len(leaves):
        return None
    return describe(index, leaves[index]), leaves[index].payload


def plain_text(raw: bytes, limit: int = 65536) -> str:
    """The readable text for the search index: attachments are never decoded and no
    more than `limit` characters are read, so an import can afford it per message."""
    out: list[str] = []
    size = 0
    try:
        for leaf in _bodies(_leaves(mime.parse(raw))):
            text = _readable(leaf, leaf_text(leaf, max_bytes=4 * (limit - size)))
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
