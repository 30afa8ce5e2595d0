#!/usr/bin/env python3
"""Scale run: a million members over 100 lists on PostgreSQL, two `listserv serve`.

One PostgreSQL schema of our own holds `--lists` lists with `--members` members in all,
the largest `--largest` and one of 10; the members are written with PostgreSQL's COPY
(see bench/README.md for why not `listserv member import`). Two real `listserv serve`
processes (every role each) share it and deliver into Postfix's `smtp-sink`. In one run
the script measures the time to the 250 of a post to the small and to the large list,
the copies per second of the large post against `smtp-source` into the same sink with
the same connections, when a confirmation mail queued one second after the large post
leaves, each process's peak RSS, then a second large post with one process killed with
SIGKILL during its expansion (members served, copies sent twice, from a dumping sink),
and last the size of the delivery bookkeeping per million copies before and after
retention. The report goes to bench/out/scale.md and stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import run
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from listserv import db, retention, roster
from listserv.config import ListsConfig, RetentionConfig, SmtpConfig

_n = run._n  # 1000000 -> '1,000,000'
SMALL = 10
JOINER = "joiner@bench.example"
# The targets.
TARGET_250_RATIO = 2.0  # the large post's 250 within twice the small one's
TARGET_SHARE = 0.5  # of smtp-source's copies/s, same sink, same connections
TARGET_CONFIRMATION_S = 2.0
TARGET_RSS_MB = 300.0


# --- the members ------------------------------------------------------------------------

def list_sizes(members: int, lists: int, largest: int) -> list[int]:
    """The largest list, the small one, and the rest of the members spread evenly."""
    others = lists - 2
    rest = members - largest - SMALL
    if others < 1 or rest < others:
        sys.exit("--members must leave at least one member for each of --lists - 2 lists")
    return [largest, SMALL] + [rest // others + (i < rest % others) for i in range(others)]


def populate(engine: Engine, sizes: list[int]) -> tuple[list[str], float]:
    """The lists through listserv's own roster, their members by COPY; (addresses, s).

    The poster is the first member of every list, so its posts are accepted as a
    member's. The addresses are spread over 97 domains, as real lists are.
    """
    started = time.monotonic()
    with db.session(engine) as s:
        lists = [roster.create_list(s, f"scale{i}@{run.DOMAIN}", name=f"Scale {i}")
                 for i in range(len(sizes))]
        s.commit()
        ids = [mlist.id for mlist in lists]
        addresses = [mlist.address for mlist in lists]
    now = datetime.datetime.now(datetime.UTC)
    raw = engine.raw_connection()
    psycopg_connection = raw.driver_connection  # COPY is psycopg's, not the DB-API's
    assert psycopg_connection is not None
    try:
        with psycopg_connection.cursor() as cur, cur.copy(
                "COPY member (list_id, address, display_name, role, delivery, moderated, "
                "created_at, bounce_score, warnings_sent) FROM STDIN") as copy:
            for list_id, size in zip(ids, sizes, strict=True):
                copy.write_row((list_id, run.POSTER, "", "member", "regular", False, now, 0, 0))
                for i in range(1, size):
                    copy.write_row((list_id, f"m{list_id}x{i}@d{i % 97}.example.net", "",
                                    "member", "regular", False, now, 0, 0))
        raw.commit()
    finally:
        raw.close()
    with engine.connect() as conn:
        conn.execute(text("ANALYZE member"))
        conn.commit()
    return addresses, time.monotonic() - started


# --- two servers ------------------------------------------------------------------------

@dataclass
class Node:
    """One `listserv serve` with its own ports, config and log."""

    name: str
    setup: run.Setup
    serve: run.Serve

    @property
    def port(self) -> int:
        return self.setup.smtp_port

    def kill(self) -> None:
        self.serve.proc.kill()
        self.serve.proc.wait()
        self.serve.log.close()


def start_pair(workdir: Path, url: str, listserv: str, sink: run.Sink, source: str,
               concurrency: int, tag: str) -> list[Node]:
    nodes = []
    for name in ("A", "B"):
        home = workdir / f"{tag}-{name}"
        home.mkdir()
        setup = run.Setup(home, url, listserv, sink, source,
                          smtp_extra=run.lifted_limits(SmtpConfig),
                          lists_extra=run.lifted_limits(ListsConfig))
        nodes.append(Node(name, setup, run.Serve(setup, concurrency)))
    return nodes


def stop_pair(nodes: list[Node]) -> None:
    for node in nodes:
        if node.serve.proc.poll() is None:
            node.serve.stop()


# --- reading the database ---------------------------------------------------------------

JOBS_OF = ("FROM delivery d JOIN outgoing o ON d.outgoing_id = o.id "
           "JOIN message m ON o.message_pk = m.id WHERE m.message_id = :mid")


def jobs_of(probe: run.Probe, message_id: str) -> int:
    """Delivery jobs of one post's copies: the expansion so far. (Their `recipients`
    shrink as copies go out, so recipients cannot be counted there.)"""
    with probe.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) {JOBS_OF}"),
                                {"mid": message_id}).scalar_one())


def last_job_stored(probe: run.Probe, message_id: str) -> datetime.datetime:
    """When the last delivery job of a post was made: the end of its expansion,
    whichever process and whatever job shape did it."""
    with probe.engine.connect() as conn:
        return conn.execute(text(f"SELECT max(d.created_at) {JOBS_OF}"),
                            {"mid": message_id}).scalar_one()


def sent_at(probe: run.Probe, address: str) -> tuple[datetime.datetime, datetime.datetime] | None:
    """(queued, done) of the one job to `address`, once it is done."""
    with probe.engine.connect() as conn:
        row = conn.execute(text(
            "SELECT created_at, done_at FROM delivery WHERE recipients = :a "
            "AND state = 'done'"), {"a": address}).first()
    return (row.created_at, row.done_at) if row else None


def wait_until(what: str, ready: Callable[[], bool], timeout: float, poll: float = 0.2
               ) -> float:
    """Monotonic time at which `ready()` first held."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout:.0f} s")
        time.sleep(poll)
    return time.monotonic()


