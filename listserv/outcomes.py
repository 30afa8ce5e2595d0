"""What became of a claimed delivery job: its recipients marked sent as the smarthost
takes their copies, and the outcome of each attempt: done, tried again later (only the
recipients that still need it, after a back-off), or failed for good. claims.py takes
the jobs; this writes them back.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, insert, update
from sqlmodel import Session, col

from listserv.claims import Job
from listserv.config import DeliveryConfig
from listserv.enums import DeliveryState
from listserv.models import utcnow
from listserv.queue_tables import Delivery, RecipientFailure
from listserv.replies import RelayError, Reply

_t = Delivery.metadata.tables["delivery"]
_d = _t.c

# Postfix's maximal_backoff_time is 4000 s; waiting longer between tries only delays
# mail once the smarthost is back.
MAX_BACKOFF = timedelta(hours=1)


def mark_sent(session: Session, worker: str, remaining: dict[int, list[str]]) -> None:
    """Keep only the recipients still to send in each job, so a worker killed in the
    middle of a job does not send anyone their copy twice. Rows are updated in id order,
    as record_all does: two transactions that lock delivery rows in one order cannot
    deadlock (PostgreSQL detected exactly that when the orders differed). One statement
    built once, run for every job (this runs every MARK_INTERVAL while copies go out:
    an ORM update built per job cost more than the rest of the commit)."""
    session.connection().execute(_MARK, [
        {"job_id": job_id, "holder": worker, "rcpts": "\n".join(rcpts)}
        for job_id, rcpts in sorted(remaining.items())])
    session.commit()


_MARK = update(_t).where(
    _d.id == bindparam("job_id"), _d.worker == bindparam("holder"),
    _d.state == DeliveryState.SENDING).values(recipients=bindparam("rcpts"))


def backoff(config: DeliveryConfig, attempts: int) -> timedelta:
    seconds = config.retry_initial_seconds * 2 ** max(attempts - 1, 0)
    return min(timedelta(seconds=seconds), MAX_BACKOFF)


Attempt = tuple[Job, dict[str, Reply], RelayError | None]  # a job, its refusals, its error
# The recipients of a copy refused for good: (outgoing id, their replies).
Refusal = tuple[int, dict[str, Reply]]


def record_all(session: Session, config: DeliveryConfig, attempts: list[Attempt]
               ) -> tuple[list[DeliveryState], list[Refusal]]:
    """Write the outcomes of several attempts (senders that finish jobs at about the
    same time share a commit), in job id order (see mark_sent); the state of each, and
    the recipients refused for good, for what that does to a member (bouncing). The
    caller commits."""
    order = sorted(range(len(attempts)), key=lambda i: attempts[i][0].id)
    states: dict[int, DeliveryState] = {}
    refusals: list[Refusal] = []
    done: list[dict] = []  # nearly every outcome: one statement for a run of them
    for i in order:
        job, refused, error = attempts[i]
        if refused or error is not None:
            _mark_done(session, done)
            states[i], permanent = record(session, config, *attempts[i])
            if permanent:
                refusals.append((job.outgoing_id, permanent))
        else:
            done.append({"job_id": job.id, "done_at": utcnow()})
            states[i] = DeliveryState.DONE
    _mark_done(session, done)
    return [states[i] for i in range(len(attempts))], refusals


def _mark_done(session: Session, done: list[dict]) -> None:
    """What record writes for a job that went to everyone, for several in one statement
    (record's update is built and compiled anew for each job)."""
    if done:
        session.connection().execute(_DONE, done)
        done.clear()


_DONE = update(_t).where(_d.id == bindparam("job_id")).values(
    state=DeliveryState.DONE, done_at=bindparam("done_at"), worker=None, lease_until=None)


def record(session: Session, config: DeliveryConfig, job: Job, refused: dict[str, Reply],
           error: RelayError | None) -> tuple[DeliveryState, dict[str, Reply]]:
    """Write the outcome of one attempt: done, retry later (only the recipients that
    still need it), or failed for good; the recipients refused for good (kept as
    recipient failures here, counted as bounces by the caller). The caller commits."""
    now = utcnow()
    temporary, permanent = _outcome(job, refused, error)
    values: dict = {"worker": None, "lease_until": None}
    expired = now - job.created_at >= timedelta(hours=config.retry_max_hours)
    if temporary and expired:
        permanent.update({r: Reply(rep.code, f"gave up after {config.retry_max_hours} h: "
                                             f"{rep.text}") for r, rep in temporary.items()})
        values.update(state=DeliveryState.FAILED, done_at=now,
                      last_error=str(next(iter(temporary.values()))))
    elif temporary:
        values.update(state=DeliveryState.QUEUED, recipients="\n".join(temporary),
                      next_attempt_at=now + backoff(config, job.attempts),
                      last_error=str(next(iter(temporary.values()))))
    elif error is not None:
        values.update(state=DeliveryState.FAILED, done_at=now, last_error=str(error))
    else:
        values.update(state=DeliveryState.DONE, done_at=now)
    if permanent:
        session.execute(insert(RecipientFailure), [
            {"delivery_id": job.id, "address": r, "code": rep.code, "text": rep.text,
             "created_at": now} for r, rep in permanent.items()])
    session.execute(update(Delivery).where(col(Delivery.id) == job.id).values(**values))
    return values["state"], permanent


def _outcome(job: Job, refused: dict[str, Reply], error: RelayError | None
             ) -> tuple[dict[str, Reply], dict[str, Reply]]:
    """The recipients to try again and those refused for good, each with its reply. A
    failed transaction reached nobody, so its error stands for every recipient."""
    if error is not None:
        reply = Reply(error.code or (451 if error.temporary else 554), str(error))
        everyone = dict.fromkeys(job.recipients, reply)
        return (everyone, {}) if error.temporary else ({}, everyone)
    return ({r: rep for r, rep in refused.items() if rep.temporary},
            {r: rep for r, rep in refused.items() if not rep.temporary})


def undelivered(job: Job, refused: dict[str, Reply], error: RelayError | None,
                state: DeliveryState) -> tuple[int, int]:
    """How many recipients of an attempt wait for another (deferred), and how many
    never get their copy (failed): all that were left, once the job gave up."""
    temporary, permanent = _outcome(job, refused, error)
    if state is DeliveryState.FAILED:
        return 0, len(temporary) + len(permanent)
    return len(temporary), len(permanent)
