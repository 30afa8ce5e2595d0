"""What looking for a destination's probe (probes.py) adds to each claim: with no
destination in the table (the normal path), and with one whose back-off is over and
whose JOBS queued jobs (default 100,000) are none of them due yet, so the look-up reads
them all and finds nothing, at every claim until one is due (the worst case). Each run
is rolled back; the median of RUNS.

    python bench/probe.py                         # SQLite in a temporary folder
    python bench/probe.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta

from queue_ls import database  # bench/, the script's folder
from sqlalchemy import insert, text

from listserv import db, probes
from listserv.enums import DeliveryState, Lane
from listserv.models import utcnow
from listserv.queue_tables import Delivery, Destination, DestinationDomain, Outgoing

DOMAIN = "gmail.com"


def fill(url: str, jobs: int) -> None:
    engine = db.open_database(url)
    now = utcnow()
    with db.session(engine) as s:
        copy = s.execute(insert(Outgoing).returning(Outgoing.id), [
            {"data": b"x", "slots": "", "created_at": now}]).scalar_one()
        later = now + timedelta(hours=1)
        rows = [{"outgoing_id": copy, "lane": Lane.POSTS, "turn": i, "mail_from": "x@x",
                 "recipients": f"r{i}@{DOMAIN}", "domain": DOMAIN,
                 "state": DeliveryState.QUEUED, "attempts": 1, "created_at": now,
                 "next_attempt_at": later, "last_error": "421 4.7.0 slow down"}
                for i in range(jobs)]
        for start in range(0, len(rows), 20_000):
            s.execute(insert(Delivery), rows[start:start + 20_000])
        s.commit()
    if not db.is_sqlite(engine):
        with engine.begin() as c:
            c.execute(text("ANALYZE delivery"))
    engine.dispose()


def timed(engine, runs: int) -> float:
    """The median milliseconds of probes._probe, rolled back."""
    times = []
    for _ in range(runs):
        with db.session(engine) as s:
            start = time.perf_counter()
            assert probes._probe(s, "bench:1", timedelta(seconds=30)) == []
            times.append(time.perf_counter() - start)
            s.rollback()
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with database(args.database_url) as url:
        fill(url, args.jobs)
        engine = db.make_engine(url)
        kind = url.split(":")[0]
        print(f"{kind}: no destination: {timed(engine, args.runs):.2f} ms")
        with db.session(engine) as s:
            s.add(Destination(name=DOMAIN, backoff_until=utcnow(), deferrals=1))
            s.flush()
            s.add(DestinationDomain(domain=DOMAIN, destination=DOMAIN))
            s.commit()
        print(f"{kind}: a destination over its back-off with {args.jobs} jobs none due: "
              f"{timed(engine, args.runs):.2f} ms")
        engine.dispose()


if __name__ == "__main__":
    main()
