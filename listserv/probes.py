"""After a destination's back-off ends, one job tries it before it gets the others (a
probe): its held jobs sent at once met its throttle again, every one of them deferred,
and receivers that throttle (Gmail, Outlook, Yahoo) answer such bursts by throttling
longer. Postfix, likewise, lowers a destination's concurrency after a deferral and
raises it only as deliveries succeed.

A destination stays in the database after its back-off (destinations.py) until a copy
goes through, and no claim takes a job of its domains meanwhile (outbox.PAUSED) but the
one taken here, at most one in flight: `destination.probe`. Its outcome decides: a copy
taken ends the back-off, and every worker sends to the destination at its full
concurrency again; a deferral starts the next back-off, longer; anything else (refused
for good, the smarthost away) lets the next claim try another job.

A probe is held as any job is, under its lease: once a dead worker's lease runs out (or
its host's next start gives its jobs back), its probe is no longer in flight and the
next claim takes another.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import bindparam, select, update
from sqlmodel import Session

from listserv import claims
from listserv.claims import JOB_COLUMNS, READY, TAKE, Job
from listserv.enums import DeliveryState
from listserv.models import utcnow
from listserv.queue_tables import Delivery, Destination, DestinationDomain

log = logging.getLogger("listserv.deliver")

_t, _destination = Delivery.metadata.tables["delivery"], Destination.metadata.tables["destination"]
_d, _dest = _t.c, _destination.c
_held = DestinationDomain.metadata.tables["destination_domain"].c

# The destinations whose back-off ended, locked for this claim on PostgreSQL (those another
# claim holds are left to it); on SQLite the claim holds the write lock anyway.
_ENDED = (select(_dest.name, _dest.probe).where(_dest.backoff_until <= bindparam("now"))
          .order_by(_dest.name).with_for_update(skip_locked=True))
# Of their probes, those in flight. Read after the lock, in a statement of its own: on
# PostgreSQL it then sees the probe a claim that held the lock before committed.
_FLYING = select(_d.id).where(_d.id.in_(bindparam("probes", expanding=True)),
                              _d.state == DeliveryState.SENDING,
                              _d.lease_until >= bindparam("now"))
# One ready job of a destination's domains, down ix_delivery_domain: the first found,
# not the oldest (that would read every job of a destination that has a million).
_PROBE = (update(_t).where(
    _d.id.in_(select(_d.id).where(
        _d.domain.in_(select(_held.domain).where(
            _held.destination == bindparam("destination"))),
        READY).limit(1).with_for_update(skip_locked=True).scalar_subquery()), READY)
    .values(TAKE).returning(*JOB_COLUMNS))
_NAME = update(_destination).where(_dest.name == bindparam("destination")).values(
    probe=bindparam("job"))
# Jobs a worker gives back unsent, claimed before their destination deferred a copy:
# after the back-off only the probe may go.
_GIVE_BACK = update(_t).where(
    _d.id.in_(bindparam("ids", expanding=True)), _d.worker == bindparam("holder"),
    _d.state == DeliveryState.SENDING).values(
    state=DeliveryState.QUEUED, worker=None, lease_until=None, attempts=_d.attempts - 1)


def claim(session: Session, worker: str, limit: int, lease: timedelta,
          busy: Sequence[str] = (), unsent: Sequence[int] = ()) -> list[Job]:
    """claims.claim, in the same transaction as a probe of each destination whose
    back-off ended and that has none in flight, which come first; `unsent`: jobs this
    worker gives back (see _GIVE_BACK)."""
    if unsent:
        session.connection().execute(_GIVE_BACK, {"ids": list(unsent), "holder": worker})
    probes = _probe(session, worker, lease) if limit else []
    return probes + claims.claim(session, worker, limit - len(probes), lease, busy)


def _probe(session: Session, worker: str, lease: timedelta) -> list[Job]:
    """A job claimed to try each destination that wants a probe and has a ready job. One
    statement when no destination is backed off."""
    now = utcnow()
    connection = session.connection()
    ended = connection.execute(_ENDED, {"now": now}).all()
    probes = [probe for _, probe in ended if probe is not None]
    flying = set(connection.execute(_FLYING, {"probes": probes, "now": now}).scalars()
                 ) if probes else set()
    jobs = []
    for name, probe in ended:
        if probe in flying:
            continue
        row = connection.execute(_PROBE, {"destination": name, "now": now, "worker": worker,
                                          "lease_until": now + lease}).first()
        if row is not None:
            connection.execute(_NAME, {"destination": name, "job": row.id})
            log.info("destination %s: its back-off is over, job=%d tries it", name, row.id)
            jobs.append(claims.job_of(row))
    return jobs
