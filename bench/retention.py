"""Database size per 10,000 copies sent, before and after [retention] housekeeping.

A list of MEMBERS members gets POSTS posts through the receiver (in process, as
`listserv serve` stores them: the archived post, one personal copy and a delivery job
per member), 1% of the copies bounce back, and every job is marked sent. Then time
passes (every timestamp moves back 91 days) and `retention.sweep` runs as housekeeping
does. Sizes are the pages in use (SQLite) or the tables' total size (PostgreSQL),
after a VACUUM (FULL, on PostgreSQL) so that freed space is not counted.

    python bench/retention.py                       # SQLite in a temporary folder
    python bench/retention.py --database-url postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import Engine

from listserv import db, retention, roster
from listserv.config import Config, DatabaseConfig
from listserv.enums import DeliveryState
from listserv.ingest import Incoming, ingest_group
from listserv.models import Message, Token, utcnow
from listserv.queue_tables import Delivery, Outgoing

LIST = "bench@lists.example.org"
BODY = ("A post of about the usual size, a few paragraphs of plain text.\n" * 30)
BOUNCE = (Path(__file__).parent.parent / "tests" / "data" / "corpus" / "bounces" / "sisimai"
          / "lhost-postfix-01.eml")


def post(number: int) -> bytes:
    return (f"From: m0@example.com\r\nTo: {LIST}\r\nSubject: post {number}\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@example.com>\r\n"
            "Date: Thu, 26 Nov 2026 10:00:00 +0000\r\n\r\n" + BODY.replace("\n", "\r\n")
            ).encode()


def store_one(engine: Engine, config: Config, incoming: Incoming) -> None:
    """Stored as the receiver stores it, in a transaction of its own."""
    result = ingest_group(engine, config, [incoming])[0]
    if isinstance(result, Exception):
        raise result


def fill(engine: Engine, config: Config, members: int, posts: int) -> int:
    with db.session(engine) as s:
        mlist = roster.create_list(s, LIST, name="Bench", owner=None)
        roster.add_members(s, mlist, [f"m{i}@example.com" for i in range(members)])
        s.commit()
    for number in range(posts):
        store_one(engine, config, Incoming("m0@example.com", [LIST], post(number)))
    bounce = BOUNCE.read_bytes().replace(b"kijitora@example.org", b"m1@example.com")
    for _ in range(members * posts // 100):
        store_one(engine, config, Incoming(
            "", ["bench-bounces+m1=example.com@lists.example.org"], bounce))
    with db.session(engine) as s:
        s.execute(update(Delivery).values(state=DeliveryState.DONE, done_at=utcnow()))
        s.commit()
        return sum(len(r.split("\n")) for r in s.scalars(select(Delivery.recipients)))


def age(engine: Engine, days: int) -> None:
    delta = timedelta(days=days)
    with db.session(engine) as s:
        for model, column in ((Delivery, "done_at"), (Outgoing, "created_at"),
                              (Message, "received_at"), (Token, "expires_at")):
            for row in s.scalars(select(model)):
                setattr(row, column, getattr(row, column) - delta)
        s.commit()


def size(url: str) -> int:
    """Bytes in use, freed space not counted. A plain engine: VACUUM runs outside any
    transaction, and listserv's SQLite engine begins one on every connection."""
    engine = create_engine(db.normalize_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as c:
        # PostgreSQL's plain VACUUM keeps the freed pages in the table for new rows
        c.execute(text("VACUUM" if db.is_sqlite(engine) else "VACUUM FULL"))
        if db.is_sqlite(engine):
            used = c.execute(text("PRAGMA page_count")).scalar() * c.execute(
                text("PRAGMA page_size")).scalar()
        else:
            used = c.execute(text(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN "
                "pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                "AND n.nspname = current_schema()")).scalar()
    engine.dispose()
    return int(used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--posts", type=int, default=100)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/retention.db"
    engine = db.open_database(url)
    config = Config(database=DatabaseConfig(url=url))
    empty = size(url)
    copies = fill(engine, config, args.members, args.posts)
    before = size(url)
    age(engine, 91)
    swept = retention.sweep(engine, config.retention)
    after = size(url)
    per = 10_000 / copies
    print(f"{engine.dialect.name}: {copies} copies ({args.posts} posts to {args.members} "
          f"members, {copies // 100} bounces); empty schema {empty / 1e6:.2f} MB")
    print(f"before retention: {(before - empty) / 1e6:.2f} MB, "
          f"{(before - empty) * per / 1e6:.2f} MB per 10,000 copies")
    print(f"after retention:  {(after - empty) / 1e6:.2f} MB, "
          f"{(after - empty) * per / 1e6:.2f} MB per 10,000 copies; swept {swept}")


if __name__ == "__main__":
    main()
