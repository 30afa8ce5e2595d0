"""Delivery to the smarthost over real sockets: retries, refusals, connection reuse, the
real `listserv serve` killed and restarted, and two workers sharing one database."""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from listserv import db, outbox
from listserv.config import DeliveryConfig
from listserv.enums import DeliveryState
from listserv.models import utcnow
from listserv.outcomes import backoff
from listserv.queue_tables import Delivery, RecipientFailure
from tests.helpers import LIST, SENDER, free_port, jobs, message_id, post, settled, wait_until
from tests.servers import Smarthost

MEMBERS = [SENDER, "b@example.com", "c@example.com", "d@example.com"]


def many_members(count: int) -> list[str]:
    """SENDER and count - 1 others, sorted."""
    return sorted([SENDER] + [f"m{i:02d}@example.com" for i in range(count - 1)])


# --- the smarthost ----------------------------------------------------------------------

@pytest.fixture(params=[False, True], ids=["no-pipelining", "pipelining"])
def pipelining(request: pytest.FixtureRequest, sink: Smarthost) -> bool:
    sink.pipelining = request.param
    return request.param


# --- waiting on the database ------------------------------------------------------------


def failures(engine: Engine) -> list[tuple[str, int, str]]:
    with db.session(engine) as s:
        rows = s.scalars(select(RecipientFailure).order_by(RecipientFailure.address))
        return [(f.address, f.code, f.text) for f in rows]


def queue_mail(engine: Engine, rcpts: list[str]) -> str:
    """Queue a post to `rcpts` in jobs of two, as fan-out does; the post."""
    data = post()
    with db.session(engine) as s:
        outbox.queue(s, data.encode(), "dev-bounces@lists.example.org", rcpts, 2)
        s.commit()
    return data


def backed_off(config: DeliveryConfig, job: Delivery, failed: int) -> bool:
    """Each try waits for the backoff of the one before, so after `failed` tries the
    next one is due at least the sum of their backoffs past the job's creation."""
    owed = sum((backoff(config, n) for n in range(1, failed + 1)), timedelta())
    return job.next_attempt_at >= job.created_at + owed


# --- retries and refusals ---------------------------------------------------------------

def test_backoff_doubles_from_retry_initial_seconds_up_to_an_hour():
    config = DeliveryConfig(retry_initial_seconds=60)
    assert [backoff(config, n).total_seconds() for n in (1, 2, 3, 4)] == [60, 120, 240, 480]
    assert backoff(config, 30) == timedelta(hours=1)


def test_temporary_refusal_retries_only_that_recipient(running, sink, engine, pipelining):
    queue_mail(engine, MEMBERS)  # two jobs of two recipients
    sink.rcpt_replies["b@example.com"] = ["450 4.2.1 try later"]
    done = settled(engine)
    assert sorted(sink.recipients()) == MEMBERS  # everyone once, b too
    assert [m.rcpt_tos for m in sink.received if "b@example.com" in m.rcpt_tos] == [
        ["b@example.com"]]  # the retry carried b alone
    assert [j.state for j in done] == [DeliveryState.DONE] * 2
    assert [j.attempts for j in done] == [2, 1]
    assert done[0].recipients == "b@example.com"
    assert backed_off(running.config.delivery, done[0], failed=1)
    assert done[0].done_at >= done[0].next_attempt_at
    assert failures(engine) == []


def test_permanent_refusal_is_recorded_and_the_others_get_it(running, sink, engine,
                                                             pipelining):
    for rcpt in MEMBERS[1:]:  # c and d are a whole batch
        sink.rcpt_replies[rcpt] = ["550 5.1.1 no such user"]
    queue_mail(engine, MEMBERS)
    done = settled(engine)
    assert sink.recipients() == ["a@example.com"]
    assert failures(engine) == [(r, 550, "5.1.1 no such user") for r in MEMBERS[1:]]
    assert [(j.state, j.attempts) for j in done] == [(DeliveryState.DONE, 1)] * 2


def test_temporary_failure_of_data_retries_the_whole_batch(running, sink, engine, pipelining):
    sink.data_replies = ["451 4.3.0 busy"]
    queue_mail(engine, MEMBERS[:2])
    [job] = settled(engine)
    assert [m.rcpt_tos for m in sink.received] == [MEMBERS[:2]]
    assert (job.state, job.attempts) == (DeliveryState.DONE, 2)
    assert backed_off(running.config.delivery, job, failed=1)


def test_smarthost_down_is_retried_with_backoff_until_it_is_up(make_server, make_sink,
                                                               engine):
    port = free_port()  # nothing listens there yet: connection refused
    srv = make_server(delivery={"smarthost_port": port})
    queue_mail(engine, MEMBERS[:1])

    def refused_twice() -> Delivery | None:
        [job] = jobs(engine)
        return job if job.state == DeliveryState.QUEUED and job.attempts >= 2 else None
    job = wait_until(refused_twice, "two refused connections")
    assert "cannot connect" in job.last_error
    assert backed_off(srv.config.delivery, job, failed=job.attempts)

    smarthost = make_sink(port=port)
    [job] = settled(engine)
    assert smarthost.recipients() == MEMBERS[:1]
    assert job.state == DeliveryState.DONE and job.attempts >= 3


