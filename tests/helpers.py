"""What the tests share, so that no test module imports another: constants, mail to post
and bounces, what reached the smarthost, the command line run as a user runs it, web
pages, and one way to wait. The smarthost and the servers are in tests/servers.py; the
fixtures built on both are in conftest.py."""

from __future__ import annotations

import email
import email.policy
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from typer.testing import Result

from listserv import db, fanout, roster, tokens
from listserv.config import Config
from listserv.enums import ArchivePolicy, DeliveryMode, DeliveryState, Role
from listserv.ingest import Incoming, Outcome, ingest_group
from listserv.models import MailingList, Member
from listserv.parse import parse
from listserv.queue_tables import Delivery, Destination, Expansion
from listserv.urls import quote_id

if TYPE_CHECKING:  # servers.py builds on this module
    from tests.servers import SinkHandler

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
LIST = "dev@lists.example.org"
BOB = "bob@example.com"
REG = "reg@example.com"  # a member who gets each post
ALICE = "alice@example.com"
CAROL = "carol@example.com"
SECRET = "test-secret"  # [web] secret of the `config` fixture
BOB_VERP = "dev-bounces+bob=example.com@lists.example.org"
# Real bounces from the corpus, with the address they name.
MAILBOX = ("bounces/sisimai/lhost-postfix-01.eml", "kijitora@example.org")  # 5.1.1
TRANSIENT = ("bounces/flufl/dsn_05.eml", "userx@example.cz")  # 4.4.1 delayed
SENDER = "a@example.com"  # the poster of test_deliver's and the crash tests' posts
LISTSERV = shutil.which("listserv", path=str(Path(sys.executable).parent)) or "listserv"
CSP = ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
_UNPACKED = Path(tempfile.gettempdir()) / "listserv-test-corpus"


# --- waiting -------------------------------------------------------------------------------

T = TypeVar("T")


# Shaping by destination (test_destinations, test_probes): the domain whose servers defer.
SLOW = "slow.example.net"
FAST = [SENDER] + [f"f{i}@example.com" for i in range(3)]


def destination(engine: Engine) -> Destination | None:
    """SLOW's back-off row, if it has one."""
    with db.session(engine) as s:
        return s.get(Destination, SLOW)


def received(sink: SinkHandler, domain: str) -> list[str]:
    return sorted(r for r in sink.recipients() if r.endswith("@" + domain))


def wait_until(condition: Callable[[], T], what: str | None = None,
               timeout: float = 60.0) -> T:
    """Poll `condition` until it returns something truthy, and return that: the one loop
    every test waits with, generous for a loaded machine. On timeout it fails naming
    `what`; without `what` it returns the last falsy answer, for a caller whose own
    assertion says better what is missing (or that counts what it got)."""
    deadline = time.monotonic() + timeout
    while not (result := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    if result or what is None:
        return result
    raise AssertionError(f"timed out waiting for {what}")


# --- corpus and messages -------------------------------------------------------------------

def corpus_path(relative: str) -> Path:
    """A corpus file by its name in the corpus README. Files over 2 MB are kept gzipped
    in the repository (`NAME.gz`, the same bytes); they are unpacked once per machine."""
    path = CORPUS / relative
    packed = path.with_name(path.name + ".gz")
    if path.exists() or not packed.exists():
        return path
    target = _UNPACKED / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}")
        with gzip.open(packed) as src, partial.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.replace(target)  # atomic: parallel runs never read half a file
    return target


def message(subject: str = "Hello", *, sender: str = "bob@example.com",
            to: str = "dev@lists.example.org", body: str = "Hi all.\n",
            headers: dict[str, str] | None = None) -> str:
    """A small plain-text post as a client would send it."""
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
             f"Message-ID: <{uuid.uuid4().hex}@example.com>",
             "Date: Thu, 26 Nov 2026 10:00:00 +0000"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return "\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")


def post(subject: str = "Hello") -> str:
    return message(subject, sender=SENDER)


def message_id(data: bytes | str) -> str:
    return email.message_from_bytes(data if isinstance(data, bytes) else data.encode())[
        "Message-ID"]


def ingest_mail(engine: Engine, config: Config, mail_from: str, rcpts: list[str],
                raw: bytes) -> list[Outcome]:
    """Store one SMTP transaction as the receiver does, with no server running; its
    refusal (NoRoute, Rejected) raised."""
    result = ingest_group(engine, config, [Incoming(mail_from, rcpts, raw)])[0]
    if isinstance(result, Exception):
        raise result
    return result


# --- what reached the smarthost, and the queue ---------------------------------------------

def mails_to(sink: SinkHandler, address: str, count: int = 1, timeout: float = 15.0) -> list:
    """Block until `count` mails for `address` reached the smarthost; they, parsed, in order."""
    return [email.message_from_bytes(d, policy=email.policy.default)
            for d in sink.copies_to(address, count, timeout)]


