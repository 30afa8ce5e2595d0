"""The server's own listening sockets behave like asyncio's: each connection has Nagle's
algorithm off, so a keep-alive client (a browser, a proxy) gets every answer at once,
not the second and later ones after its delayed ACK (~40 ms each)."""

from __future__ import annotations

import asyncio
import socket

from listserv import listeners


def test_connections_to_our_listeners_have_nodelay() -> None:
    async def accepted_nodelay() -> int:
        found: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            found.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        listener = listeners.bind("127.0.0.1", 0)
        server = await asyncio.start_server(connected, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname())
            value = await asyncio.wait_for(found, 10)
            writer.close()
        return value

    assert asyncio.run(accepted_nodelay()) != 0
