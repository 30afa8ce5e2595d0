"""Which smarthost a new connection of the delivery worker goes to. Several
([[delivery.smarthost]]) share the connections by weight; one that cannot be reached is
skipped at once for the next, and left alone for a back-off before it is tried again.
Each host's reachability (and its once-per-outage log line) is a smarthost.Smarthost.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass

from listserv.config import SmarthostConfig
from listserv.relay import Relay
from listserv.replies import RelayError
from listserv.smarthost import Smarthost

# A smarthost that failed gets no new connection for this long, doubled with each
# failure in a row up to the last: long enough not to cost every job a timeout, short
# enough that it is back in use within minutes of its return.
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 300.0
# With several smarthosts a connection carries jobs this long at most; the next one goes
# where the weights say. Under a steady load no connection idles out, and without this
# a smarthost back from an outage would get no share again.
REUSE_SECONDS = 60.0


@dataclass
class _Host:
    smarthost: Smarthost
    weight: int
    current: int = 0  # smooth weighted round robin's running score
    down_until: float = 0.0  # monotonic time its back-off ends
    backoff: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.smarthost.host}:{self.smarthost.port}"


class Smarthosts:
    """The smarthosts copies go out through, and the connections opened to them."""

    def __init__(self, entries: list[SmarthostConfig]) -> None:
        self.hosts = [_Host(Smarthost(e.host, e.port), e.weight) for e in entries]
        self._opened: weakref.WeakKeyDictionary[Relay, float] = weakref.WeakKeyDictionary()

    def _order(self) -> list[_Host]:
        """The hosts to try for a connection, in turn: the one the weights pick among
        those not in back-off, then the others of them. When all are in back-off, the
        one whose back-off ends first: with one smarthost, every job tries it, as
        before there were several."""
        now = time.monotonic()
        up = [h for h in self.hosts if h.down_until <= now]
        if not up:
            return [min(self.hosts, key=lambda h: h.down_until)]
        for host in up:
            host.current += host.weight
        chosen = max(up, key=lambda h: h.current)
        chosen.current -= sum(h.weight for h in up)
        return [chosen, *(h for h in up if h is not chosen)]

    async def connect(self) -> Relay:
        """A connection ready for MAIL FROM, to the first smarthost in turn that takes
        one; the last failure when none does (the job then waits in the queue)."""
        error: RelayError | None = None
        for host in self._order():
            try:
                relay = await host.smarthost.connect()
            except RelayError as exc:
                self._failed(host)
                error = exc
                continue
            host.backoff, host.down_until = 0.0, 0.0
            self._opened[relay] = time.monotonic()
            return relay
        assert error is not None  # _order names at least one host
        raise error

    @staticmethod
    def _failed(host: _Host) -> None:
        """Back off from `host`; the senders that tried it at the same time met the same
        outage, which doubles the back-off once, not once for each."""
        now = time.monotonic()
        if host.down_until <= now:
            host.backoff = min(MAX_BACKOFF, host.backoff * 2 or FIRST_BACKOFF)
            host.down_until = now + host.backoff

    def worn(self, relay: Relay) -> bool:
        """Whether the next job should go on a new connection (see REUSE_SECONDS)."""
        opened = self._opened.get(relay)
        return (len(self.hosts) > 1 and opened is not None
                and time.monotonic() - opened > REUSE_SECONDS)

    async def probe(self) -> dict[str, bool]:
        """Whether each smarthost greets (smarthost.Smarthost.probe), by host:port."""
        reached = await asyncio.gather(*(h.smarthost.probe() for h in self.hosts))
        return {h.name: ok for h, ok in zip(self.hosts, reached, strict=True)}

    def names(self) -> str:
        return ", ".join(h.name for h in self.hosts)