def test_temporary_failures_past_retry_max_hours_fail_the_job(running, sink, engine):
    sink.rcpt_replies["b@example.com"] = ["450 4.2.0 mailbox busy"] * 1000
    queue_mail(engine, MEMBERS[:2])
    wait_until(lambda: jobs(engine)[0].attempts >= 1 and jobs(engine)[0].state
               == DeliveryState.QUEUED, "a first temporary failure")
    with db.session(engine) as s:  # the job has now been queued for longer than allowed
        s.execute(update(Delivery).values(created_at=utcnow() - timedelta(hours=2)))
        s.commit()
    [job] = settled(engine)
    assert job.state == DeliveryState.FAILED
    assert "450 4.2.0 mailbox busy" in job.last_error
    assert failures(engine) == [("b@example.com", 450, "gave up after 1 h: 4.2.0 mailbox busy")]
    assert sink.recipients() == ["a@example.com"]


# --- connections ------------------------------------------------------------------------

def test_many_jobs_share_a_few_connections(running, sink, engine, pipelining):
    members = many_members(20)
    queue_mail(engine, members)
    done = settled(engine)
    assert sorted(sink.recipients()) == members
    assert len(done) == 10
    assert 1 <= sink.connections <= running.config.delivery.concurrency


def test_connection_the_smarthost_closed_while_idle_is_replaced_without_a_retry(
        make_server, make_sink, engine):
    smarthost = make_sink(timeout=0.5)  # hangs up on connections idle for half a second
    make_server(delivery={"smarthost_port": smarthost.port, "concurrency": 1})
    first = queue_mail(engine, MEMBERS[:1])
    settled(engine)
    # The worker would keep the connection for seconds; the smarthost drops it first
    # (the other hangups are the probes at start: the controller's and listserv's).
    wait_until(lambda: smarthost.hangups == 3, "the smarthost to hang up")
    second = queue_mail(engine, MEMBERS[:1])
    done = settled(engine)
    assert [message_id(m.data) for m in smarthost.received] == [
        message_id(first), message_id(second)]
    assert [j.attempts for j in done] == [1, 1]
    assert smarthost.connections == 2


# --- the real `listserv serve` ----------------------------------------------------------


def recorded(engine: Engine, addresses: list[str]) -> bool:
    """Whether the store says these copies went out: their job is done, or they are no
    longer among its recipients still to send (a sent-mark's shared commit)."""
    still = {r for j in jobs(engine) if j.state is not DeliveryState.DONE
             for r in j.recipients.split("\n")}
    return not still & set(addresses)


@pytest.mark.slow
def test_kill_9_mid_fan_out_then_restart_delivers_every_member_exactly_once(
        make_serve, make_list, sink, engine):
    """A copy the smarthost took is recorded within recorder.MARK_INTERVAL; a kill inside
    that window may send it again (README, and tests/test_crash.py allows for it). Here
    the kill comes once the taken copies are recorded: then nothing goes twice."""
    members = many_members(20)
    make_list(members=members, owner=None)
    sink.hold_data_after = 3  # the fourth transaction is stuck inside DATA, never answered
    srv = make_serve(sink.port).start()  # one connection: transactions go one by one
    srv.send([LIST], post())
    wait_until(sink.parked.is_set, "the fourth transaction to reach DATA")
    acknowledged = sink.recipients()
    wait_until(lambda: recorded(engine, acknowledged), "the taken copies to be recorded")
    assert srv.signal(signal.SIGKILL) == -signal.SIGKILL
    assert len(sink.received) == 3

    sink.gate.set()
    srv.start()
    done = settled(engine)
    assert [j.state for j in done] == [DeliveryState.DONE] * 10
    assert sorted(sink.recipients()) == members  # nothing lost, nothing twice
    assert sink.recipients()[:len(acknowledged)] == acknowledged
    assert "requeued" in srv.log()


@pytest.mark.slow
def test_sigterm_exits_cleanly_and_a_restart_finishes_the_fan_out(make_serve, make_list,
                                                                  sink, engine):
    members = many_members(40)
    make_list(members=members, owner=None)
    sink.hold_data_after = 1
    sink.data_delay = 0.05
    srv = make_serve(sink.port).start()
    srv.send([LIST], post())
    wait_until(sink.parked.is_set, "the second batch to reach DATA")
    srv.proc.send_signal(signal.SIGTERM)
    sink.gate.set()  # the transaction under way may finish; nothing new starts
    assert srv.proc.wait(timeout=60) == 0
    stopped = jobs(engine)
    assert DeliveryState.SENDING not in {j.state for j in stopped}  # nothing left claimed
    assert DeliveryState.QUEUED in {j.state for j in stopped}  # stopped mid-fan-out
    assert len(set(sink.recipients())) == len(sink.recipients())

    srv.start()
    done = settled(engine)
    assert sorted(sink.recipients()) == members
    assert srv.log().count(" accepted from=") == 1
    assert sorted(srv.delivered_jobs()) == [j.id for j in done]  # a line per batch
    assert srv.signal(signal.SIGTERM) == 0


@pytest.mark.slow
def test_two_workers_share_one_database_and_send_each_job_once(make_serve, make_list, sink,
                                                               engine):
    members = many_members(40)
    make_list(members=members, owner=None)
    sink.data_delay = 0.02  # slow enough that both workers find work
    first = make_serve(sink.port, "first", concurrency=2).start()
    second = make_serve(sink.port, "second", concurrency=2).start()
    for receiver in (first, second, first, second):
        receiver.send([LIST], post())
    done = settled(engine)
    assert len(done) == 80
    copies = sink.copies()
    assert len(copies) == 4 * len(members)
    assert set(copies.values()) == {1}
    by_first, by_second = first.delivered_jobs(), second.delivered_jobs()
    assert by_first and by_second
    assert sorted(by_first + by_second) == [j.id for j in done]
