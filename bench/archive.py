#!/usr/bin/env python3
"""Benchmark the web archive: import a generated mbox, then time its pages over HTTP.

The real console script does the work, as an admin would run it: `listserv archive
import` of a realistic N-message mbox (bench/mbox_gen.py) into a fresh SQLite file or
PostgreSQL schema, timed with its peak RSS; then `listserv serve`, and one keep-alive
httpx client asks for the list page, thread pages, message pages, searches and the
Atom feed, sequentially, and reports median and p95 per page. Issue 6's targets are
public-inbox 1.9's p95s, so in the same run the same mbox goes into a public-inbox v2
inbox (Debian's package, installed if missing) and `public-inbox-httpd` is asked for
the same pages; listserv's p95 is judged against the one measured here (`--no-peer`
skips it). The Markdown report goes to OUT/archive.md. See bench/README.md.

    python bench/archive.py --messages 100000 --db sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import mbox_gen
import proctree
import run
from sqlalchemy import create_engine, text

from listserv import db
from listserv.urls import quote_id

HERE = Path(__file__).resolve().parent
LIST = "dev@lists.bench.example"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_IMPORT_PER_S = 1000.0
TARGET_UNDER_MS = 20.0
Target = tuple[str, dict[str, str]]  # path and query of one request
MIN_BODY = 512  # bytes: a 200 shorter than this is an error page, not a fast page
# The helpers `listserv archive import` starts (archive_import.parsed_mails), by a piece
# of their command line; public-inbox's name themselves ("git fast-import", "shard[0]").
IMPORT_HELPERS = [("multiprocessing.spawn", "parsing process"),
                  ("multiprocessing.resource_tracker", "resource tracker")]
# (page, issue 6's public-inbox 1.9 p95 in ms, taken once on an earlier Intel Xeon and
# kept only as a note: the verdict compares with public-inbox measured in the same run;
# HyperKitty 1.3.12 at 20,000 messages)
PAGES = [("list", 5.6, ""), ("thread", 33.0, "113 ms p95"), ("message", 4.7, ""),
         ("search", 28.0, "1.1 s per search"), ("atom", 11.0, "")]


# --- the mbox and the database ----------------------------------------------------------

def mbox_for(out: Path, messages: int, seed: int) -> tuple[Path, float | None]:
    """The generated mbox, made once per size and seed (the text is deterministic, so a
    kept file is the same file); the seconds it took, None when it was already there."""
    path = out / f"archive-{messages}-seed{seed}.mbox"
    if path.exists():
        return path, None
    start = time.monotonic()
    partial = path.with_suffix(".partial")
    with partial.open("wb") as f:
        mbox_gen.write_mbox(f, messages, seed, LIST)
    partial.rename(path)
    return path, time.monotonic() - start


@contextlib.contextmanager
def fresh_database(kind: str, out: Path, pg_url: str, keep: bool
                   ) -> Iterator[tuple[str, str]]:
    """(url, name): an empty SQLite file under OUT, or a PostgreSQL schema of our own."""
    if kind == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            (out / f"listserv.db{suffix}").unlink(missing_ok=True)
    with run.database(pg_url if kind == "postgresql" else None, out, keep) as found:
        yield found


def postgresql_version(url: str) -> str:
    try:
        engine = create_engine(db.normalize_url(url), connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            return conn.execute(text("SHOW server_version")).scalar_one()
    except Exception as exc:  # noqa: BLE001  a report line, not a reason to stop
        return f"not reachable ({type(exc).__name__})"


@dataclass
class Corpus:
    """What was imported, read back from the database."""

    messages: int
    threads: int
    largest_thread: int
    single_threads: int


def corpus(url: str) -> Corpus:
    engine = create_engine(db.normalize_url(url))
    with engine.connect() as conn:
        list_id = conn.execute(text("SELECT id FROM mailing_list WHERE address = :a"),
                               {"a": LIST}).scalar_one()
        count = conn.execute(text("SELECT count(*) FROM message WHERE list_id = :l"),
                             {"l": list_id}).scalar_one()
        threads, largest, single = conn.execute(text(
            "SELECT count(*), coalesce(max(messages), 0), "
            "coalesce(sum(CASE WHEN messages = 1 THEN 1 ELSE 0 END), 0) "
            "FROM thread_summary WHERE list_id = :l"), {"l": list_id}).one()
    engine.dispose()
    return Corpus(count, threads, largest, single)


# --- what to ask for --------------------------------------------------------------------

@dataclass
class Sample:
    """What both servers are asked for: the same threads, messages and queries."""

    list_pages: int
    threads: list[str]  # thread ids (the root's Message-ID)
    messages: list[str]
    queries: list[str]


def sample(url: str, rng: random.Random, count: int, list_pages: int) -> Sample:
    """Varied: threads of every size (the largest among them), messages at random and
    the largest ones, search words from common to rare and two-word queries."""
    engine = create_engine(db.normalize_url(url))
    with engine.connect() as conn:
        list_id = conn.execute(text("SELECT id FROM mailing_list WHERE address = :a"),
                               {"a": LIST}).scalar_one()
        threads = conn.execute(text("SELECT thread_id, messages FROM thread_summary "
                                    "WHERE list_id = :l ORDER BY messages DESC, thread_id"),
                               {"l": list_id}).all()
        messages = conn.scalars(text("SELECT message_id FROM message WHERE list_id = :l "
                                     "ORDER BY id"), {"l": list_id}).all()
        biggest = conn.scalars(text("SELECT message_id FROM message WHERE list_id = :l "
                                    "ORDER BY size DESC, id LIMIT 10"), {"l": list_id}).all()
    engine.dispose()
    return Sample(list_pages, _thread_sample(threads, rng, count),
                  [*biggest, *rng.sample(messages, min(len(messages), count))][:count],
                  _queries(rng, count))


def page_targets(s: Sample) -> dict[str, list[Target]]:
    """(path, query) per page kind on listserv: list pages 1..N, then the sample."""
    base = f"/{LIST}/"
    return {
        "list": [(base, {"page": str(n)} if n > 1 else {}) for n in range(1, s.list_pages + 1)],
        "thread": [(f"{base}thread/{quote_id(t)}/", {}) for t in s.threads],
        "message": [(f"{base}message/{quote_id(m)}/", {}) for m in s.messages],
        "search": [(f"{base}search", {"q": q}) for q in s.queries],
        "atom": [(f"{base}feed.atom", {})],
    }


def _thread_sample(threads: list[tuple[str, int]], rng: random.Random, count: int) -> list[str]:
    """The ten largest threads, then the same share from each size band, so long threads
    are timed as often as the many short ones."""
    chosen = [t for t, _ in threads[:10]]
    bands = [[t for t, n in threads[10:] if lo <= n <= hi]
             for lo, hi in ((1, 1), (2, 4), (5, 19), (20, 10**9))]
    per_band = max(1, (count - len(chosen)) // 4)
    for band in bands:
        chosen += rng.sample(band, min(len(band), per_band))
    return chosen


def _queries(rng: random.Random, count: int) -> list[str]:
    """A quarter each: common, medium and rare words, and two-word queries."""
    words = mbox_gen.query_words()
    quarter = max(1, count // 4)
    pick = lambda kind: [rng.choice(words[kind]) for _ in range(quarter)]  # noqa: E731
    pairs = [f"{rng.choice(words['common'])} {rng.choice(words[rng.choice(('medium', 'rare'))])}"
             for _ in range(quarter)]
    return [*pick("common"), *pick("medium"), *pick("rare"), *pairs]


# --- the server and the client ----------------------------------------------------------

def write_config(out: Path, url: str, web_port: int) -> Path:
    """Nothing is delivered (the import sends nothing): the smarthost is a free port that
    nothing listens on."""
    path = out / "archive-bench.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {run.free_port()}\n\n'
        f'[delivery]\nsmarthost_host = "127.0.0.1"\nsmarthost_port = {run.free_port()}\n\n'
        f'[web]\nhost = "127.0.0.1"\nport = {web_port}\n'
        f'base_url = "http://127.0.0.1:{web_port}"\n', encoding="utf-8")
    return path


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, as an admin stops a server; killed if it is not gone in 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serving(listserv: str, config: Path, web_port: int, log: Path) -> Iterator[int]:
    """`listserv serve` until the block ends; yields its pid once the web port answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen([listserv, "--config", str(config), "serve"], stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            run.wait_port(web_port, 60, lambda: proc.poll() is None)
            yield proc.pid
        finally:
            stop(proc)


@dataclass
class Timing:
    page: str
    targets: int
    samples: list[float] = field(default_factory=list)  # ms, successful requests only
    errors: Counter = field(default_factory=Counter)  # status code (or exception) -> count
    available: bool = True
    bytes: int = 0

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=100, method="inclusive")[94]