def delivered_to(engine: Engine, sink: SinkHandler, address: str,
                 timeout: float = 15.0) -> int:
    """How many mails reached `address` once the server sent all it had queued.

    Everything the server answers for is queued (or waits for its expansion) before its
    250, and a delivery is marked done only after the smarthost's 250, so an empty queue
    with no expansion left means the count is final.
    """
    wait_until(lambda: queue_empty(engine), timeout=timeout)
    return len(mails_to(sink, address, 0))


def queue_empty(engine: Engine) -> bool:
    """No post waiting to be expanded into jobs, then (read after: an expansion that
    ends writes jobs) no job queued or being sent."""
    busy = [DeliveryState.QUEUED, DeliveryState.SENDING]
    with db.session(engine) as s:
        return (s.scalars(select(Expansion.id)).first() is None
                and s.scalars(select(Delivery.id).where(Delivery.state.in_(busy))).first()
                is None)


def expand_all(engine: Engine, batch: int = 100) -> int:
    """What a delivery worker does first with stored posts (fanout.expand), done here
    with no server running; the jobs written."""
    written = 0
    while True:
        with db.session(engine) as s:
            jobs = fanout.expand(s, batch)
        if jobs is None:
            return written
        written += jobs


def jobs(engine: Engine) -> list[Delivery]:
    with db.session(engine) as s:
        return list(s.scalars(select(Delivery).order_by(Delivery.id)))


def jobs_and_expansions(engine: Engine) -> tuple[int, int]:
    """Delivery jobs, and expansions still under way."""
    with db.session(engine) as s:
        return (s.scalar(select(func.count()).select_from(Delivery)),
                s.scalar(select(func.count()).select_from(Expansion)))


def settled(engine: Engine) -> list[Delivery]:
    """Wait until there are jobs and none is queued or being sent; after that, nothing
    more can reach the smarthost, so what it holds is final."""
    def finished() -> list[Delivery]:
        with db.session(engine) as s:  # read first: a post being expanded adds jobs
            expanding = s.scalars(select(Expansion.id)).first() is not None
        rows = jobs(engine)
        busy = {DeliveryState.QUEUED, DeliveryState.SENDING}
        return rows if rows and not expanding and not any(j.state in busy for j in rows) else []
    return wait_until(finished, "every delivery job to finish")


# --- ports ---------------------------------------------------------------------------------

def free_port() -> int:
    """A port nothing listens on now: for tests of a closed port, and for a subprocess
    server restarted on the same port. Servers started in-process bind port 0 instead:
    a port found free and released may be taken by a parallel test before it is bound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the command line ----------------------------------------------------------------------

def start_listserv(*args: str | Path, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> subprocess.Popen[str]:
    """The installed console script as a user runs it: no tty, a narrow terminal."""
    script = Path(sys.executable).parent / "listserv"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LISTSERV_")}
    # At 40 columns, an error that rich wraps at the terminal width is no longer one line.
    clean["COLUMNS"] = "40"
    return subprocess.Popen([str(script), *map(str, args)], env={**clean, **(env or {})},
                            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_listserv(*args: str | Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """start_listserv, run to its end."""
    proc = start_listserv(*args, env=env, cwd=cwd)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *named: str) -> None:
    """What the issue promises for every error: one line on stderr naming it, exit 1."""
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    for word in named:
        assert word in proc.stderr


def write_config(path: Path, db_url: str, extra: str = "") -> Path:
    path.write_text(f'[database]\nurl = "{db_url}"\n{extra}', encoding="utf-8")
    return path


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def as_json(result: Result) -> object:
    """stdout must be the JSON document and nothing else: json.loads refuses anything more."""
    return json.loads(ok(result).stdout)


# --- bounces -------------------------------------------------------------------------------

def dsn(sample: tuple[str, str], address: str = BOB, **replace: str) -> bytes:
    """A corpus bounce about `address` instead of the one it names."""
    name, named = sample
    raw = (CORPUS / name).read_bytes().replace(named.encode(), address.encode())
    for old, new in replace.items():
        raw = raw.replace(old.encode(), new.encode())
    return raw


def bounce(running, raw: bytes, to: str = BOB_VERP) -> None:
    """A bounce arrives as bounces do: from the null sender."""
    running.send("", [to], raw)


# --- web pages -----------------------------------------------------------------------------

def web(running) -> httpx.Client:
    return httpx.Client(base_url=running.config.web.base_url, timeout=20)


def is_member(engine, address: str) -> bool:
    with db.session(engine) as s:
        return s.scalars(select(Member).where(Member.address == address,
                                              Member.role == Role.MEMBER)).first() is not None


def unsubscribe_path(engine, address: str) -> str:
    with db.session(engine) as s:
        list_id = s.scalars(select(Member.list_id).where(Member.address == address)).first()
    return f"/unsubscribe/{tokens.unsubscribe_link(SECRET, list_id, address)}"


def set_archive(engine, policy: ArchivePolicy, address: str = LIST) -> None:
    with db.session(engine) as s:
        s.execute(update(MailingList).where(MailingList.address == address)
                  .values(archive=policy))
        s.commit()


class Elements(HTMLParser):
    """Every element of a page with its attributes, as a browser's parser sees them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.chunks: list[str] = []
        self.feed(page)
        self.text = "".join(self.chunks)  # what a reader sees, entities decoded

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def no_mail_markup(page: str) -> None:
    """Nothing on the page can run or fetch: escaped mail text is fine, markup is not."""
    for tag, attrs in Elements(page).found:
        assert tag not in {"script", "iframe", "object", "embed", "base"}, tag
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)
        for name in ("href", "src", "action"):
            value = attrs.get(name, "").strip().lower()
            assert not value.startswith(("javascript:", "data:text")), (tag, attrs)
        if tag == "img":
            assert not attrs.get("src", "").startswith(("http:", "https:", "//")), attrs


