"""The smarthost client's reply timeout: a smarthost that stops answering fails the
transaction (to be tried again) after the timeout, and a connection whose replies keep
coming in time never times out, however long it is used."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from listserv.relay import Relay
from listserv.replies import RelayError
from tests.servers import Smarthost


@pytest.fixture
def silent_smarthost() -> Iterator[int]:
    """Greets, answers EHLO, then reads everything and answers nothing more."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"220 silent ESMTP\r\n")
            conn.recv(1024)  # EHLO
            conn.sendall(b"250-silent\r\n250 PIPELINING\r\n")
            conn.settimeout(0.1)
            while not stop.is_set():
                try:
                    if not conn.recv(65536):
                        return
                except TimeoutError:
                    continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_a_smarthost_that_stops_answering_fails_the_transaction_after_the_timeout(
        silent_smarthost: int) -> None:
    async def scenario() -> tuple[RelayError, float, bool]:
        relay = await Relay.connect("127.0.0.1", silent_smarthost, "test", timeout=0.3)
        started = time.monotonic()
        with pytest.raises(RelayError) as failed:
            await relay.send("a@example.org", ["b@example.net"], b"Subject: x\r\n\r\nx\r\n.\r\n")
        waited = time.monotonic() - started
        broken = relay.broken
        await relay.close()
        return failed.value, waited, broken

    error, waited, broken = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert error.temporary  # the job is tried again later
    assert broken  # and never on this connection
    assert 0.25 < waited < 5


def test_replies_in_time_never_time_out_however_long_the_connection_is_used(
        make_sink: Callable[..., Smarthost]) -> None:
    sink = make_sink()
    sink.data_delay = 0.05  # each message takes a while; each reply still comes in time

    async def scenario() -> float:
        relay = await Relay.connect("127.0.0.1", sink.port, "test", timeout=0.3)  # type: ignore[attr-defined]
        started = time.monotonic()
        for i in range(12):  # 12 x 0.05 s: twice the timeout in all
            assert await relay.send("a@example.org", [f"r{i}@example.net"],
                                    b"Subject: x\r\n\r\nx\r\n.\r\n") == {}
        assert not relay.broken
        await relay.close()
        return time.monotonic() - started

    assert asyncio.run(scenario()) > 0.6
    assert len(sink.recipients()) == 12
