#!/usr/bin/env python3
"""Load test: many concurrent SMTP clients posting to several lists, then a check in the
database that every post the server accepted was stored, threaded and fanned out.

The real `listserv serve` (console script) on a SQLite file (or a PostgreSQL schema),
Postfix's `smtp-sink` as the smarthost, and asyncio SMTP clients in this process, each
on one persistent connection. A quarter of the posts answer an earlier post of the same
list (In-Reply-To and References), so threads grow while the load runs. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime
import email.utils
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import run
from sqlalchemy import text

DOMAIN = run.DOMAIN
# The server's per-IP and per-sender limits, when this version has them: every client
# here is 127.0.0.1, and one poster per list sends thousands of posts.


@dataclass
class Tally:
    accepted: dict[str, str] = field(default_factory=dict)  # Message-ID -> list address
    refused: Counter = field(default_factory=Counter)  # reply code -> count
    errors: list[str] = field(default_factory=list)  # dropped connections, timeouts
    latencies: list[float] = field(default_factory=list)  # end of data -> 250


def body(n: int) -> str:
    return "".join(f"Line {i} of load post {n}, about the thing before it.\r\n"
                   for i in range(12))


def compose_post(list_address: str, poster: str, n: int, parent: str | None) -> tuple[str, bytes]:
    message_id = f"load-{n}-{random.getrandbits(40):x}@bench.example"
    subject = f"Load topic {n % 500}"
    lines = [f"From: Poster {n % 50} <{poster}>", f"To: {list_address}",
             f"Subject: {'Re: ' if parent else ''}{subject}",
             f"Date: {email.utils.formatdate()}", f"Message-ID: <{message_id}>"]
    if parent:
        lines += [f"In-Reply-To: <{parent}>", f"References: <{parent}>"]
    data = "\r\n".join(lines) + "\r\n\r\n" + body(n)
    # Dot-stuffing: no body line starts with "." here.
    return message_id, data.encode()


async def client(port: int, lists: list[str], posters: dict[str, str], jobs: asyncio.Queue,
                 tally: Tally, timeout: float, recent: dict[str, collections.deque]) -> None:
    """One persistent connection, posting until the job queue is empty; a reply answers
    one of the last posts accepted on its list."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> int:
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                raise ConnectionError("server closed the connection")
            if line[3:4] != b"-":
                return int(line[:3])

    try:
        if await reply() != 220:
            raise ConnectionError("no greeting")
        writer.write(b"EHLO load.bench.example\r\n")
        await reply()
        while True:
            try:
                n = jobs.get_nowait()
            except asyncio.QueueEmpty:
                break
            list_address = lists[n % len(lists)]
            earlier = recent.setdefault(list_address, collections.deque(maxlen=50))
            parent = random.choice(earlier) if earlier and random.random() < 0.25 else None
            message_id, data = compose_post(list_address, posters[list_address], n, parent)
            writer.write(f"MAIL FROM:<{posters[list_address]}>\r\n"
                         f"RCPT TO:<{list_address}>\r\nDATA\r\n".encode())
            codes = [await reply() for _ in range(3)]
            if codes[2] != 354:
                tally.refused[codes[2]] += 1
                writer.write(b"RSET\r\n")
                await reply()
                continue
            writer.write(data + b"\r\n.\r\n")
            sent = time.monotonic()
            code = await reply()
            tally.latencies.append(time.monotonic() - sent)
            if code == 250:
                tally.accepted[message_id] = list_address
                earlier.append(message_id)
            else:
                tally.refused[code] += 1
        writer.write(b"QUIT\r\n")
        await writer.drain()
    except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
        tally.errors.append(repr(exc))
    finally:
        writer.close()


async def post_all(port: int, lists: list[str], posters: dict[str, str], posts: int,
                   clients: int, tally: Tally, timeout: float) -> None:
    jobs: asyncio.Queue[int] = asyncio.Queue()
    for n in range(posts):
        jobs.put_nowait(n)
    recent: dict[str, collections.deque] = {}
    await asyncio.gather(*(client(port, lists, posters, jobs, tally, timeout, recent)
                           for _ in range(clients)))