# --- DKIM and MIME -------------------------------------------------------------------------

def published(record: str) -> tuple[str, str]:
    """The name and the text of a zone-file TXT line as keygen prints it."""
    name, _, rest = record.partition(" IN TXT ")
    strings = re.findall(r'"([^"]*)"', rest)
    assert all(len(s) <= 255 for s in strings)
    return name.rstrip("."), "".join(strings)


def nested_body(depth: int, kind: bytes) -> bytes:
    """`depth` levels of multipart/`kind` (boundaries b1, b2, ...), text at the bottom."""
    opening = b"".join(b'--b%d\r\nContent-Type: multipart/%s; boundary="b%d"\r\n\r\n'
                       % (i, kind, i + 1) for i in range(depth - 1))
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    return opening + b"--b%d\r\nContent-Type: text/plain\r\n\r\nhello from the bottom\r\n" % (
        depth - 1) + closing


def join_stamp(page: str) -> str:
    """The signed value of the first join form on a page."""
    match = re.search(r'name="form" value="([^"]+)"', page)
    assert match, "the page has no join form"
    return match.group(1)


def manage_path(address: str, hours: float = 24) -> str:
    """The path of `address`'s page of subscriptions, as its mailed link names it."""
    return f"/manage/{tokens.manage_link(SECRET, address, hours)}"


# --- the archive's pages and what /metrics says ---------------------------------------

def mail(subject: str, message_id: str, *, date: str = "Thu, 26 Nov 2026 10:00:00 +0000",
         sender: str = "Bob Example <bob@example.com>", body: str = "Hi all.\n",
         parent: str | None = None, references: str | None = None) -> bytes:
    lines = [f"From: {sender}", f"To: {LIST}", f"Subject: {subject}",
             f"Message-ID: <{message_id}>", f"Date: {date}"]
    if parent:
        lines.append(f"In-Reply-To: <{parent}>")
    if references or parent:
        lines.append(f"References: {references or f'<{parent}>'}")
    return ("\n".join(lines) + "\n\n" + body).encode()


def url(kind: str, value: str) -> str:
    return f"/{LIST}/{kind}/{quote_id(value)}/"


def attachment_mail() -> bytes:
    post = EmailMessage()
    post["From"], post["To"], post["Subject"] = BOB, LIST, "Files"
    post["Message-ID"], post["Date"] = "<files@x>", "Mon, 02 Mar 2026 09:00:00 +0000"
    post.set_content("See the files.\n")
    post.add_attachment(b"\x89PNG\r\n\x1a\nnot really", maintype="image", subtype="png",
                        filename="chart.png")
    post.add_attachment("<script>alert(1)</script>", subtype="html", filename="page.html")
    post.add_attachment(b"<svg onload=alert(1)>", maintype="image", subtype="svg+xml",
                        filename="r\u00e9sum\u00e9 \"x\".svg")
    return post.as_bytes()


def ask_for_archive(running, sink, sender: str) -> None:
    running.send(sender, ["dev-request@lists.example.org"], message(
        "archive", sender=sender, to="dev-request@lists.example.org", body=""))


def access_link(mails: list) -> str:
    for m in mails:
        found = re.search(r"(http://\S+/access/\S+)", m.get_content())
        if found:
            return found.group(1)
    raise AssertionError("no access link")


def scrape(running) -> dict[tuple[str, tuple], float]:
    """The /metrics page as {(sample name, sorted labels): value}."""
    response = web(running).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


# --- posts for the digests' tests ---------------------------------------------------

def set_modes(engine, mlist: MailingList, modes: dict[str, DeliveryMode]) -> None:
    with db.session(engine) as s:
        mlist = s.get(MailingList, mlist.id)
        for address, mode in modes.items():
            roster.set_member(s, mlist, address, delivery=mode)
        s.commit()


def send_post(running, subject: str, body: str, sender: str = REG, **headers: str) -> str:
    """A member's post over SMTP to the running server; its Message-ID."""
    raw = post_bytes(subject, body, sender, **headers)
    running.send(sender, [LIST], raw)
    return parse(raw).message_id


def post_bytes(subject: str, body: str, sender: str = REG, **headers: str) -> bytes:
    return message(subject, sender=sender, body=body, headers={
        "Content-Type": "text/plain; charset=utf-8", "Content-Transfer-Encoding": "8bit",
        **headers}).encode()
