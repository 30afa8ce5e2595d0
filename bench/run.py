#!/usr/bin/env python3
"""Benchmark listserv against Postfix's smtp-sink: ingest, fan-out, peak RSS, import.

Everything runs on loopback high ports in a temporary directory: the real `listserv
serve` (the console script, as a user runs it), Postfix's `smtp-sink` as the smarthost,
and `smtp-source` driving the same sink with the same recipients per transaction and
the same number of connections, as the ceiling. The figures, the machine and each
target with pass or miss go to bench/out/run.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import email.utils
import io
import itertools
import math
import os
import platform
import re
import resource
import shutil
import signal
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import proctree
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from listserv import db
from listserv.config import ListsConfig, SmtpConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOMAIN = "lists.bench.example"
POSTER = "poster@bench.example"
RCPTS_PER_TRANSACTION = 100
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The targets of the issue, on the same machine in the same run.
TARGET_FANOUT_SHARE = 0.5  # of the raw smtp-source -> smtp-sink rate
TARGET_FIRST_DELIVERY_S = 1.0
TARGET_INGEST_PER_S = 500.0  # with 16 clients, on SQLite
TARGET_RSS_MB = 200.0  # peak of `listserv serve` at 100,000 members
TARGET_IMPORT_S = 10.0  # `listserv member import` of 100,000 addresses


# --- tools and machine ------------------------------------------------------------------

def find_postfix_tools(install: bool) -> tuple[str, str]:
    """smtp-sink and smtp-source, installing Debian's postfix package if allowed.

    Installing postfix may start its master daemon on port 25; the bench only needs the
    two test programs, so a daemon started by our install is stopped again.
    """
    found = _which_postfix_tools()
    if found:
        return found
    if not install:
        sys.exit("smtp-sink/smtp-source not found; install Debian's postfix package "
                 "or run without --no-install")
    was_running = _postfix_master_running()
    apt_install("postfix")
    if _postfix_master_running() and not was_running:
        subprocess.run([*_sudo(), "postfix", "stop"], check=False)
    found = _which_postfix_tools()
    if not found:
        sys.exit("postfix installed but smtp-sink/smtp-source still not found")
    return found


def apt_install(*packages: str) -> None:
    """Debian's packages, the way an admin installs them (with sudo when not root)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*_sudo(), "apt-get", "update", "-q"], check=True, env=env)
    subprocess.run([*_sudo(), "apt-get", "install", "-y", "-q", *packages], check=True,
                   env=env)


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def _which_postfix_tools() -> tuple[str, str] | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    sink, source = shutil.which("smtp-sink", path=path), shutil.which("smtp-source", path=path)
    return (sink, source) if sink and source else None


def _postfix_master_running() -> bool:
    for status in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if status.read_text().strip() == "master":
                return True
    return False


def snapshot(rev: str, workdir: Path) -> Path:
    """A launcher for listserv as committed at `rev`, so a run measures one known state
    even while the working tree is being edited."""
    dest = workdir / f"listserv-{rev}"
    dest.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    # pyproject maps the package listserv.templates to the top-level templates/.
    shutil.copytree(dest / "templates", dest / "listserv" / "templates")
    launcher = dest / "listserv-launcher"
    # Python puts the script's own directory first on sys.path: this listserv wins.
    # The guard: a process the import spawns runs this file again as __mp_main__.
    launcher.write_text(f"#!{sys.executable}\nfrom listserv.cli import main\n\n"
                        "if __name__ == \"__main__\":\n    main()\n")
    launcher.chmod(0o755)
    return launcher


def measured_version(rev: str | None) -> str:
    """Which listserv the figures belong to, for RESULTS.md."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                              text=True).stdout.strip()
    if rev:
        return f"commit {git('rev-parse', '--short', rev)} ({git('log', '-1', '--format=%s', rev)})"
    dirty = " with uncommitted changes" if git("status", "--porcelain", "listserv") else ""
    return f"working tree at {git('rev-parse', '--short', 'HEAD')}{dirty}"


def machine() -> dict[str, str]:
    """What the figures were measured on, for RESULTS.md."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    return {"CPU": cpu, "cores": str(os.cpu_count()), "RAM": f"{mem_kb / 1048576:.1f} GiB",
            "kernel": platform.release(), "Python": platform.python_version(),
            "SQLite": sqlite3.sqlite_version, "load average at start":
            " ".join(f"{x:.2f}" for x in os.getloadavg())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, alive: Callable[[], bool]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process for port {port} exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


# --- processes --------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process and all its threads, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process has had (since the last reset); 0
    for a process gone by then (public-inbox-httpd may replace its worker), rather than
    losing a whole run's report."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss(pid: int) -> None:
    """Writing 5 to clear_refs resets VmHWM (Linux 4.0+), so each phase gets its own peak."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def run_child(cmd: list[str]) -> tuple[float, resource.struct_rusage, str]:
    """(wall seconds, resource usage, output) of a command that must succeed."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with proc.stdout:
        output = proc.stdout.read().decode(errors="replace")
    # wait4 rather than wait: it gives this child's own usage (peak RSS in KB on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - start
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output}")
    return elapsed, usage, output