def check(probe: run.Probe, tally: Tally, members: int, copies: int) -> dict[str, int]:
    """What the database says of the accepted posts: stored, threaded, fanned out."""
    with probe.engine.connect() as conn:
        conn.execute(text("CREATE TEMP TABLE accepted (message_id TEXT PRIMARY KEY)"))
        conn.execute(text("INSERT INTO accepted VALUES (:m)"),
                     [{"m": m} for m in tally.accepted])

        def count(sql: str) -> int:
            return conn.execute(text(sql)).scalar_one()
        figures = {
            "copies smtp-sink read (personal: one recipient each)": copies,
            "stored (accepted)": count(
                "SELECT count(*) FROM message m JOIN accepted a USING (message_id) "
                "WHERE m.state = 'accepted'"),
            "threaded": count(
                "SELECT count(*) FROM thread_node t JOIN accepted a USING (message_id) "
                "JOIN message m ON m.id = t.message_pk"),
            "in a thread summary": count(
                "SELECT count(DISTINCT t.message_id) FROM thread_node t "
                "JOIN accepted a USING (message_id) JOIN thread_summary s "
                "ON s.list_id = t.list_id AND s.thread_id = t.thread_id"),
            "fanned out (a list copy)": count(
                "SELECT count(*) FROM outgoing o JOIN message m ON m.id = o.message_pk "
                "JOIN accepted a USING (message_id)"),
            "delivery jobs not done": count(
                "SELECT count(*) FROM delivery WHERE state != 'done'"),
            "threads": count("SELECT count(*) FROM thread_summary"),
            "replies threaded under their parent": count(
                "SELECT count(*) FROM thread_node t JOIN accepted a USING (message_id) "
                "WHERE t.parent_id IS NOT NULL"),
        }
    figures["copies expected (one per member per post)"] = len(tally.accepted) * members
    return figures


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--posts", type=int, default=20_000)
    p.add_argument("--lists", type=int, default=10)
    p.add_argument("--members", type=int, default=5, help="members per list (5)")
    p.add_argument("--concurrency", type=int, default=4, help="[delivery] concurrency")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for any one reply (120)")
    p.add_argument("--database-url", help="PostgreSQL instead of a SQLite file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--output", type=Path, help="also write the Markdown block here")
    args = p.parse_args(argv)
    random.seed(args.seed)
    sink_bin, source_bin = run.find_postfix_tools(install=True)
    listserv_bin = shutil.which("listserv") or sys.exit("listserv is not on PATH")
    workdir = Path(tempfile.mkdtemp(prefix="listserv-load-"))
    sink = run.Sink(sink_bin)
    started = datetime.datetime.now(datetime.UTC)
    try:
        with run.database(args.database_url, workdir, args.keep) as (url, db_name):
            setup = run.Setup(workdir, url, listserv_bin, sink, source_bin,
                              smtp_extra=run.lifted_limits())
            machine = run.machine()
            lists, posters = [], {}
            for i in range(args.lists):
                address, _, _ = run.make_list(setup, f"load{i}", args.members - 1)
                lists.append(address)
                posters[address] = run.POSTER
            serve = run.Serve(setup, args.concurrency)
            tally = Tally()
            try:
                serve.start_phase()
                base = sink.count
                cpu0, start = serve.cpu(), time.monotonic()
                asyncio.run(post_all(setup.smtp_port, lists, posters, args.posts,
                                     args.clients, tally, args.timeout))
                seconds = time.monotonic() - start
                probe = run.Probe(url)
                drain = probe.wait_drained(1800)
                cpu = serve.cpu() - cpu0
                peak = serve.phase_peak()
                time.sleep(0.5)  # the sink's last counter line may trail the last commit
                figures = check(probe, tally, args.members, sink.count - base)
            finally:
                serve.stop()
            errors_in_log = sum(1 for line in serve.log_path.read_text(errors="replace")
                                .splitlines()
                                if any(w in line for w in ("Traceback", "could not", "failed")))
    finally:
        sink.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = render(args, started, machine, db_name, tally, seconds, drain, cpu, peak,
                    figures, errors_in_log)
    print(report)
    if args.output:
        args.output.write_text(report, encoding="utf-8")


def render(args: argparse.Namespace, started: datetime.datetime, machine: dict,
           db_name: str, tally: Tally, seconds: float, drain: float, cpu: float,
           peak: float, figures: dict[str, int], errors_in_log: int) -> str:
    lat = sorted(tally.latencies) or [0.0]
    ok = (not tally.errors and not tally.refused and not errors_in_log
          and len(tally.accepted) == args.posts
          and figures["stored (accepted)"] == figures["threaded"] == len(tally.accepted)
          and figures["fanned out (a list copy)"] == len(tally.accepted)
          and figures["copies smtp-sink read (personal: one recipient each)"]
          == figures["copies expected (one per member per post)"]
          and figures["delivery jobs not done"] == 0)
    rows = [
        ("clients (persistent connections)", f"{args.clients}"),
        ("posts sent / accepted with 250", f"{args.posts:,} / {len(tally.accepted):,}"),
        ("refused (by code)", dict(tally.refused) or "none"),
        ("client errors (dropped, timeouts)",
         f"{len(tally.errors)}" + (f": {tally.errors[0]}" if tally.errors else "")),
        ("server log lines with a traceback, \"could not\" or \"failed\"", f"{errors_in_log}"),
        ("time to the last 250", f"{seconds:.1f} s ({len(tally.accepted) / seconds:.0f} posts/s)"),
        ("250 latency after the end of data: median / p99 / max",
         f"{lat[len(lat) // 2] * 1000:.0f} / {lat[int(len(lat) * 0.99)] * 1000:.0f} / "
         f"{lat[-1] * 1000:.0f} ms"),
        ("then until every delivery was done", f"{drain:.1f} s"),
        ("serve CPU over the posting phase", f"{cpu / seconds:.2f} cores"),
        ("peak RSS of serve (VmHWM)", f"{peak:.0f} MB"),
        *[(k, f"{v:,}") for k, v in figures.items()],
        ("result", "**pass**: every accepted post stored, threaded and fanned out, no errors"
         if ok else "**miss**: see the rows above"),
    ]
    return "\n".join([
        f"Load: `python bench/load.py {' '.join(sys.argv[1:])}` on {started:%Y-%m-%d %H:%M} "
        f"UTC, {db_name}, {args.lists} lists of {args.members} members (the poster is one), "
        f"[delivery] concurrency {args.concurrency}, into smtp-sink; load average at start "
        f"{machine['load average at start']}.", "",
        "| | |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], ""])


if __name__ == "__main__":
    main()
