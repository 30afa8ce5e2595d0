"""Database outages and dead workers: the real `listserv serve` keeps delivering through
a PostgreSQL stopped and started in the middle of a fan-out and through a full disk
under SQLite, sends no copy twice for it, answers web pages with 503 meanwhile; a post
being expanded into its jobs when the database goes away is expanded on once it is
back, without a restart, and /metrics shows it waiting meanwhile; leases
are renewed while a worker holds its jobs, and a dead worker's jobs are taken over
(and logged) once its short lease runs out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert

from listserv import db, fanout, server, supervise
from listserv.queue_tables import Delivery
from tests.helpers import (
    LIST,
    free_port,
    jobs_and_expansions,
    post,
    settled,
    wait_until,
)
from tests.servers import Serve, Smarthost, import_members

CONCURRENCY = 2
BATCH = 2  # Serve's max_recipients_per_transaction


# --- a PostgreSQL of the test's own, to stop and start -----------------------------------

def _as_postgres(*args: str) -> list[str]:
    """initdb and pg_ctl refuse to run as root: as root, run them as `postgres`."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


class Postgres:
    """A PostgreSQL server in a temporary directory on a port of its own."""

    def __init__(self, directory: Path) -> None:
        self.data = directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(_as_postgres(*args), check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust",
                  "--no-sync")

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c unix_socket_directories={self.data}")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.data / "server.log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """Started, and stopped and removed at the end even when the test failed."""
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip("initdb/pg_ctl not found: this test starts and stops a PostgreSQL "
                    "of its own")
    directory = Path(tempfile.mkdtemp(prefix="listserv-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    server = Postgres(directory)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(_as_postgres("pg_ctl", "-D", str(server.data), "-m",
                                        "immediate", "stop"), capture_output=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


# --- a small filesystem to fill -----------------------------------------------------------

@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 16 MB tmpfs: a real filesystem that fills up."""
    directory = Path(tempfile.mkdtemp(prefix="listserv-disk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs",
                              str(directory)], capture_output=True)
    if mounted.returncode != 0:
        directory.rmdir()
        pytest.skip(f"cannot mount a tmpfs to fill: {mounted.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)
        directory.rmdir()


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; the file."""
    filler = directory / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


# --- servers ------------------------------------------------------------------------------

def serve_on(make_serve: Callable[..., Serve], url: str, smarthost_port: int, name: str,
             expansion_chunk: int = 5000, **delivery: int) -> Serve:
    """test_deliver's `listserv serve` on a database of the test's choosing, with
    [delivery] values added."""
    srv = make_serve(smarthost_port, name, concurrency=CONCURRENCY,
                     expansion_chunk=expansion_chunk)
    srv.env["LISTSERV_DATABASE_URL"] = url
    path = Path(srv.env["LISTSERV_CONFIG"])
    added = "".join(f"{key} = {value}\n" for key, value in delivery.items())
    path.write_text(path.read_text().replace("[delivery]\n", "[delivery]\n" + added))
    return srv


def two_fanning_out(tmp_path: Path, make_serve: Callable[..., Serve], url: str,
                    sink: Smarthost, count: int, **delivery: int
                    ) -> tuple[Serve, Serve, list[str]]:
    """Two servers on one database, and a post to a list of `count` members received by
    the first (its jobs are handed to the first's worker as far as it has room)."""
    first, second = (serve_on(make_serve, url, sink.port, name, **delivery)
                     for name in ("first", "second"))
    members = import_members(first, tmp_path, count)
    first.start()
    second.start()
    first.send([LIST], post())
    return first, second, members


def web_get(srv: Serve, path: str = "/") -> tuple[int, Message, str]:
    """A page of `srv`'s web app: its status, headers and text, whatever the status."""
    base = re.findall(r" web on (http://[^/]+)/", srv.log())[-1]  # the port it bound
    try:
        with urllib.request.urlopen(base + path, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def web_metrics(srv: Serve) -> dict[str, float]:
    """The unlabelled samples of `srv`'s /metrics."""
    status, _, text = web_get(srv, "/metrics")
    assert status == 200
    return {s.name: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if not s.labels}


def duplicates(sink: Smarthost) -> int:
    return sum(n - 1 for n in sink.copies().values())


def still_running(*procs: Serve) -> bool:
    return all(srv.proc.poll() is None for srv in procs)


# --- PostgreSQL stopped and started in the middle of a fan-out --------------------------

@pytest.mark.slow  # `listserv serve` processes
def test_postgresql_stopped_mid_fan_out_delivers_everyone_once_after_it_is_back(
        tmp_path, postgres, make_serve, sink):
    engine = db.open_database(postgres.url)
    sink.data_delay = 0.02  # the fan-out lasts long enough to be cut in the middle
    first, second, members = two_fanning_out(tmp_path, make_serve, postgres.url, sink, 400)
    wait_until(lambda: len(sink.recipients()) >= 60, "the fan-out to be under way")
    postgres.stop()
    stopped_at = len(sink.recipients())
    status, headers, text = web_get(second)
    assert status == 503
    assert "unavailable" in text
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert headers["X-Content-Type-Options"] == "nosniff"
    # The copies under way when it stopped go out; no more start without being recorded.
    wait_until(lambda: all("delivery: database unavailable" in s.log()
                           for s in (first, second)), "both workers to log the outage")
    for _ in range(2):  # nothing is taken; its MTA retries
        with pytest.raises(smtplib.SMTPRecipientsRefused, match="451"):
            first.send([LIST], post("During the outage"))
    time.sleep(5)  # the database stays away: the loops back off, logging nothing more
    assert len(sink.recipients()) <= stopped_at + 2 * CONCURRENCY * BATCH
    postgres.start()
    wait_until(lambda: len(set(sink.recipients())) == len(members), "a copy for every member")
    second.send([LIST], post("After the outage"))
    wait_until(lambda: len(sink.recipients()) >= 2 * len(members), "the next post delivered")
    with pytest.raises(smtplib.SMTPRecipientsRefused, match="550"):  # looked up again
        first.send(["nobody@lists.example.org"], post())
    settled(engine)
    engine.dispose()
    assert still_running(first, second)
    print(f"\n{len(members)} members, two servers, PostgreSQL stopped mid-fan-out: "
          f"{duplicates(sink)} copies sent twice")
    assert duplicates(sink) <= 2 * CONCURRENCY * BATCH, duplicates(sink)
    for srv in (first, second):
        log = srv.log()
        assert log.count("delivery: database unavailable") == 1, log
        assert "delivery: database back after" in log
        assert "could not be" not in log  # no copy given up, no outcome lost
    # The receiver's outage is two lines too, not a traceback for each client's 451.
    assert first.log().count("smtp: database unavailable") == 1, first.log()
    assert "smtp: database back after" in first.log()
    assert "Traceback" not in first.log()
    assert web_get(second)[0] == 200


# --- SQLite on a full disk --------------------------------------------------------------

@pytest.mark.slow  # `listserv serve` processes
def test_sqlite_on_a_full_disk_resumes_delivery_once_there_is_room(tmp_path, small_disk,
                                                                    make_serve, sink):
    url = f"sqlite:///{small_disk / 'listserv.db'}"
    engine = db.open_database(url)
    sink.data_delay = 0.02
    srv = serve_on(make_serve, url, sink.port, "serve")
    members = import_members(srv, tmp_path, 300)
    srv.start()
    srv.send([LIST], post())
    wait_until(lambda: len(sink.recipients()) >= 40, "the fan-out to be under way")
    filler = fill(small_disk)
    wait_until(lambda: "database or disk is full" in srv.log(), "a write to meet the full disk")
    full_at = len(sink.recipients())
    time.sleep(3)  # the disk stays full: the copies under way go out, no more
    assert len(sink.recipients()) <= full_at + CONCURRENCY * BATCH
    filler.unlink()
    wait_until(lambda: len(set(sink.recipients())) == len(members), "a copy for every member")
    settled(engine)
    engine.dispose()
    assert full_at < len(members)  # the disk filled in the middle of the fan-out
    assert still_running(srv)
    print(f"\n{len(members)} members, SQLite's disk full mid-fan-out: "
          f"{duplicates(sink)} copies sent twice")
    assert duplicates(sink) <= CONCURRENCY * BATCH, duplicates(sink)
    assert srv.log().count("delivery: database unavailable") == 1
    assert "delivery: database back after" in srv.log()


# --- a post's expansion cut by an outage ---------------------------------------------------

def expanding_when(srv: Serve, engine, outage: Callable[[], None]) -> list[str]:
    """A post to 600 members expanded a job (BATCH members) a transaction, and `outage`
    brought on once its expansion is under way; the members."""
    members = import_members(srv, tmp_path_of(srv), 600)
    srv.start()
    srv.send([LIST], post())
    wait_until(lambda: jobs_and_expansions(engine)[0] >= 20, "the expansion to be under way")
    assert jobs_and_expansions(engine)[1] == 1, "the expansion ended before the outage"
    outage()
    wait_until(lambda: "expansion: database unavailable" in srv.log(),
               "the expansion to meet the outage")
    return members


def tmp_path_of(srv: Serve) -> Path:
    return srv.log_path.parent


def expanded_on(srv: Serve, engine, members: list[str], sink: Smarthost) -> None:
    """Every member gets the post once, by the same process, and the log says why it
    waited and when it went on."""
    wait_until(lambda: len(set(sink.recipients())) == len(members), "a copy for every member")
    settled(engine)
    assert jobs_and_expansions(engine) == (len(members) // BATCH, 0)  # no chunk twice
    assert still_running(srv)
    assert duplicates(sink) <= CONCURRENCY * BATCH, duplicates(sink)
    log = srv.log()
    assert log.count("expansion: database unavailable") == 1, log
    assert "expansion: database back after" in log


@pytest.mark.slow  # `listserv serve` processes
def test_a_post_being_expanded_when_postgresql_stops_reaches_everyone_once_it_is_back(
        tmp_path, postgres, make_serve, sink):
    engine = db.open_database(postgres.url)
    srv = serve_on(make_serve, postgres.url, sink.port, "serve", expansion_chunk=BATCH)
    members = expanding_when(srv, engine, postgres.stop)
    time.sleep(3)  # away for a while: the expansion waits, the server runs on
    assert still_running(srv)
    postgres.start()
    expanded_on(srv, engine, members, sink)
    engine.dispose()


@pytest.mark.slow  # `listserv serve` processes
def test_a_post_being_expanded_when_sqlites_disk_fills_reaches_everyone_once_there_is_room(
        small_disk, make_serve, sink):
    url = f"sqlite:///{small_disk / 'listserv.db'}"
    engine = db.open_database(url)
    srv = serve_on(make_serve, url, sink.port, "serve", expansion_chunk=BATCH)
    filler: list[Path] = []
    members = expanding_when(srv, engine, lambda: filler.append(fill(small_disk)))
    waiting = web_metrics(srv)
    assert waiting["listserv_expansions"] == 1, waiting
    time.sleep(3)
    assert web_metrics(srv)["listserv_expansion_stalled_seconds"] >= 3
    filler[0].unlink()
    expanded_on(srv, engine, members, sink)
    assert web_metrics(srv)["listserv_expansions"] == 0
    engine.dispose()


# --- leases -----------------------------------------------------------------------------

@pytest.mark.slow  # `listserv serve` processes
def test_a_worker_renews_the_leases_of_jobs_it_holds_longer_than_a_lease(
        tmp_path, db_url, engine, make_serve, sink):
    """Each worker holds up to concurrency x 8 jobs, sent one after the other at 0.2 s a
    transaction: the last waits longer than the 1 s lease, and without renewal the other
    worker's claim would take it over and send it again."""
    sink.data_delay = 0.2
    first, second, members = two_fanning_out(tmp_path, make_serve, db_url, sink, 80,
                                             lease_seconds=1)
    wait_until(lambda: len(set(sink.recipients())) == len(members), "a copy for every member")
    settled(engine)
    assert duplicates(sink) == 0
    assert "took over" not in first.log() + second.log()


@pytest.mark.slow  # `listserv serve` processes
def test_a_dead_workers_jobs_are_taken_over_after_its_lease_and_logged(
        tmp_path, db_url, engine, make_serve, sink):
    sink.data_delay = 0.05
    first, second, members = two_fanning_out(tmp_path, make_serve, db_url, sink, 80,
                                             lease_seconds=2)
    wait_until(lambda: len(sink.recipients()) >= 4, "the fan-out to be under way")
    dead = first.proc.pid
    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: len(set(sink.recipients())) == len(members), "a copy for every member")
    settled(engine)
    assert re.search(rf"took over \d+ deliveries from worker [^ ]+:{dead}\b", second.log())
    assert duplicates(sink) <= CONCURRENCY * BATCH, duplicates(sink)


# --- a loop that dies ---------------------------------------------------------------------

def test_a_background_loop_that_dies_stops_the_server_with_its_reason(caplog):
    async def scenario() -> asyncio.Event:
        stop = asyncio.Event()

        async def broken() -> None:
            raise RuntimeError("template missing")
        tasks = {"digests": asyncio.create_task(broken()),
                 "delivery": asyncio.create_task(stop.wait())}
        with pytest.raises(supervise.LoopDied, match="digests stopped: RuntimeError: "
                                                     "template missing"):
            await supervise.watch(tasks, stop)
        await tasks["delivery"]  # told to stop, not left running half alive
        return stop

    assert asyncio.run(scenario()).is_set()
    assert "digests stopped: RuntimeError: template missing; exiting" in caplog.text



def test_an_expansion_that_dies_stops_the_server_with_its_reason(config, engine, monkeypatch,
                                                                  caplog):
    """Not left dead while the claims go on: posts would be accepted and never sent."""
    def bug(*args: object) -> int:
        raise RuntimeError("a bug in the expansion")
    monkeypatch.setattr(fanout, "expand", bug)
    with pytest.raises(supervise.LoopDied, match="delivery stopped: LoopDied: expansion "
                                                 "stopped: RuntimeError: a bug in the expansion"):
        asyncio.run(asyncio.wait_for(server.serve(engine, config), 60))
    assert "exiting" in caplog.text


def test_a_statement_that_fails_on_a_database_that_answers_is_not_called_an_outage(
        engine, caplog):
    """A NOT NULL violation was logged as `database unavailable` for minutes while the
    database answered everything else: the operator looked at a healthy PostgreSQL."""
    tries = []

    def insert_a_row_of_no_values(session) -> int:
        tries.append(1)
        if len(tries) == 1:
            session.execute(insert(Delivery.__table__), {})  # outgoing_id is NOT NULL
        return len(tries)

    async def run() -> int:
        calls = supervise.Calls(engine, "expansion")
        try:
            return await calls.until_done(insert_a_row_of_no_values)
        finally:
            calls.close()

    caplog.set_level(logging.INFO, logger="listserv")
    assert asyncio.run(run()) == 2
    assert "database unavailable" not in caplog.text
    [failed] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failed.getMessage().startswith("expansion: a database statement failed, "
                                          "retrying (IntegrityError: ")
    assert failed.exc_info is not None  # the traceback, for the bug it likely is
    assert "expansion: working again after " in caplog.text
