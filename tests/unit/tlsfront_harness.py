"""A socket-free harness for gateway/tlsfront: Python's ssl client over memory BIOs,
the front on a StringTransport and a MemoryReactorClock, a fake backend endpoint."""

from __future__ import annotations

import ssl
import warnings
from pathlib import Path

import trustme
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from gateway.config import FrontSettings, parse_fronts
from gateway.tlsfront.certs import FrontTLS
from gateway.tlsfront.listener import FrontFactory

FRONT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 2465)


def write_cert(ca: trustme.CA, directory: Path, stem: str, *names: str) -> dict[str, str]:
    """A certificate for names signed by ca, as {certificate, private_key} paths."""
    cert = ca.issue_cert(*names)
    paths = {"certificate": str(directory / f"{stem}.pem"),
             "private_key": str(directory / f"{stem}.key")}
    cert.cert_chain_pems[0].write_to_path(paths["certificate"])
    cert.private_key_pem.write_to_path(paths["private_key"])
    return paths


def front_settings(certificates: list[dict[str, str]], **overrides) -> FrontSettings:
    """One front as `mailgateway tlsfront` would read it (through config.parse_fronts)."""
    entry = {"name": "test", "accept": "tcp:2465", "connect": "tcp:127.0.0.1:2587",
             "certificates": certificates, "reload_interval": 0, **overrides}
    return parse_fronts({"tlsfront": [entry]})[0]


class FakeBackend:
    """An IStreamClientEndpoint whose connection attempts the test completes or fails."""

    def __init__(self):
        self.attempts: list[tuple[object, defer.Deferred]] = []

    def connect(self, factory) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.attempts.append((factory, d))
        return d

    def accept(self) -> tuple[object, StringTransport]:
        factory, d = self.attempts.pop(0)
        proto = factory.buildProtocol(None)
        transport = StringTransport(lenient=True)
        proto.makeConnection(transport)
        d.callback(proto)
        return proto, transport

    def refuse(self) -> None:
        _, d = self.attempts.pop(0)
        d.errback(Failure(error.ConnectionRefusedError("Connection refused")))


class Client:
    """Python's ssl as the client, over memory BIOs."""

    def __init__(self, ca: trustme.CA | None, server_hostname: str | None, *,
                 maximum_version: ssl.TLSVersion | None = None,
                 minimum_version: ssl.TLSVersion | None = None,
                 client_cert: trustme.LeafCert | None = None,
                 session: ssl.SSLSession | None = None, context: ssl.SSLContext | None = None):
        self.context = ctx = context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if ca is not None:
            ca.configure_trust(ctx)
        else:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if maximum_version is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1/1.1 are
                ctx.minimum_version = minimum_version or ssl.TLSVersion.TLSv1
                ctx.maximum_version = maximum_version
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # so it really offers the old versions
        if client_cert is not None:
            client_cert.configure_cert(ctx)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = self.context.wrap_bio(self.incoming, self.outgoing,
                                         server_hostname=server_hostname, session=session)
        self.done = False
        self.error: ssl.SSLError | None = None
        self.received = b""
        self.closed = False  # close_notify seen
        self.raw_from_server = b""

    def step(self) -> None:
        if self.error is not None:
            return
        if not self.done:
            try:
                self.obj.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                return
            except ssl.SSLError as e:
                self.error = e
                return
        while not self.closed:
            try:
                chunk = self.obj.read(1 << 16)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.closed = True
                return
            except ssl.SSLError as e:
                self.error = e
                return
            if not chunk:  # SSLObject's way of saying close_notify arrived
                self.closed = True
                return
            self.received += chunk


class Connection:
    """One client connection through the front; pump() moves bytes until nothing moves."""

    def __init__(self, harness: Harness, client: Client, peer: str, port: int):
        self.harness = harness
        self.client = client
        self.tcp = StringTransport(hostAddress=FRONT_ADDRESS,
                                   peerAddress=IPv4Address("TCP", peer, port), lenient=True)
        self.proto = harness.factory.buildProtocol(self.tcp.getPeer())
        self.lost = False
        if self.proto is not None:
            self.proto.makeConnection(self.tcp)

    def pump(self) -> None:
        for _ in range(100):
            self.harness.reactor.advance(0)  # anything the front leaves for the next turn
            moved = False
            out = self.tcp.value()
            if out:
                self.tcp.clear()
                self.client.raw_from_server += out
                self.client.incoming.write(out)
                moved = True
            self.client.step()
            data = self.client.outgoing.read()
            if data and not self.lost:
                self.proto.dataReceived(data)
                moved = True
            if not moved:
                break

    def send(self, data: bytes) -> None:
        self.client.obj.write(data)
        self.pump()

    def lose(self, reason: Exception | None = None) -> None:
        """The client's TCP connection ends (cleanly, or with reason)."""
        if not self.lost:
            self.lost = True
            self.proto.connectionLost(Failure(reason or error.ConnectionDone()))

    def finish_close(self) -> None:
        """Complete a close the front asked for: answer its close_notify, then the TCP
        connection ends once its transport said loseConnection (or abortConnection)."""
        self.pump()
        if self.client.closed and not self.tcp.disconnecting:
            try:
                self.client.obj.unwrap()
            except ssl.SSLError:
                pass
            self.pump()
        if self.tcp.disconnecting:
            self.lose()


class Harness:
    def __init__(self, settings: FrontSettings):
        self.settings = settings
        self.reactor = MemoryReactorClock()
        self.backend = FakeBackend()
        self.tls = FrontTLS(settings)
        self.factory = FrontFactory(settings, self.tls, self.reactor, self.backend)

    def connect(self, client: Client, peer: str = "127.0.0.2", port: int = 40000) -> Connection:
        return Connection(self, client, peer, port)
