"""A small dialogue helper for the ESMTP server over StringTransport (no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field

from turns import next_turns
from twisted.cred import error as cred_error
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from gateway.accept.policy import RelayPolicy
from gateway.accept.smtp import SMTPFactory
from gateway.config import parse
from gateway.resolve.router import Router


class FakeUsers:
    def __init__(self, users: dict[str, str]):
        self.users = users

    def exists(self, address: str) -> bool:
        return address.lower() in self.users

    def authenticate(self, address: str, password: str, client: str = "") -> defer.Deferred:
        if self.users.get(address.lower()) == password:
            return defer.succeed(address.lower())
        return defer.fail(cred_error.UnauthorizedLogin())


class FakeIncoming:
    """A streamed message kept in memory; its commit is the spool's store."""

    full = False

    def __init__(self, spool, queue_id):
        self.spool, self.queue_id = spool, queue_id
        self.parts: list[bytes] = []
        self.size = 0
        self.aborted = False

    def write(self, data):
        self.parts.append(data)
        self.size += len(data)

    def room(self):
        return defer.succeed(None)

    def reader(self, start=0):
        return defer.succeed(lambda: b"".join(self.parts)[start:])

    def commit(self, envelope, head=None, skip=0):
        message = b"".join(self.parts)
        if head is not None:
            message = head + message[skip:]
        return self.spool.store(envelope, message)

    def abort(self):
        self.aborted = True


@dataclass
class FakeSpool:
    stored: list = field(default_factory=list)
    fail: Exception | None = None
    pending: defer.Deferred | None = None
    hold: bool = False
    received: list = field(default_factory=list)

    def receive(self, queue_id, buffer_size):
        self.received.append(FakeIncoming(self, queue_id))
        return self.received[-1]

    def store(self, envelope, message):
        if self.fail is not None:
            return defer.fail(self.fail)
        self.stored.append((envelope, message))
        if self.hold:
            self.pending = defer.Deferred()
            return self.pending.addCallback(lambda _: envelope.queue_id)
        return defer.succeed(envelope.queue_id)


@dataclass
class FakeListener:
    queued: list = field(default_factory=list)
    envelopes: list = field(default_factory=list)

    def enqueued(self, queue_id: str, envelope=None) -> None:
        self.queued.append(queue_id)
        self.envelopes.append(envelope)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    started_tls = None

    def startTLS(self, ctx, normal=True):
        self.started_tls = ctx


class Dialogue:
    """Drives one session: send lines, read the replies the server wrote."""

    def __init__(self, *, peer: str = "127.0.0.1", submission: bool = False,
                 tls_options: object | None = "ctx", overrides: dict | None = None,
                 plaintext_from_loopback: bool = False, trusted: tuple = (),
                 quota: object | None = None):
        data = {"server": {"domains": ["example.test"], "trusted_networks": list(trusted)},
                "smtp": overrides or {}}
        self.settings = parse(data)
        self.users = FakeUsers({"alice@example.test": "secret"})
        self.router = Router(self.settings.domains, self.users)
        self.spool = FakeSpool()
        self.listener = FakeListener()
        self.clock = MemoryReactorClock()
        self.factory = SMTPFactory(
            hostname="mx.example.test", domains=self.settings.domains,
            settings=self.settings.smtp,
            policy=RelayPolicy(self.router, self.settings.trusted_networks, submission,
                               quota=quota),
            spool=self.spool, listener=self.listener, users=self.users,
            tls_options=tls_options, plaintext_from_loopback=plaintext_from_loopback,
            reactor=self.clock)
        self.proto = self.factory.buildProtocol(None)
        self.transport = TLSStringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.proto.makeConnection(self.transport)
        self.greeting = self.read()

    def read(self) -> bytes:
        next_turns(self.clock)
        out = self.transport.value()
        self.transport.clear()
        return out

    def send(self, data: bytes) -> bytes:
        self.proto.dataReceived(data)
        return self.read()

    def cmd(self, line: str | bytes, expect: bytes | None = None) -> bytes:
        raw = line if isinstance(line, bytes) else line.encode()
        reply = self.send(raw + b"\r\n")
        if expect is not None:
            assert reply.startswith(expect), (line, reply)
        return reply

    def ehlo(self) -> bytes:
        return self.cmd("EHLO client.test", expect=b"250")

    def mail(self, sender: str = "bob@remote.test", expect: bytes = b"250") -> bytes:
        return self.cmd(f"MAIL FROM:<{sender}>", expect=expect)

    def rcpt(self, address: str, expect: bytes = b"250") -> bytes:
        return self.cmd(f"RCPT TO:<{address}>", expect=expect)

    def data(self, body: bytes, expect: bytes = b"250") -> bytes:
        self.cmd("DATA", expect=b"354")
        reply = self.send(body + b".\r\n")
        assert reply.startswith(expect), reply
        return reply

