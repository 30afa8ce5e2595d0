"""Housekeeping's retention: delete what is bookkeeping only once it is old, so the
database grows with the archive and not with every copy ever sent.

Archived posts are never touched. Each batch is a transaction of its own, so that the
receiver (which must commit before its 250) never waits long for the write lock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Delete, Update, delete, exists, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session

from listserv import db
from listserv.config import RetentionConfig
from listserv.enums import DeliveryState, MessageKind
from listserv.models import Message, Token, utcnow
from listserv.queue_tables import Delivery, Expansion, Outgoing

# Rows a transaction: a few milliseconds of the write lock.
BATCH = 500
# Batches of each kind a housekeeping run: an old database is cleaned over several runs,
# and a run still ends soon enough to see `stop`.
MAX_BATCHES = 100


@dataclass(frozen=True)
class Swept:
    """How many rows each step deleted (or, for bounces, emptied)."""

    deliveries: int = 0
    copies: int = 0
    bounce_raw: int = 0
    tokens: int = 0

    def __bool__(self) -> bool:
        return any((self.deliveries, self.copies, self.bounce_raw, self.tokens))


def _finished_deliveries(cutoff: datetime) -> Delete:
    done = (DeliveryState.DONE, DeliveryState.FAILED, DeliveryState.CANCELLED)
    old = select(Delivery.id).where(Delivery.state.in_(done), Delivery.done_at < cutoff)
    return delete(Delivery).where(Delivery.id.in_(old.limit(BATCH)))


def _unused_copies(cutoff: datetime) -> Delete:
    """A copy's bytes once no delivery job is left to send them (nor any still to be
    written: a post not fully expanded)."""
    orphan = select(Outgoing.id).where(
        Outgoing.created_at < cutoff,
        ~exists().where(Delivery.outgoing_id == Outgoing.id),
        ~exists().where(Expansion.outgoing_id == Outgoing.id))
    return delete(Outgoing).where(Outgoing.id.in_(orphan.limit(BATCH)))


def _bounce_raw(cutoff: datetime) -> Update:
    """Bounces are read as they arrive; what was read from them is in bounce_event."""
    read = select(Message.id).where(Message.kind == MessageKind.BOUNCE,
                                    Message.received_at < cutoff,
                                    func.length(Message.raw) > 0)
    return update(Message).where(Message.id.in_(read.limit(BATCH))).values(raw=b"")


def _spent_tokens(cutoff: datetime) -> Delete:
    spent = or_(Token.used_at < cutoff, Token.expires_at < cutoff)
    return delete(Token).where(Token.id.in_(select(Token.id).where(spent).limit(BATCH)))


def _in_batches(engine: Engine, statement: Callable[[datetime], Delete | Update],
                days: int, now: datetime) -> int:
    if not days:
        return 0
    cutoff = now - timedelta(days=days)
    total = 0
    for _ in range(MAX_BATCHES):
        with db.session(engine) as session:
            count = _run(session, statement(cutoff))
            session.commit()
        total += count
        if count < BATCH:
            break
    return total


def _run(session: Session, statement: Delete | Update) -> int:
    return session.execute(statement, execution_options={"synchronize_session": False}
                           ).rowcount


def sweep(engine: Engine, config: RetentionConfig, now: datetime | None = None) -> Swept:
    """One housekeeping run's retention. Jobs go before copies: a copy is deleted only
    when no job of it is left."""
    now = now or utcnow()
    return Swept(deliveries=_in_batches(engine, _finished_deliveries, config.delivered_days, now),
                 copies=_in_batches(engine, _unused_copies, config.delivered_days, now),
                 bounce_raw=_in_batches(engine, _bounce_raw, config.bounce_raw_days, now),
                 tokens=_in_batches(engine, _spent_tokens, config.tokens_days, now))
