"""A POP3 session over StringTransport and a fake clock, for tests/unit/test_pop3*.py.

No sockets, no reactor: Dialogue feeds lines to access/pop3.POP3Server and
returns what it wrote, pulling RETR/TOP producers as a real transport would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fake_users import BOX, PASSWORD, FakeUsers  # noqa: F401  (re-exported to tests)
from turns import next_turns
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.access.pop3 import POP3Factory
from gateway.config import parse
from gateway.store.maildir import MaildirStore

# A dot-stuffed line, an 8-bit body, a lone "." line and no CRLF at the very end.
MSG1 = (b"From: bob@example.test\r\nSubject: one\r\n\r\n"
        b".hidden dot line\r\n\xe9t\xe9 \xff 8-bit\r\n.\r\nlast line without CRLF")
MSG2 = b"Subject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n"
TLS_OPTIONS = object()  # the fake startTLS only records what it was given


@implementer(ITLSTransport)
class FakeTLSTransport(StringTransport):
    tls_started_with = None

    def startTLS(self, contextFactory, normal=True):
        self.tls_started_with = contextFactory


@implementer(ISSLTransport)
class SSLTransport(StringTransport):
    def getPeerCertificate(self):
        return None


class Dialogue:
    """One POP3 session; each call sends a line and returns what the server wrote."""

    def __init__(self, factory: POP3Factory, clock: MemoryReactorClock,
                 peer: str = "192.0.2.7", transport_class: type = FakeTLSTransport) -> None:
        addr = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, 50000)
        self.clock = clock
        self.transport = transport_class(peerAddress=addr)
        self.proto = factory.buildProtocol(addr)
        self.proto.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        next_turns(self.clock)
        while self.transport.producer is not None and not self.transport.streaming:
            # a RETR/TOP sender (pull producer): what a real transport does is ask for more
            self.transport.producer.resumeProducing()
        out = self.transport.value()
        self.transport.clear()
        return out

    def raw(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        return self.take()

    def __call__(self, line: str | bytes, expect: bytes = b"+OK") -> bytes:
        out = self.raw((line.encode() if isinstance(line, str) else line) + b"\r\n")
        assert out.startswith(expect), out
        return out

    def login(self) -> bytes:
        self("USER " + BOX)
        return self("PASS " + PASSWORD)

    def drop(self) -> None:
        self.proto.connectionLost(Failure(ConnectionError("gone")))


def make_env(tmp_path: Path) -> Any:
    """connect(peer=..., transport_class=..., pop3={...}, **factory args) -> Dialogue.

    Alice's Maildir holds MSG1 then MSG2. connect.clock, .root (the Maildir)
    and .factory (makes a POP3Factory with the same arguments) come along.
    """
    clock = MemoryReactorClock()
    store = MaildirStore(tmp_path / "mail")
    store.deliver(BOX, MSG1, "UNIQUE1")
    store.deliver(BOX, MSG2, "UNIQUE2")
    root = store.mailbox_path(BOX)
    os.utime(root / "new" / "UNIQUE1", ns=(10**18, 10**18))  # MSG1 first
    os.utime(root / "new" / "UNIQUE2", ns=(2 * 10**18, 2 * 10**18))

    def factory(pop3: dict | None = None, **kw) -> POP3Factory:
        """pop3: [pop3] keys over the defaults, through the real config parser."""
        settings = parse({"server": {"domains": ["example.test"]}, "pop3": pop3 or {}}).pop3
        args = dict(hostname="mail.example.test", users=FakeUsers(), store=store,
                    tls_options=TLS_OPTIONS, plaintext_from_loopback=False,
                    settings=settings, reactor=clock)
        args.update(kw)
        return POP3Factory(**args)

    def connect(peer: str = "192.0.2.7", transport_class: type = FakeTLSTransport,
                **kw) -> Dialogue:
        return Dialogue(factory(**kw), clock, peer, transport_class)

    connect.clock, connect.root, connect.factory = clock, root, factory
    return connect


def capa(d: Dialogue) -> list[bytes]:
    lines = d("CAPA").split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    return lines[1:-2]


def logged_in(env, **kw) -> Dialogue:
    d = env(**kw)
    d("STLS")
    d.login()
    return d
