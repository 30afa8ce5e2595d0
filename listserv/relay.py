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
from collections.abc import Callable
from types import TracebackType

from listserv.replies import MAIL_REFUSED, ConnectionLost, RelayError, Reply, refusal

_DOT = re.compile(rb"^\.", re.MULTILINE)

# RFC 5321 4.5.3.2.6: wait 10 minutes for the reply to the final dot. Giving up sooner
# on a slow smarthost (a content filter, a full disk) sends the message again later.
DATA_TIMEOUT = 600.0


# The longest reply line we wait for: a smarthost sending more without a line end is broken.
MAX_LINE = 1 << 20

# One-line replies read before, by their bytes: the replies to MAIL, RCPT and DATA are
# the same in every transaction, and a pipelined copy reads four; parsing each again
# was a tenth of the sender's time. Bounded, as a reply that names its queue id is
# new each time. (The lines list of a reply is only read, never changed.)
_KNOWN: dict[bytes, tuple[Reply, list[str]]] = {}
KNOWN_REPLIES = 256


def stuff(data: bytes, *, line_start: bool = True) -> bytes:
    """Dot-stuff a piece of CRLF message bytes (RFC 5321 4.5.2); `line_start` says
    whether the piece begins a line, so pieces stuffed apart join into a stuffed whole."""
    if b"\n." not in data and not data.startswith(b"."):
        return data  # most lines: no regular expression needed
    stuffed = _DOT.sub(b"..", data)
    return stuffed if line_start or not data.startswith(b".") else stuffed[1:]


def prepare(data: bytes) -> bytes:
    """Dot-stuff CRLF message bytes and add the end-of-data line."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return stuff(data) + b".\r\n"


def _nothing(rcpt: str) -> None:
    """The default `on_sent`: nothing to note."""


class _Watch:
    """The reply timeout of one connection, as one timer that seldom fires: each wait for
    replies sets its due time, and a timer that fires before it is set again for it; a
    wait that outlasts its due time aborts the connection, which ends the read (see
    _Deadline). A timer made and cancelled for every copy (asyncio.timeout) was a sixth
    of a sender's time; this one fires about once per timeout while copies flow."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.due: float | None = None
        self.expired = False
        self.timer: asyncio.TimerHandle | None = None

    def start(self, seconds: float) -> None:
        self.due = self.loop.time() + seconds
        if self.timer is not None and self.timer.when() > self.due:
            self.timer.cancel()  # a shorter wait than the one it was set for
            self.timer = None
        if self.timer is None:
            self.timer = self.loop.call_at(self.due, self._check)

    def stop(self) -> bool:
        """The wait is over: whether it ran out."""
        self.due = None
        expired, self.expired = self.expired, False
        return expired

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _check(self) -> None:
        self.timer = None
        if self.due is None:
            return  # no wait now: the next one sets the timer
        if self.loop.time() < self.due:
            self.timer = self.loop.call_at(self.due, self._check)
        else:
            self.expired = True
            self.transport.abort()


class _Deadline:
    """One timeout for the replies read inside, and a failure to read one breaks the
    connection. wait_for, or a timeout per reply, costs more than reading the reply (a
    pipelined copy reads four); a class, not contextlib's generator, for the same
    reason."""

    def __init__(self, relay: Relay, seconds: float) -> None:
        self.relay = relay
        self.seconds = seconds

    async def __aenter__(self) -> None:
        self.relay.watch.start(self.seconds)

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self.relay.watch.stop():
            self.relay.broken = True
            raise RelayError(f"bad or no reply from smarthost: {TimeoutError()!r}") from exc
        if isinstance(exc, RelayError):
            self.relay.broken = True
        elif isinstance(exc, OSError | ValueError):
            self.relay.broken = True
            raise RelayError(f"bad or no reply from smarthost: {exc!r}") from exc


