"""Copies composed once with a slot for each member's own links.

Every member's copy of a post differs only in a few signed tokens (unsubscribe, mute,
manage, follow), so
compose writes the copy once with slots, and the delivery worker fills them for each
recipient in microseconds. The footer and the list headers are where slots go.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from listserv.headers import crlf

UNSUBSCRIBE = "\x00unsubscribe\x00"  # stands for the member's unsubscribe token
MUTE = "\x00mute\x00"  # stands for the member's mute token for this post's thread
MANAGE = "\x00manage\x00"  # stands for the member's token to their page of subscriptions
FOLLOW = "\x00follow\x00"  # stands for the member's follow token for this post's thread
PLACEHOLDERS = (UNSUBSCRIBE, MUTE, MANAGE, FOLLOW)
# A mail about many threads (a summary) has a link per thread: "\x00thread:KIND:PK\x00"
# stands for the member's KIND token (mute, follow) for the thread of post PK.
THREAD = "\x00thread:"
_THREAD = re.compile("\x00thread:([a-z]+):([0-9]+)\x00")

ThreadLinks = Callable[[str, int], str]  # (kind, post pk) -> one recipient's token


class Links(NamedTuple):
    """One recipient's signed tokens, each in place of its placeholder ("" where the
    copy has none of that kind). A tuple: one is made for every recipient of a post, and
    a frozen dataclass took longer to make than a token."""

    unsubscribe: str = ""
    mute: str = ""
    manage: str = ""
    follow: str = ""
    thread: ThreadLinks | None = None


def thread_token(kind: str, message_pk: int) -> str:
    """The placeholder for a recipient's `kind` token for the thread of a post."""
    return f"{THREAD}{kind}:{message_pk}\x00"


def has_token(text: str) -> bool:
    """Whether `text` differs from one recipient to the next."""
    return THREAD in text or any(placeholder in text for placeholder in PLACEHOLDERS)


def fill_links(text: str, links: Links) -> str:
    """A slot's text with one recipient's tokens in place of the placeholders."""
    text = (text.replace(UNSUBSCRIBE, links.unsubscribe).replace(MUTE, links.mute)
            .replace(MANAGE, links.manage).replace(FOLLOW, links.follow))
    if links.thread is not None:
        text = _THREAD.sub(lambda m: links.thread(m[1], int(m[2])), text)  # type: ignore[misc]
    return text


@dataclass(frozen=True)
class Slot:
    """Where one recipient's own text goes in a copy, and how to encode it there."""

    at: int  # byte offset in the copy's data
    text: str  # "\n" line ends, with UNSUBSCRIBE and MUTE in it
    charset: str = "utf-8"
    encoding: str = "8bit"  # the Content-Transfer-Encoding of the part it lands in
    carry: bytes = b""  # base64: decoded bytes before the text, short of a 3-byte group
    rest: bytes = b""  # base64: decoded bytes after the text ("</body></html>")

    def fill(self, links: Links) -> bytes:
        """The bytes this slot holds for one recipient; they always end a line."""
        raw = fill_links(self.text, links).encode(self.charset)
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

    def personal(self, links: Links) -> bytes:
        """The bytes one recipient gets."""
        return b"".join(chunk + (slot.fill(links) if slot else b"")
                        for chunk, slot in self.chunks())

    def links_manage(self) -> bool:
        """Whether a slot holds the manage link (signed per recipient only then)."""
        return any(MANAGE in slot.text for slot in self.slots)

    def links_threads(self) -> bool:
        """Whether a slot holds per-thread links (a summary's)."""
        return any(THREAD in slot.text for slot in self.slots)

    def links_follow(self) -> bool:
        """Whether a slot holds the follow link (signed per recipient only then)."""
        return any(FOLLOW in slot.text for slot in self.slots)

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


def assemble(pieces: list[Piece]) -> Copy:
    """The copy the pieces make, each slot placed where it falls in the bytes."""
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


def apply_edits(data: bytes, edits: list[Edit]) -> list[Piece]:
    """`data` as pieces, each edit's range replaced by its pieces (edits never overlap)."""
    pieces: list[Piece] = []
    pos = 0
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1])):
        pieces.append(data[pos:start])
        pieces.extend(replacement)
        pos = end
    pieces.append(data[pos:])
    return pieces