def http_client(port: int) -> httpx.Client:
    """The one client setup both servers get. It asks for identity encoding: listserv
    never compresses, public-inbox gzips whatever a client accepts (httpx accepts gzip
    by default), and that would add to the peer's time work listserv does not do."""
    return httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                        headers={"Accept-Encoding": "identity"})


def time_page(client: httpx.Client, page: str, targets: list[Target], requests: int,
              warmup: int) -> Timing:
    """Warm up, then `requests` sequential GETs cycling through the targets. A page whose
    warm-up answers are all 404 is a route not built yet: reported, not timed. A 200 of
    under MIN_BODY bytes counts as an error: an error page is quick, not fast."""
    timing = Timing(page, len(targets))
    statuses = [_get(client, *targets[i % len(targets)])[0] for i in range(warmup)]
    if statuses and all(s == 404 for s in statuses):
        timing.available = False
        return timing
    for i in range(requests):
        start = time.perf_counter()
        status, size = _get(client, *targets[i % len(targets)])
        elapsed = (time.perf_counter() - start) * 1000
        if status == 200 and size >= MIN_BODY:
            timing.samples.append(elapsed)
            timing.bytes += size
        else:
            timing.errors[status if status != 200 else f"200 under {MIN_BODY} B"] += 1
    return timing


