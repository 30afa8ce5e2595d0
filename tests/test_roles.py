"""`listserv serve --roles`: a process that receives only, delivers only or serves the
archive only, what its /healthz says, a bad role word; and on PostgreSQL, housekeeping
(here: digests) in one process at a time, taken over when that process is killed, and
taken again by a process whose connection to the database died."""

from __future__ import annotations

import logging
import signal
import smtplib

import httpx
import pytest
from sqlalchemy import func, select, text, update

from listserv import db
from listserv.models import DeliveryMode, DigestIssue, MailingList, Member
from tests.helpers import LIST, SENDER, message, post, run_listserv, wait_until
from tests.helpers import web as web_client

HOLDS = "housekeeping runs in this process"
DIGESTS_TO = "d@example.com"


def healthz(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=20).json()


def test_a_bad_role_word_is_one_line_and_exit_2(tmp_path):
    proc = run_listserv("serve", "--roles", "smtp,archive", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.splitlines()
    assert "unknown role archive" in line and "smtp, deliver, web, housekeeping" in line
    assert not (tmp_path / "listserv.db").exists()  # stopped before opening the database


def test_a_web_only_process_serves_the_archive_and_takes_no_mail(make_server, make_list):
    make_list(LIST)
    srv = make_server(roles=("web",))
    page = web_client(srv).get("/")
    assert page.status_code == 200 and LIST in page.text
    health = web_client(srv).get("/healthz").json()
    assert health["roles"] == ["web"]
    assert health["loops"] == {"web": True}
    assert health["smarthost"] is None  # it sends nothing
    assert srv.config.smtp.port == 0  # never bound: nothing listens for mail


def test_a_delivery_only_process_serves_health_and_metrics_but_no_pages(make_server):
    srv = make_server(roles=("deliver",))
    client = web_client(srv)
    assert client.get("/").status_code == 404
    health = client.get("/healthz").json()
    assert (health["status"], health["roles"], health["smarthost"]) == ("ok", ["deliver"], True)
    assert set(health["loops"]) == {"delivery", "web"}
    assert "listserv_copies_total" in client.get("/metrics").text  # its own counters


@pytest.mark.slow
def test_a_post_received_by_one_process_is_delivered_by_another(make_serve, make_list,
                                                               sink):
    make_list(LIST, members=[SENDER, "b@example.com"], owner=None)
    receiver = make_serve(sink.port, "receiver", roles="smtp").start()
    sender = make_serve(sink.port, "sender", roles="deliver,housekeeping").start()
    receiver.send([LIST], post("From one to the other"))
    assert sorted(sink.wait_for(2, timeout=60)) == [SENDER, "b@example.com"]
    # logged once the outcome is recorded, just after the smarthost took the copies
    wait_until(lambda: "delivery job=" in sender.log(), "the delivering process's log line")
    assert "delivery job=" not in receiver.log()
    assert healthz(receiver.web_port())["roles"] == ["smtp"]
    assert healthz(sender.web_port())["roles"] == ["deliver", "housekeeping"]
    with pytest.raises(OSError):  # the delivering process takes no mail
        smtplib.SMTP("127.0.0.1", sender.smtp_port, timeout=5)


def _digest_list(engine, make_list) -> None:
    """A list whose digest is due as soon as any post is pending."""
    mlist = make_list(LIST, members=[SENDER, DIGESTS_TO], owner=None)
    with db.session(engine) as s:
        s.execute(update(Member).where(Member.address == DIGESTS_TO)
                  .values(delivery=DeliveryMode.DIGEST_MIME))
        s.execute(update(MailingList).where(MailingList.id == mlist.id)
                  .values(digest_max_bytes=1))
        s.commit()


def _issues(engine) -> int:
    with db.session(engine) as s:
        return s.scalar(select(func.count()).select_from(DigestIssue))


@pytest.mark.slow
def test_housekeeping_runs_in_one_process_and_another_takes_over_when_it_dies(
        make_serve, make_list, engine, sink, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip("one process at a time is a PostgreSQL lock; SQLite has one process")
    _digest_list(engine, make_list)
    first = make_serve(sink.port, "first").start()
    wait_until(lambda: HOLDS in first.log(), "the first process to take the lock")
    second = make_serve(sink.port, "second").start()
    # The second's posts would each make a digest at once if it ran housekeeping too;
    # the first builds one issue of all three when its own post comes.
    second.send([LIST], message("One", sender=SENDER))
    second.send([LIST], message("Two", sender=SENDER))
    first.send([LIST], message("Three", sender=SENDER))
    wait_until(lambda: _issues(engine) == 1, "the first digest")
    assert sink.copies_to(DIGESTS_TO)  # it went out
    wait_until(lambda: "digest '" in first.log(), "the first process's digest log line")
    assert first.log().count("digest '") == 1 and "digest '" not in second.log()
    assert HOLDS not in second.log()
    assert healthz(second.web_port())["loops"]["digests"] is True  # waiting, not dead

    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: HOLDS in second.log(), "the second process to take over")
    second.send([LIST], message("Four", sender=SENDER))
    wait_until(lambda: "digest '" in second.log(), "the second process's digest")
    assert second.log().count("digest '") == 1 and _issues(engine) == 2


def _holders(engine) -> list[int]:
    """The database sessions holding this schema's housekeeping lock (leadership.py)."""
    with engine.connect() as connection:
        return list(connection.execute(text(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = 1819505524"
            " AND objid::bigint = hashtext(current_schema())::bigint & 4294967295")).scalars())


def test_the_housekeeping_lock_is_taken_again_after_its_connection_died(
        make_server, engine, db_url, caplog):
    if not db_url.startswith("postgresql"):
        pytest.skip("the lock is PostgreSQL's")
    caplog.set_level(logging.INFO)
    srv = make_server()

    def logged(text: str) -> int:
        return sum(text in r.getMessage() for r in caplog.records)
    wait_until(lambda: logged(HOLDS), "the lock to be taken")
    [pid] = _holders(engine)
    with engine.connect() as connection:  # as a database restart ends every session
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    wait_until(lambda: logged("housekeeping stops in this process"), "the loss to be logged")
    wait_until(lambda: logged(HOLDS) == 2, "the lock to be taken again")
    [again] = _holders(engine)
    assert again != pid
    assert all(web_client(srv).get("/healthz").json()["loops"].values())
