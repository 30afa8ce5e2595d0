"""The server's listening sockets, bound before anything that names them is built.

Port 0 asks the kernel for a free port. The config the server then runs with names the
port it got, and so does `[web] base_url` when it names port 0, so that links in mail and
pages point at the real listener. Parallel test runs start servers this way: a port found
free and released before the server binds it may be taken by another run in between.
"""

from __future__ import annotations

import dataclasses
import socket
from urllib.parse import urlsplit

from listserv.config import Config


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket; IPv6 when the host is an IPv6 address, as uvicorn decides.

    Made with its protocol named (IPPROTO_TCP), as asyncio's own servers are: asyncio
    turns Nagle's algorithm off (TCP_NODELAY) only on connections of such a socket.
    socket.create_server leaves the protocol 0, and then every answer after the first
    on a keep-alive connection waited ~40 ms for the client's delayed ACK."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


def bound(config: Config, smtp: socket.socket | None, web: socket.socket) -> Config:
    """`config` with the ports the listeners got: the same unless a port was 0. No SMTP
    listener (a process without the smtp role) leaves [smtp] port as it is."""
    smtp_port = smtp.getsockname()[1] if smtp is not None else config.smtp.port
    web_port = web.getsockname()[1]
    base = urlsplit(config.web.base_url)
    base_url = config.web.base_url
    if base.port == 0:
        base_url = base._replace(netloc=f"{base.hostname}:{web_port}").geturl()
    return dataclasses.replace(
        config, smtp=dataclasses.replace(config.smtp, port=smtp_port),
        web=dataclasses.replace(config.web, port=web_port, base_url=base_url))
