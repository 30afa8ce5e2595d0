"""Every fixture, so that tests name them without importing: a real database (SQLite
file, or PostgreSQL when LISTSERV_TEST_DATABASE_URL is set), a real SMTP sink standing in
for the smarthost, a running server, and the command line. What they are built from is
in tests/helpers.py."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from aiosmtpd.controller import Controller
from sqlalchemy.engine import Engine
from typer.testing import CliRunner, Result

from listserv import db, roster, signing
from listserv.cli import app
from listserv.config import (
    ROLES,
    Config,
    DatabaseConfig,
    DeliveryConfig,
    DnsConfig,
    SmtpConfig,
    WebConfig,
)
from listserv.enums import Role
from listserv.models import MailingList
from tests.dns_server import DnsServer
from tests.helpers import published, write_config
from tests.servers import Busy, RunningServer, Serve, Smarthost, SmarthostController

PG_URL = os.environ.get("LISTSERV_TEST_DATABASE_URL", "")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking"]


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

@pytest.fixture
def make_sink() -> Iterator[Callable[..., Smarthost]]:
    """Start smarthosts: make_sink(port=...) on a given port, make_sink(timeout=1) with
    aiosmtpd's idle timeout (it hangs up on a connection silent that long)."""
    controllers: list[Controller] = []

    def make(port: int | None = None, **smtp_options: object) -> Smarthost:
        handler = Smarthost()
        controller = SmarthostController(handler, port=port or 0, **smtp_options)
        controller.start()
        controllers.append(controller)
        handler.port = controller.port  # type: ignore[attr-defined]
        return handler
    yield make
    for controller in controllers:
        controller.stop()


@pytest.fixture
def sink(make_sink: Callable[..., Smarthost]) -> Smarthost:
    """The smarthost `config` and `running` deliver to."""
    return make_sink()


@pytest.fixture
def busy_smarthost() -> Iterator[Busy]:
    """A smarthost that answers every connection with 421 (tests/servers.py's Busy)."""
    busy = Busy()
    yield busy
    busy.close()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """The DNS the server asks (DMARC policies, DKIM keys): NXDOMAIN for every name
    until a test puts records in `dns_server.records`."""
    server = DnsServer()
    yield server
    server.close()


# --- the server -------------------------------------------------------------------------

@pytest.fixture
def author_key(tmp_path: Path, dns_server: DnsServer) -> bytes:
    """A post's author's own domain (author.example, selector a) signs it, with its key
    in the test's DNS."""
    made = signing.keygen("author.example", "a", tmp_path)
    name, text = published(made.record)
    dns_server.records[name] = [text]
    return made.private_file.read_bytes()


@pytest.fixture
def config(db_url: str, sink: Smarthost, dns_server: DnsServer) -> Config:
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


@pytest.fixture
def running(engine: Engine, config: Config) -> Iterator[RunningServer]:
    srv = RunningServer(engine, config).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(engine: Engine, config: Config) -> Iterator[Callable[..., RunningServer]]:
    """Start a server with some config sections replaced: make_server(delivery={...}),
    and with some of the roles only: make_server(roles=("web",))."""
    started: list[RunningServer] = []

    def make(roles: tuple[str, ...] = ROLES, **sections: dict) -> RunningServer:
        cfg = config
        for name, values in sections.items():
            cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name),
                                                                      **values)})
        srv = RunningServer(engine, cfg, roles).start()
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


# --- processes and the command line ----------------------------------------------------

@pytest.fixture
def make_serve(tmp_path: Path, db_url: str) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def make(smarthost_port: int, name: str = "serve", concurrency: int = 1,
             roles: str = "", expansion_chunk: int = 5000) -> Serve:
        srv = Serve(tmp_path, db_url, smarthost_port, name, concurrency, roles,
                    expansion_chunk)
        started.append(srv)
        return srv
    yield make
    for srv in started:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


@pytest.fixture
def config_file(tmp_path: Path, db_url: str, request: pytest.FixtureRequest) -> Path:
    """The CLI's config names the test's database and, in a test that runs the server,
    its public URL (the links in what the CLI mails, a digest say, point there)."""
    web = ""
    if "running" in request.fixturenames:
        web = f'[web]\nbase_url = "{request.getfixturevalue("running").config.web.base_url}"\n'
    return write_config(tmp_path / "listserv.toml", db_url, web)


@pytest.fixture
def cli(config_file: Path) -> Callable[..., Result]:
    """cli("list", "ls", "--json"): `listserv --config FILE ...` in process."""
    runner = CliRunner()

    def invoke(*args: str | Path) -> Result:
        return runner.invoke(app, ["--config", str(config_file), *map(str, args)])
    return invoke


# --- a real browser ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One Debian Chromium for a module, driven by Playwright: starting it is the slow
    part of the browser tests. Never a browser Playwright would download."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the browser tests need playwright (the test extras)")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"the browser tests drive Debian's Chromium at {CHROMIUM}: "
                    "apt-get install chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=CHROMIUM_FLAGS)
        yield browser
        browser.close()
