"""Fixtures: a real database (SQLite file, or PostgreSQL when LISTSERV_TEST_DATABASE_URL
is set), a real SMTP sink standing in for the smarthost, and a running server."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import os
import shutil
import smtplib
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy.engine import Engine

from listserv import db, roster, server
from listserv.config import (
    Config,
    DatabaseConfig,
    DeliveryConfig,
    DnsConfig,
    SmtpConfig,
    WebConfig,
)
from listserv.models import MailingList, Role
from tests.dns_server import DnsServer

DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
PG_URL = os.environ.get("LISTSERV_TEST_DATABASE_URL", "")
_UNPACKED = Path(tempfile.gettempdir()) / "listserv-test-corpus"


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


def free_port() -> int:
    """A port nothing listens on now: for tests of a closed port, and for a subprocess
    server restarted on the same port. Servers started in-process bind port 0 instead:
    a port found free and released may be taken by a parallel test before it is bound."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that refuses connections for the whole test: bound, never listening, so no
    server a parallel test starts on port 0 can be given it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """A database of its own for each test: a SQLite file, or a fresh PostgreSQL schema."""
    if not PG_URL:
        yield f"sqlite:///{tmp_path / 'listserv.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    plain = db.normalize_url(PG_URL).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{db.normalize_url(PG_URL)}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = db.open_database(db_url)
    yield engine
    engine.dispose()


# --- the smarthost ----------------------------------------------------------------------

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
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.recipients()) < count:
            time.sleep(0.05)
        return self.recipients()

    def copies_to(self, rcpt: str, count: int = 1, timeout: float = 15.0) -> list[bytes]:
        """Block until `count` copies to `rcpt` have arrived (or time out); their bytes.

        Waiting for a total count is not enough when several recipients are sent at once:
        the one a test looks at may be the last to arrive."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = [m.data for m in self.received if rcpt in m.rcpt_tos]
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.05)


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


@pytest.fixture
def sink() -> Iterator[SinkHandler]:
    handler = SinkHandler()
    controller = SinkController(handler)
    controller.start()
    handler.port = controller.port  # type: ignore[attr-defined]
    yield handler
    controller.stop()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """The DNS the server asks (DMARC policies, DKIM keys): NXDOMAIN for every name
    until a test puts records in `dns_server.records`."""
    server = DnsServer()
    yield server
    server.close()


# --- the server -------------------------------------------------------------------------

@pytest.fixture
def config(db_url: str, sink: SinkHandler, dns_server: DnsServer) -> Config:
    """Listeners on port 0: a running server's own config (`running.config`) names the
    ports it got, and its base_url the web port."""
    return Config(
        database=DatabaseConfig(url=db_url),
        smtp=SmtpConfig(host="127.0.0.1", port=0, max_message_bytes=200_000),
        delivery=DeliveryConfig(smarthost_host="127.0.0.1", smarthost_port=sink.port,
                                max_recipients_per_transaction=2, concurrency=2,
                                retry_initial_seconds=1, retry_max_hours=1),
        web=WebConfig(host="127.0.0.1", port=0, base_url="http://127.0.0.1:0",
                      secret="test-secret"),
        dns=DnsConfig(nameserver="127.0.0.1", port=dns_server.port),
    )


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


@pytest.fixture
def running(engine: Engine, config: Config) -> Iterator[RunningServer]:
    srv = RunningServer(engine, config).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(engine: Engine, config: Config) -> Iterator[Callable[..., RunningServer]]:
    """Start a server with some config sections replaced: make_server(delivery={...})."""
    started: list[RunningServer] = []

    def make(**sections: dict) -> RunningServer:
        cfg = config
        for name, values in sections.items():
            cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name),
                                                                      **values)})
        srv = RunningServer(engine, cfg).start()
        started.append(srv)
        return srv
    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def make_list(engine: Engine) -> Callable[..., MailingList]:
    """make_list("dev@lists.example.org", members=[...], owner=..., moderators=[...])."""

    def make(address: str = "dev@lists.example.org", *, name: str = "Dev",
             members: list[str] = (), owner: str | None = "owner@example.org",
             moderators: list[str] = ()) -> MailingList:
        with db.session(engine) as s:
            mlist = roster.create_list(s, address, name=name, owner=owner)
            roster.add_members(s, mlist, members)
            roster.add_members(s, mlist, moderators, Role.MODERATOR)
            s.commit()
        return mlist
    return make


def message(subject: str = "Hello", *, sender: str = "bob@example.com",
            to: str = "dev@lists.example.org", body: str = "Hi all.\n",
            headers: dict[str, str] | None = None) -> str:
    """A small plain-text post as a client would send it."""
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
             f"Message-ID: <{uuid.uuid4().hex}@example.com>",
             "Date: Thu, 26 Nov 2026 10:00:00 +0000"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return "\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")


# --- mail the server writes to one address (self-service tests) -------------------------

def mails_to(sink: SinkHandler, address: str, count: int = 1, timeout: float = 15.0) -> list:
    """Block until `count` mails for `address` reached the smarthost; they, parsed, in order."""
    import email
    import email.policy

    return [email.message_from_bytes(d, policy=email.policy.default)
            for d in sink.copies_to(address, count, timeout)]


def delivered_to(engine: Engine, sink: SinkHandler, address: str,
                 timeout: float = 15.0) -> int:
    """How many mails reached `address` once the server sent all it had queued.

    Everything the server answers for is queued before its 250, and a delivery is marked
    done only after the smarthost's 250, so an empty queue means the count is final.
    """
    from sqlalchemy import select

    from listserv.models import Delivery, DeliveryState

    busy = [DeliveryState.QUEUED, DeliveryState.SENDING]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session(engine) as s:
            if s.scalars(select(Delivery.id).where(Delivery.state.in_(busy))).first() is None:
                break
        time.sleep(0.05)
    return len(mails_to(sink, address, 0))