# --- the measured run -------------------------------------------------------------------

@dataclass
class Main:
    small_250_s: float = 0.0
    large_250_s: float = 0.0
    expanded_at_250: bool = False
    expansion_s: float = 0.0  # end of the data to every recipient in a delivery job
    recipients: int = 0
    copies_s: float = 0.0  # from the 250 to the last transaction at the sink
    raw_rate: float = 0.0
    copies_sent: int = 0  # every transaction listserv made at the sink
    raw_s: float = 0.0
    connections: int = 0
    confirmation_s: float | None = None
    rss_mb: dict[str, float] = field(default_factory=dict)
    message_id: str = ""
    # CPU seconds from the large post's 250 to its last copy: each serve, the PostgreSQL
    # backends of their connections, the sink; then smtp-source and the sink in the
    # baseline. Both cores are shared by all of them: CPU per copy is what sets the rate.
    cpu_s: dict[str, float] = field(default_factory=dict)
    raw_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.recipients / self.copies_s


def measure_main(nodes: list[Node], probe: run.Probe, small: str, large: str, recipients: int,
                 timeout: float) -> Main:
    """The small post, then the large one and a join request a second after its 250."""
    a, sink = nodes[0], nodes[0].setup.sink
    r = Main(recipients=recipients, connections=sum(n.serve.concurrency for n in nodes))
    probe.wait_drained(timeout)
    _, _, r.small_250_s = run.send_one(a.port, small, "small")
    probe.wait_drained(timeout)
    base = sink.count
    cpu = _cpu_of(nodes, probe, sink)
    r.message_id, t250, r.large_250_s = run.send_one(a.port, large, "large")
    data_end = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=r.large_250_s)
    jobs_at_250 = jobs_of(probe, r.message_id)
    time.sleep(max(0.0, t250 + 1.0 - time.monotonic()))
    joined = datetime.datetime.now(datetime.UTC)
    run.send_raw(a.port, large.replace("@", "-join@"), join_request(large), JOINER)
    wait_until("the large post's copies at the sink",
               lambda: sink.count - base >= recipients + 1 and not probe.unfinished(), timeout)
    time.sleep(0.2)  # the sink's last counter line may trail the worker's commit
    r.copies_s = sink.events[-1][0] - t250
    r.cpu_s = _spent(cpu, _cpu_of(nodes, probe, sink))
    r.copies_sent = sink.count
    r.expanded_at_250 = jobs_of(probe, r.message_id) == jobs_at_250
    # From the end of the data: the 250, or the last job stored after it.
    r.expansion_s = max(r.large_250_s,
                        (last_job_stored(probe, r.message_id) - data_end).total_seconds())
    if (sent := sent_at(probe, JOINER)) is not None:
        r.confirmation_s = (sent[1] - joined).total_seconds()
    r.rss_mb = {n.name: run.peak_rss_mb(n.serve.pid) for n in nodes}
    return r


