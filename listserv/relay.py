"""A small asyncio SMTP client for the smarthost, built for fan-out.

Written here rather than taken from aiosmtplib because fan-out speed depends on what
aiosmtplib does not do: PIPELINING (RFC 2920) sends MAIL, every RCPT and DATA in one
write, and the message goes out in one write too, so a transaction costs two round
trips instead of one per recipient (the mlmmj lesson: small writes wait on Nagle and
delayed ACKs). Connections stay open and are reused for the next transaction.
"""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass

_DOT = re.compile(rb"^\.", re.MULTILINE)


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class RelayError(Exception):
    """The transaction as a whole failed; `temporary` says whether to try again."""

    def __init__(self, text: str, temporary: bool = True, code: int = 0) -> None:
        super().__init__(text)
        self.temporary = temporary
        self.code = code


def prepare(data: bytes) -> bytes:
    """Dot-stuff CRLF message bytes (RFC 5321 4.5.2) and add the end-of-data line."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return _DOT.sub(b"..", data) + b".\r\n"


class Relay:
    """One open connection to the smarthost."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.broken = False

    @classmethod
    async def connect(cls, host: str, port: int, helo: str | None = None,
                      timeout: float = 60.0) -> Relay:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=1 << 20), timeout)
        except (OSError, TimeoutError) as exc:
            raise RelayError(f"cannot connect to {host}:{port}: {exc}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        relay = cls(reader, writer, timeout)
        greeting = await relay._reply()
        if greeting.code != 220:
            await relay.close()
            raise RelayError(f"smarthost greeting: {greeting}", greeting.temporary, greeting.code)
        await relay._ehlo(helo or socket.getfqdn())
        return relay

    async def _ehlo(self, name: str) -> None:
        self.writer.write(f"EHLO {name}\r\n".encode())
        reply, lines = await self._reply_lines()
        if reply.code != 250:
            raise RelayError(f"EHLO refused: {reply}", reply.temporary, reply.code)
        for line in lines[1:]:
            keyword, _, param = line.partition(" ")
            self.extensions[keyword.upper()] = param

    async def _reply_lines(self) -> tuple[Reply, list[str]]:
        lines = []
        try:
            while True:
                line = await asyncio.wait_for(self.reader.readline(), self.timeout)
                if not line:
                    raise RelayError("smarthost closed the connection")
                text = line.decode("utf-8", "replace").rstrip("\r\n")
                lines.append(text[4:])
                if len(text) < 4 or text[3] != "-":
                    break
            code = int(text[:3])
        except (OSError, TimeoutError, ValueError) as exc:
            self.broken = True
            raise RelayError(f"bad or no reply from smarthost: {exc!r}") from exc
        except RelayError:
            self.broken = True
            raise
        return Reply(code, " ".join(lines).strip()), lines

    async def _reply(self) -> Reply:
        return (await self._reply_lines())[0]

    async def _flush(self) -> None:
        try:
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except (OSError, TimeoutError) as exc:
            self.broken = True
            raise RelayError(f"cannot write to smarthost: {exc!r}") from exc

    def _mail_params(self, data: bytes, addresses: list[str]) -> str:
        params = []
        if "SIZE" in self.extensions:
            params.append(f"SIZE={len(data)}")
        if "8BITMIME" in self.extensions and not data.isascii():
            params.append("BODY=8BITMIME")
        if "SMTPUTF8" in self.extensions and not all(a.isascii() for a in addresses):
            params.append("SMTPUTF8")
        return "".join(" " + p for p in params)

    async def send(self, mail_from: str, rcpts: list[str], prepared: bytes) -> dict[str, Reply]:
        """One transaction; returns the refusals by recipient (empty when all were taken).

        Raises RelayError when the transaction as a whole failed, so that nobody got it.
        """
        head = [f"MAIL FROM:<{mail_from}>{self._mail_params(prepared, [mail_from, *rcpts])}"]
        head += [f"RCPT TO:<{r}>" for r in rcpts]
        commands = [(c + "\r\n").encode() for c in head]
        if "PIPELINING" in self.extensions:
            self.writer.write(b"".join(commands) + b"DATA\r\n")
            await self._flush()
            replies = [await self._reply() for _ in commands]
            data_reply = await self._reply()
        else:
            replies = []
            for command in commands:
                self.writer.write(command)
                replies.append(await self._reply())
                if not replies[0].ok:
                    break
            data_reply = None
        mail_reply, rcpt_replies = replies[0], replies[1:]
        refused = {r: rep for r, rep in zip(rcpts, rcpt_replies, strict=False) if not rep.ok}
        if not mail_reply.ok or len(refused) == len(rcpts):
            if data_reply is not None and data_reply.code == 354:
                await self._finish_data(b".\r\n")  # a server that said 354 anyway
            await self.reset()
            if not mail_reply.ok:
                raise RelayError(f"MAIL FROM refused: {mail_reply}", mail_reply.temporary,
                                 mail_reply.code)
            return refused
        if data_reply is None:
            self.writer.write(b"DATA\r\n")
            data_reply = await self._reply()
        if data_reply.code != 354:
            await self.reset()
            raise RelayError(f"DATA refused: {data_reply}", data_reply.temporary,
                             data_reply.code)
        final = await self._finish_data(prepared)
        if not final.ok:
            raise RelayError(f"message refused: {final}", final.temporary, final.code)
        return refused

    async def _finish_data(self, prepared: bytes) -> Reply:
        self.writer.write(prepared)
        await self._flush()
        return await self._reply()

    async def reset(self) -> None:
        self.writer.write(b"RSET\r\n")
        await self._reply()

    async def close(self) -> None:
        """QUIT politely if the connection still works; close it in any case."""
        try:
            if not self.broken:
                self.writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self.writer.drain(), 5)
                await asyncio.wait_for(self.reader.readline(), 5)
        except (OSError, TimeoutError):
            pass  # the connection is going away either way
        finally:
            self.writer.close()