def _get(client: httpx.Client, path: str, params: dict[str, str]) -> tuple[int | str, int]:
    """(status, body bytes); a dropped connection is an error to count, with its name."""
    try:
        response = client.get(path, params=params)
    except httpx.TransportError as exc:
        return type(exc).__name__, 0
    return response.status_code, len(response.content)


# --- the peer: public-inbox 1.9 on the same mbox, in the same run -----------------------

PEER_PACKAGE = "public-inbox"  # Debian's; it depends on git, Search::Xapian and Plack
PEER_INBOX = "bench"
PEER_COMMANDS = ("public-inbox-init", "public-inbox-index", "public-inbox-httpd", "perl")
# public-inbox 1.9 has no command that imports an mbox into an inbox in bulk (its mda
# takes one message per process, `lei convert -o v2:` refuses with "--dedupe=none
# requires --no-save"), so this is what upstream's scripts/import_vger_from_mbox does:
# InboxWritable->import_mbox, one V2Writable that writes git, the overview and Xapian
# as it goes, with the inbox's default shards and batch size.
PEER_IMPORT = r"""
my ($name, $path) = @ARGV;
my $ibx = PublicInbox::Config->new->lookup_name($name) or die "no inbox $name\n";
open(my $fh, '<', $path) or die "open $path: $!\n";
PublicInbox::InboxWritable->new($ibx)->import_mbox($fh, 'mboxrd');
"""
GENERATED_ID = re.compile(r"listserv-[0-9a-f]{32}@.*")  # store.generated_message_id


