#!/usr/bin/env python3
"""Benchmark the web archive: import a generated mbox, then time its pages over HTTP.

The real console script does the work, as an admin would run it: `listserv archive
import` of a realistic N-message mbox (bench/mbox_gen.py) into a fresh SQLite file or
PostgreSQL schema, timed with its peak RSS; then `listserv serve`, and one keep-alive
httpx client asks for the list page, thread pages, message pages, searches and the
Atom feed, sequentially, and reports median and p95 per page next to the targets of
issue 6. The Markdown report goes to OUT/archive.md. See bench/README.md.

    python bench/archive.py --messages 100000 --db sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import random
import shutil
import signal
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
import run
from sqlalchemy import create_engine, text

from listserv import db
from listserv.compose import quote_id

HERE = Path(__file__).resolve().parent
LIST = "dev@lists.bench.example"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TARGET_IMPORT_PER_S = 1000.0
TARGET_UNDER_MS = 20.0
Target = tuple[str, dict[str, str]]  # path and query of one request
# (page, public-inbox 1.9 p95 in ms on this machine, HyperKitty 1.3.12 at 20,000 messages)
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
    except Exception as exc:  # a report line, not a reason to stop
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

def page_targets(url: str, rng: random.Random, count: int, list_pages: int
                 ) -> dict[str, list[Target]]:
    """(path, query) per page kind, varied: list pages 1..N, threads of every size (the
    largest among them), messages at random and the largest ones, search words from
    common to rare and two-word queries, and the feed."""
    base = f"/{LIST}/"
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
    return {
        "list": [(base, {"page": str(n)} if n > 1 else {}) for n in range(1, list_pages + 1)],
        "thread": [(f"{base}thread/{quote_id(t)}/", {})
                   for t in _thread_sample(threads, rng, count)],
        "message": [(f"{base}message/{quote_id(m)}/", {}) for m in
                    [*biggest, *rng.sample(messages, min(len(messages), count))]][:count],
        "search": [(f"{base}search", {"q": q}) for q in _queries(rng, count)],
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
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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


def time_page(client: httpx.Client, page: str, targets: list[Target], requests: int,
              warmup: int) -> Timing:
    """Warm up, then `requests` sequential GETs cycling through the targets. A page whose
    warm-up answers are all 404 is a route not built yet: reported, not timed."""
    timing = Timing(page, len(targets))
    statuses = [_get(client, *targets[i % len(targets)])[0] for i in range(warmup)]
    if statuses and all(s == 404 for s in statuses):
        timing.available = False
        return timing
    for i in range(requests):
        start = time.perf_counter()
        status, size = _get(client, *targets[i % len(targets)])
        elapsed = (time.perf_counter() - start) * 1000
        if status == 200:
            timing.samples.append(elapsed)
            timing.bytes += size
        else:
            timing.errors[status] += 1
    return timing


def _get(client: httpx.Client, path: str, params: dict[str, str]) -> tuple[int | str, int]:
    """(status, body bytes); a dropped connection is an error to count, with its name."""
    try:
        response = client.get(path, params=params)
    except httpx.TransportError as exc:
        return type(exc).__name__, 0
    return response.status_code, len(response.content)


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
    corpus: Corpus | None = None
    import_seconds: float = 0.0
    import_rss_mb: float = 0.0
    serve_rss_mb: float = 0.0
    timings: list[Timing] = field(default_factory=list)

    @property
    def import_rate(self) -> float:
        return self.corpus.messages / self.import_seconds if self.import_seconds else 0.0


def _verdict(p95: float, target: float) -> str:
    if p95 > target:
        return f"**miss** ({p95 / target:.1f}x public-inbox)"
    return "**pass**" + (f", under {TARGET_UNDER_MS:.0f} ms" if p95 <= TARGET_UNDER_MS else "")


def _page_row(t: Timing, target: float, hyperkitty: str) -> str:
    errors = ", ".join(f"{n}x {code}" for code, n in sorted(t.errors.items(), key=str)) or "0"
    if not t.available:
        return f"| {t.page} | not available (404) | | | | {target} | {hyperkitty} | |"
    if not t.samples:
        return f"| {t.page} | {t.targets} | {errors} | | | {target} | {hyperkitty} | no 200 |"
    size = t.bytes / len(t.samples) / 1024
    return (f"| {t.page} | {len(t.samples) + sum(t.errors.values())} over {t.targets} "
            f"({size:.0f} KB avg) | {errors} | {t.median:.1f} | {t.p95:.1f} | {target} | "
            f"{hyperkitty} | {_verdict(t.p95, target)} |")


def render(r: Report) -> str:
    c = r.corpus
    mbox_mb = r.mbox.stat().st_size / 1e6
    made = (f", generated in {r.mbox_seconds:.0f} s" if r.mbox_seconds is not None
            else ", generated earlier from the same seed")
    verdict = ("**pass**" if r.import_rate >= TARGET_IMPORT_PER_S else
               f"**miss** (needs {TARGET_IMPORT_PER_S / r.import_rate:.1f}x)")
    lines = [
        f"## Web archive ({r.database}, {c.messages:,} messages)", "",
        f"Written by `{r.command}` on {r.when:%Y-%m-%d %H:%M} UTC. Measured: listserv "
        f"{r.version}. Everything on loopback: the real `listserv archive import` and "
        "`listserv serve` (console script), one httpx client with keep-alive, sequential "
        "requests after a warm-up.", "",
        "| machine | |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in r.machine.items()], "",
        f"Mbox: `{r.mbox.name}` ({mbox_mb:,.0f} MB{made}) by bench/mbox_gen.py: "
        f"{c.threads:,} threads ({c.single_threads:,} of one message, the largest "
        f"{c.largest_thread}), ~1,500 senders, five years, utf-8/iso-8859-1/windows-1252, "
        "8bit/quoted-printable/base64, HTML alternatives and attachments.", "",
        "| import | figure | target | result |", "|---|---|---|---|",
        f"| `listserv archive import` (wall, interpreter start included) | "
        f"{r.import_seconds:.1f} s = **{r.import_rate:,.0f} messages/s**, peak RSS "
        f"{r.import_rss_mb:.0f} MB | >= {TARGET_IMPORT_PER_S:,.0f}/s (HyperKitty 1.3.12: 44/s) "
        f"| {verdict} |",
        "",
        "| page | requests over targets | errors | median (ms) | p95 (ms) "
        "| public-inbox 1.9 p95 (ms) | HyperKitty 1.3.12 at 20,000 | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_page = {t.page: t for t in r.timings}
    lines += [_page_row(by_page[page], target, hk) for page, target, hk in PAGES
              if page in by_page]
    lines += ["", f"Peak RSS (VmHWM) of `listserv serve` after the pages: "
              f"{r.serve_rss_mb:.0f} MB.", "",
              "Pages: list = `/LIST/` and `?page=2..N`; thread = `/LIST/thread/ID/` (the ten "
              "largest threads and an equal share of 1, 2-4, 5-19 and 20+ message threads); "
              "message = `/LIST/message/ID/` (the ten largest and a random sample); search = "
              "`/LIST/search?q=` (common, medium and rare words, and two-word queries); "
              "atom = `/LIST/feed.atom`. Result: p95 at or under public-inbox's."]
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
    return p.parse_args(argv)


def listserv_executable(args: argparse.Namespace, workdir: Path) -> str:
    if args.commit:
        return str(run.snapshot(args.commit, workdir))
    beside = Path(sys.executable).parent / "listserv"
    found = args.listserv or (str(beside) if beside.exists() else shutil.which("listserv"))
    return found or sys.exit("no listserv console script: pip install -e .")


def measure(args: argparse.Namespace, listserv: str, report: Report, url: str) -> None:
    web_port = run.free_port()
    config = write_config(args.out, url, web_port)
    cli = [listserv, "--config", str(config)]
    run.run_timed([*cli, "list", "create", LIST])
    run.say(f"importing {report.mbox.name}")
    report.import_seconds, report.import_rss_mb, _ = run.run_timed(
        [*cli, "archive", "import", LIST, str(report.mbox)])
    report.corpus = corpus(url)
    run.say(f"  {report.corpus.messages:,} messages in {report.import_seconds:.1f} s: "
            f"{report.import_rate:,.0f}/s, peak RSS {report.import_rss_mb:.0f} MB")
    targets = page_targets(url, random.Random(args.seed), args.requests, args.list_pages)
    with serving(listserv, config, web_port, args.out / "serve.log") as pid, \
            httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=60) as client:
        for page, _, _ in PAGES:
            timing = time_page(client, page, targets[page], args.requests, args.warmup)
            report.timings.append(timing)
            run.say(f"  {page}: " + (f"median {timing.median:.1f} ms, p95 {timing.p95:.1f} ms,"
                                     f" errors {sum(timing.errors.values())}"
                                     if timing.samples else
                                     "not available" if not timing.available else
                                     f"no 200: {dict(timing.errors)}"))
        report.serve_rss_mb = run.peak_rss_mb(pid)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run.say(f"mbox of {args.messages:,} messages (seed {args.seed})")
    mbox, seconds = mbox_for(args.out, args.messages, args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="listserv-archive-bench-"))
    try:
        listserv = listserv_executable(args, workdir)
        info = run.machine()
        info["PostgreSQL"] = postgresql_version(args.pg_url)
        with fresh_database(args.db, args.out, args.pg_url, args.keep) as (url, name):
            report = Report(" ".join(["python bench/archive.py", *argv]).strip(),
                            datetime.datetime.now(datetime.UTC),
                            run.measured_version(args.commit), name, info, mbox, seconds)
            measure(args, listserv, report, url)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    markdown = render(report)
    (args.out / "archive.md").write_text(markdown, encoding="utf-8")
    run.say(f"\nwrote {args.out / 'archive.md'}\n")
    run.say(markdown)


if __name__ == "__main__":
    main()
