"""The SMTP edge under abuse: what one client can make the server store, hold or wait for."""

from __future__ import annotations

import contextlib
import os
import resource
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from listserv import db
from listserv.enums import NonmemberAction
from listserv.models import MailingList, Message
from tests.helpers import delivered_to, free_port, mails_to, message, wait_until, write_config
from tests.servers import connect, connect_when_counted_out, wait_for_smtp

LIST = "dev@lists.example.org"
OWNER_ADDRESS = "dev-owner@lists.example.org"


def stored(engine) -> int:
    with db.session(engine) as s:
        return s.scalar(select(func.count()).select_from(Message))


def reject_non_members(engine) -> None:
    with db.session(engine) as s:
        s.execute(update(MailingList).values(nonmember_action=NonmemberAction.REJECT))
        s.commit()


# --- recipients (issue 14 item 5) -------------------------------------------------------

def test_a_list_named_many_times_in_one_transaction_is_stored_and_sent_once(
        running, make_list, sink, engine):
    make_list(LIST, members=["bob@example.com", "carol@example.com"])
    rcpts = [LIST] * 20 + ["DEV@Lists.Example.ORG"] + [OWNER_ADDRESS] * 20
    assert running.send("bob@example.com", rcpts, message()) == {}
    assert stored(engine) == 2  # the post and the owner's mail, once each
    assert delivered_to(engine, sink, "carol@example.com") == 1
    assert delivered_to(engine, sink, "owner@example.org") == 2  # the post, the owner mail


def test_a_non_member_naming_the_list_twice_is_refused_as_naming_it_once(
        make_server, make_list, engine):
    make_list(LIST, members=["bob@example.com"])
    reject_non_members(engine)
    srv = make_server()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        srv.send("eve@example.org", [LIST, LIST], message(sender="eve@example.org"))
    assert refused.value.smtp_code == 550
    assert stored(engine) == 0


def test_recipients_past_max_recipients_get_452(make_server, make_list, engine):
    make_list(LIST, members=["bob@example.com"])
    srv = make_server(smtp={"max_recipients": 3})
    refused = srv.send("bob@example.com", [LIST, LIST, OWNER_ADDRESS, OWNER_ADDRESS],
                       message())
    assert list(refused.values()) == [(452, refused[OWNER_ADDRESS][1])]
    assert refused[OWNER_ADDRESS][1].startswith(b"4.5.3")
    assert stored(engine) == 2


class Lmtp:
    """An LMTP client that reads as many replies as the server owes (RFC 2033: one per
    accepted recipient after DATA), which smtplib.LMTP does not."""

    def __init__(self, srv) -> None:
        self.sock = socket.create_connection((srv.config.smtp.host, srv.config.smtp.port), 10)
        self.file = self.sock.makefile("rb")
        self.replies(1)

    def replies(self, count: int) -> list[bytes]:
        got = []
        while len(got) < count:
            line = self.file.readline()
            if line[3:4] != b"-":
                got.append(line)
        return got

    def command(self, line: bytes, count: int = 1) -> list[bytes]:
        self.sock.sendall(line + b"\r\n")
        return self.replies(count)

    def send(self, mail_from: str, rcpts: list[str], data: str) -> list[bytes]:
        self.command(b"LHLO client.example")
        self.command(f"MAIL FROM:<{mail_from}>".encode())
        for rcpt in rcpts:
            self.command(f"RCPT TO:<{rcpt}>".encode())
        self.command(b"DATA")
        return self.command(data.encode() + b"\r\n.", len(rcpts))


def test_lmtp_answers_each_recipient_after_data_duplicates_and_refusals_too(
        make_server, make_list, engine):
    make_list(LIST, members=["bob@example.com"])
    srv = make_server(smtp={"protocol": "lmtp", "max_message_bytes": 5000})
    client = Lmtp(srv)
    rcpts = [LIST, LIST, OWNER_ADDRESS]
    assert [r[:3] for r in client.send("bob@example.com", rcpts, message())] == [b"250"] * 3
    assert stored(engine) == 2
    too_big = client.send("bob@example.com", rcpts, message(body="x" * 6000))
    assert [r[:9] for r in too_big] == [b"552 5.3.4"] * 3
    assert client.command(b"NOOP") == [b"250 OK\r\n"]  # nothing left unread
    client.sock.close()


# --- long header lines (issue 14 item 6) ------------------------------------------------

def test_a_header_block_over_max_header_bytes_is_refused_at_data_with_552(
        make_server, make_list, engine):
    make_list(LIST, members=["bob@example.com"])
    srv = make_server(smtp={"max_header_bytes": 10_000})
    with srv.smtp() as client:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("bob@example.com", [LIST], message("x" * 20_000))
        assert refused.value.smtp_code == 552
        assert b"5.3.4 header block too big" in refused.value.smtp_error
        # The same connection goes on, and a long line in the body is no header.
        assert client.sendmail("bob@example.com", [LIST],
                               message(body="y" * 20_000 + "\n")) == {}
    with db.session(engine) as s:
        assert [len(raw) > 20_000 for raw in s.scalars(select(Message.raw))] == [True]
        assert s.scalar(select(Message.subject)) == "Hello"