class Relay:
    """One open connection to the smarthost."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.broken = False
        self.watch = _Watch(writer.transport)
        # Replies are cut into lines here rather than by StreamReader.readline: a
        # pipelined copy reads four replies, mostly from one segment.
        self._buffer = bytearray()

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
        try:
            greeting = await relay._reply()
            if greeting.code != 220:
                raise RelayError(f"smarthost greeting: {greeting}", greeting.temporary,
                                 greeting.code)
            await relay._ehlo(helo or socket.getfqdn())
        except RelayError:
            await relay.close()
            raise
        return relay

    async def _ehlo(self, name: str) -> None:
        self.writer.write(f"EHLO {name}\r\n".encode())
        reply, lines = await self._reply_lines()
        if reply.code != 250:
            raise RelayError(f"EHLO refused: {reply}", reply.temporary, reply.code)
        for line in lines[1:]:
            keyword, _, param = line.partition(" ")
            self.extensions[keyword.upper()] = param

    def _take_line(self) -> bytes | None:
        """The next whole line already read, if any."""
        end = self._buffer.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buffer[:end + 1])
        del self._buffer[:end + 1]
        return line

    async def _line(self) -> bytes:
        while (line := self._take_line()) is None:
            if len(self._buffer) > MAX_LINE:
                raise RelayError("smarthost sent a reply line too long")
            chunk = await self.reader.read(1 << 16)
            if not chunk:
                raise RelayError("smarthost closed the connection")
            self._buffer += chunk
        return line

    async def _read_reply(self) -> tuple[Reply, list[str]]:
        line = self._take_line() or await self._line()
        if (known := _KNOWN.get(line)) is not None:
            return known
        lines = []
        while True:
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text[4:])
            if len(text) < 4 or text[3] != "-":
                break
            line = self._take_line() or await self._line()
        reply = Reply(int(text[:3]), " ".join(lines).strip()), lines
        if len(lines) == 1 and len(_KNOWN) < KNOWN_REPLIES:
            _KNOWN[line] = reply
        return reply

    def _deadline(self, timeout: float | None = None) -> _Deadline:
        return _Deadline(self, timeout or self.timeout)

    async def _replies(self, count: int, timeout: float | None = None
                       ) -> list[tuple[Reply, list[str]]]:
        """The next `count` replies, under one timeout for them all."""
        async with self._deadline(timeout):
            return [await self._read_reply() for _ in range(count)]

    async def _reply_lines(self, timeout: float | None = None) -> tuple[Reply, list[str]]:
        return (await self._replies(1, timeout))[0]

    async def _reply(self, timeout: float | None = None) -> Reply:
        return (await self._replies(1, timeout))[0][0]

    async def _flush(self) -> None:
        if not self.writer.transport.get_write_buffer_size():
            return  # all written already (a lost connection shows in the reply)
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
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
        try:
            return await self._transaction(mail_from, rcpts, prepared)
        except asyncio.CancelledError:
            # Cut off mid-transaction: a QUIT now could land inside the message, or
            # read the reply to our final dot; only closing the socket is safe.
            self.broken = True
            raise

    async def _transaction(self, mail_from: str, rcpts: list[str], prepared: bytes
                           ) -> dict[str, Reply]:
        mail = (f"MAIL FROM:<{mail_from}>"
                f"{self._mail_params(prepared, [mail_from, *rcpts])}\r\n").encode()
        commands = [f"RCPT TO:<{r}>\r\n".encode() for r in rcpts]
        data_reply = None
        if "PIPELINING" in self.extensions:
            mail_reply = await self._open(mail + b"".join(commands) + b"DATA\r\n")
            *rcpt_replies, data_reply = [r for r, _ in await self._replies(len(commands) + 1)]
        else:
            mail_reply = await self._open(mail)
            rcpt_replies = [await self._command(c) for c in commands] if mail_reply.ok else []
        refused = {r: rep for r, rep in zip(rcpts, rcpt_replies, strict=False) if not rep.ok}
        if any(rep.code == 421 for rep in refused.values()):
            return self._closing(rcpts, refused)
        if not mail_reply.ok or len(refused) == len(rcpts):
            if data_reply is not None and data_reply.code == 354:
                await self._finish_data(b".\r\n")  # a server that said 354 anyway
            await self.reset()
            if not mail_reply.ok:
                raise RelayError(f"{MAIL_REFUSED}: {mail_reply}", mail_reply.temporary,
                                 mail_reply.code)
            return refused
        if data_reply is None:
            data_reply = await self._command(b"DATA\r\n")
        if data_reply.code != 354:
            await self.reset()
            raise RelayError(f"DATA refused: {data_reply}", data_reply.temporary,
                             data_reply.code)
        final = await self._finish_data(prepared)
        if not final.ok:
            raise RelayError(f"message refused: {final}", final.temporary, final.code)
        return refused

    def _closing(self, rcpts: list[str], refused: dict[str, Reply]) -> dict[str, Reply]:
        """A 421 to a RCPT: the server is closing the connection (RFC 5321 3.8), often
        because the destination asked for fewer connections. The transaction ends
        there: the recipients it took are refused as lost, and the 421 is kept as the
        reply of its own, for destinations.py to back that domain off."""
        self.broken = True
        lost = Reply(451, "connection closed by the smarthost (421) before DATA")
        return {r: refused.get(r, lost) for r in rcpts}

    async def send_each(self, mail_from: Callable[[str], str], rcpts: list[str],
                        prepared_for: Callable[[str], bytes],
                        on_sent: Callable[[str], None] = _nothing
                        ) -> dict[str, Reply]:
        """A transaction of its own for each recipient, with that recipient's own bytes
        and envelope sender (VERP), on this connection; returns the refusals by
        recipient. `on_sent` is called for each recipient the smarthost took, as its
        reply arrives.

        Raises RelayError only when nobody got the mail. If the connection fails after
        someone did, the recipients not done yet are refused with a temporary error, so
        they alone are tried again.
        """
        try:
            if "PIPELINING" in self.extensions:
                return await self._pipelined_each(mail_from, rcpts, prepared_for, on_sent)
            return await self._one_by_one(mail_from, rcpts, prepared_for, on_sent)
        except asyncio.CancelledError:
            self.broken = True  # as in send(): only closing the socket is safe now
            raise

    async def _one_by_one(self, mail_from: Callable[[str], str], rcpts: list[str],
                          prepared_for: Callable[[str], bytes],
                          on_sent: Callable[[str], None]) -> dict[str, Reply]:
        refused: dict[str, Reply] = {}
        for index, rcpt in enumerate(rcpts):
            try:
                refused.update(await self._transaction(mail_from(rcpt), [rcpt],
                                                       prepared_for(rcpt)))
                if rcpt not in refused:
                    on_sent(rcpt)
                elif self.broken:  # a 421 (_closing): nothing more on this connection
                    lost = Reply(451, "connection closed by the smarthost (421)")
                    return refused | dict.fromkeys(rcpts[index + 1:], lost)
            except RelayError as exc:
                if not self.broken:
                    refused[rcpt] = refusal(exc)
                elif index == 0:
                    raise
                else:
                    return refused | dict.fromkeys(rcpts[index:], refusal(exc, lost=True))
        return refused

    async def _pipelined_each(self, mail_from: Callable[[str], str], rcpts: list[str],
                              prepared_for: Callable[[str], bytes],
                              on_sent: Callable[[str], None]
                              ) -> dict[str, Reply]:
        """RFC 2920 lets message content be the first "command" of a group, so one write
        carries a message, its final dot and the next MAIL, RCPT and DATA: each
        recipient costs one round trip, as in one transaction for all of them."""
        refused: dict[str, Reply] = {}
        finished: set[str] = set()
        ahead = b""  # the message (or RSET) that goes out before the next commands
        expected: list[str | None] = []  # whose outcome the replies to `ahead` tell
        try:
            for rcpt in [*rcpts, None]:
                commands = b""
                if rcpt is not None:
                    data, sender = prepared_for(rcpt), mail_from(rcpt)
                    commands = (f"MAIL FROM:<{sender}>{self._mail_params(data, [sender, rcpt])}"
                                f"\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").encode()
                if not ahead + commands:
                    break
                self.writer.write(ahead + commands)
                await self._flush()
                async with self._deadline(DATA_TIMEOUT if expected else None):
                    for who in expected:  # the replies to what went ahead
                        reply = (await self._read_reply())[0]
                        if who is not None:
                            finished.add(who)
                            if not reply.ok:
                                refused[who] = reply
                            else:
                                on_sent(who)
                    if rcpt is None:
                        break
                    replies = [(await self._read_reply())[0] for _ in range(3)]
                ahead, expected = self._next_group(rcpt, data, replies, refused, finished)
        except RelayError as exc:
            self.broken = True
            if not finished:
                raise ConnectionLost(str(exc)) from exc
            lost = refusal(exc, lost=True)
            refused.update({r: lost for r in rcpts if r not in finished})
        return refused

    def _next_group(self, rcpt: str, data: bytes, replies: list[Reply],
                    refused: dict[str, Reply], finished: set[str]
                    ) -> tuple[bytes, list[str | None]]:
        """What goes ahead of the next transaction after the replies to MAIL, RCPT and
        DATA: the message, or what closes a transaction that failed."""
        mail, rcpt_reply, data_reply = replies
        if mail.ok and rcpt_reply.code == 421:  # kept as this recipient's reply
            refused[rcpt] = rcpt_reply
            finished.add(rcpt)
        if 421 in (r.code for r in replies):
            raise RelayError(f"smarthost is closing the connection: {mail}")
        if mail.ok and rcpt_reply.ok and data_reply.code == 354:
            return data, [rcpt]
        first = next((r for r in replies if not r.ok), data_reply)
        refused[rcpt] = first if mail.ok else Reply(mail.code, f"{MAIL_REFUSED}: {mail}")
        finished.add(rcpt)
        ahead, expected = b"", list[str | None]()
        if data_reply.code == 354:
            ahead, expected = b".\r\n", [None]  # a server that said 354 anyway
        if mail.ok:
            ahead, expected = ahead + b"RSET\r\n", [*expected, None]
        return ahead, expected

    async def _open(self, commands: bytes) -> Reply:
        """Send the first commands of a transaction and read the reply to MAIL.

        A reused connection may have been closed by the smarthost while idle (Postfix's
        smtpd_timeout says 421 and hangs up): that is ConnectionLost, not a failed try.
        """
        try:
            reply = await self._command(commands)
        except RelayError as exc:
            raise ConnectionLost(str(exc)) from exc
        if reply.code == 421:
            self.broken = True
            raise ConnectionLost(f"smarthost is closing the connection: {reply}")
        return reply

    async def _command(self, command: bytes) -> Reply:
        self.writer.write(command)
        await self._flush()
        return await self._reply()

    async def _finish_data(self, prepared: bytes) -> Reply:
        self.writer.write(prepared)
        await self._flush()
        return await self._reply(DATA_TIMEOUT)

    async def reset(self) -> None:
        self.writer.write(b"RSET\r\n")
        await self._reply()

    async def close(self) -> None:
        """QUIT politely if the connection still works; close it in any case."""
        try:
            if not self.broken:
                self.writer.write(b"QUIT\r\n")
                await asyncio.wait_for(self.writer.drain(), 5)
                await self._reply(5)
        except (OSError, TimeoutError, RelayError):
            pass  # the connection is going away either way
        finally:
            self.watch.close()
            self.writer.close()