def _cpu_of(nodes: list[Node], probe: run.Probe, sink: run.Sink) -> dict[str, float]:
    """CPU seconds so far of each serve, of the PostgreSQL backends serving them (found
    by the client ports of their sockets: other sessions share the server), and of the
    sink."""
    ports = {port for node in nodes for port in _tcp_ports(node.serve.pid)}
    with probe.engine.connect() as conn:
        backends = [row.pid for row in conn.execute(text(
            "SELECT pid, client_port FROM pg_stat_activity")) if row.client_port in ports]
    cpu = {f"serve {node.name}": node.serve.cpu() for node in nodes}
    cpu |= {f"backend {pid}": run.cpu_seconds(pid) for pid in backends
            if Path(f"/proc/{pid}").exists()}
    cpu["smtp-sink"] = sink.cpu()
    return cpu


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds between two readings of _cpu_of, the backends summed (one opened
    meanwhile counts whole; one closed meanwhile is lost, as the pools keep theirs)."""
    spent = {k: v - before.get(k, 0.0) for k, v in after.items()}
    backends = sum(v for k, v in spent.items() if k.startswith("backend "))
    return {k: v for k, v in spent.items() if not k.startswith("backend ")} | {
        "PostgreSQL": backends}


def _tcp_ports(pid: int) -> set[int]:
    """The local ports of a process's TCP sockets (from /proc: its socket inodes, then
    /proc/net/tcp)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def join_request(large: str) -> bytes:
    return (f"From: {JOINER}\r\nTo: {large.replace('@', '-join@')}\r\nSubject: join\r\n"
            f"Message-ID: <join-{time.time_ns()}@bench.example>\r\n\r\njoin\r\n").encode()


def baseline(node: Node, probe: run.Probe, r: Main) -> None:
    """smtp-source, one recipient per transaction, the stored copy, as many connections
    as the two servers' delivery workers have together."""
    children, sink = _children_cpu(), node.setup.sink.cpu()
    raw = run.raw_rate(node.setup, probe.copy_of(r.message_id), r.connections, r.recipients,
                       1, 1)
    r.raw_rate, r.raw_s = raw.rate, raw.seconds
    r.raw_cpu_s = {"smtp-source": _children_cpu() - children,
                   "smtp-sink": node.setup.sink.cpu() - sink}


