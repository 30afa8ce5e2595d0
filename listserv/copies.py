"""Copies ready to send: dot-stuffed once, with each recipient's links filled into a
personal copy as its transaction goes out; the delivery worker keeps those of the jobs
it holds (and a few more) so that a copy is read and prepared once.
"""

from __future__ import annotations

import binascii
import re
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sqlmodel import Session

from listserv import headers, outbox, signing, slots, supervise, tokens
from listserv.address import ListAddresses
from listserv.claims import Job
from listserv.outbox import CopyOf
from listserv.relay import prepare, stuff

# The signed links a summary gives for each thread it lists, by the kind its slots name.
THREAD_LINKS: dict[str, Callable[[str, int, str, int], str]] = {
    "mute": tokens.mute_link, "follow": tokens.follow_link}

# Copies kept after their last queued job went: the next claim may bring more of them.
SENT_COPIES_KEPT = 8


class Personal:
    """A list copy with slots; each recipient's own links (signed tokens) are filled in
    as their transaction goes out, and with VERP their own envelope sender.

    The copy is cut and dot-stuffed once, when loaded: without DKIM, a recipient's
    bytes are two signatures joined with bytes prepared for everyone."""

    def __init__(self, copy: slots.Copy, secret: str, list_id: int,
                 message_pk: int | None, verp: ListAddresses | None = None,
                 signer: signing.Signer | None = None, manage_hours: int = 24) -> None:
        self.copy = copy
        self.secret = secret
        self.list_id = list_id
        self.message_pk = message_pk
        self.signer = signer
        self.verp = verp  # the list's addresses when its copies go out with VERP
        pieces = _stuffed_pieces(copy)
        # The shared bytes in place, and where each recipient's lines go: a recipient's
        # copy is this list with those filled in, joined.
        self.shared = [p if isinstance(p, bytes) else b"" for p in pieces]
        self.fills = [(i, p) for i, p in enumerate(pieces) if not isinstance(p, bytes)]
        self.manage_hours = manage_hours if copy.links_manage() else 0
        self.links_threads = copy.links_threads()
        self.follows = copy.links_follow() and message_pk is not None

    def mail_from(self, job: Job) -> Callable[[str], str]:
        """Each recipient's envelope sender: a bounce to it names the recipient."""
        if self.verp is None:
            return lambda rcpt: job.mail_from
        return self.verp.verp

    def _links(self, rcpt: str) -> slots.Links:
        unsubscribe = tokens.unsubscribe_link(self.secret, self.list_id, rcpt)
        mute = (tokens.mute_link(self.secret, self.list_id, rcpt, self.message_pk)
                if self.message_pk is not None else "")
        manage = (tokens.manage_link(self.secret, rcpt, self.manage_hours)
                  if self.manage_hours else "")
        follow = (tokens.follow_link(self.secret, self.list_id, rcpt, self.message_pk)
                  if self.follows and self.message_pk is not None else "")
        return slots.Links(unsubscribe, mute, manage, follow, self._thread_links(rcpt))

    def _thread_links(self, rcpt: str) -> slots.ThreadLinks | None:
        """One recipient's token of each kind for any thread a summary lists."""
        if not self.links_threads:
            return None
        return lambda kind, message_pk: THREAD_LINKS[kind](
            self.secret, self.list_id, rcpt, message_pk)

    def copy_for(self, rcpt: str) -> bytes:
        """The message one recipient gets: their own links filled in, then signed."""
        data = self.copy.personal(self._links(rcpt))
        return self.signer.sign(data) if self.signer is not None else data

    def prepared_for(self, rcpt: str) -> bytes:
        """The dot-stuffed bytes for one recipient, end-of-data line included."""
        if self.signer is not None:
            return prepare(self.copy_for(rcpt))
        links = self._links(rcpt)
        parts = self.shared.copy()
        for index, piece in self.fills:
            parts[index] = piece.fill(links)
        return b"".join(parts)


@dataclass(frozen=True)
class _Line:
    """A line of a slot that holds a member's token: the only bytes of a copy encoded
    and dot-stuffed for each recipient (a quoted-printable line may break anywhere in
    the token, and a soft break can put a "." at the start of a line)."""

    text: str
    charset: str
    qp: bool
    line_start: bool

    def fill(self, links: slots.Links) -> bytes:
        raw = slots.fill_links(self.text, links).encode(self.charset)
        return stuff(headers.crlf(binascii.b2a_qp(raw) if self.qp else raw),
                     line_start=self.line_start)


@dataclass(frozen=True)
class _Whole:
    """A slot filled whole for each recipient: base64 cannot be cut at lines."""

    slot: slots.Slot
    line_start: bool

    def fill(self, links: slots.Links) -> bytes:
        return stuff(self.slot.fill(links),
                     line_start=self.line_start)


