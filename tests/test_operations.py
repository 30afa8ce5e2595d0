"""What an operator sees of a running server: /healthz and /metrics over real HTTP, and
the log lines at start about a smarthost that cannot be reached and a base_url that
makes every mailed link dead."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from listserv import db, health, web
from listserv.config import SmarthostConfig
from listserv.models import BounceEvent, Message, Token, utcnow
from listserv.queue_tables import Delivery, Outgoing
from listserv.smarthosts import Smarthosts
from tests.helpers import MAILBOX, delivered_to, dsn, free_port, message, scrape, wait_until
from tests.helpers import web as web_client

LIST = "dev@lists.example.org"


def grew(before: dict, after: dict, name: str, **labels: str) -> float:
    """How much a counter of this process grew (other tests in it count too)."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_count_what_the_server_did(running, make_list, sink, engine):
    make_list(LIST, members=["ann@example.org", "bob@example.com"])
    before = scrape(running)
    running.send("bob@example.com", [LIST], message(sender="bob@example.com"))
    running.send("eve@example.net", [LIST], message(sender="eve@example.net"))  # held
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        running.send("bob@example.com", ["nolist@lists.example.org"], message())
    assert delivered_to(engine, sink, "ann@example.org") == 1
    after = scrape(running)
    assert grew(before, after, "listserv_messages_received_total") == 2
    assert grew(before, after, "listserv_messages_stored_total", state="accepted") == 1
    assert grew(before, after, "listserv_messages_stored_total", state="held") == 1
    assert grew(before, after, "listserv_smtp_refused_total", reason="5.1.1") == 1
    assert grew(before, after, "listserv_ingest_commit_seconds_count") >= 1
    # the post to ann, bob and the owner; the hold notice to the owner
    assert grew(before, after, "listserv_copies_total", outcome="delivered") >= 3
    # the queue is read from the database: everything sent, nothing waits
    assert after[("listserv_delivery_jobs", (("state", "done"),))] >= 2
    assert after[("listserv_oldest_queued_job_seconds", ())] == 0
    assert after[("listserv_expansions", ())] == 0  # every post given its jobs
    assert after[("listserv_expansion_stalled_seconds", ())] == 0


def test_healthz_says_what_works(running):
    response = web_client(running).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok", "database": True, "smarthost": True, "oldest_queued_seconds": None,
        "expansions": 0, "expansion_stalled_seconds": None, "backed_off": {},
        "loops": {"delivery": True, "web": True, "housekeeping": True, "digests": True},
        "smarthosts": {f"127.0.0.1:{running.config.delivery.smarthost_port}": True},
        "roles": ["smtp", "deliver", "web", "housekeeping"]}


def _healthz(engine, loops: health.Loops, config) -> httpx.Response:
    async def get() -> httpx.Response:
        app = web.make_app(engine, config, health.routes(
            engine, loops, Smarthosts([SmarthostConfig("127.0.0.1",
                                                       config.delivery.smarthost_port)])))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/healthz")
    return asyncio.run(get())


def test_healthz_is_503_when_the_database_cannot_be_reached(config):
    nowhere = db.make_engine(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    response = _healthz(nowhere, health.Loops(), config)
    assert response.status_code == 503
    assert response.json()["database"] is False
    assert response.json()["smarthost"] is True  # the sink


def test_healthz_is_503_when_a_background_loop_died(engine, config):
    async def died() -> None:
        raise RuntimeError("the delivery loop failed")

    loops = health.Loops()

    async def run_and_ask() -> httpx.Response:
        task = loops.watch("delivery", asyncio.create_task(died()))
        await asyncio.gather(task, return_exceptions=True)
        return await asyncio.to_thread(_healthz, engine, loops, config)

    response = asyncio.run(run_and_ask())
    assert response.status_code == 503
    assert response.json()["loops"] == {"delivery": False}
    assert response.json()["database"] is True


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and text in r.getMessage()]