def _children_cpu() -> float:
    """CPU seconds of this process's children that have ended (smtp-source's runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- kill -9 during the expansion -------------------------------------------------------

@dataclass
class Kill:
    after_s: float
    got_250: bool  # before the kill: else the client retried at the other server
    jobs_at_kill: int
    recipients: int
    served: int = 0
    twice: int = 0
    jobs: int = 0  # the post's delivery jobs in the end
    copies_before_kill: int = 0
    copies_sent: int = 0  # every transaction at the sink
    seconds: float = 0.0  # from the kill until every member was served


def kill_during_expansion(workdir: Path, url: str, listserv: str, sink_bin: str,
                          source: str, concurrency: int, large: str, recipients: int,
                          after_s: float, timeout: float) -> Kill:
    """A second large post to A, A killed with SIGKILL `after_s` after the end of its data
    (half the first large post's expansion); a client whose 250 the kill cut off posts
    the same message to B, as an MTA retries. Done when every job is and the sink has
    read at least a copy per member; the dump then says who got how many."""
    dump = workdir / "dump"
    dump.mkdir()
    # Run as root, smtp-sink writes as nobody: it must reach the directory and write in it.
    workdir.chmod(0o711)
    dump.chmod(0o777)
    sink = run.Sink(sink_bin, dump=dump / "sink.dump")
    nodes = start_pair(workdir, url, listserv, sink, source, concurrency, "kill")
    probe = run.Probe(url)
    try:
        message_id, raw = run.post(large, "kill")
        answered: list[float] = []
        data_sent = threading.Event()
        client = threading.Thread(target=_post_quietly, args=(nodes[0].port, large, raw,
                                                              answered, data_sent))
        client.start()
        if not data_sent.wait(timeout):
            raise RuntimeError("the post's data was not sent")
        time.sleep(after_s)
        nodes[0].kill()
        killed = time.monotonic()
        client.join()
        k = Kill(after_s, bool(answered), jobs_of(probe, message_id), recipients)
        k.copies_before_kill = sink.count
        if not answered:
            run.send_raw(nodes[1].port, large, raw)
        wait_until("every member served after the kill", lambda: not probe.unfinished()
                   and sink.count >= recipients, timeout, 1.0)
        k.jobs = jobs_of(probe, message_id)
        k.seconds = time.monotonic() - killed
        time.sleep(0.2)  # the sink's last counter line may trail the worker's commit
        k.copies_sent = sink.count
    finally:
        stop_pair(nodes)
        sink.stop()
    copies = sum((copies_in_dump(path, message_id) for path in dump.iterdir()), Counter())
    k.served, k.twice = len(copies), sum(copies.values()) - len(copies)
    return k


def _post_quietly(port: int, large: str, raw: bytes, answered: list[float],
                  data_sent: threading.Event) -> None:
    with contextlib.suppress(OSError, RuntimeError):  # the kill cut the connection: no 250
        answered.append(run.send_raw(port, large, raw, data_sent=data_sent)[0])


RCPT = re.compile(rb"<([^>]*)>")


def copies_in_dump(path: Path, message_id: str) -> Counter[str]:
    """Copies of one post per recipient, from smtp-sink's dump (envelope lines first)."""
    copies: Counter[str] = Counter()
    rcpts: list[str] = []
    wanted = f"<{message_id}>".encode()
    with path.open("rb") as dump:
        for line in dump:
            if line.startswith(b"X-Client-Addr: "):
                rcpts = []
            elif line.startswith(b"X-Rcpt-Args: "):
                rcpts += [m.decode() for m in RCPT.findall(line[:300])[:1]]
            elif rcpts and line[:11].lower() == b"message-id:":
                if wanted in line:
                    copies.update(rcpts)
                rcpts = []
    return copies


# --- size of the bookkeeping ------------------------------------------------------------

@dataclass
class Size:
    copies: int
    tables: list[str]
    before: int
    after: int


def bookkeeping(url: str, copies: int) -> Size:
    """The copies and delivery tables (and any expansion table) in bytes (see
    table_bytes), before and after retention with every finished job 91 days old. `copies`:
    what the sinks received from listserv in the run."""
    engine = db.open_database(url)
    tables = ["outgoing", "delivery"] + sorted(
        t for t in inspect(engine).get_table_names() if "expan" in t)
    with engine.connect() as conn:
        conn.execute(text("UPDATE delivery SET done_at = done_at - interval '91 days' "
                          "WHERE done_at IS NOT NULL"))
        conn.execute(text("UPDATE outgoing SET created_at = created_at - interval '91 days'"))
        conn.commit()
    before = table_bytes(url, tables)
    while retention.sweep(engine, RetentionConfig()):  # a sweep stops after MAX_BATCHES
        pass
    engine.dispose()
    return Size(copies, tables, before, table_bytes(url, tables))


def table_bytes(url: str, tables: list[str]) -> int:
    """The live rows of each table copied into a fresh temporary table with the same
    indexes: its total size. Not VACUUM FULL of the tables themselves, which keeps every
    row version an open transaction of any other session in the database might still
    see (the test database is shared: the figures swung by 2x)."""
    engine = create_engine(db.normalize_url(url))
    used = 0
    with engine.begin() as conn:
        for table in tables:
            conn.execute(text(f"CREATE TEMPORARY TABLE live_{table} (LIKE {table} "
                              "INCLUDING ALL) ON COMMIT DROP"))
            conn.execute(text(f"INSERT INTO live_{table} SELECT * FROM {table}"))
            used += int(conn.execute(text("SELECT pg_total_relation_size(:t)"),
                                     {"t": f"live_{table}"}).scalar_one())
    engine.dispose()
    return used


# --- the report -------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**miss**"


def render(args: argparse.Namespace, argv: list[str], facts: dict[str, str], r: Main,
           k: Kill | None, size: Size | None) -> str:
    ratio = r.large_250_s / r.small_250_s
    share = r.rate / r.raw_rate if r.raw_rate else 0.0
    rows = [
        (f"250 for the {_n(args.largest)}-member list within {TARGET_250_RATIO:.0f}x the "
         f"{SMALL}-member list's", f"{r.large_250_s:.3f} s vs {r.small_250_s:.3f} s "
         f"({ratio:.1f}x)", verdict(ratio <= TARGET_250_RATIO)),
        (f"copies/s of the large post >= {TARGET_SHARE:.0%} of smtp-source's "
         f"(1 recipient per transaction, {r.connections} connections)",
         f"{_n(r.rate)}/s vs {_n(r.raw_rate)}/s ({share:.0%})", verdict(share >= TARGET_SHARE)),
        (f"confirmation queued 1 s after the large post's 250 leaves within "
         f"{TARGET_CONFIRMATION_S:.0f} s",
         "never sent" if r.confirmation_s is None else f"{r.confirmation_s:.2f} s",
         verdict(r.confirmation_s is not None and r.confirmation_s < TARGET_CONFIRMATION_S)),
        *[(f"peak RSS of serve {name} < {TARGET_RSS_MB:.0f} MB", f"{mb:.0f} MB",
           verdict(mb < TARGET_RSS_MB)) for name, mb in r.rss_mb.items()],
    ]
    out = [f"Written by `python bench/scale.py {' '.join(argv)}`. Measured: {facts['version']}. "
           f"PostgreSQL {facts['postgresql']}; {_n(args.members)} members over "
           f"{args.lists} lists (the largest {_n(args.largest)}), written by COPY in "
           f"{facts['populate']}; two `listserv serve` (every role, "
           f"`[delivery] concurrency = {args.concurrency}` each) into one `smtp-sink`.", "",
           "Machine: " + ", ".join(f"{k_} {v}" for k_, v in facts.items()
                                   if k_ not in ("version", "populate", "postgresql")) + ".",
           "", "| target | measured | result |", "|---|---|---|",
           *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
           f"The large post: {_n(r.recipients)} recipients; "
           + ("every delivery job existed at the 250: **expansion happens before the 250 "
              "in this version**" if r.expanded_at_250 else
              f"expansion finished {r.expansion_s:.2f} s after the end of the data")
           + f"; last copy {r.copies_s:.1f} s after the 250; smtp-source took "
           f"{r.raw_s:.1f} s for as many transactions.", "", cpu_text(r)]
    if k is not None:
        out += ["", kill_text(k)]
    if size is not None:
        per = 1e6 / size.copies if size.copies else 0.0
        out += ["", f"Database size of {', '.join(f'`{t}`' for t in size.tables)} "
                "(`pg_total_relation_size` of their live rows copied into fresh tables with "
                f"the same indexes) for {_n(size.copies)} copies "
                f"sent: {size.before / 1e6:.2f} MB before retention, {size.after / 1e6:.2f} MB "
                f"after (`retention.sweep`, default `[retention]`, every finished job 91 days "
                f"old): **{size.before * per / 1e6:.1f} MB and {size.after * per / 1e6:.1f} "
                "MB per million copies**."]
    return "\n".join(out) + "\n"


def cpu_text(r: Main) -> str:
    """CPU per copy of each side, in µs: the cores they share set the rates."""
    def per_copy(cpu: dict[str, float]) -> str:
        parts = [f"{name} {seconds / r.recipients * 1e6:.0f}" for name, seconds in cpu.items()]
        return (", ".join(parts)
                + f" (total {sum(cpu.values()) / r.recipients * 1e6:.0f})")
    return ("CPU per copy of the large post, µs (user + system, from /proc): listserv's "
            f"side: {per_copy(r.cpu_s)}; smtp-source's side: {per_copy(r.raw_cpu_s)}.")


def kill_text(k: Kill) -> str:
    how = ("the post had its 250 before the kill" if k.got_250 else
           "the kill cut off the 250, and the client posted the same message to B")
    return (f"kill -9 of A {k.after_s:.2f} s after the end of the data of a second large "
            f"post ({how}; "
            f"{_n(k.jobs_at_kill)} of its {_n(k.jobs)} delivery jobs stored and "
            f"{_n(k.copies_before_kill)} copies sent at the kill): "
            f"**{_n(k.served)} of {_n(k.recipients)} members served, {_n(k.twice)} copies "
            f"sent twice**; every job done {k.seconds:.1f} s after the kill.")


# --- main -------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=1_000_000)
    p.add_argument("--lists", type=int, default=100)
    p.add_argument("--largest", type=int, default=500_000)
    p.add_argument("--concurrency", type=int, default=4, help="delivery connections of "
                   "each serve (4)")
    p.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test",
                   help="an empty PostgreSQL database; a schema of its own is made and "
                   "dropped")
    p.add_argument("--timeout", type=float, default=3600, help="seconds for each wait")
    p.add_argument("--no-kill", action="store_true", help="skip the kill -9 part")
    p.add_argument("--commit", help="measure listserv as committed at this revision")
    p.add_argument("--output", type=Path, default=run.HERE / "out" / "scale.md")
    p.add_argument("--keep", action="store_true", help="keep the temp directory and schema")
    args = p.parse_args(argv)
    if not 0 < SMALL < args.largest < args.members:
        p.error("--largest must be between 10 and --members")
    return args


