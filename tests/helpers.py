"""What the tests share, so that no test module imports another: constants, mail to post,
the smarthost the server delivers to, servers in a thread or a process, the command line
run as a user runs it, and one way to wait. The fixtures built on these are in conftest."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple, TypeVar

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from typer.testing import Result

from listserv import db, server, tokens
from listserv.config import Config
from listserv.models import ArchivePolicy, Delivery, DeliveryState, MailingList, Member, Role

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
LIST = "dev@lists.example.org"
BOB = "bob@example.com"
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


# --- the smarthost -------------------------------------------------------------------------

@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class SinkHandler:
    """Collects what the server delivers; replies can be scripted per recipient."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, list[str]] = field(default_factory=dict)  # address -> replies
    data_replies: list[str] = field(default_factory=list)  # consumed one per DATA
    pipelining: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            scripted = self.rcpt_replies.get(address)
            reply = scripted.pop(0) if scripted else None
        if reply and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            reply = self.data_replies.pop(0) if self.data_replies else None
            if reply and not reply.startswith("2"):
                return reply
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content))
        return "250 OK queued"

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for m in self.received for r in m.rcpt_tos]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[str]:
        """Block until `count` recipients have arrived (or time out), then return them."""
        wait_until(lambda: len(self.recipients()) >= count, timeout=timeout)
        return self.recipients()

    def copies_to(self, rcpt: str, count: int = 1, timeout: float = 15.0) -> list[bytes]:
        """Block until `count` copies to `rcpt` have arrived (or time out); their bytes.

        Waiting for a total count is not enough when several recipients are sent at once:
        the one a test looks at may be the last to arrive."""
        def got() -> list[bytes]:
            with self.lock:
                return [m.data for m in self.received if rcpt in m.rcpt_tos]
        wait_until(lambda: len(got()) >= count, timeout=timeout)
        return got()


class SinkController(Controller):
    """aiosmtpd's controller, by default on port 0: the kernel picks a free port, read
    back once bound (aiosmtpd's own controller would go on to connect to port 0)."""

    def __init__(self, handler: object, port: int = 0, **smtp_options: object) -> None:
        super().__init__(handler, hostname="127.0.0.1", port=port, **smtp_options)

    async def _bound(self) -> asyncio.AbstractServer:
        server = await super()._create_server()
        self.port = server.sockets[0].getsockname()[1]
        return server

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self._bound()


@dataclass
class Smarthost(SinkHandler):
    """The sink, also counting connections; it can answer DATA slowly, or park DATA
    after `hold_data_after` transactions until `gate` opens. A parked DATA whose client
    goes away is cut short, so that message was never acknowledged nor received."""

    connections: int = 0  # counted at EHLO: the controller's own probe never says it
    hangups: int = 0
    data_delay: float = 0.0
    hold_data_after: int | None = None
    parked: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    transactions: int = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.connections += 1
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_DATA(self, server, session, envelope):
        self.transactions += 1
        if self.hold_data_after is not None and self.transactions > self.hold_data_after:
            self.parked.set()
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
        await asyncio.sleep(self.data_delay)
        return await super().handle_DATA(server, session, envelope)

    def copies(self) -> Counter[tuple[str, str]]:
        """How many copies each (Message-ID, recipient) pair arrived in."""
        with self.lock:
            return Counter((message_id(m.data), r) for m in self.received for r in m.rcpt_tos)


class HangupCountingSMTP(SMTP):
    def connection_lost(self, error: Exception | None) -> None:
        super().connection_lost(error)
        self.event_handler.hangups += 1


class SmarthostController(SinkController):
    def factory(self) -> SMTP:
        return HangupCountingSMTP(self.handler, **self.SMTP_kwargs)


# --- what reached the smarthost, and the queue ---------------------------------------------

def mails_to(sink: SinkHandler, address: str, count: int = 1, timeout: float = 15.0) -> list:
    """Block until `count` mails for `address` reached the smarthost; they, parsed, in order."""
    return [email.message_from_bytes(d, policy=email.policy.default)
            for d in sink.copies_to(address, count, timeout)]


def delivered_to(engine: Engine, sink: SinkHandler, address: str,
                 timeout: float = 15.0) -> int:
    """How many mails reached `address` once the server sent all it had queued.

    Everything the server answers for is queued before its 250, and a delivery is marked
    done only after the smarthost's 250, so an empty queue means the count is final.
    """
    busy = [DeliveryState.QUEUED, DeliveryState.SENDING]

    def queue_empty() -> bool:
        with db.session(engine) as s:
            return s.scalars(select(Delivery.id).where(Delivery.state.in_(busy))).first() is None
    wait_until(queue_empty, timeout=timeout)
    return len(mails_to(sink, address, 0))


def jobs(engine: Engine) -> list[Delivery]:
    with db.session(engine) as s:
        return list(s.scalars(select(Delivery).order_by(Delivery.id)))


def settled(engine: Engine) -> list[Delivery]:
    """Wait until there are jobs and none is queued or being sent; after that, nothing
    more can reach the smarthost, so what it holds is final."""
    def finished() -> list[Delivery]:
        rows = jobs(engine)
        busy = {DeliveryState.QUEUED, DeliveryState.SENDING}
        return rows if rows and not any(j.state in busy for j in rows) else []
    return wait_until(finished, "every delivery job to finish")


# --- servers -------------------------------------------------------------------------------

