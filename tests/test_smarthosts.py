"""Several smarthosts ([[delivery.smarthost]]): connections shared by weight, one that
cannot be reached (refused, 421) skipped without holding anyone's copy back, logged
once, shown by /healthz, and used again once it is back."""

from __future__ import annotations

import logging
import time

import pytest

from listserv import smarthosts
from listserv.config import SmarthostConfig
from listserv.enums import DeliveryState
from tests.helpers import LIST, SENDER, free_port, jobs, message, settled, wait_until
from tests.helpers import web as web_client

MEMBERS = sorted([SENDER] + [f"m{i:02d}@example.com" for i in range(15)])


def several(*hosts: tuple[int, int]) -> dict:
    """The [delivery] of a server with these (port, weight) smarthosts."""
    return {"smarthost": [SmarthostConfig("127.0.0.1", port, weight) for port, weight in hosts],
            "concurrency": 4}


def cannot_be_reached(caplog, port: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if f"127.0.0.1:{port} cannot be reached" in r.getMessage()]


def test_connections_go_to_the_smarthosts_by_weight(make_server, make_sink, make_list):
    heavy, light = make_sink(), make_sink()
    make_list(LIST, members=MEMBERS, owner=None)
    srv = make_server(delivery=several((heavy.port, 3), (light.port, 1)))
    srv.send(SENDER, [LIST], message(sender=SENDER))  # 8 jobs of 2, for 4 senders at once
    wait_until(lambda: len(heavy.recipients()) + len(light.recipients()) == len(MEMBERS),
               "every member's copy")
    assert sorted(heavy.recipients() + light.recipients()) == MEMBERS
    assert (heavy.connections, light.connections) == (3, 1)


@pytest.mark.parametrize("down", ["refused", "421"])
def test_a_smarthost_that_cannot_be_reached_leaves_its_jobs_to_the_others(
        make_server, sink, make_list, engine, caplog, closed_port, busy_smarthost, down):
    caplog.set_level(logging.INFO)
    port = closed_port if down == "refused" else busy_smarthost.port
    make_list(LIST, members=MEMBERS, owner=None)
    srv = make_server(delivery=several((port, 5), (sink.port, 1)))
    srv.send(SENDER, [LIST], message(sender=SENDER))
    done = settled(engine)
    assert sorted(sink.recipients()) == MEMBERS
    # Sent at the first attempt: a smarthost down costs no member a retry.
    assert {(j.state, j.attempts) for j in done} == {(DeliveryState.DONE, 1)}
    assert len(cannot_be_reached(caplog, port)) == 1  # at start, and not again per job
    health = web_client(srv).get("/healthz").json()
    assert health["smarthost"] is False
    assert health["smarthosts"] == {f"127.0.0.1:{port}": False,
                                    f"127.0.0.1:{sink.port}": True}


def test_a_smarthost_back_from_an_outage_gets_its_share_again(
        make_server, make_sink, sink, make_list, caplog, monkeypatch):
    monkeypatch.setattr(smarthosts, "FIRST_BACKOFF", 0.2)
    monkeypatch.setattr(smarthosts, "MAX_BACKOFF", 0.2)
    monkeypatch.setattr(smarthosts, "REUSE_SECONDS", 0.2)
    caplog.set_level(logging.INFO)
    port = free_port()  # nothing listens there yet
    make_list(LIST, members=MEMBERS, owner=None)
    srv = make_server(delivery=several((port, 5), (sink.port, 1)))
    srv.send(SENDER, [LIST], message("Before", sender=SENDER))
    sink.wait_for(len(MEMBERS))
    back = make_sink(port=port)
    # The refusal during the first post started a back-off of 0.2 s: a post sent within
    # it rightly goes to the other smarthost, so this one waits it out.
    time.sleep(2 * smarthosts.MAX_BACKOFF)
    srv.send(SENDER, [LIST], message("After", sender=SENDER))
    wait_until(lambda: back.recipients(), "a copy through the smarthost that came back")
    assert any(f"127.0.0.1:{port} can be reached again" in r.getMessage()
               for r in caplog.records)


def test_with_every_smarthost_down_the_jobs_wait_in_the_queue(
        make_server, make_list, engine, closed_port, busy_smarthost):
    make_list(LIST, members=MEMBERS[:2], owner=None)
    srv = make_server(delivery=several((closed_port, 1), (busy_smarthost.port, 1)))
    srv.send(SENDER, [LIST], message(sender=SENDER))

    def deferred() -> str:
        found = jobs(engine)  # none until a worker has expanded the post (after the 250)
        job = found[0] if len(found) == 1 else None
        return job.last_error if job and job.state == DeliveryState.QUEUED and job.attempts else ""
    assert wait_until(deferred, "the job to be deferred")
    assert busy_smarthost.greeted  # both were tried