@dataclass
class Peer:
    """public-inbox's own figures, next to listserv's."""

    version: str
    imported: proctree.TreeRun | None = None
    indexed: proctree.TreeRun | None = None
    messages: int = 0
    serve_rss_mb: float = 0.0
    timings: dict[str, Timing] = field(default_factory=dict)
    skipped_ids: int = 0  # sampled ids listserv made up for mail without one

    @property
    def import_rate(self) -> float:
        return self.messages / self.imported.seconds if self.imported else 0.0


def find_public_inbox(install: bool) -> str:
    """public-inbox's Debian version, installing the package if allowed (as run.py does
    postfix), so a fresh machine measures the same peer."""
    if not all(shutil.which(c) for c in PEER_COMMANDS):
        if not install:
            sys.exit(f"public-inbox not found: apt-get install {PEER_PACKAGE}, or run "
                     "without --no-install, or with --no-peer")
        run.apt_install(PEER_PACKAGE)
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", PEER_PACKAGE],
                             capture_output=True, text=True).stdout.strip()
    return version or "unknown version"


def peer_env(config: Path) -> dict[str, str]:
    """PI_CONFIG points every public-inbox command at our config, not ~/.public-inbox."""
    return {**os.environ, "PI_CONFIG": str(config)}


def import_peer(peer: Peer, mbox: Path, workdir: Path) -> Path:
    """A fresh v2 inbox with the mbox in it, indexed for search; returns PI_CONFIG."""
    config, inbox = workdir / "public-inbox.config", workdir / "inbox"
    env = peer_env(config)
    proctree.run(["public-inbox-init", "-V2", "-L", "full", PEER_INBOX, str(inbox),
                  f"http://127.0.0.1/{PEER_INBOX}", LIST], "public-inbox-init", env=env)
    run.say(f"public-inbox {peer.version}: importing {mbox.name}")
    peer.imported = proctree.run(
        ["perl", "-MPublicInbox::Config", "-MPublicInbox::InboxWritable", "-e", PEER_IMPORT,
         PEER_INBOX, str(mbox)], "perl: InboxWritable->import_mbox", env=env)
    # Already indexed by the import; this proves it and times what an admin runs next.
    peer.indexed = proctree.run(["public-inbox-index", str(inbox)], "public-inbox-index",
                                env=env)
    with contextlib.closing(sqlite3.connect(inbox / "msgmap.sqlite3")) as conn:
        peer.messages = conn.execute("SELECT count(*) FROM msgmap").fetchone()[0]
    run.say(f"  {peer.messages:,} messages in {peer.imported.seconds:.1f} s: "
            f"{peer.import_rate:,.0f}/s; {_peaks(peer.imported)}; "
            f"public-inbox-index after it {peer.indexed.seconds:.1f} s")
    return config


def _peaks(tree: proctree.TreeRun) -> str:
    """One line for the console: each process's peak RSS."""
    return "peak RSS " + ", ".join(f"{p.name} {proctree.mb(p.peak_kb):.0f} MB"
                                   for p in tree.processes)