def run_timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, output) of a command that must succeed. The peak
    is its largest process's, read from /proc (proctree): wait4's ru_maxrss was never
    below this benchmark's own peak."""
    tree = proctree.run(cmd, cmd[0])
    return tree.seconds, proctree.mb(tree.largest.peak_kb), tree.output


class Sink:
    """Postfix's smtp-sink on a high port; `-c` prints a counter at every "." it reads,
    which a thread timestamps as it arrives."""

    def __init__(self, binary: str, dump: Path | None = None) -> None:
        """With `dump`, smtp-sink also appends every transaction, envelope first, to that
        file (`-D`): who got what, for counting copies sent twice."""
        self.port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        dumping = ["-D", str(dump)] if dump else []
        self.proc = subprocess.Popen([binary, *user, "-c", *dumping, f"127.0.0.1:{self.port}",
                                      "256"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.events: list[tuple[float, int]] = [(time.monotonic(), 0)]
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port, 10, lambda: self.proc.poll() is None)

    def _read(self) -> None:
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            now = time.monotonic()
            counts = [int(n) for n in re.findall(rb"mesg=(\d+)", chunk)]
            if counts:
                with self.changed:
                    self.events.append((now, max(counts)))
                    self.changed.notify_all()

    @property
    def count(self) -> int:
        return self.events[-1][1]

    def wait_for(self, target: int, timeout: float) -> float | None:
        """The time at which the sink had read `target` messages, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.count < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(left)
        return next(t for t, n in self.events if n >= target)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# The benchmarks post thousands of messages from one sender, with one subject (one
# thread), over many connections.
LIMITS = {SmtpConfig: {"max_connections_per_ip": 100_000,
                       "max_messages_per_sender_per_hour": 10_000_000},
          ListsConfig: {"max_posts_per_sender_per_thread": 0}}


def lifted_limits(section: type) -> str:
    """Lines of a config section lifting the server's per-IP, per-sender and per-thread
    limits, if it has them (an older revision measured with --commit does not)."""
    known = {f.name for f in dataclasses.fields(section)}
    return "".join(f"{k} = {v}\n" for k, v in LIMITS[section].items() if k in known)


@dataclass
class Setup:
    """Where everything lives for one run."""

    workdir: Path
    database_url: str
    listserv: str
    sink: Sink
    source: str
    smtp_port: int = field(default_factory=free_port)
    web_port: int = field(default_factory=free_port)
    smtp_extra: str = ""  # more [smtp] lines (the rate limits lifted, see lifted_limits)
    lists_extra: str = ""  # [lists] lines, likewise

    def config_path(self, concurrency: int) -> Path:
        path = self.workdir / f"listserv-c{concurrency}.toml"
        path.write_text(
            f'[database]\nurl = "{self.database_url}"\n\n'
            f'[smtp]\nhost = "127.0.0.1"\nport = {self.smtp_port}\n{self.smtp_extra}\n'
            f'[delivery]\nsmarthost_host = "127.0.0.1"\nsmarthost_port = {self.sink.port}\n'
            f"concurrency = {concurrency}\n"
            f"max_recipients_per_transaction = {RCPTS_PER_TRANSACTION}\n\n"
            f'[web]\nhost = "127.0.0.1"\nport = {self.web_port}\n'
            f'base_url = "http://127.0.0.1:{self.web_port}"\n\n'
            f"[lists]\n{self.lists_extra}", encoding="utf-8")
        return path

    def cli(self, *args: str) -> tuple[float, float, str]:
        return run_timed([self.listserv, "--config", str(self.config_path(4)), *args])


class Serve:
    """`listserv serve` as a subprocess, its log in the work directory."""

    def __init__(self, setup: Setup, concurrency: int) -> None:
        self.log_path = setup.workdir / f"serve-c{concurrency}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [setup.listserv, "--config", str(setup.config_path(concurrency)), "serve"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.concurrency = concurrency
        self.peak = 0.0
        wait_port(setup.smtp_port, 60, lambda: self.proc.poll() is None)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def start_phase(self) -> None:
        """Reset VmHWM so the next reading is this phase's peak; keep the overall peak."""
        self.peak = max(self.peak, peak_rss_mb(self.pid))
        reset_peak_rss(self.pid)

    def phase_peak(self) -> float:
        return peak_rss_mb(self.pid)

    def stop(self) -> float:
        """SIGTERM; the peak RSS over the whole run, read just before it."""
        peak = max(self.peak, peak_rss_mb(self.pid))
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return peak


# --- reading the database ---------------------------------------------------------------

class Probe:
    """Plain read-only queries, in deferred transactions that never take SQLite's write
    lock (listserv's own engine begins IMMEDIATE, which would stall the server)."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(db.normalize_url(url))

    def unfinished(self) -> int:
        with self.engine.connect() as conn:
            # A post's jobs are written after its 250, by its expansion (fanout.py).
            return conn.execute(text(
                "SELECT (SELECT count(*) FROM delivery WHERE state IN ('queued', 'sending'))"
                " + (SELECT count(*) FROM expansion)")).scalar()

    def accepted(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM message WHERE state = 'accepted'")).scalar()

    def deliveries_of(self, message_id: str) -> tuple[int, Counter]:
        """(jobs, jobs by state) of the list copy of one post."""
        with self.engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT d.state FROM delivery d "
                "JOIN outgoing o ON d.outgoing_id = o.id JOIN message m ON o.message_pk = m.id "
                "WHERE m.message_id = :mid"), {"mid": message_id}).all()
        return len(rows), Counter(r.state for r in rows)

    def copy_of(self, message_id: str) -> bytes:
        with self.engine.connect() as conn:
            return conn.execute(text(
                "SELECT o.data FROM outgoing o JOIN message m ON o.message_pk = m.id "
                "WHERE m.message_id = :mid"), {"mid": message_id}).scalar_one()

    def wait_drained(self, timeout: float, poll: float = 0.1) -> float:
        start = time.monotonic()
        while self.unfinished():
            if time.monotonic() - start > timeout:
                raise RuntimeError(f"deliveries still pending after {timeout} s")
            time.sleep(poll)
        return time.monotonic() - start


# --- the mail we send -------------------------------------------------------------------

BODY = "\n".join(
    f"Line {i:02d} of a plain-text post of typical length, quoting and answering "
    "the message before it." for i in range(24)) + "\n"


def post(list_address: str, tag: str) -> tuple[str, bytes]:
    """A plain post of about 2.5 KB with its own Message-ID."""
    msg = EmailMessage()
    message_id = f"{tag}-{uuid.uuid4().hex[:12]}@bench.example"
    msg["From"] = f"Bench Poster <{POSTER}>"
    msg["To"] = list_address
    msg["Subject"] = f"Benchmark post {tag}"
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg["Message-ID"] = f"<{message_id}>"
    msg.set_content(BODY)
    return message_id, msg.as_bytes()


def send_one(port: int, list_address: str, tag: str) -> tuple[str, float, float]:
    """Post once; the Message-ID, the time the 250 came back and how long after the
    end of the data it came (the receiver queues every delivery job before it)."""
    message_id, raw = post(list_address, tag)
    t250, accept = send_raw(port, list_address, raw)
    return message_id, t250, accept


def send_raw(port: int, list_address: str, raw: bytes, mail_from: str = POSTER,
             data_sent: threading.Event | None = None) -> tuple[float, float]:
    """Post `raw`; the time the 250 came back and how long after the end of the data
    (`data_sent` is set at that end: bench/scale.py kills a server at a moment after it)."""
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo()
        client.mail(mail_from)
        client.rcpt(list_address)
        client.putcmd("data")
        code, reply = client.getreply()
        if code != 354:
            raise RuntimeError(f"DATA refused: {code} {reply!r}")
        lines = raw.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
        client.send(b"".join(b"." * line.startswith(b".") + line + b"\r\n" for line in lines)
                    + b".\r\n")
        sent = time.monotonic()
        if data_sent:
            data_sent.set()
        code, reply = client.getreply()
        t250 = time.monotonic()
        if code != 250:
            raise RuntimeError(f"post refused: {code} {reply!r}")
        return t250, t250 - sent


# --- phases -----------------------------------------------------------------------------

def make_list(setup: Setup, local: str, members: int) -> tuple[str, float, float]:
    """Create a list with the poster as owner and member, and import `members`
    addresses; (list address, import seconds, import peak RSS in MB)."""
    address = f"{local}@{DOMAIN}"
    setup.cli("list", "create", address, "--owner", POSTER)
    path = setup.workdir / f"{local}.txt"
    path.write_text("".join(f"member{i:06d}@d{i % 97}.example.net\n" for i in range(members)))
    seconds, rss, output = setup.cli("member", "import", address, str(path))
    if f"added {members}," not in output:
        raise RuntimeError(f"import of {members} did not add them all:\n{output}")
    return address, seconds, rss


@dataclass
class Ingest:
    client: str  # what posted: one of INGEST_CLIENTS
    clients: int
    posts: int
    seconds: float
    serve_cpu: float
    bench_cpu: float
    drain_seconds: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.posts / self.seconds


def _post_many(port: int, list_address: str, count: int, tag: str) -> None:
    with smtplib.SMTP("127.0.0.1", port) as client:
        for i in range(count):
            _, raw = post(list_address, f"{tag}-{i}")
            client.sendmail(POSTER, [list_address], raw)


def ingest(setup: Setup, serve: Serve, probe: Probe, list_address: str, posts: int,
           clients: int, client: str) -> Ingest:
    """`posts` posts over `clients` concurrent connections; time to the last 250. Every
    post must have been stored as accepted."""
    before = probe.accepted()
    serve.start_phase()
    cpu0 = serve.cpu()
    seconds, bench_cpu = INGEST_CLIENTS[client](setup, list_address, posts, clients)
    serve_cpu = serve.cpu() - cpu0
    stored = probe.accepted() - before
    if stored != posts:
        raise RuntimeError(f"ingest with {clients} {client} clients: {posts} posts sent, "
                           f"{stored} stored as accepted")
    drain = probe.wait_drained(600)
    return Ingest(client, clients, posts, seconds, serve_cpu, bench_cpu, drain,
                  serve.phase_peak())


def _ingest_smtplib(setup: Setup, list_address: str, posts: int, clients: int
                    ) -> tuple[float, float]:
    """(seconds, CPU seconds of the benchmark's own threads)."""
    shares = [posts // clients + (i < posts % clients) for i in range(clients)]
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            _post_many(setup.smtp_port, list_address, shares[i], f"ingest{clients}-{i}")
        except BaseException as exc:  # noqa: BLE001  reported after the join, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    bench0, start = _own_cpu(), time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds, bench_cpu = time.monotonic() - start, _own_cpu() - bench0
    if errors:
        raise RuntimeError(f"ingest with {clients} clients failed: {errors[0]!r}")
    return seconds, bench_cpu


def _ingest_source(setup: Setup, list_address: str, posts: int, clients: int
                   ) -> tuple[float, float]:
    """smtp-source: persistent connections (-d), its own post of about 2.5 KB each with a
    Message-Id of its own (process id, session, message number); (seconds, its CPU)."""
    cmd = [setup.source, "-d", "-s", str(clients), "-m", str(posts), "-l", "2500",
           "-S", "Benchmark post", "-f", POSTER, "-t", list_address,
           f"127.0.0.1:{setup.smtp_port}"]
    seconds, usage, _ = run_child(cmd)
    return seconds, usage.ru_utime + usage.ru_stime


# The posting clients, each giving (seconds, its CPU seconds): Postfix's smtp-source, a
# C program whose own CPU stays small, so that on two cores it does not take the
# server's second core, or Python's smtplib in threads of the benchmark (each post its
# own message, built as a mail client would).
INGEST_CLIENTS: dict[str, Callable[[Setup, str, int, int], tuple[float, float]]] = {
    "smtp-source": _ingest_source, "smtplib": _ingest_smtplib}


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class FanOut:
    members: int
    concurrency: int
    recipients: int
    jobs: int
    transactions: int  # SMTP transactions the sink read
    accept_s: float  # from the end of the data to the 250
    first_s: float
    last_s: float
    serve_cpu: float
    sink_cpu: float
    peak_rss_mb: float
    message_id: str
    shared: bool = False  # a list whose copies are the same for everyone

    @property
    def rate(self) -> float:
        return self.recipients / self.last_s

    @property
    def key(self) -> tuple[int, int, bool]:
        return (self.members, self.concurrency, self.shared)

    @property
    def label(self) -> str:
        return f"{_n(self.members)} ({'shared' if self.shared else 'personal'} copies)"

    @property
    def per_transaction(self) -> int:
        return max(1, round(self.recipients / self.transactions))


def fan_out(setup: Setup, serve: Serve, probe: Probe, list_address: str, members: int,
            concurrency: int, timeout: float) -> FanOut:
    """One post to the list; from its 250 to the last transaction the sink read.

    The queue is empty before the post, and its expansion is counted as unfinished until
    it has written all the post's jobs, so every transaction the sink reads until the
    queue is empty again is this post's. Counting transactions rather than expecting one
    per 100 recipients keeps the figure right whether the server sends shared or
    personal copies.
    """
    probe.wait_drained(600)
    recipients = members + 1  # the poster is a member too
    base = setup.sink.count
    serve.start_phase()
    cpu0, sink0 = serve.cpu(), setup.sink.cpu()
    message_id, t250, accept = send_one(setup.smtp_port, list_address, f"fanout{members}")
    probe.wait_drained(timeout, poll=0.02)
    serve_cpu, sink_cpu = serve.cpu() - cpu0, setup.sink.cpu() - sink0
    time.sleep(0.2)  # the sink's last counter line may trail the worker's commit
    first = setup.sink.wait_for(base + 1, 0)
    last, count = setup.sink.events[-1]
    jobs, states = probe.deliveries_of(message_id)
    if first is None or set(states) != {"done"} or count - base < jobs:
        raise RuntimeError(f"fan-out to {members}: {count - base} transactions at the sink "
                           f"for {jobs} jobs: {dict(states)}")
    return FanOut(members, concurrency, recipients, jobs, count - base, accept, first - t250,
                  last - t250, serve_cpu, sink_cpu, serve.phase_peak(), message_id)


@dataclass
class Raw:
    concurrency: int
    messages: int
    per_transaction: int
    runs: list[float]

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

    @property
    def rate(self) -> float:
        return self.messages * self.per_transaction / self.seconds


def raw_rate(setup: Setup, copy: bytes, concurrency: int, messages: int,
             per_transaction: int, repeat: int) -> Raw:
    """smtp-source -> smtp-sink with the same copy, `messages` transactions of
    `per_transaction` recipients over `concurrency` connections; median of `repeat`."""
    path = setup.workdir / "copy.eml"
    # smtp-source -F adds the CRLF to each line and does the dot-stuffing itself.
    path.write_bytes(copy.replace(b"\r\n", b"\n"))
    cmd = [setup.source, "-s", str(concurrency), "-m", str(messages), "-r",
           str(per_transaction), "-d", "-F", str(path), "-f", f"bench-bounces@{DOMAIN}",
           "-M", "bench.example", f"127.0.0.1:{setup.sink.port}"]
    runs = []
    for _ in range(repeat):
        base = setup.sink.count
        seconds, _, _ = run_timed(cmd)
        if setup.sink.wait_for(base + messages, 10) is None:
            raise RuntimeError("smtp-sink did not count every smtp-source message")
        runs.append(seconds)
    return Raw(concurrency, messages, per_transaction, runs)


# --- profiling --------------------------------------------------------------------------

@contextlib.contextmanager
def profiled(serve: Serve, out: Path) -> Iterator[Path]:
    """py-spy samples the server for the duration of the block; collapsed stacks to `out`."""
    pyspy = shutil.which("py-spy")
    if pyspy is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    spy = subprocess.Popen([pyspy, "record", "--pid", str(serve.pid), "--format", "raw",
                            "--rate", "200", "--nonblocking", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # let py-spy attach before the work starts
    try:
        yield out
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        spy.wait(30)


# Frames under which every sample sits: they say nothing about where the time goes.
ENTRY_POINTS = {"listserv.cli.main", "listserv.cli_server.serve", "listserv.server.run",
                "listserv.server.serve", "listserv.server.run.<locals>.main"}


def summarize_profile(path: Path, top: int = 15) -> tuple[list[tuple[str, float]],
                                                            list[tuple[str, float]], int]:
    """(functions by own time, listserv functions by inclusive time, samples) as shares."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            if name.startswith("listserv.") and name not in ENTRY_POINTS:
                inclusive[name] += count
    share = (lambda c: [(name, n / total) for name, n in c.most_common(top)]) if total else (
        lambda c: [])
    return share(own), share(inclusive), total


def _frame_name(frame: str) -> str:
    """'fn (pkg/mod.py:12)' -> 'mod.fn', with the listserv package kept as 'listserv.mod'."""
    match = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not match:
        return frame
    function, filename = match.groups()
    parts = Path(filename).with_suffix("").parts
    if "listserv" in parts:
        return "listserv." + ".".join(parts[parts.index("listserv") + 1:]) + "." + function
    return f"{parts[-1] if parts else filename}.{function}"


# --- the report -------------------------------------------------------------------------

@dataclass
class Results:
    started: datetime.datetime
    args: list[str]
    machine: dict[str, str]
    database: str
    version: str
    imports: dict[int, tuple[float, float]] = field(default_factory=dict)
    ingests: list[Ingest] = field(default_factory=list)
    fanouts: list[FanOut] = field(default_factory=list)
    raws: dict[tuple[int, int, bool], Raw] = field(default_factory=dict)
    raws100: dict[tuple[int, int, bool], Raw] = field(default_factory=dict)
    serve_peaks: dict[int, float] = field(default_factory=dict)
    profiles: list[tuple[str, list, list, int]] = field(default_factory=list)
    elapsed: float = 0.0


def _n(x: float) -> str:
    return f"{x:,.0f}"


def _verdict(ok: bool, miss: str) -> str:
    return "**pass**" if ok else f"**miss**: {miss}"


def target_rows(r: Results) -> list[tuple[str, str, str]]:
    rows = []
    for f in r.fanouts:
        raw = r.raws[f.key]
        share = f.rate / raw.rate
        rows.append((f"fan-out to {f.label} over {f.concurrency} connections "
                     f">= {TARGET_FANOUT_SHARE:.0%} of raw smtp-sink rate",
                     f"{_n(f.rate)}/s = {share:.0%} of {_n(raw.rate)}/s",
                     _verdict(share >= TARGET_FANOUT_SHARE,
                              f"{(TARGET_FANOUT_SHARE - share) * 100:.0f} points short; "
                              f"needs {TARGET_FANOUT_SHARE / share:.1f}x")))
    for f in r.fanouts:
        rows.append((f"first delivery to {f.label} (c={f.concurrency}) within "
                     f"{TARGET_FIRST_DELIVERY_S:.0f} s of the 250", f"{f.first_s:.3f} s",
                     _verdict(f.first_s <= TARGET_FIRST_DELIVERY_S,
                              f"{f.first_s - TARGET_FIRST_DELIVERY_S:.2f} s late")))
    for i in r.ingests:
        if i.clients == 16:
            sqlite = r.database == "SQLite"
            rows.append((f"ingest with 16 {i.client} clients >= {TARGET_INGEST_PER_S:.0f} "
                         "posts/s"
                         + ("" if sqlite else " (target is for SQLite; this run is PostgreSQL)"),
                         f"{i.rate:.0f} posts/s",
                         _verdict(i.rate >= TARGET_INGEST_PER_S,
                                  f"{TARGET_INGEST_PER_S - i.rate:.0f} posts/s short "
                                  f"({i.rate / TARGET_INGEST_PER_S:.0%} of target)")))
    big = [f for f in r.fanouts if f.members >= 100_000]
    if big:
        peak = max(r.serve_peaks.values())
        rows.append((f"peak RSS of serve < {TARGET_RSS_MB:.0f} MB at 100,000 members",
                     f"{peak:.0f} MB", _verdict(peak < TARGET_RSS_MB,
                                                 f"{peak - TARGET_RSS_MB:.0f} MB over")))
    if 100_000 in r.imports:
        seconds = r.imports[100_000][0]
        rows.append((f"member import of 100,000 addresses < {TARGET_IMPORT_S:.0f} s",
                     f"{seconds:.1f} s", _verdict(seconds < TARGET_IMPORT_S,
                                                  f"{seconds - TARGET_IMPORT_S:.1f} s over")))
    return rows


def bounds(r: Results) -> list[str]:
    """What the CPU figures say bounds each result, in plain sentences."""
    lines = []
    for f in r.fanouts:
        serve, sink = f.serve_cpu / f.last_s, f.sink_cpu / f.last_s
        if serve >= 0.85:
            why = ("`listserv serve` is CPU-bound: one Python process with one GIL keeps "
                   "about one core busy")
        elif sink >= 0.85:
            why = "smtp-sink is CPU-bound"
        else:
            why = "neither process fills a core: waiting (round trips, commits, polling)"
        lines.append(f"- Fan-out to {f.label} over {f.concurrency} connections: serve "
                     f"used {serve:.2f} cores and smtp-sink {sink:.2f} over {f.last_s:.2f} s "
                     f"({f.serve_cpu / f.transactions * 1000:.2f} ms of serve CPU per "
                     f"{f.per_transaction}-recipient "
                     f"transaction); {why}.")
    for i in r.ingests:
        serve = i.serve_cpu / i.seconds
        lines.append(f"- Ingest with {i.clients} {i.client} client(s): serve used "
                     f"{serve:.2f} cores ({i.serve_cpu / i.posts * 1000:.2f} ms CPU per "
                     f"post), the clients {i.bench_cpu / i.seconds:.2f} cores"
                     + ("; serve is CPU-bound." if serve >= 0.85 else
                        "; serve is not CPU-bound, so per-post latency (commit fsync, thread "
                        "hand-offs, round trips) bounds it."))
    return lines


def render(r: Results) -> str:
    out = [
        "# listserv benchmark results", "",
        f"Written by `python bench/run.py {' '.join(r.args)}` on "
        f"{r.started:%Y-%m-%d %H:%M} UTC in {r.elapsed / 60:.1f} min. Measured: listserv "
        f"{r.version}. Database: {r.database}. "
        "Everything runs on loopback: the real `listserv serve` (console script), Postfix's "
        "`smtp-sink` as the smarthost, `smtp-source` for the ceiling. "
        f"`max_recipients_per_transaction = {RCPTS_PER_TRANSACTION}`.", "",
        "## Machine", "", "| | |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in r.machine.items()], "",
        "## Targets", "", "| target | measured | result |", "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in target_rows(r)], "",
        "## Fan-out", "",
        "One post to a list of N members plus the poster. \"250 after\" is how long the "
        "poster waited for the 250 after the end of its data (every delivery job is queued "
        "before it); first and last are from that 250 to the first and the last transaction "
        "smtp-sink read (its `-c` counter, timestamped as it arrives), until the `delivery` "
        "table showed every job of the post done. Transactions is what the sink read, with "
        "the recipients each carried on average (1: a personal copy per member). The raw "
        "rate is `smtp-source -s C -m M -r R -d -F <the stored list copy>` into the same "
        "sink with the same C connections, M transactions and R recipients each, median of "
        "the runs listed.", "",
        "| members | connections | transactions (rcpts each) | 250 after (s) | first (s) | "
        "last (s) | deliveries/s | raw deliveries/s (runs, s) | share of raw | serve CPU "
        "(cores) | sink CPU (cores) | serve peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in r.fanouts:
        raw = r.raws[f.key]
        runs = ", ".join(f"{s:.2f}" for s in raw.runs)
        out.append(f"| {f.label} | {f.concurrency} | {_n(f.transactions)} "
                   f"({f.per_transaction}) | {f.accept_s:.3f} | {f.first_s:.3f} | "
                   f"{f.last_s:.2f} | {_n(f.rate)} | {_n(raw.rate)} ({runs}) | "
                   f"{f.rate / raw.rate:.0%} | {f.serve_cpu / f.last_s:.2f} | "
                   f"{f.sink_cpu / f.last_s:.2f} | {f.peak_rss_mb:.0f} |")
    if r.raws100:
        out += ["", "The server sent fewer than 100 recipients per transaction. For "
                "comparison, the raw rate with 100 recipients per transaction (the shape "
                "of the ceiling quoted in the targets), same copy and connections:", "",
                "| members | connections | raw deliveries/s at 100 per transaction (runs, s) "
                "| fan-out as a share of it |", "|---|---|---|---|"]
        out += [f"| {f.label} | {f.concurrency} | {_n(raw.rate)} "
                f"({', '.join(f'{s:.2f}' for s in raw.runs)}) | {f.rate / raw.rate:.1%} |"
                for f in r.fanouts if (raw := r.raws100.get(f.key))]
    out += ["", "## Ingest", "",
            "Posts of about 2.5 KB from a member to a list of three members, over "
            "persistent connections: from Postfix's `smtp-source -d -s CLIENTS -l 2500` "
            "(in C; its own generated posts, each with its own Message-Id), or from "
            "smtplib (threads in the benchmark process, posts built with `email`). "
            "Posts/s is posts over the time to the last 250; every post was checked to be "
            "stored as accepted. Drain is the time after that until every delivery job "
            "was done.", "",
            "| client | clients | posts | seconds | posts/s | serve CPU (cores) "
            "| client CPU (cores) "
            "| drain (s) | serve peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {i.client} | {i.clients} | {i.posts} | {i.seconds:.2f} | {i.rate:.0f} | "
            f"{i.serve_cpu / i.seconds:.2f} | {i.bench_cpu / i.seconds:.2f} | "
            f"{i.drain_seconds:.2f} | {i.peak_rss_mb:.0f} |" for i in r.ingests]
    out += ["", "## Member import and memory", "",
            "| what | figure |", "|---|---|"]
    out += [f"| `listserv member import` of {_n(n)} addresses (wall, with interpreter start) "
            f"| {s:.2f} s ({n / s:,.0f}/s), peak RSS {mb:.0f} MB |"
            for n, (s, mb) in sorted(r.imports.items())]
    out += [f"| peak RSS (VmHWM) of `listserv serve`, concurrency {c}, whole run | {mb:.0f} MB |"
            for c, mb in r.serve_peaks.items()]
    out += ["", "## What bounds the figures", "", *bounds(r)]
    for profile in r.profiles:
        out += _render_profile(*profile)
    return "\n".join(out) + "\n"


def _render_profile(what: str, own: list, inclusive: list, samples: int) -> list[str]:
    return [
        "", f"## Profile of {what}", "",
        f"`py-spy record --nonblocking --rate 200` on `listserv serve` during {what} "
        f"({samples} samples of threads on CPU).", "",
        "| function (own time) | share |", "|---|---|",
        *[f"| `{name}` | {share:.1%} |" for name, share in own], "",
        "| listserv function (inclusive) | share |", "|---|---|",
        *[f"| `{name}` | {share:.1%} |" for name, share in inclusive],
    ]


# --- main -------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", default="10000,100000",
                   help="list sizes for fan-out, comma-separated (default 10000,100000)")
    p.add_argument("--shared", default="10000",
                   help="list sizes for fan-out of shared copies (verp off, a footer "
                   "without member links), comma-separated; '' for none (default 10000)")
    p.add_argument("--concurrency", default="4,8",
                   help="delivery connections, comma-separated (default 4,8)")
    p.add_argument("--posts", type=int, default=2000, help="posts per ingest run (2000)")
    p.add_argument("--clients", default="1,16", help="ingest client counts (default 1,16)")
    p.add_argument("--ingest-clients", default=",".join(INGEST_CLIENTS),
                   help="what posts in the ingest runs, comma-separated: smtp-source "
                   "(Postfix's, in C) and/or smtplib (threads of the benchmark) "
                   f"(default {','.join(INGEST_CLIENTS)})")
    p.add_argument("--raw-repeat", type=int, default=3,
                   help="smtp-source runs per figure; the median is kept (3)")
    p.add_argument("--quick", action="store_true",
                   help="small run: 2,000 members, 200 posts, one concurrency (4)")
    p.add_argument("--database-url", help="an empty PostgreSQL database (a schema of its "
                   "own is made and dropped); default: a SQLite file in a temp directory")
    p.add_argument("--profile", action="store_true", help="after the figures, profile one "
                   "more fan-out to the largest list and one more ingest with py-spy and "
                   "add the summaries")
    p.add_argument("--output", type=Path, default=HERE / "out" / "run.md",
                   help="where to write the results (bench/out/run.md; RESULTS.md keeps "
                   "dated sections written from these by hand)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temp directory (logs, database, profile)")
    p.add_argument("--commit", help="measure listserv as committed at this git revision "
                   "(git archive into the temp directory) instead of the installed one")
    p.add_argument("--listserv", help="the listserv executable to measure (default: the "
                   "console script on PATH)")
    p.add_argument("--no-install", action="store_true",
                   help="do not apt-get install postfix when smtp-sink is missing")
    args = p.parse_args(argv)
    args.ingest_clients = [c for c in args.ingest_clients.split(",") if c]
    if not args.ingest_clients or set(args.ingest_clients) - set(INGEST_CLIENTS):
        p.error(f"--ingest-clients: one or more of {', '.join(INGEST_CLIENTS)}")
    if args.quick:
        args.members, args.shared, args.posts, args.concurrency = "2000", "2000", 200, "4"
    return args


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@contextlib.contextmanager
def database(url: str | None, workdir: Path, keep: bool) -> Iterator[tuple[str, str]]:
    """(url, name for the report): a SQLite file, or a PostgreSQL schema of our own."""
    if not url:
        yield f"sqlite:///{workdir / 'listserv.db'}", "SQLite"
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    plain = db.normalize_url(url).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{db.normalize_url(url)}{sep}options=-csearch_path%3D{schema}", "PostgreSQL"
    finally:
        if not keep:
            with psycopg.connect(plain, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


def run(args: argparse.Namespace, argv: list[str]) -> Results:
    sink_bin, source_bin = find_postfix_tools(install=not args.no_install)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="listserv-bench-"))
    if args.commit:
        listserv_bin = str(snapshot(args.commit, workdir))
    else:
        listserv_bin = args.listserv or shutil.which("listserv") or sys.exit(
            "the listserv console script is not on PATH: pip install -e .")
    sink = Sink(sink_bin)
    try:
        with database(args.database_url, workdir, args.keep) as (url, db_name):
            setup = Setup(workdir, url, listserv_bin, sink, source_bin,
                          smtp_extra=lifted_limits(SmtpConfig),
                          lists_extra=lifted_limits(ListsConfig))
            results = Results(datetime.datetime.now(datetime.UTC), argv, machine(), db_name,
                              args.listserv or measured_version(args.commit))
            measure(setup, args, results)
    finally:
        sink.stop()
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results.elapsed = time.monotonic() - started
    return results


def measure(setup: Setup, args: argparse.Namespace, results: Results) -> None:
    sizes, concurrencies = _ints(args.members), _ints(args.concurrency)
    say("creating lists and importing members")
    ingest_list, _, _ = make_list(setup, "ingest", 2)
    lists = {}
    for n in sizes:
        lists[n], seconds, rss = make_list(setup, f"fan{n}", n)
        results.imports[n] = (seconds, rss)
        say(f"  import of {n:,}: {seconds:.2f} s")
    shared_sizes, shared_lists = _ints(args.shared), {}
    for n in shared_sizes:
        shared_lists[n], _, _ = make_list(setup, f"shared{n}", n)
        # Nothing of the member's own in a copy: one copy for up to 100 recipients.
        setup.cli("list", "set", shared_lists[n], "verp", "off")
        setup.cli("list", "set", shared_lists[n], "footer", "{{ name }} list: {{ address }}")
    probe = Probe(setup.database_url)
    for c in concurrencies:
        serve = Serve(setup, c)
        try:
            if c == concurrencies[0]:
                for client, clients in itertools.product(args.ingest_clients,
                                                         _ints(args.clients)):
                    result = ingest(setup, serve, probe, ingest_list, args.posts, clients,
                                    client)
                    results.ingests.append(result)
                    say(f"  ingest, {clients} {client} client(s): {result.rate:.0f} posts/s")
            for n, shared in [(n, False) for n in sizes] + [(n, True) for n in shared_sizes]:
                f = fan_out(setup, serve, probe, (shared_lists if shared else lists)[n], n, c,
                            timeout=600)
                f.shared = shared
                results.fanouts.append(f)
                copy = probe.copy_of(f.message_id)
                raw = raw_rate(setup, copy, c, f.transactions, f.per_transaction,
                               args.raw_repeat)
                results.raws[f.key] = raw
                if f.per_transaction != RCPTS_PER_TRANSACTION:
                    # The ceiling the issue quotes: 100 recipients per transaction.
                    results.raws100[f.key] = raw_rate(
                        setup, copy, c, math.ceil(f.recipients / RCPTS_PER_TRANSACTION),
                        RCPTS_PER_TRANSACTION, args.raw_repeat)
                say(f"  fan-out {f.label}, c={c}: first {f.first_s:.3f} s, last "
                    f"{f.last_s:.2f} s, {f.rate:,.0f}/s; raw {raw.rate:,.0f}/s "
                    f"({f.rate / raw.rate:.0%})")
            if args.profile and c == concurrencies[-1]:
                profile_more(setup, serve, probe, args, lists, ingest_list, results)
        finally:
            results.serve_peaks[c] = serve.stop()


def profile_more(setup: Setup, serve: Serve, probe: Probe, args: argparse.Namespace,
                 lists: dict[int, str], ingest_list: str, results: Results) -> None:
    """One more fan-out to the largest list and one more ingest, each under py-spy."""
    n, c = max(lists), serve.concurrency
    with profiled(serve, setup.workdir / "profile-fan-out.txt") as path:
        f = fan_out(setup, serve, probe, lists[n], n, c, 600)
    results.profiles.append((f"one fan-out to {_n(n)} over {c} connections "
                             f"({_n(f.rate)}/s under the profiler)", *summarize_profile(path)))
    clients, client = max(_ints(args.clients)), args.ingest_clients[0]
    with profiled(serve, setup.workdir / "profile-ingest.txt") as path:
        i = ingest(setup, serve, probe, ingest_list, args.posts, clients, client)
    results.profiles.append((f"one ingest of {args.posts} posts with {clients} {client} "
                             "clients "
                             f"({i.rate:.0f} posts/s under the profiler)",
                             *summarize_profile(path)))


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    results = run(args, argv)
    report = render(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report, encoding="utf-8")
    say(f"\nwrote {args.output}\n")
    say(report)


if __name__ == "__main__":
    main()
