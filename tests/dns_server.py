"""A tiny authoritative DNS server on loopback UDP: TXT records from a dict, other types
(MX, A, AAAA) from another, NXDOMAIN (with an SOA, for negative caching) for every other
name; SERVFAIL for the names a test makes fail, and answers a test holds back until it
releases them. Tests point `[dns]` at it, so the server's real resolver code asks a real
DNS server."""

from __future__ import annotations

import contextlib
import socket
import threading

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 300


class DnsServer:
    """records: {"_dmarc.example.com": ["v=DMARC1; p=reject"]}; change it at any time."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        # {("lists.example.org", "MX"): ["10 mx.lists.example.org."]}, in zone-file text.
        self.typed: dict[tuple[str, str], list[str]] = {}
        self.queries: list[str] = []
        # {"_dmarc.slow.example": 1.5}: a name server slow to answer for these names.
        self.delays: dict[str, float] = {}
        self.failing: set[str] = set()  # answered SERVFAIL: a lookup that fails
        # Answered only once the test calls release(): a name server that has not
        # answered yet.
        self.held: set[str] = set()
        self._released = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except OSError:
                return  # closed
            try:
                query = dns.message.from_wire(wire)
            except dns.exception.DNSException:
                continue
            answer = self._answer(query).to_wire()
            name = query.question[0].name.to_text().rstrip(".").lower()
            delay = self.delays.get(name)
            if name in self.held:
                threading.Thread(target=self._send_when_released, args=(answer, peer),
                                 daemon=True).start()
            elif delay:  # answered later, from a thread of its own: the others go on
                threading.Timer(delay, self._send, (answer, peer)).start()
            else:
                self._send(answer, peer)

    def release(self) -> None:
        """Send the answers held back, and answer those names at once from now on."""
        self.held.clear()
        self._released.set()

    def _send_when_released(self, answer: bytes, peer: tuple[str, int]) -> None:
        self._released.wait(30)
        self._send(answer, peer)

    def _send(self, answer: bytes, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # closed meanwhile
            self.sock.sendto(answer, peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        self.queries.append(name)
        texts = self.records.get(name)
        rdtype = dns.rdatatype.to_text(question.rdtype)
        typed = self.typed.get((name, rdtype))
        if name in self.failing:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif texts is None and not any(n == name for n, _ in self.typed):
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(
                "example.", TTL, "IN", "SOA", "ns.example. admin.example. 1 3600 600 86400 60"))
        elif question.rdtype == dns.rdatatype.TXT and texts is not None:
            # Long records go as several strings of at most 255, as zone files hold them.
            quoted = [" ".join(f'"{t[i:i + 255]}"' for i in range(0, len(t), 255))
                      for t in texts]
            response.answer.append(dns.rrset.from_text_list(
                question.name, TTL, dns.rdataclass.IN, dns.rdatatype.TXT, quoted))
        elif typed:
            response.answer.append(dns.rrset.from_text_list(
                question.name, TTL, dns.rdataclass.IN, question.rdtype, typed))
        return response

    def txt(self, name: bytes, timeout: float = 5) -> bytes | None:
        """A dnsfunc for dkimpy's verifiers: the record, asked of this server over UDP."""
        query = dns.message.make_query(name.decode(), "TXT")
        answer = dns.query.udp(query, "127.0.0.1", timeout=timeout, port=self.port)
        for rrset in answer.answer:
            return b"".join(next(iter(rrset)).strings)
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread in recvfrom
        self.sock.close()
        self.thread.join(5)
        self._released.set()  # the held answers' threads end
