"""The claim with lanes and turns on a backlog: JOBS queued delivery jobs (default
1,000,000) of LISTS lists in the posts' lane, plus a few in the lane a person waits in;
the median time of `claims.claim` taking ROOM jobs (RUNS runs, each claimed set marked
done after), the plans of the claim and of the turns' look-ups, and the plan of an
expansion's member chunk on a 100,000-member list.

With --deferred N, N more jobs queued before those and deferred an hour (as a long
smarthost outage leaves them; 1 in 100 in the lane a person waits in): the claim must
not read past them. With --paused N, N jobs to one destination in back-off
(paused.example), due and first in each order (half new, half tried and due: deferred
copies whose retry time has passed), queued before the others, which go to 100 other
domains; with --busy as well, that destination is not in back-off but busy (the worker
holds its jobs already: the claim's `busy`). The claim must not read past them either.
On PostgreSQL the claim's rows read are counted (EXPLAIN ANALYZE, rolled back).

    python bench/claim.py                         # SQLite in a temporary folder
    python bench/claim.py --database-url postgresql://postgres@127.0.0.1:5432/test
    python bench/claim.py --jobs 1000 --deferred 1000000
    python bench/claim.py --jobs 1000 --paused 1000000 [--busy]
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
from listserv.queue_tables import Delivery, Destination, DestinationDomain, Outgoing

LISTS = 20
PAUSED = "paused.example"


def fill(url: str, jobs: int, deferred: int, paused: int = 0, busy: bool = False) -> None:
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
                 "recipients": "r@example.com", "domain": f"d{i % 100}.example",
                 "state": DeliveryState.QUEUED, "attempts": 0, "created_at": now,
                 "next_attempt_at": now, "last_error": ""}
                for i in range(paused + deferred + jobs)]
        later, earlier = now + timedelta(hours=1), now - timedelta(minutes=5)
        for i, row in enumerate(rows[:paused]):
            row.update(domain=PAUSED)
            if i % 2:
                row.update(attempts=1, next_attempt_at=earlier, last_error="421 4.7.0 slow down")
        for i, row in enumerate(rows[paused:paused + deferred]):
            row.update(attempts=1, next_attempt_at=later, last_error="451 4.3.0 try later")
            if i % 100 == 0:
                row.update(lane=Lane.WAITING, list_id=None, turn=0)
        queued = paused + deferred
        rows += [r | {"lane": Lane.WAITING, "list_id": None, "turn": 0}
                 for r in rows[queued:queued + 10]]
        for start in range(0, len(rows), 20_000):
            s.execute(insert(Delivery), rows[start:start + 20_000])
        if paused and not busy:
            s.add(Destination(name=PAUSED, backoff_until=later, deferrals=1))
            s.add(DestinationDomain(domain=PAUSED, destination=PAUSED))
        s.commit()
    if not db.is_sqlite(engine):  # as autovacuum would have by then; listserv runs no
        with engine.begin() as c:  # ANALYZE of the delivery table on SQLite
            c.execute(text("ANALYZE delivery, member"))
    engine.dispose()


def plan(engine, statement, params: dict, analyze: bool = False) -> str:
    """The database's plan of a statement of ours, with these values; with `analyze`,
    on PostgreSQL, as run (rows read), then rolled back."""
    # expanded: a list parameter (the claim's `busy`) becomes one per value
    state = statement.compile(engine).construct_expanded_state(params)
    values = state.parameters
    if db.is_sqlite(engine):  # positional, as the driver gets them
        values = tuple(_plain(values[k]) for k in state.positiontup)
    explain = ("EXPLAIN QUERY PLAN " if db.is_sqlite(engine)
               else "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN ")
    with engine.connect() as c:
        return "\n".join(" ".join(str(v) for v in row)
                         for row in c.exec_driver_sql(explain + state.statement, values))


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
    parser.add_argument("--deferred", type=int, default=0)
    parser.add_argument("--paused", type=int, default=0)
    parser.add_argument("--busy", action="store_true")
    args = parser.parse_args()
    busy = [PAUSED] if args.busy else []
    with database(args.database_url) as url:
        fill(url, args.jobs, args.deferred, args.paused, args.busy)
        engine = db.make_engine(url)
        kind = url.split(":")[0]
        times, cpu = [], []
        for _ in range(args.runs):
            with db.session(engine) as s:
                start, started = time.perf_counter(), time.process_time()
                jobs = claims.claim(s, "bench:1", args.room, timedelta(seconds=30), busy)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - started)
                assert jobs and all(j.domain != PAUSED for j in jobs)
                s.execute(update(Delivery).where(Delivery.state == DeliveryState.SENDING)
                          .values(state=DeliveryState.DONE, done_at=utcnow()))  # sent
                s.commit()
        print(f"{kind}: claim of {args.room} among {args.jobs} queued jobs "
              f"and {args.deferred} deferred, {args.paused} to a destination "
              f"{'busy' if args.busy else 'in back-off'}: median "
              f"{statistics.median(times) * 1000:.1f} ms, worst {max(times) * 1000:.1f} ms; "
              f"CPU of this process (SQLite's included) median "
              f"{statistics.median(cpu) * 1000:.2f} ms")
        now = utcnow()
        shaped = sorted({PAUSED} if args.paused else {"busy.example"})
        for lane in Lane:
            for kind, statements in zip(("tried", "new"), claims._CLAIMS, strict=True):
                values = {"now": now, "in_lane": lane, "room": args.room, "worker": "w",
                          "lease_until": now, "shaped": shaped, "window": claims.WINDOW * args.room,
                          "from_key": statements.start, "from_id": 0}
                for name in ("whole", "window", "floor"):
                    print(f"-- the claim of {kind} jobs in lane {lane.name}, {name}:\n"
                          + plan(engine, getattr(statements, name), values, analyze=True))
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
