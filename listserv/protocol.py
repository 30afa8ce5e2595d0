"""The SMTP (or LMTP) protocol at the edge: what aiosmtpd's is changed to do. One
connection too many is turned away (limits.Connections), DATA is spooled and measured
(spool.SpooledData), envelope addresses are read quickly, and STARTTLS offered when
configured. What each command is answered is the handler's (receive.Handler).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable
from typing import AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP

from listserv import limits, metrics
from listserv.config import Config, ConfigError, SmtpConfig
from listserv.receive import Handler
from listserv.spool import SpooledData

log = logging.getLogger("listserv.protocol")


# "<dot-atom@dot-atom>", then nothing or blanks and parameters (no comment: those and
# every other shape are left to aiosmtpd's parser).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<(?P<address>(?P<local>{_ATOM}(?:\.{_ATOM})*)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>"
    r"(?:[ \t]+(?P<rest>[^\s(][^(]*))?[ \t]*\Z")


class _Edge:
    """What ListSMTP and ListLMTP change in aiosmtpd's protocol. (RFC 5321 allows 998
    octets a line, but real clients send longer lines, a whole base64 attachment in
    one, and Postfix takes them: spool.SpooledData takes any line that fits
    max_message_bytes, in pieces.)"""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Nearly every client sends "<local@domain>" with dot-atoms, maybe followed by
        # parameters; aiosmtpd's general parser (it declares a class on every call) cost
        # a twentieth of the ingest CPU on it. Anything else still goes to that parser.
        plain = _PLAIN_PATH.match(arg)
        limit = self.local_part_limit  # type: ignore[attr-defined]
        if plain and (not limit or len(plain["local"]) <= limit):
            return plain["address"], plain["rest"] or ""
        # aiosmtpd 1.4.6 fails on "RCPT TO:<" with an IndexError, logged as a session
        # exception and answered with its text; it is a malformed address (553).
        try:
            return super()._getaddr(arg)  # type: ignore[misc]
        except IndexError:
            return None, None

    async def push(self, status: AnyStr) -> None:
        metrics.replied(status)
        await super().push(status)  # type: ignore[misc]


class _Limited(SMTP):
    """One connection too many, from an address or in all, is greeted with 421 and
    closed (`[smtp] max_connections_per_ip` and `max_connections`, counted in this
    process)."""

    connections = limits.Connections(0)  # the factory gives each server its own
    _ip: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this again with the TLS transport after STARTTLS: one connection
        # all the same, counted once.
        if self._ip is None:
            peer = transport.get_extra_info("peername")
            self._ip = str(peer[0]) if isinstance(peer, tuple) else str(peer)
            self._refusal = self.connections.admit(self._ip)
        super().connection_made(transport)

    async def _handle_client(self) -> None:
        if not self._refusal:
            return await super()._handle_client()
        log.info("refused connection from %s: %d open from it, %d in all", self._ip,
                 self.connections.open[self._ip] - 1, self.connections.total - 1)
        await self.push(self._refusal)
        self.transport.close()
        return None

    def connection_lost(self, error: Exception | None) -> None:
        self.connections.release(self._ip)
        super().connection_lost(error)


class ListSMTP(_Edge, SpooledData, _Limited):
    pass


class ListLMTP(_Edge, SpooledData, _Limited, LMTP):
    pass


def tls_context(smtp: SmtpConfig) -> ssl.SSLContext | None:
    """What STARTTLS offers, loaded once at start so a bad certificate stops the server
    with its reason rather than failing each client's handshake."""
    if not smtp.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(smtp.tls_cert_file, smtp.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[smtp] cannot load tls_cert_file {smtp.tls_cert_file} with "
                          f"tls_key_file {smtp.tls_key_file}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from exc
    return context


def protocol_factory(handler: Handler, config: Config) -> Callable[[], SMTP]:
    """A factory for loop.create_server: one SMTP (or LMTP) protocol per connection."""
    cls = ListLMTP if config.smtp.protocol == "lmtp" else ListSMTP
    connections = limits.Connections(config.smtp.max_connections_per_ip,
                                     config.smtp.max_connections)
    tls = tls_context(config.smtp)

    def make() -> SMTP:
        protocol = cls(handler, data_size_limit=config.smtp.max_message_bytes,
                       enable_SMTPUTF8=True, decode_data=False, ident="listserv",
                       tls_context=tls)
        protocol.connections = connections
        protocol.max_header_bytes = config.smtp.max_header_bytes
        return protocol
    return make
