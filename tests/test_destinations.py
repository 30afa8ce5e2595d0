"""Shaping by destination: a recipient domain whose servers defer copies (421, 4.7.x,
passed on by the smarthost at RCPT) is backed off for every worker while the other
domains' copies go on; at most max_connections_per_domain transactions to a domain at
once; `queue ls --by-domain` shows each destination."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import timedelta

import pytest
from sqlalchemy import select, text, update
from sqlmodel import Session

from listserv import claims, db, destinations, outbox
from listserv.enums import DeliveryState, Lane
from listserv.models import utcnow
from listserv.queue_tables import Delivery, Destination, DestinationDomain
from listserv.replies import Reply
from listserv.shaping import Shaper
from tests.helpers import (
    FAST,
    LIST,
    SENDER,
    SLOW,
    assert_one_line_error,
    destination,
    jobs,
    message,
    received,
    run_listserv,
    settled,
    wait_until,
)
from tests.helpers import web as web_client

DEFERRED = [f"s{i}@{SLOW}" for i in range(4)]
DEFERRALS = ["421 4.7.0 Too many connections from your IP", "450 4.7.1 Rate limited, try later"]


def test_jobs_hold_the_recipients_of_one_domain_each():
    rcpts = ["b@x.org", "a@y.com", "c@X.org", "d@sub.x.org", "e@x.org", "f@y.com"]
    assert outbox._jobs(rcpts, 2) == [
        ("y.com", "a@y.com\nf@y.com"), ("x.org", "b@x.org\nc@X.org"), ("x.org", "e@x.org"),
        ("sub.x.org", "d@sub.x.org")]


@pytest.mark.parametrize("reply", [
    Reply(421, "4.7.0 Too many connections"), Reply(450, "4.7.1 Rate limited"),
    Reply(451, "4.7.28 Our system has detected an unusual rate")])
def test_421_and_4_7_x_say_the_destination_wants_fewer_copies(reply):
    assert destinations.defers(reply)


@pytest.mark.parametrize("reply", [
    Reply(450, "4.2.1 Mailbox busy"), Reply(550, "5.7.1 Rejected by policy"),
    Reply(451, "connection lost before the smarthost answered")])
def test_other_refusals_do_not_back_the_destination_off(reply):
    assert not destinations.defers(reply)


@pytest.mark.parametrize("pipelining", [False, True], ids=["plain", "pipelining"])
@pytest.mark.parametrize("deferral", DEFERRALS, ids=["421", "450-4.7.1"])
def test_a_deferring_domain_waits_while_the_others_get_their_copies(
        make_server, sink, make_list, engine, cli, deferral, pipelining, caplog):
    caplog.set_level(logging.INFO, logger="listserv")
    sink.pipelining = pipelining
    sink.deferring[SLOW] = deferral
    make_list(LIST, members=FAST + DEFERRED, owner=None)
    srv = make_server()
    srv.send(SENDER, [LIST], message(sender=SENDER))

    assert wait_until(lambda: received(sink, "example.com") == sorted(FAST), "example.com")
    backed_off = wait_until(lambda: destination(engine), "the slow domain's back-off")
    assert backed_off.deferrals >= 1 and deferral in backed_off.last_reply
    assert received(sink, SLOW) == []

    shown = cli("queue", "ls", "--by-domain")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0] == "domain  waiting  deferred  back-off  deferrals  last reply"
    [slow] = [line for line in lines if line.startswith(SLOW)]
    assert slow.startswith(f"{SLOW}  4  ") and slow.endswith(deferral)
    assert not [line for line in lines if line.startswith("example.com")]
    [row] = json.loads(cli("queue", "ls", "--by-domain", "--json").output)["domains"]
    assert (row["destination"], row["domains"], row["mx"], row["waiting"], row["last_reply"]) == (
        SLOW, [SLOW], [], 4, deferral)

    sink.deferring.clear()  # the destination takes copies again
    done = settled(engine)
    assert received(sink, SLOW) == sorted(DEFERRED)
    assert set(sink.copies().values()) == {1}  # nobody got a copy twice
    assert {j.state for j in done} == {DeliveryState.DONE}
    assert destination(engine) is None  # the first copy it took ended the back-off
    [ended] = [m for m in caplog.messages if m.startswith(f"destination {SLOW} takes")]
    assert ended.startswith(f"destination {SLOW} takes copies again, after ")


def test_a_destination_in_back_off_gets_no_new_job_until_its_end(
        make_server, sink, make_list, engine, caplog):
    caplog.set_level(logging.INFO, logger="listserv")
    sink.deferring[SLOW] = DEFERRALS[1]
    make_list(LIST, members=FAST + DEFERRED[:1], owner=None)
    srv = make_server(delivery={"retry_initial_seconds": 600})
    srv.send(SENDER, [LIST], message("First", sender=SENDER))
    wait_until(lambda: destination(engine), "the slow domain's back-off")
    tried = sink.deferred[SLOW]

    srv.send(SENDER, [LIST], message("Second", sender=SENDER))
    wait_until(lambda: len(received(sink, "example.com")) == 2 * len(FAST),
               "the second post's copies")
    second = [j for j in jobs(engine) if j.domain == SLOW][-1]
    assert (second.state, second.attempts) == (DeliveryState.QUEUED, 0)  # not even tried
    assert sink.deferred[SLOW] == tried
    metrics = web_client(srv).get("/metrics").text
    assert f'listserv_destination_backoff_deferrals{{destination="{SLOW}"}} 1.0' in metrics
    # /healthz says why its oldest job waits: a destination backed off, not a stuck worker
    assert web_client(srv).get("/healthz").json()["backed_off"] == {SLOW: 1}
    # The log names the attempt as `queue ls` does: deferred, not refused and queued.
    [tried] = [j for j in jobs(engine) if j.domain == SLOW and j.attempts]
    assert (f"delivery job={tried.id} rcpts=1 delivered=0 deferred=1 failed=0 state=deferred"
            in caplog.messages)


def test_a_post_expanded_while_a_destination_is_backed_off_reaches_the_others(
        make_server, sink, make_list, engine):
    sink.deferring[SLOW] = DEFERRALS[0]
    make_list(LIST, members=DEFERRED[:1] + FAST, owner=None)
    # Chunks of two members: the second post's later chunks have nobody of the slow
    # domain, and their jobs were stored as one empty row (a NOT NULL violation, tried
    # again and again) until its back-off ended.
    srv = make_server(delivery={"retry_initial_seconds": 600, "expansion_chunk": 2})
    srv.send(SENDER, [LIST], message("First", sender=SENDER))
    wait_until(lambda: destination(engine), "the slow domain's back-off")
    srv.send(SENDER, [LIST], message("Second", sender=SENDER))
    assert wait_until(lambda: len(received(sink, "example.com")) == 2 * len(FAST),
                      "the second post's copies")
    assert received(sink, SLOW) == []


@pytest.mark.parametrize("limit", [1, 2])
def test_at_most_max_connections_per_domain_transactions_at_once(
        make_server, sink, make_list, engine, limit):
    sink.data_delay = 0.3  # transactions overlap, as they would with a slow destination
    members = FAST + [f"o{i}@example.org" for i in range(8)] + DEFERRED
    make_list(LIST, members=members, owner=None)
    srv = make_server(delivery={"concurrency": 4, "max_connections_per_domain": limit})
    srv.send(SENDER, [LIST], message(sender=SENDER))  # jobs of 2: 2, 4 and 2 a domain
    done = settled(engine)
    assert sorted(sink.recipients()) == sorted(members)
    assert {j.state for j in done} == {DeliveryState.DONE}
    assert max(sink.peaks.values()) == limit
    with db.session(engine) as s:
        assert set(s.scalars(select(Delivery.domain))) == {"example.com", "example.org", SLOW}


def test_queue_ls_by_domain_takes_no_list(config_file):
    assert_one_line_error(run_listserv("--config", config_file, "queue", "ls", LIST,
                                       "--by-domain"), "--by-domain", "give no LIST")


def claim_counting(engine, busy: list[str]) -> tuple[list[int], int]:
    """The jobs a claim of two takes, and how much it read: on SQLite, its virtual
    machine's steps (by the hundred); on PostgreSQL, the delivery rows its statements
    fetched (counted in an outer transaction, which its commit only ends a savepoint of),
    with the statistics autovacuum would have by then."""
    if db.is_sqlite(engine):
        steps = [0]
        with db.session(engine) as s:
            sqlite = s.connection().connection.dbapi_connection
            sqlite.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 100)
            try:
                taken = claims.claim(s, "test:1", 2, timedelta(seconds=30), busy)
            finally:
                sqlite.set_progress_handler(None, 0)
        return sorted(j.id for j in taken), steps[0]
    with engine.begin() as connection:
        connection.execute(text("ANALYZE delivery"))
    fetched = text("SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables"
                   " WHERE relname = 'delivery' AND schemaname = current_schema()")
    with engine.connect() as connection, connection.begin():
        # (a delta: the counts include the connection's earlier ones not yet reported)
        before = connection.execute(fetched).scalar()
        with Session(bind=connection, join_transaction_mode="create_savepoint") as s:
            taken = claims.claim(s, "test:1", 2, timedelta(seconds=30), busy)
        read = connection.execute(fetched).scalar() - before
    return sorted(j.id for j in taken), read


@pytest.mark.parametrize("held", ["back-off", "busy"])
def test_thousands_of_jobs_to_a_held_destination_cost_a_claim_no_more_than_a_few(
        engine, held):
    """A destination in back-off (or one this worker is busy with) with a post's worth
    of copies ready, first in order, new and tried: a claim takes the jobs to other
    domains behind them without reading through them."""
    with db.session(engine) as s:
        outbox.queue(s, b"x", "dev-bounces@lists.example.org",
                     [f"m{i}@{SLOW}" for i in range(3000)], 1, lane=Lane.WAITING)
        outbox.queue(s, b"x", "dev-bounces@lists.example.org", FAST, 1, lane=Lane.WAITING)
        held_ids = s.scalars(select(Delivery.id).where(Delivery.domain == SLOW)
                             .order_by(Delivery.id)).all()
        s.execute(update(Delivery).where(Delivery.id.in_(held_ids[::2])).values(
            attempts=1, next_attempt_at=utcnow() - timedelta(minutes=1)))  # deferred, due
        if held == "back-off":
            s.add(Destination(name=SLOW, backoff_until=utcnow() + timedelta(hours=1)))
            s.add(DestinationDomain(domain=SLOW, destination=SLOW))
        s.commit()
        others = s.scalars(select(Delivery.id).where(Delivery.domain != SLOW)
                           .order_by(Delivery.id)).all()
    busy = [SLOW] if held == "busy" else []

    taken, behind_thousands = claim_counting(engine, busy)
    assert taken == others[:2]
    with db.session(engine) as s:  # all but 30 of them sent
        s.execute(update(Delivery).where(Delivery.id.in_(held_ids[30:])).values(
            state=DeliveryState.DONE, done_at=utcnow()))
        s.commit()
    taken, behind_a_few = claim_counting(engine, busy)
    assert taken == others[2:4]
    assert behind_thousands < 2 * behind_a_few, (behind_thousands, behind_a_few)


def job(job_id: int, domain: str, rcpts: int = 1) -> claims.Job:
    return claims.Job(job_id, 1, "dev-bounces@lists.example.org",
                      [f"m{i}@{domain}" for i in range(rcpts)], 1, None, domain)


def test_the_shaper_parks_a_domain_past_its_rate_and_lets_the_others_go():
    async def scenario() -> tuple[list[bool], list[str]]:
        requeued: list[claims.Job] = []
        shaper = Shaper(connections=5, per_minute=60, requeue=requeued.append)
        admitted = [shaper.admit(job(1, "a.org", 2)), shaper.admit(job(2, "a.org")),
                    shaper.admit(job(3, "b.org"))]
        busy = shaper.busy()
        assert [j.id for j in shaper.drain()] == [2]
        return admitted, busy
    assert asyncio.run(scenario()) == ([True, False, True], ["a.org"])


def test_the_shaper_releases_a_slot_when_one_ends_and_gives_back_a_deferring_domains_jobs():
    async def scenario() -> tuple[list[int], list[int]]:
        requeued: list[claims.Job] = []
        shaper = Shaper(connections=1, per_minute=0, requeue=requeued.append)
        first = job(1, "a.org")
        assert shaper.admit(first) and not shaper.admit(job(2, "a.org"))
        shaper.finish(first)  # room again: the parked job goes back to the queue
        assert shaper.admit(requeued[-1])
        assert not shaper.admit(job(3, "a.org"))  # parked behind job 2
        # a.org deferred: its parked jobs are taken out, for the worker to give back
        # (after the back-off one job tries it, whichever worker claims it)...
        given_back = shaper.hold_off("a.org", 600)
        # ...and one that comes meanwhile waits out the back-off here
        assert not shaper.admit(job(4, "a.org"))
        assert shaper.busy() == ["a.org"]
        assert [j.id for j in shaper.drain()] == [4]
        return [j.id for j in requeued], [j.id for j in given_back]
    assert asyncio.run(scenario()) == ([2], [3])