def scale_run(args: argparse.Namespace, argv: list[str]) -> str:
    sink_bin, source_bin = run.find_postfix_tools(install=True)
    workdir = Path(tempfile.mkdtemp(prefix="listserv-scale-"))
    listserv = (str(run.snapshot(args.commit, workdir)) if args.commit
                else shutil.which("listserv") or sys.exit("pip install -e . first"))
    facts = {**run.machine(), "version": run.measured_version(args.commit)}
    try:
        with run.database(args.database_url, workdir, args.keep) as (url, _):
            engine = db.open_database(url)
            facts["postgresql"] = ".".join(map(str, engine.dialect.server_version_info or ()))
            run.say(f"writing {args.members:,} members over {args.lists} lists")
            addresses, seconds = populate(engine, list_sizes(args.members, args.lists,
                                                             args.largest))
            engine.dispose()
            facts["populate"] = f"{seconds:.0f} s"
            large, small = addresses[0], addresses[1]
            r, k = measure_all(args, workdir, url, listserv, (sink_bin, source_bin),
                               small, large)
            run.say("retention")
            size = bookkeeping(url, r.copies_sent + (k.copies_sent if k else 0))
    finally:
        if args.keep:
            run.say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return render(args, argv, facts, r, k, size)


def measure_all(args: argparse.Namespace, workdir: Path, url: str, listserv: str,
                tools: tuple[str, str], small: str, large: str) -> tuple[Main, Kill | None]:
    sink = run.Sink(tools[0])
    nodes = start_pair(workdir, url, listserv, sink, tools[1], args.concurrency, "main")
    probe = run.Probe(url)
    try:
        run.say("posting to the small and the large list")
        r = measure_main(nodes, probe, small, large, args.largest, args.timeout)
        run.say(f"  250s {r.small_250_s:.3f} s / {r.large_250_s:.3f} s, {r.rate:,.0f} copies/s")
    finally:
        stop_pair(nodes)
    try:
        baseline(nodes[0], probe, r)
    finally:
        sink.stop()
    run.say(f"  smtp-source: {r.raw_rate:,.0f}/s")
    if args.no_kill:
        return r, None
    run.say("kill -9 during the expansion")
    k = kill_during_expansion(workdir, url, listserv, *tools, args.concurrency, large,
                              args.largest, r.expansion_s / 2, args.timeout)
    run.say("  " + kill_text(k))
    return r, k


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)
    report = scale_run(args, argv)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    run.say(f"\nwrote {args.output}\n\n{report}")


if __name__ == "__main__":
    main()
