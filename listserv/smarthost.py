"""Whether the smarthost can be reached, as the delivery worker and /healthz see it.

Until this, the first sign of a smarthost that is down or misnamed was a copy stuck in
`queued`: now the log says so at start and once per outage, and again when it is back.
"""

from __future__ import annotations

import asyncio
import logging

from listserv.relay import Relay
from listserv.replies import RelayError

log = logging.getLogger("listserv.smarthost")

# A probe is a connection, a greeting and EHLO: seconds, even for a slow MTA.
PROBE_TIMEOUT = 5.0


class Smarthost:
    """Connections to the smarthost, remembering whether the last one worked."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reachable: bool | None = None  # None: not tried yet

    async def connect(self, timeout: float = 60.0) -> Relay:
        """A connection ready for MAIL FROM; a failure is logged once per outage."""
        try:
            relay = await Relay.connect(self.host, self.port, timeout=timeout)
        except RelayError as exc:
            self._saw(False, str(exc))
            raise
        self._saw(True)
        return relay

    async def probe(self) -> bool:
        """At start, and for /healthz: the smarthost greets with 220, and we QUIT (no
        EHLO: an MTA logs nothing more than a client that changed its mind)."""
        try:
            await asyncio.wait_for(_greeted(self.host, self.port), PROBE_TIMEOUT)
        except (OSError, TimeoutError, RelayError) as exc:
            self._saw(False, str(exc) or exc.__class__.__name__)
            return False
        self._saw(True)
        return True

    def _saw(self, ok: bool, error: str = "") -> None:
        if not ok and self.reachable is not False:
            log.warning("smarthost %s:%d cannot be reached (%s): copies wait in the queue "
                        "until it can", self.host, self.port, error)
        elif ok and self.reachable is False:
            log.info("smarthost %s:%d can be reached again", self.host, self.port)
        self.reachable = ok


async def _greeted(host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        greeting = await reader.readline()
        if not greeting.startswith(b"220"):
            raise RelayError(f"smarthost greeting: {greeting.decode('ascii', 'replace')!r}")
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()