@contextlib.contextmanager
def serving_peer(config: Path, port: int, log: Path) -> Iterator[int]:
    """`public-inbox-httpd` (its default one worker) until the block ends; yields the
    worker's pid, the process that answers, once the port answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(["public-inbox-httpd", "-l", f"http://127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT, env=peer_env(config),
                                stdin=subprocess.DEVNULL)
        try:
            run.wait_port(port, 60, lambda: proc.poll() is None)
            yield _httpd_worker(proc.pid)
        finally:
            stop(proc)


def _httpd_worker(master: int) -> int:
    """The master forks its worker just after binding: wait a little for it."""
    children = Path(f"/proc/{master}/task/{master}/children")
    for _ in range(100):
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(children.read_text().split()[0])
        time.sleep(0.05)
    return master


def peer_targets(s: Sample, client: httpx.Client) -> tuple[dict[str, list[Target]], int]:
    """The same sample as public-inbox's URLs, and how many ids were left out: ids that
    listserv generated for mail without a Message-ID, which public-inbox names its own
    way. Its top page pages by time, so pages 2..N are its "next (older)" links."""
    base = f"/{PEER_INBOX}/"
    threads = [t for t in s.threads if not GENERATED_ID.fullmatch(t)]
    messages = [m for m in s.messages if not GENERATED_ID.fullmatch(m)]
    skipped = len(s.threads) - len(threads) + len(s.messages) - len(messages)
    return {
        "list": _peer_top_pages(client, base, s.list_pages),
        "thread": [(f"{base}{quote_id(t)}/T/", {}) for t in threads],
        "message": [(f"{base}{quote_id(m)}/", {}) for m in messages],
        "search": [(base, {"q": q}) for q in s.queries],
        "atom": [(f"{base}new.atom", {})],
    }, skipped


def _peer_top_pages(client: httpx.Client, base: str, pages: int) -> list[Target]:
    """`/INBOX/` and the older pages its rel=next links lead to (`?t=YYYYmmddHHMMSS`)."""
    found: list[Target] = [(base, {})]
    while len(found) < pages:
        response = client.get(found[-1][0], params=found[-1][1])
        link = re.search(r'href="\?t=(\d+)"\s*rel=next', response.text)
        if response.status_code != 200 or not link:
            break
        found.append((base, {"t": link.group(1)}))
    return found


# --- the report -------------------------------------------------------------------------

@dataclass
class Report:
    command: str
    when: datetime.datetime
    version: str
    database: str
    machine: dict[str, str]
    mbox: Path
    mbox_seconds: float | None
    peer: Peer | None = None  # None: run with --no-peer
    corpus: Corpus | None = None
    imported: proctree.TreeRun | None = None
    serve_rss_mb: float = 0.0
    timings: list[Timing] = field(default_factory=list)

    @property
    def import_rate(self) -> float:
        return self.corpus.messages / self.imported.seconds if self.imported else 0.0


def _verdict(p95: float, peer: Timing | None) -> str:
    """listserv's p95 against public-inbox's measured in the same run, then the 20 ms bar."""
    if peer is None or not peer.samples:
        return "not compared (no public-inbox figure)"
    if p95 > peer.p95:
        return f"**miss** ({p95 / peer.p95:.1f}x public-inbox)"
    return "**pass**" + (f", under {TARGET_UNDER_MS:.0f} ms" if p95 <= TARGET_UNDER_MS else "")


def _errors(t: Timing) -> str:
    return ", ".join(f"{n}x {code}" for code, n in sorted(t.errors.items(), key=str)) or "0"


def _cell(t: Timing | None) -> tuple[str, str]:
    """(requests over targets with the average size, errors) of one server's page."""
    if t is None:
        return "", ""
    if not t.available:
        return "not available (404)", ""
    if not t.samples:
        return f"{t.targets} targets", _errors(t)
    size = t.bytes / len(t.samples) / 1024
    return (f"{len(t.samples) + sum(t.errors.values())} over {t.targets} "
            f"({size:.0f} KB avg)", _errors(t))


def _page_row(t: Timing, peer: Timing | None, hyperkitty: str) -> str:
    asked, errors = _cell(t)
    peer_asked, peer_errors = _cell(peer)
    peer_ms = f"{peer.median:.1f} / {peer.p95:.1f}" if peer and peer.samples else ""
    if not t.samples:
        return (f"| {t.page} | {asked} | {errors} | | | {peer_asked} | {peer_errors} | "
                f"{peer_ms} | {hyperkitty} | {'no 200' if t.available else ''} |")
    return (f"| {t.page} | {asked} | {errors} | {t.median:.1f} | {t.p95:.1f} | "
            f"{peer_asked} | {peer_errors} | {peer_ms} | {hyperkitty} | "
            f"{_verdict(t.p95, peer)} |")


def _largest(tree: proctree.TreeRun) -> str:
    top = tree.largest
    return f"peak RSS {proctree.mb(top.peak_kb):.0f} MB ({top.name})"


