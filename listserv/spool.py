"""DATA as it arrives: in memory up to SPOOL_BYTES, in a temporary file past that, and
measured on the way (the whole message against `[smtp] max_message_bytes`, its header
block against `max_header_bytes`).

aiosmtpd keeps every line of a DATA in memory until the final dot, and reads a line
whole whatever its length, so 500 clients each halfway through a 2 MB message held a
gigabyte (given back to no one when they left), and one line of 8 MB sat in a
connection's read buffer. Here a line is taken in pieces of at most READ_BYTES, and a
message waiting for its end of data holds at most SPOOL_BYTES of memory. The message
is read back whole at the end of data only, to be stored before its 250.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from typing import BinaryIO

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, syntax

log = logging.getLogger("listserv.spool")

SPOOL_BYTES = 256 * 1024  # of a DATA in memory; past it, a temporary file
READ_BYTES = 64 * 1024  # the most of one line a connection buffers before taking it
# The end of the header block, as parse.header_block finds it.
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class Spool:
    """One DATA's content, dot-unstuffed, and the first reason to refuse it, if any."""

    def __init__(self, file: BinaryIO, max_bytes: int, max_header_bytes: int) -> None:
        self.file = file
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self.size = 0  # as the client sent it, dots included (what SIZE counts)
        self.header = 0  # bytes of the header block seen so far
        self._in_header = True
        self._tail = b""  # the header's last bytes, where its end may begin
        self.refusal = ""

    def add(self, sent: bytes, content: bytes) -> None:
        """A piece of a line as sent, and what it holds once unstuffed."""
        self.size += len(sent)
        if self.refusal:
            return  # the rest is read and dropped: the client is answered after the dot
        if self.max_bytes and self.size > self.max_bytes:
            self._refuse(f"552 5.3.4 message too big; this server takes at most "
                         f"{self.max_bytes} bytes")
            return
        if self._in_header:
            self._measure_header(content)
        if not self.refusal:
            self.file.write(content)

    def _measure_header(self, content: bytes) -> None:
        window = self._tail + content
        end = _HEADER_END.search(window)
        if end is not None:
            self._in_header = False
            self.header += end.end() - len(self._tail)
        else:
            self.header += len(content)
            self._tail = window[-3:]
        if self.max_header_bytes and self.header > self.max_header_bytes:
            self._refuse(f"552 5.3.4 header block too big; this server takes at most "
                         f"{self.max_header_bytes} bytes of header fields")

    def _refuse(self, reply: str) -> None:
        self.refusal = reply
        self.file.truncate(0)  # what was spooled goes at once, not at the final dot

    def content(self) -> bytes:
        self.file.seek(0)
        return self.file.read()


class SpooledData(SMTP):
    """aiosmtpd's DATA command with the content spooled (see the module's docstring);
    the rest (the handler's hook, the reply, the state after DATA) as aiosmtpd does it."""

    max_header_bytes = 0  # `[smtp] max_header_bytes`, set by the protocol factory
    line_length_limit = READ_BYTES  # the reader's buffer: DATA lines are read in pieces

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as file:
            spool = Spool(file, self.data_size_limit or 0, self.max_header_bytes)
            if not await self._receive(spool):
                return  # the client went away
            if spool.refusal:
                log.info("refused DATA from %s: %s", self.envelope.mail_from, spool.refusal)
                # LMTP answers once per recipient (RFC 2033), a refusal too.
                replies = len(self.envelope.rcpt_tos) if isinstance(self, LMTP) else 1
                self._set_post_data_state()
                await self.push("\r\n".join([spool.refusal] * replies))
                return
            self.envelope.original_content = self.envelope.content = spool.content()
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _receive(self, spool: Spool) -> bool:
        """Read up to the lone dot (RFC 5321 §4.5.2), a line in pieces of READ_BYTES;
        False when the connection closed first. A piece never ends inside a CRLF: the
        reader keeps the last byte it looked at."""
        line_start = True
        while self.transport is not None:
            try:
                piece = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError as exc:
                piece = await self._reader.read(exc.consumed)
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            if line_start and piece == b".\r\n":
                return True
            spool.add(piece, piece[1:] if line_start and piece.startswith(b".") else piece)
            line_start = piece.endswith(b"\r\n")
        return False
