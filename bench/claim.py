"""The claim with lanes and turns on a backlog: JOBS queued delivery jobs (default
1,000,000) of LISTS lists in the posts' lane, plus a few in the lane a person waits in;
the median time of `claims.claim` taking ROOM jobs (RUNS runs, each claim given back
after), the plans of the claim and of the turns' look-ups, and the plan of an
expansion's member chunk on a 100,000-member list.

    python bench/claim.py                         # SQLite in a temporary folder
    python bench/claim.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import enum
import statistics
import time
from datetime import datetime, timedelta

from queue_ls import database  # bench/, the script's folder
from sqlalchemy import insert, text, update

from listserv import claims, db, fanout, outbox, roster
from listserv.enums import DeliveryState, Lane
from listserv.models import Member, utcnow
from listserv.queue_tables import Delivery, Outgoing

LISTS = 20


def fill(url: str, jobs: int) -> None:
    engine = db.open_database(url)
    now = utcnow()
    with db.session(engine) as s:
        lists = [roster.create_list(s, f"list{i}@lists.example.org", owner=None)
                 for i in range(LISTS)]
        s.flush()
        s.execute(insert(Member.__table__), [
            {"list_id": lists[0].id, "address": f"m{i}@example.net", "display_name": "",
             "role": "member", "delivery": "regular", "moderated": False, "created_at": now,
             "bounce_score": 0.0, "warnings_sent": 0} for i in range(100_000)])
        copies = s.execute(insert(Outgoing).returning(Outgoing.id), [
            {"list_id": m.id, "data": b"x", "slots": "", "created_at": now}
            for m in lists]).scalars().all()
        rows = [{"outgoing_id": copies[i % LISTS], "lane": Lane.POSTS,
                 "list_id": lists[i % LISTS].id, "turn": i // LISTS, "mail_from": "x@x",
                 "recipients": "r@example.com", "state": DeliveryState.QUEUED,
                 "attempts": 0, "created_at": now, "next_attempt_at": now,
                 "last_error": ""} for i in range(jobs)]
        rows += [r | {"lane": Lane.WAITING, "list_id": None, "turn": 0} for r in rows[:10]]
        for start in range(0, len(rows), 20_000):
            s.execute(insert(Delivery), rows[start:start + 20_000])
        s.commit()
    if not db.is_sqlite(engine):  # as autovacuum would have by then; listserv runs no
        with engine.begin() as c:  # ANALYZE of the delivery table on SQLite
            c.execute(text("ANALYZE delivery, member"))
    engine.dispose()


def plan(engine, statement, params: dict) -> str:
    """The database's plan of a statement of ours, with these values."""
    compiled = statement.compile(engine)
    values = compiled.construct_params(params)
    if db.is_sqlite(engine):  # positional, as the driver gets them
        values = tuple(_plain(values[k]) for k in compiled.positiontup)
    explain = "EXPLAIN QUERY PLAN " if db.is_sqlite(engine) else "EXPLAIN "
    with engine.connect() as c:
        return "\n".join(" ".join(str(v) for v in row)
                         for row in c.exec_driver_sql(explain + str(compiled), values))


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return value.value if isinstance(value, enum.Enum) else value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--room", type=int, default=32)
    args = parser.parse_args()
    with database(args.database_url) as url:
        fill(url, args.jobs)
        engine = db.make_engine(url)
        kind = url.split(":")[0]
        times = []
        for _ in range(args.runs):
            with db.session(engine) as s:
                start = time.perf_counter()
                jobs = claims.claim(s, "bench:1", args.room, timedelta(seconds=30))
                times.append(time.perf_counter() - start)
                assert jobs
                s.execute(update(Delivery).where(Delivery.state == DeliveryState.SENDING)
                          .values(state=DeliveryState.DONE))  # sent: the next claim goes on
                s.commit()
        print(f"{kind}: claim of {args.room} among {args.jobs} queued jobs: median "
              f"{statistics.median(times) * 1000:.1f} ms, worst {max(times) * 1000:.1f} ms")
        now = utcnow()
        print("-- the claim:\n" + plan(engine, claims._CLAIM, {
            "now": now, "room": args.room, "worker": "w", "lease_until": now}))
        print("-- head turn:\n" + plan(engine, outbox._HEAD_TURN, {}))
        print("-- a list's last turn:\n" + plan(engine, outbox._LAST_TURN, {"list_id": 1}))
        chunk = {"list_id": 1, "mode": "regular", "now": now, "after": 50_000,
                 "chunk": fanout.CHUNK}
        with db.session(engine) as s:
            start = time.perf_counter()
            found = fanout.members(s, 1, 50_000)
            took = time.perf_counter() - start
        print(f"-- a chunk of {len(found)} members after id 50,000 of 100,000: "
              f"{took * 1000:.1f} ms\n" + plan(engine, fanout._MEMBERS, chunk))
        engine.dispose()


if __name__ == "__main__":
    main()
