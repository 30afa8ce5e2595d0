"""What the delivery worker writes back as it sends: the recipients of a personal copy
marked sent one by one, and each job's outcome. Senders share commits for both (each a
drain.Drain), so a mark or an outcome costs a share of a commit, not a commit of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from listserv import bounces, destinations, metrics, outcomes, supervise
from listserv.claims import Job
from listserv.config import Config
from listserv.drain import Drain
from listserv.enums import DeliveryState
from listserv.mx_groups import Group, MxGroups
from listserv.outcomes import Attempt
from listserv.replies import RelayError, Reply

log = logging.getLogger("listserv.deliver")

# How long sent-marks gather before their shared commit; a kill -9 may resend the
# copies of this window (and no more), as it may between any 250 and its commit.
MARK_INTERVAL = 0.02


def _mark_interval(waiting: int) -> float:
    # Gather the marks of a few milliseconds into one commit: a commit per copy would
    # cost more than sending it.
    return MARK_INTERVAL


class Progress:
    """Recipients of personal copies marked sent as the smarthost takes them, before
    the next copy goes out."""

    def __init__(self, calls: supervise.Calls, worker: str) -> None:
        self.calls = calls
        self.worker = worker
        self.sent: dict[int, tuple[Job, set[str]]] = {}
        self.marks: Drain[int, None] = Drain(self._write, delay=_mark_interval)

    def mark(self, job: Job, rcpt: str) -> None:
        """Note `rcpt` as sent; a shared commit writes it within MARK_INTERVAL while the
        next copies go out, so a kill -9 can resend only the copies of that window.
        The last recipient is left to the outcome, which follows at once: the job's
        state changes in one place only."""
        sent = self.sent.setdefault(job.id, (job, set()))[1]
        sent.add(rcpt)
        if len(sent) < len(job.recipients):
            self.marks.put(job.id)

    async def _write(self, job_ids: list[int]) -> list[None]:
        remaining = {job.id: [r for r in job.recipients if r not in sent]
                     for job, sent in (self.sent[i] for i in set(job_ids) if i in self.sent)
                     if len(sent) < len(job.recipients)}
        try:
            if remaining:
                # Kept through an outage, and written when the database is back.
                await self.calls.until_done(outcomes.mark_sent, self.worker, remaining)
        except SQLAlchemyError:
            # Stopping with the database away: unrecorded marks only risk a resend of
            # those copies, as a kill would.
            log.exception("could not record recipients as sent")
        return [None] * len(job_ids)

    async def flush(self) -> None:
        """Wait for marks being written (on stop, before jobs are given back)."""
        await self.marks.idle()

    def forget(self, job: Job) -> None:
        """The job's outcome is being recorded: its marks are of no more use."""
        self.sent.pop(job.id, None)


def _write_outcomes(session: Session, config: Config, attempts: list[Attempt],
                    groups: dict[str, Group]
                    ) -> tuple[list[DeliveryState], dict[str, float], dict[str, int]]:
    """The outcomes in one commit, with what a refusal does to a member (`[bounces]`)
    and what a deferral or a copy taken does to its destination (destinations.note)."""
    states, refusals = outcomes.record_all(session, config.delivery, attempts)
    for outgoing_id, permanent in refusals:
        bounces.refused(session, config, outgoing_id, permanent)
    waits, ended = destinations.note(session, config.delivery, attempts, groups)
    session.commit()
    return states, waits, ended


class Recorder:
    """The outcome of each attempt, written in the next shared commit (senders that
    finish together share one)."""

    def __init__(self, calls: supervise.Calls, config: Config,
                 hold_off: Callable[[str, float], None], groups: MxGroups) -> None:
        self.calls = calls
        self.config = config
        self.hold_off = hold_off  # a destination backed off, for the seconds given
        self.groups = groups  # the recipient domains' destinations, as known now
        self.outcomes: Drain[Attempt, None] = Drain(self._write)

    async def record(self, job: Job, refused: dict[str, Reply], error: RelayError | None
                     ) -> None:
        """Wait for the outcome to be written before the next job: then a kill resends
        at most the one job each sender has in flight, the bound the crash tests hold."""
        await self.outcomes.put((job, refused, error))

    async def flush(self) -> None:
        await self.outcomes.idle()

    def _groups(self, batch: list[Attempt]) -> dict[str, Group]:
        """The destination of each job's domain, read here in the event loop that keeps
        them, not in the database's thread; for a domain that deferred, with every
        domain known to share it (they are backed off with it)."""
        found: dict[str, Group] = {}
        for job, refused, _ in batch:
            if not job.domain:
                continue
            if any(destinations.defers(reply) for reply in refused.values()):
                found[job.domain] = self.groups.group(job.domain)
            else:
                found.setdefault(job.domain, Group(self.groups.of(job.domain), (job.domain,)))
        return found

    async def _write(self, batch: list[Attempt]) -> list[None]:
        """The batch written, tried again while the database is away (its senders wait:
        no more copies go out unrecorded than the jobs in flight); given up only when
        stopping, when the jobs stay claimed and their lease brings them back."""
        groups = self._groups(batch)
        try:
            states, waits, ended = await self.calls.until_done(_write_outcomes, self.config,
                                                               batch, groups)
        except SQLAlchemyError:
            log.exception("%d delivery outcomes could not be recorded", len(batch))
            return [None] * len(batch)
        for name, seconds in waits.items():
            log.info("destination %s deferred copies: backed off for %d s", name, seconds)
            self.hold_off(name, seconds)
        for name, deferrals in ended.items():
            # The back-off's other end, as the smarthost's outage has one.
            log.info("destination %s takes copies again, after %d deferrals in a row",
                     name, deferrals)
        for (job, refused, error), state in zip(batch, states, strict=True):
            _log(job, refused, error, state)
        return [None] * len(batch)


def _log(job: Job, refused: dict[str, Reply], error: RelayError | None,
         state: DeliveryState) -> None:
    delivered = len(job.recipients) - len(refused) if error is None else 0
    deferred, failed = outcomes.undelivered(job, refused, error, state)
    metrics.copies(delivered, deferred, failed)
    # Named as `queue ls` names them: "refused=100 state=queued" read as 100 members
    # refused for good, of a job that was only waiting for its next attempt.
    shown = "deferred" if state is DeliveryState.QUEUED else state.value
    log.info("delivery job=%d rcpts=%d delivered=%d deferred=%d failed=%d state=%s%s",
             job.id, len(job.recipients), delivered, deferred, failed, shown,
             f" error={error}" if error else "")