class RunningServer:
    """`listserv serve` in a thread with its own event loop, as the CLI runs it; once
    started, `config` names the ports it listens on."""

    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            await server.serve(self.engine, self.config, self.stop_event, self._listening)
        asyncio.run(main())

    def _listening(self, config: Config) -> None:
        self.config = config
        self.ready.set()

    def start(self) -> RunningServer:
        self.thread.start()
        assert self.ready.wait(10), "server did not start"
        return self

    def stop(self) -> None:
        if self.loop and self.stop_event:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(15)

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP(self.config.smtp.host, self.config.smtp.port, timeout=10)

    def send(self, mail_from: str, rcpts: list[str], data: bytes | str) -> dict:
        with self.smtp() as client:
            return client.sendmail(mail_from, rcpts, data)


def free_port() -> int:
    """A port nothing listens on now: for tests of a closed port, and for a subprocess
    server restarted on the same port. Servers started in-process bind port 0 instead:
    a port found free and released may be taken by a parallel test before it is bound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(srv) -> smtplib.SMTP:
    return smtplib.SMTP(srv.config.smtp.host, srv.config.smtp.port, timeout=10)


def connect_when_counted_out(srv) -> smtplib.SMTP:
    """A connection, once the server has counted out one just closed (it does so as soon
    as it sees it go, which may be a moment after the client's QUIT)."""
    def connection() -> smtplib.SMTP | None:
        try:
            return connect(srv)
        except smtplib.SMTPConnectError:
            return None
    return wait_until(connection, "a closed connection to be counted out", timeout=10)


def wait_for_smtp(port: int, proc: subprocess.Popen, deadline: float) -> None:
    """Block until the server answers on its SMTP port (or has died)."""
    def answers() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.noop()
                return True
        except OSError:
            return False
    wait_until(lambda: proc.poll() is not None or answers(), "listserv serve to start",
               timeout=deadline - time.monotonic())
    assert proc.poll() is None, "listserv serve did not start"


class Started(NamedTuple):
    smtp_port: int
    web_port: int
    log: str  # what the server logged up to and with its "listening" line


def ports_logged(proc: subprocess.Popen) -> Started:
    """Block until the server logs that it listens; the SMTP and web ports it names."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if found := re.search(r" listening: \w+ on [^ ]+:(\d+), web on http://[^/]+:(\d+)/",
                              line):
            return Started(int(found[1]), int(found[2]), "".join(lines))
    raise AssertionError("listserv serve did not start: " + "".join(lines))


def start_serve(tmp_path: Path, db_url: str, smarthost_port: int, *args: str
                ) -> subprocess.Popen:
    """`listserv serve ARGS` as a user starts it, on ports 0 (any free ones: see
    ports_logged)."""
    config = write_config(tmp_path / "serve.toml", db_url, f"""
[smtp]
port = 0
[delivery]
smarthost_port = {smarthost_port}
[web]
port = 0
base_url = "http://127.0.0.1:0"
""")
    script = Path(sys.executable).parent / "listserv"
    return subprocess.Popen([str(script), "--config", str(config), "serve", *args],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


class Serve:
    """`listserv serve` in a process of its own, configured by a TOML file and the
    environment as an operator would; its log (stderr) goes to a file."""

    def __init__(self, tmp_path: Path, db_url: str, smarthost_port: int, name: str,
                 concurrency: int) -> None:
        self.smtp_port = free_port()  # kept across restarts: the clients of test_crash
        config = tmp_path / f"{name}.toml"
        config.write_text(f"""
[smtp]
host = "127.0.0.1"
port = {self.smtp_port}
# The crash tests post hundreds of messages from one sender.
max_messages_per_sender_per_hour = 0

[delivery]
smarthost_host = "127.0.0.1"
smarthost_port = {smarthost_port}
max_recipients_per_transaction = 2
concurrency = {concurrency}
retry_initial_seconds = 1
retry_max_hours = 1

[web]
host = "127.0.0.1"
port = 0
base_url = "http://127.0.0.1:0"
secret = "test-secret"
""")
        self.env = {**os.environ, "LISTSERV_CONFIG": str(config),
                    "LISTSERV_DATABASE_URL": db_url}
        self.log_path = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Serve:
        starts = self.log().count(" listening: ")
        with self.log_path.open("ab") as log:
            proc = self.proc = subprocess.Popen(
                [LISTSERV, "serve"], env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log)
        wait_until(lambda: self.log().count(" listening: ") > starts or proc.poll() is not None,
                   "listserv serve to listen")
        assert proc.poll() is None, self.log()
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def send(self, rcpts: list[str], data: str) -> None:
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=30) as client:
            client.sendmail(SENDER, rcpts, data)

    def signal(self, sig: int) -> int:
        """Send `sig` and wait (generously) for the process to end; its exit code."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def delivered_jobs(self) -> list[int]:
        return [int(j) for j in re.findall(r"delivery job=(\d+) .*state=done", self.log())]


def serve_cli(srv: Serve, *args: str) -> str:
    """A `listserv` command against the same config and database as `srv`."""
    done = subprocess.run([LISTSERV, *args], env=srv.env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def import_members(srv: Serve, tmp_path: Path, count: int) -> list[str]:
    """Create the list and import SENDER and count - 1 others through the CLI."""
    members = sorted([SENDER] + [f"m{i:05d}@example.com" for i in range(count - 1)])
    roster = tmp_path / "members.txt"
    roster.write_text("\n".join(members) + "\n")
    serve_cli(srv, "list", "create", LIST)
    serve_cli(srv, "member", "import", LIST, str(roster))
    return members


# --- the command line ----------------------------------------------------------------------

def run_listserv(*args: str | Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script as a user runs it: no tty, a narrow terminal."""
    script = Path(sys.executable).parent / "listserv"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LISTSERV_")}
    # At 40 columns, an error that rich wraps at the terminal width is no longer one line.
    clean["COLUMNS"] = "40"
    return subprocess.run([str(script), *map(str, args)], env={**clean, **(env or {})},
                          cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)


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