def test_a_smarthost_that_cannot_be_reached_is_logged_at_start_and_once(
        make_server, make_list, engine, caplog):
    make_list(LIST, members=["ann@example.org"])
    caplog.set_level(logging.INFO)
    down = free_port()  # nothing listens there
    srv = make_server(delivery={"smarthost_port": down})
    srv.send("ann@example.org", [LIST], message(sender="ann@example.org"))
    response = web_client(srv).get("/healthz")  # tries again, as the worker does
    assert response.status_code == 200  # mail waits in the queue: the server is fine
    assert response.json()["smarthost"] is False
    [logged] = _warnings(caplog, "cannot be reached")
    assert f"127.0.0.1:{down}" in logged


@pytest.mark.parametrize("address, base_url, warned", [
    ("dev@lists.python.org", "http://127.0.0.1:8080", "is a loopback address"),
    ("dev@lists.python.org", "http://lists.python.org", "is not https"),
    ("dev@lists.python.org", "https://lists.python.org", None),
    ("dev@lists.example.org", "http://127.0.0.1:8080", None),  # a test setup
])
def test_base_url_that_breaks_mailed_links_is_a_warning_at_start(
        make_server, make_list, caplog, address, base_url, warned):
    make_list(address)
    caplog.set_level(logging.INFO)
    make_server(web={"base_url": base_url})  # checked before it is ready
    found = _warnings(caplog, "[web] base_url")
    if warned is None:
        assert found == []
    else:
        [line] = found
        assert warned in line and "lists.python.org" in line


# --- retention ----------------------------------------------------------------------------

def _age_everything(engine, days: int) -> None:
    """Move every timestamp retention reads `days` back, as if that time had passed."""
    delta = timedelta(days=days)
    with db.session(engine) as s:
        for model, column in ((Delivery, "done_at"), (Outgoing, "created_at"),
                              (Message, "received_at"), (Token, "expires_at")):
            for row in s.scalars(select(model)):
                if getattr(row, column) is not None:
                    setattr(row, column, getattr(row, column) - delta)
        s.commit()


def _rows(engine, model) -> list:
    with db.session(engine) as s:
        return list(s.scalars(select(model)))


def test_housekeeping_deletes_old_bookkeeping_and_keeps_the_archive(
        running, make_server, make_list, engine, sink, caplog):
    make_list(LIST, members=["bob@example.com"])
    caplog.set_level(logging.INFO)
    running.send("bob@example.com", [LIST], message("Old post", sender="bob@example.com"))
    running.send("", ["dev-bounces+bob=example.com@lists.example.org"],
                 dsn(MAILBOX, "bob@example.com"))
    running.send("carol@example.net", ["dev-join@lists.example.org"],
                 message("", sender="carol@example.net", to="dev-join@lists.example.org"))
    assert delivered_to(engine, sink, "carol@example.net") == 1  # her confirmation
    _age_everything(engine, 91)
    running.send("bob@example.com", [LIST], message("New post", sender="bob@example.com"))
    assert delivered_to(engine, sink, "bob@example.com") == 2
    # the server restarts: housekeeping runs at start (on PostgreSQL in the one process
    # holding the housekeeping lock, so the old server goes first)
    running.stop()
    make_server(smtp={"port": free_port()}, web={"port": free_port()})
    wait_until(lambda: not _rows(engine, Token), "the expired token to go")
    # only the new post's jobs and copy are left; the old ones went
    recent = utcnow() - timedelta(days=1)
    jobs, copies = _rows(engine, Delivery), _rows(engine, Outgoing)
    assert jobs and all(d.done_at > recent for d in jobs)
    assert copies and all(o.created_at > recent for o in copies)
    messages = {m.kind.value + ":" + m.subject: m for m in _rows(engine, Message)}
    assert messages["post:Old post"].raw.startswith(b"From: bob@example.com")  # archived
    [bounce] = [m for key, m in messages.items() if key.startswith("bounce:")]
    assert bounce.raw == b""  # read long ago: its bytes went ...
    assert [e.address for e in _rows(engine, BounceEvent)] == ["bob@example.com"]  # ... not this
    assert any("retention: deleted" in r.getMessage() for r in caplog.records)
