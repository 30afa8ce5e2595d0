"""How long `listserv queue ls` takes on a queue backed up behind a dead smarthost.

JOBS delivery jobs (default 200,000) of 20 lists, 100 jobs to each copy, in the mix a
long outage leaves: 70% deferred, 20% queued, 5% sending and 5% failed, plus one notice
per list (sent by LIST-bounces@), each job to one of DOMAINS recipient domains, 10 of
them in back-off. The rows are written directly, in bulk; then `listserv queue ls`,
`listserv queue ls LIST --json` and `listserv queue ls --by-domain` run as an admin types
them, and the median wall and CPU time of RUNS runs is printed.

    python bench/queue_ls.py                                   # SQLite in a temporary folder
    python bench/queue_ls.py --database-url postgresql://postgres@127.0.0.1:5432/test
    python bench/queue_ls.py --python /tmp/before/bin/python --python .venv/bin/python

On PostgreSQL the rows go to a schema of their own, dropped at the end. Each --python
runs `listserv.cli` with that interpreter on the same rows, to compare two checkouts.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
from sqlalchemy import insert

from listserv import db, roster
from listserv.enums import DeliveryState
from listserv.models import utcnow
from listserv.queue_tables import Delivery, Destination, DestinationDomain, Outgoing

LISTS = 20
DOMAINS = 1000
PER_COPY = 100
# (state, attempts) in the proportions of a long outage, one in 20 jobs each
MIX = ([(DeliveryState.QUEUED, 3)] * 14 + [(DeliveryState.QUEUED, 0)] * 4
       + [(DeliveryState.SENDING, 1), (DeliveryState.FAILED, 9)])


def fill(url: str, jobs: int) -> None:
    engine = db.open_database(url)
    now = utcnow()
    with db.session(engine) as s:
        lists = [roster.create_list(s, f"list{i}@lists.example.org", owner=None)
                 for i in range(LISTS)]
        s.commit()
        copies = s.execute(insert(Outgoing).returning(Outgoing.id), [
            {"list_id": lists[i % LISTS].id, "data": b"x", "slots": "", "created_at": now}
            for i in range(jobs // PER_COPY)]).scalars().all()
        notices = s.execute(insert(Outgoing).returning(Outgoing.id), [
            {"list_id": None, "data": b"x", "slots": "", "created_at": now}
            for _ in lists]).scalars().all()
        mix = itertools.cycle(MIX)
        rows = [_job(copy, m.address, *next(mix), now - timedelta(seconds=n), n % DOMAINS)
                for n, (copy, m) in enumerate(
                    (copies[i // PER_COPY], lists[(i // PER_COPY) % LISTS])
                    for i in range(jobs))]
        rows += [_job(notice, m.address, DeliveryState.QUEUED, 0, now, notice=True)
                 for notice, m in zip(notices, lists, strict=True)]
        for start in range(0, len(rows), 10_000):
            s.execute(insert(Delivery), rows[start:start + 10_000])
        s.execute(insert(Destination), [
            {"name": f"d{i}.example.com", "backoff_until": now + timedelta(minutes=5),
             "deferrals": 3, "last_reply": "421 4.7.0 Try again later", "updated_at": now}
            for i in range(10)])
        s.execute(insert(DestinationDomain), [
            {"domain": f"d{i}.example.com", "destination": f"d{i}.example.com"}
            for i in range(10)])
        s.commit()
    engine.dispose()


def _job(outgoing: int, address: str, state: DeliveryState, attempts: int, created: object,
         rcpt_domain: int = 0, notice: bool = False) -> dict:
    local, domain = address.split("@")
    to = f"d{rcpt_domain}.example.com"
    return {"outgoing_id": outgoing, "state": state, "attempts": attempts,
            "mail_from": f"{local}-bounces@{domain}" if notice
            else f"{local}-bounces+r=example.com@{domain}",
            "recipients": "\n".join(f"r{k}@{to}" for k in range(5)), "domain": to,
            "created_at": created, "next_attempt_at": created, "last_error": ""}


def timed(argv: list[str], cwd: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one run, in a folder with no listserv/ in it: `python -c`
    imports from the current folder before the interpreter's own packages."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                   cwd=cwd)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


@contextmanager
def database(url: str) -> Iterator[str]:
    """The URL to fill: a new SQLite file, or a new schema of this PostgreSQL."""
    if not url:
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/queue.db"
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in url else "?"
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--python", action="append",
                        help="an interpreter to run listserv.cli with (repeat to compare; "
                        "default: this one)")
    args = parser.parse_args()
    with database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        fill(url, args.jobs)
        config = Path(tmp) / "listserv.toml"
        config.write_text(f'[database]\nurl = "{url}"\n')
        for python in args.python or [sys.executable]:
            cli = [python, "-c", "import sys; sys.argv[0] = 'listserv'; "
                   "from listserv.cli import main; main()", "--config", str(config)]
            for name, argv in (("queue ls", [*cli, "queue", "ls"]),
                               ("queue ls LIST --json",
                                [*cli, "queue", "ls", "list0@lists.example.org", "--json"]),
                               ("queue ls --by-domain", [*cli, "queue", "ls", "--by-domain"])):
                walls, cpus = zip(*(timed(argv, tmp) for _ in range(args.runs)), strict=True)
                print(f"{python}: {name:<22} {statistics.median(walls):.3f} s wall  "
                      f"{statistics.median(cpus):.3f} s CPU  ({args.jobs} jobs, "
                      f"{url.split(':')[0]})", flush=True)


if __name__ == "__main__":
    main()
