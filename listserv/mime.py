"""The one MIME splitter: bytes in, offsets out, with depth and part limits.

The archive view and the list footer both need a message's MIME tree, and a hostile
message can nest thousands of levels or hold hundreds of thousands of parts; a splitter
that follows it wherever it goes overflows the stack (a footer that raises is a 451 at
every retry) or takes the CPU for seconds. This one stops at MAX_DEPTH levels and
MAX_PARTS parts in all, and says so (`Part.within_limits`): the view then shows the rest
raw, the footer is left out.

The tree is cut with a boundary search over the bytes, not the stdlib feed parser: only
each part's Content-* fields are parsed, so an attachment is never read line by line,
and a part is offsets into the caller's bytes, so nothing is copied and an edit (the
footer) lands exactly where the part is.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from email.message import Message
from functools import cached_property, lru_cache

# Real mail nests three or four levels (signed, mixed, alternative, related).
MAX_DEPTH = 16
# Parts of one message, all levels together; past it, the rest of a multipart is its
# last part, delimiters and all, and deeper multiparts are not split.
MAX_PARTS = 1000

# Header field lines with their continuations (an mbox "From " line may come first).
_HEADER_LINES = re.compile(rb"(?:From [^\n]*\n)?(?:[!-9;-~]+[ \t]*:[^\n]*\n(?:[ \t][^\n]*\n)*)*")
_CONTENT_FIELD = re.compile(rb"^(content-[!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)",
                            re.IGNORECASE | re.MULTILINE)


@dataclass(eq=False)
class Part:
    """One entity of a message: offsets into `data`, and its Content-* fields."""

    data: bytes  # the whole message the offsets point into
    start: int  # where its header starts
    body: int  # where its body starts
    end: int  # where it ends: before the line end that belongs to the next delimiter
    depth: int  # 0 for the message itself
    fields: list[tuple[str, bytes]]  # its Content-* fields: lower-case name, unfolded value
    declared_type: str  # lower case, as its Content-Type says (or the default)
    content_type: str  # the same, but "text/plain" for a multipart that was not split
    params: dict[str, str]  # Content-Type parameters by lower-case name, as written
    children: list[Part] | None = None  # None for a leaf
    close: int | None = None  # a multipart's close delimiter, with the line end before it
    limited: bool = False  # a multipart split short, or not at all, for the limits

    @cached_property
    def headers(self) -> Message:
        """The Content-* fields as text: UTF-8, else cp1252 (raw 8-bit filenames happen)."""
        headers = Message()
        for name, value in self.fields:
            headers[name] = _text(value)
        return headers

    @property
    def raw_body(self) -> bytes:
        """The body as transferred: base64, quoted-printable or plain bytes."""
        return self.data[self.body:self.end]

    @cached_property
    def payload(self) -> bytes:
        """The decoded body; a broken transfer encoding yields what it can."""
        if self.transfer_encoding == "quoted-printable":
            return binascii.a2b_qp(self.raw_body)
        if self.transfer_encoding != "base64":
            return self.raw_body
        for padding in (b"", b"=="):  # many clients cut the padding off
            try:
                return binascii.a2b_base64(self.raw_body + padding)
            except binascii.Error:
                continue
        return self.raw_body

    def field(self, name: str) -> str | None:
        """The first `name` field (lower case) as text, as `headers` would give it,
        without building that Message: a thread page asks this of every part."""
        value = next((v for n, v in self.fields if n == name), None)
        return None if value is None else _text(value)

    @property
    def transfer_encoding(self) -> str:
        return (self.field("content-transfer-encoding") or "").strip().lower()

    def param(self, name: str) -> str:
        return self.params.get(name, "").strip().lower()

    def disposition(self) -> str | None:
        """"inline", "attachment"... as Message.get_content_disposition() reads it."""
        value = self.field("content-disposition")
        return None if value is None else value.partition(";")[0].strip().lower()

    @property
    def boundary(self) -> bytes | None:
        """The boundary as it is in the bytes (latin-1 maps each byte to itself)."""
        try:
            return self.params.get("boundary", "").rstrip().encode("latin-1") or None
        except UnicodeEncodeError:  # an RFC 2231 value decoded past latin-1
            return None

    @property
    def within_limits(self) -> bool:
        """Whether the whole tree under this part was split, no limit reached."""
        return not self.limited and all(child.within_limits for child in self.children or ())


def parse(data: bytes, depth: int = 0, default_type: str = "text/plain") -> Part:
    """The MIME tree of a message (or of a forwarded one, at `depth`); never raises."""
    return _part(data, 0, len(data), depth, default_type, [MAX_PARTS])


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8").replace("\x00", "")
    except UnicodeDecodeError:
        return value.decode("cp1252", "replace").replace("\x00", "")


def _read_fields(data: bytes, start: int, end: int) -> tuple[list[tuple[str, bytes]], int]:
    """A part's Content-* fields and where its body starts. Only those fields are read:
    the others of a list post (Received, DKIM, ...) are most of its header and tell
    nothing about the body. The header ends at the blank line, or at the first line that
    is no field (some clients start a part's body with no blank line)."""
    block = _HEADER_LINES.match(data, start, end)
    stop = block.end() if block else start
    if data.startswith(b"\r\n", stop) and stop + 2 <= end:
        stop += 2
    elif data.startswith(b"\n", stop) and stop < end:
        stop += 1
    fields = [(name.decode("ascii").lower(),
               value.replace(b"\r", b"").replace(b"\n", b"").strip())
              for name, value in _CONTENT_FIELD.findall(data, start, stop)]
    return fields, stop


def _content_type(fields: list[tuple[str, bytes]], default_type: str
                  ) -> tuple[str, dict[str, str]]:
    """The type and its parameters. Values are as written: Message.get_boundary() also
    strips a pair of angle brackets, and "<<001-3e1dcd5a-119e>>" is a real boundary
    (corpus: ponymail)."""
    value = next((v for name, v in fields if name == "content-type"), None)
    short = value is None or len(value) <= _REMEMBERED_TYPE
    content_type, params = (_remembered_type if short else _read_type)(value, default_type)
    return content_type, dict(params)


# Most parts carry one of a few hundred Content-Type values ("text/plain; charset=utf-8"),
# and email.message's reading of one costs more than the rest of the parse (a 200-post
# thread page reads 266): values up to this long are read once each (4,096 kept).
_REMEMBERED_TYPE = 200


def _read_type(value: bytes | None, default_type: str
               ) -> tuple[str, tuple[tuple[str, str], ...]]:
    header = Message()
    header.set_default_type(default_type)
    if value is not None:
        header["content-type"] = value.decode("latin-1")
    params = header.get_params(failobj=[])[1:]  # the first is the type itself
    return header.get_content_type(), tuple(
        (key.lower(), value[2] if isinstance(value, tuple) else value)  # RFC 2231
        for key, value in params)


_remembered_type = lru_cache(maxsize=4096)(_read_type)


def _part(data: bytes, start: int, end: int, depth: int, default_type: str,
          room: list[int]) -> Part:
    fields, body = _read_fields(data, start, end)
    content_type, params = _content_type(fields, default_type)
    part = Part(data, start, body, end, depth, fields, content_type, content_type, params)
    if content_type.startswith("multipart/"):
        _split(part, room)
    return part


def _split(part: Part, room: list[int]) -> None:
    """Give a multipart its children, or make it a text/plain leaf shown raw (nothing is
    hidden) when it has no parts, or is past the limits."""
    boundary = part.boundary
    if part.depth >= MAX_DEPTH or room[0] <= 0:
        part.limited = True
        boundary = None
    spans, part.close, cut = _spans(part, boundary, room[0]) if boundary else ([], None, False)
    if not spans:
        part.content_type = "text/plain"
        return
    room[0] -= len(spans)
    part.limited = cut
    child_type = "message/rfc822" if part.content_type == "multipart/digest" else "text/plain"
    part.children = [_part(part.data, s, e, part.depth + 1, child_type, room) for s, e in spans]


def _spans(part: Part, boundary: bytes, room: int) -> tuple[list[tuple[int, int]], int | None,
                                                            bool]:
    """The parts between the delimiter lines (RFC 2046 5.1.1), where the close delimiter
    starts, and whether `room` ran out first. Without a close delimiter the last part
    runs to the end, as mail clients read it."""
    data, marker = part.data, b"--" + boundary
    spans: list[tuple[int, int]] = []
    opened = None
    pos = part.body
    while (at := data.find(marker, pos, part.end)) >= 0:
        pos = at + len(marker)
        if at > part.body and data[at - 1] != 0x0A:
            continue  # the boundary text inside a line
        newline = data.find(b"\n", pos, part.end)
        line_end = part.end if newline < 0 else newline + 1
        rest = data[pos:line_end].rstrip()
        if rest not in (b"", b"--"):
            continue  # a longer boundary
        if opened is not None:
            if len(spans) == room - 1 and rest != b"--":
                spans.append((opened, part.end))  # the rest, delimiters and all
                return spans, None, True
            spans.append((opened, _before_line_end(data, opened, at)))
        if rest == b"--":
            return spans, spans[-1][1] if spans else None, False
        opened = pos = line_end
    if opened is not None:
        spans.append((opened, part.end))
    return spans, None, False


def _before_line_end(data: bytes, start: int, end: int) -> int:
    """Where a part ends: the line end before a delimiter belongs to the delimiter."""
    if end > start and data[end - 1] == 0x0A:
        end -= 2 if end - 1 > start and data[end - 2] == 0x0D else 1
    return end
