"""After a destination's back-off, one transaction tries it (a probe) before it gets its
other copies: a deferral of the probe backs it off again, for longer; a copy taken
gives it its full concurrency; the other domains are never held; a probe whose worker
is gone is taken over once its lease runs out."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from listserv import db, probes
from listserv.models import utcnow
from listserv.queue_tables import Destination
from tests.helpers import (
    FAST,
    LIST,
    SENDER,
    SLOW,
    destination,
    message,
    received,
    settled,
    wait_until,
)

MEMBERS = [f"s{i:02}@{SLOW}" for i in range(12)]
# A job a member: a transaction is one RCPT, which the smarthost counts as it defers it.
ONE_EACH = {"max_recipients_per_transaction": 1, "retry_initial_seconds": 1,
            "max_connections_per_domain": 4}


def deferrals(engine) -> int:
    dest = destination(engine)
    return dest.deferrals if dest is not None else 0


def test_after_a_back_off_one_transaction_tries_the_destination_until_one_goes_through(
        make_server, sink, make_list, engine):
    sink.deferring[SLOW] = "421 4.7.0 Too many connections from your IP"
    make_list(LIST, members=FAST + MEMBERS, owner=None)
    srv = make_server(delivery=ONE_EACH)
    srv.send(SENDER, [LIST], message(sender=SENDER))
    # the other domains are not held while the slow one backs off
    assert wait_until(lambda: received(sink, "example.com") == sorted(FAST), "example.com")

    # Each back-off is followed by one transaction, whose deferral starts the next,
    # longer (1 s, 2 s, 4 s): the first probe's deferral is the second in a row.
    wait_until(lambda: deferrals(engine) >= 2, "the first probe's deferral")
    tried = sink.deferred[SLOW]
    wait_until(lambda: deferrals(engine) >= 3, "the second probe's deferral")
    assert sink.deferred[SLOW] == tried + 1
    dest = destination(engine)
    assert dest is not None and dest.backoff_until - dest.updated_at == timedelta(seconds=4)
    # a post meanwhile reaches the other domains at once
    srv.send(SENDER, [LIST], message("Second", sender=SENDER))
    assert wait_until(lambda: received(sink, "example.com") == sorted(FAST * 2), "example.com")

    sink.deferring.clear()  # the destination takes copies again
    sink.data_delay = 0.2  # the copies after the probe overlap, up to the limit
    done = settled(engine)
    assert received(sink, SLOW) == sorted(MEMBERS * 2)
    assert set(sink.copies().values()) == {1}  # nobody got a copy twice
    assert destination(engine) is None  # the probe's copy ended the back-off...
    assert sink.peaks[SLOW] > 1  # ...and the destination got its concurrency back
    assert all(j.worker is None for j in done)


def test_one_probe_at_a_time_and_a_dead_workers_probe_is_taken_over_after_its_lease(
        make_server, sink, make_list, engine, cli):
    sink.deferring[SLOW] = "450 4.7.1 Rate limited, try later"
    make_list(LIST, members=[SENDER, *MEMBERS], owner=None)
    lease = {**ONE_EACH, "lease_seconds": 2}
    first = make_server(delivery=lease)
    first.send(SENDER, [LIST], message(sender=SENDER))
    wait_until(lambda: destination(engine), "the slow domain's back-off")
    first.stop()

    # The back-off over, a worker elsewhere claims the probe and dies holding it; the
    # claim of any other worker meanwhile takes no job of the destination.
    with db.session(engine) as s:
        s.execute(update(Destination).values(backoff_until=utcnow()))
        s.commit()
        [probe] = probes.claim(s, "elsewhere:1", 10, timedelta(seconds=2))
        assert probe.domain == SLOW and s.get(Destination, SLOW).probe == probe.id
        assert probes.claim(s, "elsewhere:2", 10, timedelta(seconds=2)) == []
    [shown] = [line for line in cli("queue", "ls", "--by-domain").output.splitlines()
               if line.startswith(SLOW)]
    assert shown.startswith(f"{SLOW}  {len(MEMBERS)}  ") and "  probing  " in shown

    sink.deferring.clear()
    make_server(delivery=lease)  # takes the probe over once its lease has run out
    settled(engine)
    assert received(sink, SLOW) == MEMBERS
    assert destination(engine) is None
