"""`listserv queue ls/retry/cancel` against a real queue: jobs a real post made, sent
(or refused) by the real worker to the sink smarthost, each command run as the installed
console script.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from listserv import config as config_mod
from listserv import db, retention
from listserv.models import Message, utcnow
from listserv.queue_tables import Delivery, Expansion
from tests.helpers import (
    assert_one_line_error,
    expand_all,
    ingest_mail,
    mails_to,
    message,
    run_listserv,
    scrape,
    wait_until,
)
from tests.servers import RunningServer

LIST = "dev@lists.example.org"
ANN, BOB = "ann@example.org", "bob@example.org"


def listserv(config: Path, *args: str | Path) -> str:
    proc = run_listserv("--config", config, *args)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def queue(config: Path, *args: str) -> dict:
    return json.loads(listserv(config, "queue", "ls", *args, "--json"))


def states(engine) -> Counter:
    """The jobs by state, a queued job already tried counted as "deferred"."""
    with db.session(engine) as s:
        return Counter("deferred" if d.state.value == "queued" and d.attempts else d.state.value
                       for d in s.scalars(select(Delivery)))


def wait_for_states(engine, wanted: dict[str, int], timeout: float = 15.0) -> None:
    wait_until(lambda: all(states(engine)[k] == n for k, n in wanted.items()), timeout=timeout)
    assert all(states(engine)[k] == n for k, n in wanted.items()), states(engine)


def post(engine, config_path: Path, expand: bool = True) -> None:
    """Ann's post, stored as the receiver does it and (`expand`) its jobs queued as a
    worker does it, with no server running."""
    outcomes = ingest_mail(engine, config_mod.load(config_path), ANN, [LIST],
                           message("Hello", sender=ANN).encode())
    assert [o.state for o in outcomes] == ["accepted"]
    if expand:
        expand_all(engine)


def test_a_post_whose_jobs_are_not_written_yet_is_shown_expanding(make_list, engine,
                                                                  config_file):
    make_list(LIST, owner=None, members=[ANN, BOB])
    post(engine, config_file, expand=False)
    listed = queue(config_file)
    assert listed["lists"] == []
    [waiting] = listed["expanding"]
    assert (waiting["list"], waiting["jobs"]) == (LIST, 0)
    # The post by the Message-ID the operator can find it by (and erase it by)
    with db.session(engine) as s:
        stored = s.scalar(select(Message.message_id))
    assert waiting["message_id"] == stored
    assert "expanding: list" in listserv(config_file, "queue", "ls")
    # No worker has written a chunk for five minutes: the operator sees it has stopped.
    with db.session(engine) as s:
        s.execute(update(Expansion).values(advanced_at=utcnow() - timedelta(minutes=5)))
        s.commit()
    assert 300 <= queue(config_file)["expanding"][0]["last_chunk_seconds"] < 360
    assert listserv(config_file, "queue", "ls").splitlines() == [  # no job yet, no blank line
        "expanding: list  message  jobs written  age  last chunk",
        f"{LIST}  <{stored}>  0  0 min  5 min ago"]
    expand_all(engine)
    assert queue(config_file)["expanding"] == []
    assert listserv(config_file, "queue", "ls").startswith("list  queued")


def test_a_cancelled_job_is_never_sent_until_retried(make_list, engine, make_server, sink,
                                                     config_file):
    make_list(LIST, owner=None, members=[ANN, BOB])
    post(engine, config_file)
    [summary] = queue(config_file)["lists"]
    assert (summary["list"], summary["queued"], summary["sending"], summary["deferred"],
            summary["failed"]) == (LIST, 1, 0, 0, 0)
    assert summary["oldest_age_seconds"] >= 0
    assert queue(config_file)["jobs"] == []  # jobs one by one only for a given list
    [job] = queue(config_file, LIST)["jobs"]
    assert (job["state"], job["recipients"], job["attempts"]) == ("queued", 2, 0)
    assert listserv(config_file, "queue", "cancel", str(job["id"])) == f"cancelled {job['id']}\n"
    assert queue(config_file)["lists"] == []
    assert_one_line_error(run_listserv("--config", config_file, "queue", "cancel",
                                       str(job["id"])), str(job["id"]))
    post(engine, config_file)  # queued after the cancelled one: claimed after it
    make_server()
    wait_for_states(engine, {"done": 1, "cancelled": 1})
    assert len(mails_to(sink, ANN)) == 1 and len(mails_to(sink, BOB)) == 1
    listserv(config_file, "queue", "retry", str(job["id"]))
    assert len(mails_to(sink, ANN, 2)) == 2 and len(mails_to(sink, BOB, 2)) == 2


def test_failed_and_deferred_jobs_are_shown_and_sent_again(make_list, engine, config, sink,
                                                           make_server,
                                                           config_file):
    make_list(LIST, owner=None, members=[ANN])
    # A server that gives up at the first temporary failure makes a failed job...
    impatient = RunningServer(engine, dataclasses.replace(config, delivery=dataclasses.replace(
        config.delivery, retry_max_hours=0))).start()
    sink.data_replies = ["451 4.3.0 try later"]
    post(engine, config_file)
    wait_for_states(engine, {"failed": 1})
    impatient.stop()
    # ...and one that retries in an hour a deferred one.
    running = make_server(delivery={"retry_initial_seconds": 3600})
    sink.data_replies = ["451 4.3.0 try later"]
    post(engine, config_file)
    wait_for_states(engine, {"failed": 1, "deferred": 1})
    [summary] = queue(config_file)["lists"]
    assert (summary["queued"], summary["deferred"], summary["failed"]) == (0, 1, 1)
    # /metrics names the jobs the way queue ls does
    jobs = {labels: value for (name, labels), value in scrape(running).items()
            if name == "listserv_delivery_jobs"}
    assert (jobs.get((("state", "queued"),), 0), jobs[(("state", "deferred"),)],
            jobs[(("state", "failed"),)]) == (0, 1, 1)
    text = listserv(config_file, "queue", "ls", LIST)
    assert text.splitlines()[0].split() == ["list", "queued", "sending", "deferred",
                                            "failed", "oldest"]
    assert text.count("451 4.3.0 try later") == 2  # each job's last error
    assert listserv(config_file, "queue", "retry", "--failed").startswith("1 jobs queued again")
    deferred = next(j["id"] for j in queue(config_file, LIST)["jobs"]
                    if j["state"] == "deferred")
    listserv(config_file, "queue", "retry", str(deferred))
    wait_for_states(engine, {"done": 2})
    assert len(mails_to(sink, ANN, 2)) == 2


def test_retry_needs_ids_or_failed(config_file):
    assert_one_line_error(run_listserv("--config", config_file, "queue", "retry"), "--failed")
    assert_one_line_error(run_listserv("--config", config_file, "queue", "retry", "7"), "7")


def test_a_cancelled_job_goes_with_retention_like_a_sent_one(make_list, engine,
                                                              config_file):
    make_list(LIST, owner=None, members=[ANN])
    post(engine, config_file)
    [job] = queue(config_file, LIST)["jobs"]
    listserv(config_file, "queue", "cancel", str(job["id"]))
    config = config_mod.load(config_file)
    with db.session(engine) as s:
        s.execute(update(Delivery).values(
            done_at=utcnow() - timedelta(days=config.retention.delivered_days + 1)))
        s.commit()
    assert retention.sweep(engine, config.retention).deliveries == 1
    assert states(engine) == Counter()


def test_queue_ls_counts_each_list_with_its_notices(make_list, engine, config_file):
    """The counts come from the database grouped by list and state: a post's copies count
    for its list, and so does a notice its owner is sent (from LIST-bounces@)."""
    other = "ops@lists.example.org"
    make_list(LIST, owner="owner@example.org", members=[ANN, BOB])
    make_list(other, owner=None, members=[ANN])
    config = config_mod.load(config_file)
    for sender, address in ((ANN, LIST), (ANN, LIST), (ANN, other),
                            ("stranger@example.net", LIST)):  # held: the owner is told
        ingest_mail(engine, config, sender, [address], message("Hi", sender=sender).encode())
        expand_all(engine)
    with db.session(engine) as s:
        ids = list(s.scalars(select(Delivery.id).order_by(Delivery.id)))
        s.execute(update(Delivery).where(Delivery.id == ids[0]).values(attempts=2))
        s.execute(update(Delivery).where(Delivery.id == ids[2]).values(state="failed"))
        s.commit()
    found = {x.pop("list"): x for x in queue(config_file)["lists"]}
    assert {k: (v["queued"], v["sending"], v["deferred"], v["failed"])
            for k, v in found.items()} == {LIST: (2, 0, 1, 0), other: (0, 0, 0, 1)}
    assert found[LIST]["oldest_age_seconds"] >= 0
    assert found[other]["oldest_age_seconds"] is None  # a failed job waits for nothing
    mine = queue(config_file, LIST)
    assert [x["list"] for x in mine["lists"]] == [LIST]
    assert sorted(j["state"] for j in mine["jobs"]) == ["deferred", "queued", "queued"]


def test_a_job_held_by_a_killed_worker_names_it_and_its_lease(make_list, engine, config_file):
    """After a kill -9 the dead worker's jobs stay `sending`: queue ls says whose they
    are and that their lease ran out (any worker takes them again), unlike a live one's."""
    make_list(LIST, owner=None, members=[ANN])
    post(engine, config_file)
    post(engine, config_file)
    now = utcnow()
    with db.session(engine) as s:
        dead, live = s.scalars(select(Delivery.id).order_by(Delivery.id))
        s.execute(update(Delivery).where(Delivery.id == dead).values(
            state="sending", worker="gone.example:4242", lease_until=now - timedelta(seconds=40)))
        s.execute(update(Delivery).where(Delivery.id == live).values(
            state="sending", worker="here.example:7", lease_until=now + timedelta(seconds=25)))
        s.commit()
    jobs = {j["id"]: j for j in queue(config_file, LIST)["jobs"]}
    assert (jobs[dead]["worker"], jobs[live]["worker"]) == ("gone.example:4242", "here.example:7")
    assert -50 < jobs[dead]["lease_seconds_left"] <= -40
    assert 15 < jobs[live]["lease_seconds_left"] <= 25
    lines = {line.split()[0]: line for line in
             listserv(config_file, "queue", "ls", LIST).splitlines() if line[:1].isdigit()}
    assert "gone.example:4242, lease ran out 4" in lines[str(dead)]
    assert lines[str(dead)].endswith("s ago, another worker will take it")
    assert "here.example:7, lease runs out in " in lines[str(live)]
