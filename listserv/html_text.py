"""HTML as plain text, the server's one way from HTML to text: what the content filter's
`html_to_text` sends instead of an HTML-only post, and the readable text of an HTML part
for the search index, the plain digests, the summaries and the commands mailed from
HTML-only clients. Paragraphs stay paragraphs, line breaks and list items stay lines, a
quotation is quoted ("> ", so a command reader skips it as it skips a quoted line), a
link keeps its address ("text <url>"); what a browser never shows (script, style, head,
attribute values) is left out.

The stdlib's html.parser reads any markup without raising and without recursion, so a
hostile post (thousands of unclosed tags) costs time in proportion to its size; the one
input it reads in quadratic time, a tag left open at the end, is cut off first.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Elements that stand apart from the text around them by a blank line, and by one line.
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "ul",
                         "ol", "dl", "table", "hr", "address", "figure"})
_LINES = frozenset({"div", "li", "tr", "dt", "dd", "section", "article", "header", "footer",
                    "nav", "main", "aside", "center", "form", "fieldset", "caption"})
_HIDDEN = frozenset({"script", "style", "head", "title", "template", "noscript"})
_LINK_SCHEMES = ("http://", "https://", "mailto:")
_SPACE = re.compile(r"\s+")
# Where a tag, end tag, comment or declaration starts: after the last ">" one never ends.
_TAG_START = re.compile(r"<[a-zA-Z/!?]")
# Quote marks and list indents shown at most: each line carries them, so a post nesting
# thousands of levels would otherwise grow by the square of its size.
MAX_NESTING = 8


def _start(value: str | None) -> int:
    """An <ol>'s first number: a browser's int at most (int() of 5,000 digits raises)."""
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) < 10 else 1


class _Text(HTMLParser):
    """One pass over the markup: text written as it comes, line breaks owed by the
    elements around it paid before the next text (so empty elements leave none)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.breaks = 0  # newlines owed before the next text (2: a blank line)
        self.line_start = True
        self.hidden = 0  # depth inside script, style, head...
        self.pre = 0
        self.quote = 0
        self.lists: list[int | None] = []  # each open list: its next number, None: bullets
        self.marker = ""  # an item's "- " or "3. ", written before its first text
        # The open link: its href and its text. A link never holds another: a browser
        # ends one where the next begins, and nested ones kept open would each take a
        # copy of all the text after them (thousands of unclosed <a>: quadratic).
        self.link: tuple[str, list[str]] | None = None

    def _owe(self, lines: int) -> None:
        self.breaks = max(self.breaks, lines)

    def _write(self, text: str) -> None:
        if (self.breaks or self.line_start) and not self.pre:
            text = text.lstrip(" ")
            if not text:
                return  # space between blocks is no text
        if self.breaks:
            if self.out:
                self.out.append("\n" * min(self.breaks, 2))
            self.breaks, self.line_start = 0, True
        if self.line_start:
            indent = "  " * min(max(len(self.lists) - 1, 0), MAX_NESTING)
            self.out.append("> " * min(self.quote, MAX_NESTING) + indent + self.marker)
            self.marker, self.line_start = "", False
        elif not self.pre and text.startswith(" ") and self.out[-1].endswith(" "):
            text = text[1:]
        self.out.append(text)
        if self.link is not None:
            self.link[1].append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag == "br":
            self.breaks = self.breaks + 1 if self.breaks or not self.line_start else 1
        elif tag == "li":
            self._owe(1)
            number = self.lists[-1] if self.lists else None
            self.marker = "- " if number is None else f"{number}. "
            if number is not None:
                self.lists[-1] = number + 1
        elif tag in ("td", "th") and not self.line_start:
            self._write("  ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and alt.strip():
                self._write(f"[{' '.join(alt.split())}]")
        elif tag == "a":
            self._link_end()
            self.link = (dict(attrs).get("href") or "", [])
        self._block_start(tag, dict(attrs))

    def _block_start(self, tag: str, attrs: dict[str, str | None]) -> None:
        if tag in _PARAGRAPHS:
            self._owe(1 if tag in ("ul", "ol") and self.lists else 2)  # a list in an item
        elif tag in _LINES:
            self._owe(1)
        if tag == "blockquote":
            self.quote += 1
        elif tag == "pre":
            self.pre += 1
        elif tag in ("ul", "ol"):
            self.lists.append(_start(attrs.get("start")) if tag == "ol" else None)
        elif tag == "hr":
            self._write("-" * 20)
            self._owe(2)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "img", "hr"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(self.hidden - 1, 0)
        elif tag == "a":
            self._link_end()
        elif tag == "blockquote":
            self.quote = max(self.quote - 1, 0)
        elif tag == "pre":
            self.pre = max(self.pre - 1, 0)
        elif tag in ("ul", "ol") and self.lists:
            self.lists.pop()
        if tag in _PARAGRAPHS:
            self._owe(1 if tag in ("ul", "ol") and self.lists else 2)
        elif tag in _LINES:
            self._owe(1)

    def _link_end(self) -> None:
        """The open link, if any, as "text <url>", the address once when the text
        already is it."""
        if self.link is None:
            return
        href, words = self.link
        self.link = None
        href = " ".join(href.split())
        text = "".join(words).strip()
        if href.lower().startswith(_LINK_SCHEMES) and text not in (
                href, href.removeprefix("mailto:")):
            self._write(f" <{href}>" if text else f"<{href}>")

    def parse_marked_section(self, i: int, report: int = 1) -> int:
        """`<![if !supportLists]>` (Word's HTML) and any other `<![`: a comment to the
        next ">", as a browser reads it; the stdlib raised AssertionError on all but
        its SGML keywords."""
        end = self.rawdata.find(">", i + 3)
        return -1 if end < 0 else end + 1

    def handle_data(self, data: str) -> None:
        if self.hidden:
            return
        if not self.pre:
            self._write(_SPACE.sub(" ", data))
            return
        for index, line in enumerate(data.replace("\r\n", "\n").split("\n")):
            if index:
                self.breaks += 1
            if line:
                self._write(line)


def _complete(markup: str) -> str:
    """The markup without what starts a tag after its last ">": a browser shows nothing of
    a tag the document ends in, and html.parser would read the rest again from each "<"
    in it (60 KB of "<style" took seconds)."""
    start = _TAG_START.search(markup, markup.rfind(">") + 1)
    return markup if start is None else markup[:start.start()]


def to_text(markup: str) -> str:
    """The text of an HTML document, lines without trailing spaces, ending in a newline."""
    parser = _Text()
    parser.feed(_complete(markup))
    parser.close()
    lines = [line.rstrip() for line in "".join(parser.out).split("\n")]
    return "\n".join(lines).strip("\n") + "\n"
