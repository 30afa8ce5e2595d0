"""Time to the 250 for a post to a 10-member list and to a 100,000-member list, in the
same run (issue 19: it must not depend on the list's size), and how long the delivery
workers then take to expand the large post into its jobs.

    python bench/expand.py                        # SQLite in a temporary folder
    python bench/expand.py --database-url postgresql://postgres@127.0.0.1:5432/test

`listserv serve --roles smtp,deliver` runs with its smarthost on a closed port (the jobs
are written and deferred, none sent); POSTS posts go to each list in turn, each timed
from the connection to the end of QUIT, and the median and the worst are printed. The
members are written directly, in bulk.
"""

from __future__ import annotations

import argparse
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from queue_ls import database  # bench/, the script's folder
from sqlalchemy import func, insert, select, text

from listserv import db, roster
from listserv.models import Member, utcnow
from listserv.queue_tables import Expansion

SIZES = {"small@lists.example.org": 10, "large@lists.example.org": 100_000}
SENDER = "poster@example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(url: str) -> None:
    engine = db.open_database(url)
    now = utcnow()
    with db.session(engine) as s:
        for address, size in SIZES.items():
            mlist = roster.create_list(s, address, owner=None)
            s.flush()
            rows = [{"list_id": mlist.id, "address": f"m{i}@example.net", "display_name": "",
                     "role": "member", "delivery": "regular", "moderated": False,
                     "created_at": now, "bounce_score": 0.0, "warnings_sent": 0}
                    for i in range(size - 1)]
            rows.append(rows[0] | {"address": SENDER})
            for start in range(0, len(rows), 10_000):
                s.execute(insert(Member.__table__), rows[start:start + 10_000])
        s.commit()
    if not db.is_sqlite(engine):  # as autovacuum does after a bulk import
        with engine.begin() as c:
            c.execute(text("ANALYZE member"))
    engine.dispose()


def post(port: int, to: str) -> float:
    data = (f"From: {SENDER}\r\nTo: {to}\r\nSubject: timing\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\n\r\nHello.\r\n")
    start = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail(SENDER, [to], data)
    return time.perf_counter() - start


def expansions(url: str) -> int:
    engine = db.make_engine(url)
    try:
        with db.session(engine) as s:
            return s.scalar(select(func.count()).select_from(Expansion)) or 0
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--posts", type=int, default=10)
    args = parser.parse_args()
    with database(args.database_url) as url, tempfile.TemporaryDirectory() as tmp:
        fill(url)
        port = free_port()
        config = Path(tmp) / "listserv.toml"
        config.write_text(f'[database]\nurl = "{url}"\n[smtp]\nport = {port}\n'
                          "max_messages_per_sender_per_hour = 0\n"
                          f"[delivery]\nsmarthost_port = {free_port()}\n"
                          '[web]\nport = 0\nsecret = "bench"\n')
        log = Path(tmp) / "serve.log"
        with log.open("w") as err:
            proc = subprocess.Popen([str(Path(sys.executable).parent / "listserv"),
                                     "--config", str(config), "serve", "--roles",
                                     "smtp,deliver"],
                                    stderr=err, stdout=subprocess.DEVNULL, cwd=tmp)
        try:
            while " listening: " not in log.read_text():
                time.sleep(0.1)
            times: dict[str, list[float]] = {a: [] for a in SIZES}
            for _ in range(args.posts):
                for address in SIZES:
                    times[address].append(post(port, address))
            start = time.perf_counter()
            while expansions(url):
                time.sleep(0.2)
            expanded = time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(60)
        for address, size in SIZES.items():
            print(f"{url.split(':')[0]}: {size:>7} members: time to 250 median "
                  f"{statistics.median(times[address]) * 1000:.1f} ms, worst "
                  f"{max(times[address]) * 1000:.1f} ms ({args.posts} posts)")
        print(f"then {expanded:.1f} s more until the last of the {args.posts} large posts "
              f"was expanded into its jobs")


if __name__ == "__main__":
    main()
