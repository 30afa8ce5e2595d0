"""Running out of file descriptors, said once a minute rather than at every accept.

At the process's open-file limit, asyncio's accept loop fails on every connection
waiting in the backlog, logs a traceback for each and tries again a second later, as
many times over: 400 waiting clients made 400,000 tracebacks (100 MB of log) in ten
seconds. `[smtp] max_connections` keeps the receiver itself below the limit; this is
for whatever still gets there (a low `ulimit -n`, a flood on the web port).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

log = logging.getLogger("listserv.descriptors")

# asyncio's own list of the errors that mean "out of a resource" at accept().
OUT_OF = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
EVERY_SECONDS = 60.0


class ExhaustionLog:
    """An event loop exception handler: out-of-descriptor errors are logged once per
    EVERY_SECONDS with how many more came meanwhile; everything else as asyncio would."""

    def __init__(self, every: float = EVERY_SECONDS) -> None:
        self.every = every
        self.last: float | None = None
        self.more = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if self.last is not None and _late_retry(context):
            return
        if not (isinstance(exc, OSError) and exc.errno in OUT_OF):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if self.last is not None and now - self.last < self.every:
            self.more += 1
            return
        log.error("%s: %s; new connections wait until descriptors are free (%d more "
                  "such errors since the last report); raise the open-file limit "
                  "(ulimit -n) or lower [smtp] max_connections",
                  context.get("message", "out of a system resource"), exc.strerror,
                  self.more)
        self.last, self.more = now, 0


def _late_retry(context: dict[str, Any]) -> bool:
    """One of the accept retries asyncio scheduled while out of descriptors, run after
    the server closed its socket (at stop: hundreds of "Invalid file descriptor")."""
    return (isinstance(context.get("exception"), ValueError)
            and "_start_serving" in str(context.get("message", "")))

