"""The other ends of the wire: the smarthost sink the server delivers to, and the server
itself, in a thread of the test (RunningServer) or as the `listserv serve` process an
operator starts (Serve, start_serve), with ways to connect to it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from sqlalchemy.engine import Engine

from listserv import server
from listserv.config import ROLES, Config
from tests.helpers import LIST, LISTSERV, SENDER, free_port, message_id, wait_until, write_config

# --- the smarthost --------------------------------------------------------------------

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


def domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


@dataclass
class Smarthost(SinkHandler):
    """The sink, also counting connections; it can answer DATA slowly, or park DATA
    after `hold_data_after` transactions until `gate` opens. A parked DATA whose client
    goes away is cut short, so that message was never acknowledged nor received. As a
    destination passes it on through Postfix, it refuses the RCPTs of the domains in
    `deferring` with their reply (421 4.7.0, 450 4.7.1); `peaks` is the most DATA
    transactions it had at once to each domain."""

    connections: int = 0  # counted at EHLO: the controller's own probe never says it
    hangups: int = 0
    data_delay: float = 0.0
    hold_data_after: int | None = None
    parked: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event = field(default_factory=threading.Event)
    transactions: int = 0
    deferring: dict[str, str] = field(default_factory=dict)  # domain -> RCPT reply
    deferred: Counter[str] = field(default_factory=Counter)  # RCPTs refused so, by domain
    in_data: Counter[str] = field(default_factory=Counter)
    peaks: Counter[str] = field(default_factory=Counter)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.connections += 1
        return await super().handle_EHLO(server, session, envelope, hostname, responses)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.deferring.get(domain(address))
        if reply:
            self.deferred[domain(address)] += 1
            return reply
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server, session, envelope):
        self.transactions += 1
        if self.hold_data_after is not None and self.transactions > self.hold_data_after:
            self.parked.set()
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
        domains = {domain(r) for r in envelope.rcpt_tos}
        for d in domains:
            self.in_data[d] += 1
            self.peaks[d] = max(self.peaks[d], self.in_data[d])
        try:
            await asyncio.sleep(self.data_delay)
            return await super().handle_DATA(server, session, envelope)
        finally:
            for d in domains:
                self.in_data[d] -= 1

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


class Busy:
    """A smarthost that greets every connection with 421 and hangs up, as an MTA with
    too many clients does."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.greeted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                conn.sendall(b"421 4.3.2 too many connections, try later\r\n")
                self.greeted += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self.sock.close()


# --- the server -----------------------------------------------------------------------

class RunningServer:
    """`listserv serve` in a thread with its own event loop, as the CLI runs it; once
    started, `config` names the ports it listens on."""

    def __init__(self, engine: Engine, config: Config,
                 roles: tuple[str, ...] = ROLES) -> None:
        self.engine = engine
        self.config = config
        self.roles = roles
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            await server.serve(self.engine, self.config, self.stop_event, self._listening,
                               self.roles)
        asyncio.run(main())

    def _listening(self, config: Config) -> None:
        self.config = config
        self.ready.set()

    def start(self) -> RunningServer:
        self.thread.start()
        assert self.ready.wait(10), "server did not start"
        return self

    def stop(self) -> None:
        """Stop the server (again: nothing more)."""
        if self.loop and self.stop_event and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(15)

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP(self.config.smtp.host, self.config.smtp.port, timeout=10)

    def send(self, mail_from: str, rcpts: list[str], data: bytes | str) -> dict:
        with self.smtp() as client:
            return client.sendmail(mail_from, rcpts, data)


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
    smtp_port: int  # 0 for a process without the smtp role
    web_port: int
    log: str  # what the server logged up to and with its "listening" line


# The "listening" line, with its SMTP port when the process has the smtp role.
_LISTENING = re.compile(r" listening: (?:\w+ on [^ ]+:(\d+), )?web on http://[^/]+:(\d+)/")


def ports_logged(proc: subprocess.Popen) -> Started:
    """Block until the server logs that it listens; the SMTP and web ports it names."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if found := _LISTENING.search(line):
            return Started(int(found[1] or 0), int(found[2]), "".join(lines))
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
                 concurrency: int, roles: str = "", expansion_chunk: int = 5000) -> None:
        self.args = ["--roles", roles] if roles else []
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
expansion_chunk = {expansion_chunk}

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
                [LISTSERV, "serve", *self.args], env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log)
        wait_until(lambda: self.log().count(" listening: ") > starts or proc.poll() is not None,
                   "listserv serve to listen")
        assert proc.poll() is None, self.log()
        return self

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def web_port(self) -> int:
        """The web port of the last start (port 0 in the config: any free one)."""
        return int(_LISTENING.findall(self.log())[-1][1])

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