def _served_peak(mb: float) -> str:
    """run.peak_rss_mb gives 0 for a process gone by the time it is read."""
    return f"{mb:.0f} MB" if mb else "not read (the worker had gone by then)"


def _peer_import_rows(peer: Peer | None) -> list[str]:
    if peer is None:
        return ["| public-inbox | not measured (`--no-peer`) | | |"]
    return [
        f"| public-inbox {peer.version}: `InboxWritable->import_mbox` into a fresh v2 inbox "
        f"(git, overview and Xapian in one pass, as upstream's import_vger_from_mbox) | "
        f"{peer.imported.seconds:.1f} s = **{peer.import_rate:,.0f} messages/s** "
        f"({peer.messages:,} messages), {_largest(peer.imported)} | "
        "(same mbox, same run) | |",
        f"| `public-inbox-index` after it (nothing left to index) | "
        f"{peer.indexed.seconds:.1f} s, {_largest(peer.indexed)} | | |",
    ]


def _memory_rows(command: str, tree: proctree.TreeRun) -> list[str]:
    """Rows of the memory table: each process of one import, then the tree."""
    rows = [f"| {command if i == 0 else ''} | {p.name} | {proctree.mb(p.peak_kb):.0f} |"
            for i, p in enumerate(tree.processes) if p.peak_kb >= 1024]
    rows.append(f"| | all at one reading (sum of PSS) | {proctree.mb(tree.together_kb):.0f} |")
    return rows


def memory_table(r: Report) -> list[str]:
    """Peak RSS of every process of each import, named."""
    rows = _memory_rows("`listserv archive import`", r.imported)
    if r.peer:
        rows += _memory_rows(f"public-inbox {r.peer.version} import", r.peer.imported)
    return [f"Peak RSS of each process of the imports (VmHWM, read every "
            f"{proctree.INTERVAL} s from /proc; processes under 1 MB left out), in MB. "
            "listserv's main process reads the mbox and writes the database while its "
            "parsing process parses the next mails (one per core but one, at most four); "
            "the resource tracker is multiprocessing's. public-inbox's shard[N] writes "
            "its Xapian index (forked), git fast-import its git repository. The sum of "
            "PSS counts a page that processes share once. Not wait4's ru_maxrss, the "
            "bench's figure before: the largest process only, and never below the peak "
            "of the process that started the command (see bench/proctree.py).",
            "",
            "| import | process | peak RSS (MB) |", "|---|---|---|", *rows]


