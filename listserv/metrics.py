"""Prometheus metrics: counters the edges increment, each at one line where the event
happens, and the queue figures, read from the database when /metrics is scraped.

Counters are this process's own (with several `listserv serve` processes, each reports
its own and Prometheus adds them up); the queue is shared, so it is read from the
database, where every process sees the same figures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlmodel import Session

from listserv import delivery_queue
from listserv.enums import DeliveryState
from listserv.models import utcnow
from listserv.queue_tables import Delivery, Destination, Expansion

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)  # memory, CPU and open file descriptors

RECEIVED = Counter("listserv_messages_received", "Messages received (SMTP/LMTP DATA).",
                   registry=REGISTRY)
STORED = Counter("listserv_messages_stored",
                 "Messages stored, per recipient address, by what became of them "
                 "(accepted, held, discarded, duplicate, loop; other addresses: "
                 "'request stored', 'bounces stored', ...).", ["state"], registry=REGISTRY)
REFUSED = Counter("listserv_smtp_refused",
                  "SMTP replies refusing a connection, sender, recipient or message, by "
                  "enhanced status code (5.7.1 policy, 4.7.1 rate limit, 5.1.1 no such "
                  "list, 4.3.0 not stored; without one, by the code: 552 too big).", ["reason"],
                  registry=REGISTRY)
INGEST_COMMIT = Histogram("listserv_ingest_commit_seconds",
                          "Time to commit a group of received messages (the fsync before "
                          "their 250).", registry=REGISTRY,
                          buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
COPIES = Counter("listserv_copies", "Recipients of delivery attempts by outcome: "
                 "delivered (the smarthost took it), deferred (tried again later), failed "
                 "(for good).", ["outcome"], registry=REGISTRY)
BOUNCES = Counter("listserv_bounces", "Bounces and complaints processed, by class.",
                  ["bounce_class"], registry=REGISTRY)
DIGESTS = Counter("listserv_digests_sent", "Digest issues built and queued.",
                  registry=REGISTRY)

# "550 5.7.1 text" -> "5.7.1"; a reply without an enhanced code is counted by its code.
_REPLY = re.compile(r"([45]\d\d)[ -](?:([45]\.\d{1,3}\.\d{1,3})\b)?")


def replied(status: str | bytes) -> None:
    """Count an SMTP reply the server sends if it refuses something."""
    text = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
    found = _REPLY.match(text)
    if found:
        REFUSED.labels(found[2] or found[1]).inc()


def copies(delivered: int, deferred: int, failed: int) -> None:
    for outcome, count in (("delivered", delivered), ("deferred", deferred),
                           ("failed", failed)):
        if count:
            COPIES.labels(outcome).inc(count)


@dataclass(frozen=True)
class Queue:
    """The delivery queue as the database has it, shared by every process."""

    jobs_by_state: dict[str, int] = field(default_factory=dict)
    oldest_queued: datetime | None = None  # created_at of the oldest job not finished
    # The destinations in back-off and their deferrals in a row, BACKOFF_LABELS at most.
    backoffs: dict[str, int] = field(default_factory=dict)
    # Posts accepted whose jobs are still being written (fanout.expand), and when the one
    # waiting longest last wrote a chunk: long ago, the expansion has stopped.
    expansions: int = 0
    expansion_advanced: datetime | None = None

    def oldest_age(self, now: datetime) -> float | None:
        """Seconds; None for an empty queue."""
        return _age(self.oldest_queued, now)

    def expansion_stalled(self, now: datetime) -> float | None:
        """Seconds since the expansion waiting longest wrote a chunk; None for none."""
        return _age(self.expansion_advanced, now)


def _age(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else max(0.0, (now - moment).total_seconds())


_WAITING = (DeliveryState.QUEUED, DeliveryState.SENDING)
# A label per destination in back-off, the worst first: each label value is a series
# Prometheus keeps, and a list server sends to thousands of domains.
BACKOFF_LABELS = 20


def read_queue(session: Session) -> Queue:
    """Two aggregate reads (the ready index serves the second), the destinations in
    back-off (a few rows, usually none) and the expansions under way (as few)."""
    shown = select(delivery_queue.shown_state().label("state")).subquery()
    by_state = session.execute(select(shown.c.state, func.count())
                               .group_by(shown.c.state)).all()
    oldest = session.scalar(select(func.min(Delivery.created_at))
                            .where(Delivery.state.in_(_WAITING)))
    backoffs = session.execute(
        select(Destination.name, Destination.deferrals)
        .where(Destination.backoff_until > utcnow())
        .order_by(Destination.deferrals.desc(), Destination.name).limit(BACKOFF_LABELS))
    expansions, advanced = session.execute(
        select(func.count(), func.min(Expansion.advanced_at))).one()
    return Queue(dict(by_state), _aware(oldest),
                 {name: deferrals for name, deferrals in backoffs},
                 expansions, _aware(advanced))


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written as UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class _QueueCollector(Collector):
    def __init__(self, queue: Queue, now: datetime) -> None:
        self.queue, self.now = queue, now

    def collect(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("listserv_delivery_jobs", "Delivery jobs in the database "
                                 "by state.", labels=["state"])
        for state, count in sorted(self.queue.jobs_by_state.items()):
            jobs.add_metric([state], count)
        age = self.queue.oldest_age(self.now)
        oldest = GaugeMetricFamily("listserv_oldest_queued_job_seconds",
                                   "Age of the oldest delivery job not yet done "
                                   "(0 when none waits).", value=age or 0.0)
        backoffs = GaugeMetricFamily(
            "listserv_destination_backoff_deferrals", "Deferrals in a row (421, 4.7.x) "
            "of each destination (a recipient domain, or the MX hosts its domains share) "
            f"in back-off now, the {BACKOFF_LABELS} worst.",
            labels=["destination"])
        for name, deferrals in self.queue.backoffs.items():
            backoffs.add_metric([name], deferrals)
        expansions = GaugeMetricFamily(
            "listserv_expansions", "Posts accepted whose delivery jobs are still being "
            "written, a chunk of members at a time, after the 250.",
            value=self.queue.expansions)
        stalled = GaugeMetricFamily(
            "listserv_expansion_stalled_seconds", "Seconds since the expansion waiting "
            "longest wrote its last chunk (0 when none waits): growing, expansion has "
            "stopped (no deliver role running, or its database away).",
            value=self.queue.expansion_stalled(self.now) or 0.0)
        return iter([jobs, oldest, backoffs, expansions, stalled])


def exposition(queue: Queue | None, now: datetime) -> bytes:
    """The whole page: this process's counters, then the queue read for this scrape
    (left out when the database cannot be reached: the counters still tell)."""
    page = generate_latest(REGISTRY)
    if queue is None:
        return page
    scrape = CollectorRegistry()
    scrape.register(_QueueCollector(queue, now))
    return page + generate_latest(scrape)

