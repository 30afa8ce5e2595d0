"""CPU per post of taking in DKIM-signed posts: what the receiver asks of DNS before the
writer's transaction (`Incoming.ask`, as its DNS thread does), the transaction itself
(`ingest_group`, one post a group) and what the receiver does after it (a held
non-member's author told if the signature verifies), in-process, on POSTS posts of
about 5 kB signed by their author's domain (its key published in a DNS server of the
bench's own, on loopback).
`--non-members` sends them From a non-member of a list that holds such posts: those are
the posts whose author is told only if the signature verifies.

    python bench/signed_ingest.py --posts 500
    PYTHONPATH=/tmp/before python bench/signed_ingest.py   # another checkout's listserv
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dkim

# tests.dns_server; appended, so that PYTHONPATH may name another checkout's listserv
sys.path.append(str(Path(__file__).resolve().parent.parent))
from listserv import db, ingest, roster, signing
from listserv.config import Config, DatabaseConfig, DnsConfig
from tests.dns_server import DnsServer

LIST = "dev@lists.example.org"
AUTHOR = "alice@author.example"
BODY = "A line of a post of about five kilobytes, as mailing lists see them.\r\n" * 70


def signed(key: bytes) -> bytes:
    raw = (f"From: Alice <{AUTHOR}>\r\nTo: {LIST}\r\nSubject: hello\r\n"
           f"Message-ID: <{uuid.uuid4().hex}@author.example>\r\n"
           f"Date: Sun, 06 Dec 2026 12:00:00 +0000\r\n\r\n{BODY}").encode()
    return dkim.sign(raw, b"a", b"author.example", key,
                     include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=500)
    parser.add_argument("--non-members", action="store_true")
    args = parser.parse_args()
    dns = DnsServer()
    with tempfile.TemporaryDirectory() as tmp:
        made = signing.keygen("author.example", "a", Path(tmp))
        name, _, rest = made.record.partition(" IN TXT ")
        dns.records[name.rstrip(".")] = ["".join(re.findall(r'"([^"]*)"', rest))]
        dns.records["_dmarc.author.example"] = ["v=DMARC1; p=none"]
        key = made.private_file.read_bytes()
        config = Config(database=DatabaseConfig(url=f"sqlite:///{tmp}/bench.db"),
                        dns=DnsConfig(nameserver="127.0.0.1", port=dns.port))
        engine = db.open_database(config.database.url)
        with db.session(engine) as s:
            mlist = roster.create_list(s, LIST, owner=None)
            if not args.non_members:
                roster.add_members(s, mlist, [AUTHOR])
            s.commit()
        posts = [signed(key) for _ in range(args.posts)]
        asking, storing, after = [], [], []
        tell = getattr(ingest, "tell_if_vouched", None)  # where the checkout has it
        for raw in posts:
            incoming = ingest.Incoming(AUTHOR, [LIST], raw)
            start = time.process_time()
            incoming.ask(config)
            asked = time.process_time()
            [result] = ingest.ingest_group(engine, config, [incoming])
            stored = time.process_time()
            assert not isinstance(result, Exception), result
            for outcome in result:
                if tell is not None and outcome.held_from_non_member is not None:
                    tell(engine, config, incoming, outcome.held_from_non_member)
            asking.append(asked - start)
            storing.append(stored - asked)
            after.append(time.process_time() - stored)
        engine.dispose()
    dns.close()
    kind = "non-member's (held)" if args.non_members else "member's"
    figures = ", ".join(f"{what} {statistics.median(t) * 1000:.2f} ms "
                        f"({statistics.mean(t) * 1000:.2f})"
                        for what, t in (("asked before the transaction", asking),
                                        ("the transaction", storing), ("after it", after)))
    print(f"{args.posts} signed {kind} posts, CPU per post, median (mean): {figures}")


if __name__ == "__main__":
    main()