def test_a_notice_carries_a_one_word_subject_of_100_kb_cut_short(running, make_list, sink,
                                                                 engine):
    """The email package folds one long word in quadratic time: an 8 MB subject held
    the writer, and every other client, for a minute while a notice was written."""
    make_list(LIST, members=["bob@example.com"])
    reject_non_members(engine)
    running.send("eve@example.org", [LIST, OWNER_ADDRESS],
                 message("z" * 100_000, sender="eve@example.org"))
    notice = mails_to(sink, "eve@example.org")[0]  # rejected, the owner's copy taken
    assert notice["Subject"].startswith("Your post to Dev was rejected: zzz")
    assert len(notice["Subject"]) == 200 and notice["Subject"].endswith("z...")


# --- connections and memory (issue 14 item 9) -------------------------------------------

def test_one_connection_more_than_max_connections_in_all_gets_421(make_server, make_list):
    make_list(LIST)
    srv = make_server(smtp={"max_connections": 5, "max_connections_per_ip": 0})
    open_ = [connect(srv) for _ in range(5)]
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        connect(srv)
    assert refused.value.smtp_code == 421 and b"4.3.2" in refused.value.smtp_error
    assert open_[-1].noop()[0] == 250  # the open ones carry on
    open_.pop(0).quit()
    open_.append(connect_when_counted_out(srv))
    for client in open_:
        assert client.noop()[0] == 250
        client.quit()


def spooled_files() -> set[str]:
    """The temporary files this process (the server's, in the test's) holds open."""
    fds = Path("/proc/self/fd")
    found = set()
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(tempfile.gettempdir()):
                found.add(target)
    return found


def test_an_unfinished_data_waits_on_disk_and_is_stored_as_sent(make_server, make_list, engine):
    make_list(LIST, members=["bob@example.com"])
    srv = make_server(smtp={"max_message_bytes": 2_000_000})
    before = spooled_files()
    # Long lines, and lines that start with a dot (sent doubled, RFC 5321 §4.5.2).
    body = "\n".join([".dot", "x" * 150_000, "..two", "y" * 900_000, "."]) + "\n"
    post = message("Spooled", body=body).encode()
    with connect(srv) as client:
        client.ehlo()
        client.mail("bob@example.com")
        client.rcpt(LIST)
        client.putcmd("data")
        assert client.getreply()[0] == 354
        sent = post.replace(b"\r\n.", b"\r\n..")
        client.send(sent[:-1000])
        assert wait_until(lambda: spooled_files() - before, timeout=10), "the DATA was not spooled"
        client.send(sent[-1000:] + b".\r\n")
        assert client.getreply()[0] == 250
    with db.session(engine) as s:
        assert s.scalars(select(Message.raw)).one() == post
    assert wait_until(lambda: not spooled_files() - before, timeout=10)


# --- DNS (issue 14 item 15) -------------------------------------------------------------

def test_a_slow_name_server_holds_up_only_the_post_it_answers_for(running, make_list, sink,
                                                                  dns_server):
    """The DMARC lookups are made before the post's transaction: the other client's 250
    comes while the slow domain's answer is still on its way."""
    make_list(LIST, members=["alice@slow.example", "bob@example.com", "carol@example.com"])
    dns_server.records["_dmarc.slow.example"] = ["v=DMARC1; p=reject"]
    dns_server.delays["_dmarc.slow.example"] = 1.5
    slow_done = threading.Event()

    def slow_post() -> None:
        running.send("alice@slow.example", [LIST], message(sender="alice@slow.example"))
        slow_done.set()

    slow = threading.Thread(target=slow_post)
    slow.start()
    assert wait_until(lambda: "_dmarc.slow.example" in dns_server.queries, timeout=10)
    running.send("bob@example.com", [LIST], message(sender="bob@example.com"))
    assert not slow_done.is_set()  # bob's 250 came first
    slow.join(10)
    assert slow_done.is_set()
    # Alice's copy still went out From the list, as her domain's policy asks.
    carols = mails_to(sink, "carol@example.com", 2)
    assert sorted(m["From"] for m in carols) == [
        '"alice at slow.example via Dev" <dev@lists.example.org>', "bob@example.com"]


# --- out of file descriptors (issue 14 item 9) ------------------------------------------

def test_running_out_of_descriptors_is_logged_once_not_per_accept(make_list, tmp_path, db_url):
    make_list(LIST)
    smtp_port, web_port = free_port(), free_port()
    config = write_config(tmp_path / "serve.toml", db_url, f"""
[smtp]
port = {smtp_port}
max_connections = 0
max_connections_per_ip = 0
[web]
port = {web_port}
""")
    log_file = tmp_path / "serve.log"
    script = Path(sys.executable).parent / "listserv"
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [str(script), "--config", str(config), "serve"], cwd=tmp_path,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    clients = []
    try:
        wait_for_smtp(smtp_port, proc, time.monotonic() + 60)
        for _ in range(400):
            if "out of system resource" in log_file.read_text():
                break
            with contextlib.suppress(OSError):  # its backlog full: the kernel refuses
                clients.append(socket.create_connection(("127.0.0.1", smtp_port), 1))
        assert wait_until(lambda: "out of system resource" in log_file.read_text(), timeout=10)
        time.sleep(3)  # asyncio retries every second, each time for every waiting client
    finally:
        for client in clients:
            client.close()
        proc.terminate()
        proc.wait(60)
    logged = log_file.read_text()
    assert "Traceback" not in logged
    assert logged.count("out of system resource") == 1
    assert "raise the open-file limit" in logged
