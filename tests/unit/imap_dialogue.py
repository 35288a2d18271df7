"""An IMAP session over StringTransport and a fake clock: no sockets, no reactor, no threads.

Store work that the gateway runs in the thread pool runs inline here
(run_blocking = maybeDeferred), so every answer is in the transport as soon
as the command has been fed in.
"""

from __future__ import annotations

from pathlib import Path

from fake_users import BOX, PASSWORD, FakeUsers  # noqa: F401  (re-exported to tests)
from turns import next_turns
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.access.imap.server import IMAPFactory
from gateway.config import parse
from gateway.store.maildir import MaildirStore


@implementer(ITLSTransport)
class FakeTLSTransport(StringTransport):
    tls_started_with = None

    def startTLS(self, contextFactory, normal=True):
        self.tls_started_with = contextFactory


def make_factory(store: MaildirStore, clock: MemoryReactorClock, imap: dict | None = None,
                 **kw) -> IMAPFactory:
    """imap: [imap] keys over the defaults, through the real configuration parser."""
    settings = parse({"server": {"domains": ["example.test"]}, "imap": imap or {}}).imap
    args = dict(hostname="mail.example.test", users=FakeUsers(), store=store,
                tls_options=object(), plaintext_from_loopback=True, settings=settings,
                reactor=clock, run_blocking=defer.maybeDeferred,
                # A pool thread's call reaches the reactor at its next turn (take()).
                call_from_thread=lambda f, *a: clock.callLater(0, f, *a))
    args.update(kw)
    return IMAPFactory(**args)


class Session:
    """Each call sends one command (tag added) and returns everything written back."""

    def __init__(self, factory: IMAPFactory, peer: str = "127.0.0.1") -> None:
        self.transport = FakeTLSTransport(peerAddress=IPv4Address("TCP", peer, 50000))
        self.proto = factory.buildProtocol(self.transport.getPeer())
        self.proto.makeConnection(self.transport)
        self.greeting = self.take()
        self.n = 0

    def take(self) -> bytes:
        next_turns(self.proto.factory.reactor)
        out = self.transport.value()
        self.transport.clear()
        return out

    def raw(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        return self.take()

    def __call__(self, command: str | bytes, expect: bytes | None = b"OK") -> bytes:
        self.n += 1
        tag = b"a%d" % self.n
        if isinstance(command, str):
            command = command.encode()
        out = self.raw(tag + b" " + command + b"\r\n")
        if expect is not None:  # None: the command is not finished yet (IDLE, a literal)
            last = out.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
            assert last.startswith(tag + b" " + expect), out
        return out

    def login(self) -> bytes:
        return self(f'LOGIN {BOX} "{PASSWORD}"')

    def drop(self) -> None:
        self.proto.connectionLost(Failure(ConnectionError("gone")))


def fresh_store(tmp_path: Path) -> MaildirStore:
    return MaildirStore(tmp_path / "mail")
