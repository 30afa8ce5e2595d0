"""Whether the smarthost can be reached, as the delivery worker and /healthz see it.

Until this, the first sign of a smarthost that is down or misnamed was a copy stuck in
`queued`: now the log says so at start and once per outage, and again when it is back.
"""

from __future__ import annotations

import logging

from listserv.relay import Relay, RelayError

log = logging.getLogger("listserv.smarthost")

# A probe is a connection, a greeting and EHLO: seconds, even for a slow MTA.
PROBE_TIMEOUT = 10.0


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
        """Connect and QUIT: at start, and for /healthz."""
        try:
            relay = await self.connect(PROBE_TIMEOUT)
        except RelayError:
            return False
        await relay.close()
        return True

    def _saw(self, ok: bool, error: str = "") -> None:
        if not ok and self.reachable is not False:
            log.warning("smarthost %s:%d cannot be reached (%s): copies wait in the queue "
                        "until it can", self.host, self.port, error)
        elif ok and self.reachable is False:
            log.info("smarthost %s:%d can be reached again", self.host, self.port)
        self.reachable = ok