def render(r: Report) -> str:
    c = r.corpus
    mbox_mb = r.mbox.stat().st_size / 1e6
    made = (f", generated in {r.mbox_seconds:.0f} s" if r.mbox_seconds is not None
            else ", generated earlier from the same seed")
    verdict = ("**pass**" if r.import_rate >= TARGET_IMPORT_PER_S else
               f"**miss** (needs {TARGET_IMPORT_PER_S / r.import_rate:.1f}x)")
    peer = r.peer
    lines = [
        f"## Web archive ({r.database}, {c.messages:,} messages)", "",
        f"Written by `{r.command}` on {r.when:%Y-%m-%d %H:%M} UTC. Measured: listserv "
        f"{r.version}" + (f", and public-inbox {peer.version} (Debian) on the same mbox"
                          if peer else "") + ". Everything on loopback: the real `listserv "
        "archive import` and `listserv serve` (console script)" +
        (", `public-inbox-httpd` (one worker, its default)" if peer else "") +
        "; one httpx client per server with keep-alive and `Accept-Encoding: identity` "
        "(public-inbox would gzip otherwise; listserv never does), sequential requests "
        "after a warm-up, each page kind timed on listserv and then on public-inbox.", "",
        "| machine | |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in r.machine.items()], "",
        f"Mbox: `{r.mbox.name}` ({mbox_mb:,.0f} MB{made}) by bench/mbox_gen.py: "
        f"{c.threads:,} threads ({c.single_threads:,} of one message, the largest "
        f"{c.largest_thread}), ~1,500 senders, five years, utf-8/iso-8859-1/windows-1252, "
        "8bit/quoted-printable/base64, HTML alternatives and attachments.", "",
        "| import | figure | target | result |", "|---|---|---|---|",
        f"| `listserv archive import` (wall, interpreter start included) | "
        f"{r.imported.seconds:.1f} s = **{r.import_rate:,.0f} messages/s**, "
        f"{_largest(r.imported)} | >= {TARGET_IMPORT_PER_S:,.0f}/s "
        f"(HyperKitty 1.3.12: 44/s) | {verdict} |",
        *_peer_import_rows(peer),
        "",
        *memory_table(r),
        "",
        "| page | listserv: requests over targets | errors | median (ms) | p95 (ms) "
        "| public-inbox: requests over targets | errors | median / p95 (ms) "
        "| HyperKitty 1.3.12 at 20,000 | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_page = {t.page: t for t in r.timings}
    lines += [_page_row(by_page[page], peer.timings.get(page) if peer else None, hk)
              for page, _, hk in PAGES if page in by_page]
    fixed = ", ".join(f"{page} {ms}" for page, ms, _ in PAGES)
    lines += ["", f"Peak RSS (VmHWM) after the pages: `listserv serve` {r.serve_rss_mb:.0f} MB"
              + (f", the public-inbox-httpd worker {_served_peak(peer.serve_rss_mb)}"
                 if peer else "")
              + ".", "",
              "Pages: list = `/LIST/` and `?page=2..N`; thread = `/LIST/thread/ID/` (the ten "
              "largest threads and an equal share of 1, 2-4, 5-19 and 20+ message threads); "
              "message = `/LIST/message/ID/` (the ten largest and a random sample); search = "
              "`/LIST/search?q=` (common, medium and rare words, and two-word queries); "
              "atom = `/LIST/feed.atom`. public-inbox gets the same sample: `/INBOX/` and "
              "the older pages its \"next\" links lead to (`?t=`), `/INBOX/ID/T/` for the "
              "same thread roots, `/INBOX/ID/` for the same messages, `/INBOX/?q=` with "
              "the same queries, `/INBOX/new.atom`"
              + (f"; left out there: {peer.skipped_ids} sampled id(s) that listserv "
                 "generated for mail without a Message-ID" if peer and peer.skipped_ids
                 else "") + ". "
              f"A 200 under {MIN_BODY} bytes counts as an error. Result: listserv's p95 at "
              "or under public-inbox's measured here, and under "
              f"{TARGET_UNDER_MS:.0f} ms where it can be.", "",
              f"Issue 6's fixed public-inbox 1.9 p95s ({fixed} ms) were measured once on an "
              "earlier machine (an Intel Xeon); they are kept here only as a note of where "
              "the targets came from."]
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=100_000, help="mbox size (100000)")
    p.add_argument("--seed", type=int, default=1, help="mbox seed (1)")
    p.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    p.add_argument("--pg-url", default=PG_URL, help=f"PostgreSQL database ({PG_URL}); a "
                   "schema of its own is made and dropped")
    p.add_argument("--out", type=Path, default=HERE / "out",
                   help="mbox, database, config, server log and archive.md (bench/out)")
    p.add_argument("--requests", type=int, default=300, help="timed requests per page (300)")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests per page (20)")
    p.add_argument("--list-pages", type=int, default=20,
                   help="list pages 1..N are asked for (20)")
    p.add_argument("--keep", action="store_true", help="keep the PostgreSQL schema")
    p.add_argument("--commit", help="measure listserv as committed at this git revision")
    p.add_argument("--listserv", help="the listserv executable (default: next to this "
                   "Python, else on PATH)")
    p.add_argument("--no-peer", action="store_true", help="do not measure public-inbox "
                   "on the same mbox (then no page is compared)")
    p.add_argument("--no-install", action="store_true",
                   help="fail instead of apt-get installing public-inbox when it is missing")
    return p.parse_args(argv)


