"""The SMTP/LMTP edge: refuse at RCPT what is not ours, store at DATA before the 250.

The aiosmtpd handler is async; everything that touches the database runs in a worker
thread: RCPT lookups one by one, and DATA a group of transactions at a time in one
database transaction (GroupCommit, through ingest.ingest_group).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from listserv import db, limits, metrics, supervise
from listserv.address import Purpose, Route
from listserv.config import Config
from listserv.drain import Drain
from listserv.enums import MessageState
from listserv.ingest import (
    REFUSALS,
    Incoming,
    Outcome,
    Result,
    ingest_group,
    route,
    tell_if_vouched,
)
from listserv.recent import Recent

if TYPE_CHECKING:
    from listserv.deliver import Worker

log = logging.getLogger("listserv.receive")

# No address holds control characters (a bare CR or a NUL would reach logs, the database
# and the headers of notices) or lone surrogates: aiosmtpd's stand-ins for bytes that are
# not UTF-8.
_BAD_ADDRESS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


# A busy receiver waits this long before storing a group short of its limit, so that
# the transactions ending meanwhile share its commit: a group costs a commit and a dozen
# statements whatever its size, and without the wait groups of 16 clients averaged 7
# (PostgreSQL's commit_delay is the same trade). Measured best of 0, 1, 3 and 6 ms.
GATHER_SECONDS = 0.001
# Posts whose DNS is asked at once; each waits at most the resolver's timeout per name.
ASK_THREADS = 16


class GroupCommit:
    """One writer for the receiver: the SMTP transactions that reach their end of data
    while a group is being stored wait and go together in the next group, sharing its
    commit. A lone client waits for nobody; when several are waiting, the writer first
    gives others `gather` seconds to join (GATHER_SECONDS), and many clients share
    fsyncs (SQLite writes one at a time anyway). Each waits for the commit that holds
    its message."""

    def __init__(self, engine: Engine, config: Config, limit: int = 16,
                 worker: Worker | None = None, gather: float = GATHER_SECONDS) -> None:
        self.engine = engine
        self.config = config
        self.limit = limit
        self.gather = gather
        self.worker = worker  # the delivery worker of this process, handed the jobs
        self.groups: Drain[Incoming, Result] = Drain(self._write, limit=limit,
                                                     delay=self._gather)
        # A thread of its own: in the loop's default pool, a group waited behind the
        # parsing and RCPT lookups of every client.
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receive-writer")
        # And DNS its own threads: posts from a few slow domains in the default pool
        # would hold up every client's RCPT lookups.
        self.asking = ThreadPoolExecutor(max_workers=ASK_THREADS,
                                         thread_name_prefix="receive-dns")

    def close(self) -> None:
        """Let the writer thread end once the group under way is stored."""
        self.thread.shutdown(wait=False)
        self.asking.shutdown(wait=False)

    async def store(self, incoming: Incoming, *, ask: bool = False) -> list[Outcome]:
        """Store one transaction with the next group; with `ask`, what DNS says of its
        post is asked first, outside the writer: here when the resolver's cache holds
        the answers, else in a DNS thread (Incoming.ask)."""
        loop = asyncio.get_running_loop()
        if ask and not incoming.ask(self.config, cached_only=True):
            await loop.run_in_executor(self.asking, incoming.ask, self.config)
        result = await self.groups.put(incoming)
        if isinstance(result, Exception):
            raise result
        for held in {o.held_from_non_member for o in result} - {None}:
            await loop.run_in_executor(self.asking, tell_if_vouched, self.engine,
                                       self.config, incoming, held)
        return result

    def _gather(self, waiting: int) -> float:
        return self.gather if 1 < waiting < self.limit else 0.0

    async def _write(self, group: list[Incoming]) -> list[Result]:
        """One group stored; a failure of the whole is each client's 451."""
        return await asyncio.get_running_loop().run_in_executor(
            self.thread, ingest_group, self.engine, self.config, group)


# Our own faults: the client tries again later.
_SENDER_UNCHECKED = "451 4.3.0 temporary failure checking the sender; try again later"
_RECIPIENT_UNCHECKED = "451 4.3.0 temporary failure looking up the recipient; try again later"
_NOT_STORED = "451 4.3.0 message not stored, please try again later"

# How long a recipient found to be ours is taken as ours without asking again.
ROUTE_SECONDS = 1.0