Piece = bytes | _Line | _Whole


def _slot_pieces(slot: slots.Slot, line_start: bool) -> list[Piece]:
    """A slot as its lines: those without a token encoded and stuffed once (as
    slots.Slot.fill encodes them: line by line), the others left for each recipient."""
    if slot.encoding not in ("7bit", "8bit", "binary", "quoted-printable"):
        return [_Whole(slot, line_start)]
    qp = slot.encoding == "quoted-printable"
    pieces: list[Piece] = []
    for index, line in enumerate(re.findall(r"[^\n]*\n|[^\n]+$", slot.text)):
        first = line_start or index > 0
        if slots.has_token(line):
            pieces.append(_Line(line, slot.charset, qp, first))
        else:
            raw = line.encode(slot.charset)
            pieces.append(stuff(headers.crlf(binascii.b2a_qp(raw) if qp else raw),
                                line_start=first))
    return pieces


def _stuffed_pieces(copy: slots.Copy) -> list[Piece]:
    """The copy cut at its tokens' lines, dot-stuffed, with the end-of-data line. The
    shared bytes begin lines (they open the copy or follow a slot, and fills end
    lines); a slot begins one when the bytes before it end one."""
    pieces: list[Piece] = []
    chunks = list(copy.chunks())
    for index, (chunk, slot) in enumerate(chunks):
        if index == len(chunks) - 1 and chunk and not chunk.endswith(b"\r\n"):
            chunk += b"\r\n"
        pieces.append(stuff(chunk))
        if slot is not None:
            pieces += _slot_pieces(slot, not chunk or chunk.endswith(b"\n"))
    pieces.append(b".\r\n")
    merged: list[Piece] = []
    for piece in pieces:  # one bytes object between two recipient lines
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        else:
            merged.append(piece)
    return merged


# A copy as a sender sends it: the same bytes for every recipient, or personal.
Prepared = bytes | Personal


class Copies:
    """The prepared copies: those of the jobs queued or being sent (pinned, counted in
    `using`), and a few more that were sent last. An LRU of the copies alone threw out
    the copies of the jobs next in line, FIFO being its worst case."""

    def __init__(self, calls: supervise.Calls, signer: signing.Signer | None,
                 manage_hours: int) -> None:
        self.calls = calls
        self.signer = signer
        self.secret = ""  # [web] secret, for the members' links: read when the worker starts
        self.manage_hours = manage_hours  # [web] manage_link_hours
        self.data: OrderedDict[int, Prepared] = OrderedDict()
        self.using: Counter[int] = Counter()

    def pin(self, outgoing_id: int) -> None:
        """A job of this copy is queued: keep the copy until it is sent."""
        self.using[outgoing_id] += 1

    def unpin(self, outgoing_id: int) -> None:
        self.using[outgoing_id] -= 1
        if not self.using[outgoing_id]:
            del self.using[outgoing_id]
            self._trim()

    def add(self, stored: dict[int, CopyOf]) -> None:
        """Copies the receiver had at hand (a handoff): prepared without a read."""
        for outgoing_id, copy in stored.items():
            if outgoing_id not in self.data:
                self._remember(outgoing_id, self._prepare(copy))

    async def get(self, outgoing_id: int) -> Prepared:
        """The dot-stuffed copy, read once (through an outage) and kept while jobs of
        that copy are sent."""
        if outgoing_id not in self.data:
            self._remember(outgoing_id, await self.calls.read_until_done(
                self._load, outgoing_id))
        self.data.move_to_end(outgoing_id)
        return self.data[outgoing_id]

    async def load(self, jobs: list[Job]) -> None:
        """The copies of claimed jobs, read in one query (with a backlog, each job of a
        claim is often a post of its own)."""
        missing = {job.outgoing_id for job in jobs} - set(self.data)
        if missing:
            self.add(await self.calls.read(outbox.copies, sorted(missing)))

    def _remember(self, outgoing_id: int, data: Prepared) -> None:
        self.data[outgoing_id] = data
        self._trim()

    def _trim(self) -> None:
        while len(self.data) - len(self.using) > SENT_COPIES_KEPT:
            oldest = next(i for i in self.data if i not in self.using)
            del self.data[oldest]

    def _load(self, session: Session, outgoing_id: int) -> Prepared:
        return self._prepare(outbox.copies(session, [outgoing_id])[outgoing_id])

    def _prepare(self, stored: CopyOf) -> Prepared:
        if not stored.slots:
            return prepare(self.signer.sign(stored.data) if self.signer else stored.data)
        verp = ListAddresses(stored.verp) if stored.verp else None
        return Personal(slots.Copy.load(stored.data, stored.slots), self.secret,
                        stored.list_id or 0, stored.message_pk, verp, self.signer,
                        self.manage_hours)