def listserv_executable(args: argparse.Namespace, workdir: Path) -> str:
    if args.commit:
        return str(run.snapshot(args.commit, workdir))
    beside = Path(sys.executable).parent / "listserv"
    found = args.listserv or (str(beside) if beside.exists() else shutil.which("listserv"))
    return found or sys.exit("no listserv console script: pip install -e .")


def measure(args: argparse.Namespace, listserv: str, report: Report, url: str,
            workdir: Path) -> None:
    web_port = run.free_port()
    config = write_config(args.out, url, web_port)
    cli = [listserv, "--config", str(config)]
    run.run_timed([*cli, "list", "create", LIST])
    run.say(f"importing {report.mbox.name}")
    report.imported = proctree.run([*cli, "archive", "import", LIST, str(report.mbox)],
                                   "main process", IMPORT_HELPERS)
    report.corpus = corpus(url)
    run.say(f"  {report.corpus.messages:,} messages in {report.imported.seconds:.1f} s: "
            f"{report.import_rate:,.0f}/s; {_peaks(report.imported)}")
    peer_config = import_peer(report.peer, report.mbox, workdir) if report.peer else None
    chosen = sample(url, random.Random(args.seed), args.requests, args.list_pages)
    targets = page_targets(chosen)
    with contextlib.ExitStack() as stack:
        pid = stack.enter_context(serving(listserv, config, web_port, args.out / "serve.log"))
        client = stack.enter_context(http_client(web_port))
        if report.peer:
            peer_port = run.free_port()
            peer_pid = stack.enter_context(serving_peer(
                peer_config, peer_port, args.out / "public-inbox-httpd.log"))
            peer_client = stack.enter_context(http_client(peer_port))
            peer_pages, report.peer.skipped_ids = peer_targets(chosen, peer_client)
        for page, _, _ in PAGES:
            timing = time_page(client, page, targets[page], args.requests, args.warmup)
            report.timings.append(timing)
            _say_timing("listserv", timing)
            if report.peer:
                timing = time_page(peer_client, page, peer_pages[page], args.requests,
                                   args.warmup)
                report.peer.timings[page] = timing
                _say_timing("public-inbox", timing)
        report.serve_rss_mb = run.peak_rss_mb(pid)
        if report.peer:
            report.peer.serve_rss_mb = run.peak_rss_mb(peer_pid)


def _say_timing(server: str, timing: Timing) -> None:
    run.say(f"  {timing.page} ({server}): " + (
        f"median {timing.median:.1f} ms, p95 {timing.p95:.1f} ms, errors "
        f"{sum(timing.errors.values())}" if timing.samples else
        "not available" if not timing.available else f"no 200: {dict(timing.errors)}"))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run.say(f"mbox of {args.messages:,} messages (seed {args.seed})")
    mbox, seconds = mbox_for(args.out, args.messages, args.seed)
    peer_version = None if args.no_peer else find_public_inbox(install=not args.no_install)
    workdir = Path(tempfile.mkdtemp(prefix="listserv-archive-bench-"))
    try:
        listserv = listserv_executable(args, workdir)
        info = run.machine()
        info["PostgreSQL"] = postgresql_version(args.pg_url)
        with fresh_database(args.db, args.out, args.pg_url, args.keep) as (url, name):
            report = Report(" ".join(["python bench/archive.py", *argv]).strip(),
                            datetime.datetime.now(datetime.UTC),
                            run.measured_version(args.commit), name, info, mbox, seconds,
                            peer=Peer(peer_version) if peer_version else None)
            measure(args, listserv, report, url, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    markdown = render(report)
    (args.out / "archive.md").write_text(markdown, encoding="utf-8")
    run.say(f"\nwrote {args.out / 'archive.md'}\n")
    run.say(markdown)


if __name__ == "__main__":
    main()