class Handler:
    """aiosmtpd handler: the return value of each hook is the SMTP reply."""

    def __init__(self, engine: Engine, config: Config, worker: Worker | None = None,
                 on_accepted: Callable[[], None] = lambda: None) -> None:
        self.engine = engine
        self.config = config
        self.worker = worker  # of this process: woken for jobs queued, handed posts' jobs
        self.on_accepted = on_accepted  # a post went in: a digest may have filled up
        self.group = GroupCommit(engine, config, worker=worker)
        self.headroom = limits.Headroom(config.smtp.max_messages_per_sender_per_hour)
        self.requests = limits.PerHour(config.lists.max_confirmations_per_hour)
        # Recipients found to be ours lately, so RCPT needs no thread hop and no query
        # for a busy list. Only found routes are kept, and for a second: a list an
        # admin just created is looked up (and found) at once, never refused from here.
        # A list deleted meanwhile still gets its 250 at RCPT for up to that second, but
        # the writer looks every recipient up again in the transaction that stores the
        # message (ingest.Batch.target), so its DATA is refused with the 550 and nothing is stored.
        self.routes: Recent[str, Route] = Recent(ROUTE_SECONDS)
        # The database being away is logged once for the outage (anything else in full):
        # behind Postfix every client retries its 451 meanwhile, and a traceback each
        # buried the two lines that say when the outage began and ended.
        self.outage = supervise.Outage("smtp")

    def _count(self, mail_from: str) -> tuple[float, int]:
        read_at = time.monotonic()
        with db.read_session(self.engine) as session:
            return read_at, limits.sent_recently(session, mail_from, self.headroom.limit)

    async def _sender_refusal(self, mail_from: str) -> str | None:
        limit = self.headroom.limit
        key = mail_from.lower()
        if not limit or key in ("", "<>") or self.headroom.take(key):
            return None
        read_at, count = await asyncio.to_thread(self._count, key)
        self.outage.recovered()
        if count >= limit:
            return limits.refusal(mail_from, limit)
        self.headroom.counted(key, read_at, count)
        return None

    async def handle_MAIL(self, server: SMTP, session: SmtpSession, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if _BAD_ADDRESS.search(address):
            return "553 5.1.7 the sender address has control characters or is not UTF-8"
        started = time.monotonic()
        try:
            refusal = await self._sender_refusal(address)
        except OperationalError as exc:
            self.outage.failed(exc, started)
            return _SENDER_UNCHECKED
        except Exception:
            log.exception("rate limit lookup failed for %s", address)
            return _SENDER_UNCHECKED
        if refusal:
            log.info("refused from=%s: %s", address, refusal)
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    def _route(self, rcpt: str) -> Route | str:
        with db.read_session(self.engine) as session:
            return route(session, rcpt)

    async def _cached_route(self, rcpt: str) -> Route | str:
        found = self.routes.get(rcpt)
        if found is not None:
            return found[1]
        read_at = time.monotonic()
        target = await asyncio.to_thread(self._route, rcpt)
        self.outage.recovered()
        if not isinstance(target, str):
            self.routes.put(rcpt, read_at, target)
        return target

    async def handle_RCPT(self, server: SMTP, session: SmtpSession, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if _BAD_ADDRESS.search(address):
            return "553 5.1.3 the recipient address has control characters or is not UTF-8"
        started = time.monotonic()
        try:
            target = await self._cached_route(address)
        except OperationalError as exc:
            self.outage.failed(exc, started)
            return _RECIPIENT_UNCHECKED
        except Exception:
            log.exception("recipient lookup failed for %s", address)
            return _RECIPIENT_UNCHECKED
        if isinstance(target, str):
            log.info("refused rcpt=%s from=%s: %s", address, envelope.mail_from, target)
            return target
        most = self.config.smtp.max_recipients
        if most and len(envelope.rcpt_tos) >= most:
            return f"452 4.5.3 too many recipients; at most {most} in one transaction"
        if target.purpose in limits.REQUEST_PURPOSES:
            ip = str(session.peer[0] if isinstance(session.peer, tuple) else session.peer)
            if not self.requests.admit(ip):
                log.info("refused rcpt=%s from %s: too many requests", address, ip)
                return limits.request_refusal(ip, self.requests.limit)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 OK"

    def _may_post(self, rcpts: list[str]) -> bool:
        """Whether a recipient may be a list's posting address, whose copies need what
        DNS says of the post: one not seen at RCPT a moment ago may."""
        routes = [self.routes.get(rcpt) for rcpt in rcpts]
        return any(found is None or found[1].purpose is Purpose.POST for found in routes)

    async def handle_DATA(self, server: SMTP, session: SmtpSession,
                          envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        metrics.RECEIVED.inc()
        mail_from = envelope.mail_from or ""
        mail_from = "" if mail_from == "<>" else mail_from
        incoming = Incoming(mail_from, list(envelope.rcpt_tos), raw)
        started = time.monotonic()
        try:
            outcomes = await self.group.store(incoming, ask=self._may_post(incoming.rcpts))
        except REFUSALS as exc:
            log.info("refused from=%s to=%s: %s", mail_from or "<>", ",".join(envelope.rcpt_tos),
                     exc)
            # LMTP answers once per recipient (RFC 2033), a refusal too.
            return "\r\n".join([str(exc)] * len(envelope.rcpt_tos)) if isinstance(
                server, LMTP) else str(exc)
        except OperationalError as exc:
            self.outage.failed(exc, started)
            return _NOT_STORED
        except Exception:
            log.exception("could not store a message from %s", mail_from or "<>")
            return _NOT_STORED
        self.outage.recovered()
        # Recipients of one list address share one outcome (ingest._ingest_one).
        distinct = list({id(o): o for o in outcomes}.values())
        for outcome in distinct:
            metrics.STORED.labels(outcome.state).inc()
            log.info("accepted from=%s %s", mail_from or "<>", outcome.log_line())
        # An accepted post waits for its expansion; anything else queued, for a claim.
        if self.worker is not None and any(o.state == MessageState.ACCEPTED for o in outcomes):
            self.worker.expand_soon()
        if self.worker is not None and any(
                o.deliveries for o in outcomes if o.state != MessageState.ACCEPTED):
            self.worker.wake()
        if any(o.state == MessageState.ACCEPTED for o in outcomes):
            self.on_accepted()
        replies = [f"250 2.0.0 OK <{o.message_id}> {o.state}" for o in outcomes]
        if isinstance(server, LMTP):
            return "\r\n".join(replies)  # LMTP answers once per recipient (RFC 2033)
        return replies[0] if len(distinct) == 1 else "250 2.0.0 OK"
