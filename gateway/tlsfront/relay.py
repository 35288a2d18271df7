"""One client connection through the front: TLS on one side, plaintext to the backend.

Where it sits: listener.FrontFactory builds a FrontConnection for each accepted
TCP connection. It speaks TLS itself, through a pyOpenSSL Connection on memory
BIOs (certs.FrontTLS makes it), rather than under Twisted's TLSMemoryBIOProtocol:
the wrapper's layers (interface declarations copied per connection, a protocol
wrapper, a write aggregator, a Failure per event) cost more CPU than the TLS
itself on a resumed handshake (bench/RESULTS.md). Once the handshake is done
the front connects to the backend, writes the PROXY header
(tlsfront/proxyheader.py), then relays both ways:

- flow control: each side's transport is registered as the producer of the
  other, so a slow reader stops reading on the other side; besides the
  transports' own buffers (buffer_size each) only bytes that arrive before
  the backend answers are held, and reading pauses past buffer_size;
- closing: the backend closing its side (a half-close, IHalfCloseableProtocol)
  sends the client its remaining bytes and a TLS close_notify while the
  client may still send (RFC 8446 6.1), until the client's own close_notify;
  the client closing (close_notify, answered with ours, or FIN) sends the
  backend its remaining bytes and a FIN; a reset on either side, or a TLS
  error from the client, aborts the other;
- timeouts on the injected reactor: handshake, connect, idle, close;
- a backend that is down gets the client a protocol greeting that says so
  (SMTP 421 4.3.2, POP3 -ERR [SYS/TEMP], IMAP * BYE [UNAVAILABLE]) and a clean
  TLS close.

Each connection is logged once, when both sides are gone: client, SNI, TLS
version, cipher, bytes each way, duration, outcome.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, ITCPTransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.metrics import REGISTRY
from gateway.tlsfront.proxyheader import TLSDetails, header

log = Logger()


def unavailable_greeting(protocol: str, hostname: str) -> bytes:
    """What a client of `protocol` is told when the backend cannot be reached."""
    host = f"{hostname} " if hostname else ""
    if protocol == "smtp":  # RFC 5321 3.8 / 4.2.3, RFC 3463 4.3.2 "system not accepting"
        return f"421 4.3.2 {host}Service not available, closing transmission channel\r\n".encode()
    if protocol == "pop3":  # RFC 3206 SYS/TEMP
        return b"-ERR [SYS/TEMP] Service not available\r\n"
    if protocol == "imap":  # RFC 3501 7.1.5 BYE, RFC 5530 UNAVAILABLE
        return b"* BYE [UNAVAILABLE] Service not available\r\n"
    return b""


def describe(reason: Failure | BaseException | None) -> str:
    """A short reason for the log: OpenSSL's reason strings, or the exception's text."""
    if reason is None:
        return "closed"
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        texts = [r[2] for r in value.args[0] if len(r) == 3 and r[2]]
        return "; ".join(texts) or "TLS error"
    text = str(value).strip() or type(value).__name__
    return text.splitlines()[0][:200]


@implementer(IPushProducer)
class _Valve:
    """Lets one side's consumer pause and resume the other side's reading, and no more:
    stopProducing is the close logic's decision, not the transport's."""

    def __init__(self, transport: Any):
        self.transport: Any = transport

    def pauseProducing(self) -> None:
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self.transport is not None:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class BackendProtocol(Protocol):
    """The plaintext side; every event goes to its FrontConnection."""

    def __init__(self, conn: FrontConnection):
        self.conn = conn

    def connectionMade(self) -> None:
        if self.transport is not None and hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = self.conn.settings.buffer_size
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)  # relay small replies at once, as stunnel does

    def dataReceived(self, data: bytes) -> None:
        self.conn.from_backend(data)

    def readConnectionLost(self) -> None:
        self.conn.backend_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        self.conn.backend_lost(reason)


class _BackendFactory(ClientFactory):
    noisy = False  # one log line per connection is written by FrontConnection

    def __init__(self, conn: FrontConnection):
        self.conn = conn

    def buildProtocol(self, addr: Any) -> BackendProtocol:
        return BackendProtocol(self.conn)


class FrontConnection(Protocol):
    """The client's side: TLS over the accepted TCP transport (self.transport)."""

    def __init__(self, front: Any, address: Any):
        self.front = front  # listener.FrontFactory: settings, reactor, backend endpoint, limits
        self.settings = front.settings
        self.reactor = front.reactor
        self.address = address
        self.client = f"{getattr(address, 'host', 'unix')}:{getattr(address, 'port', 0)}"
        self.started = self.reactor.seconds()
        self.ssl: SSL.Connection | None = None
        self.tls: TLSDetails | None = None  # set when the handshake is done
        self.backend: BackendProtocol | None = None
        self.bytes_in = self.bytes_out = 0
        self.outcome = ""
        self._tls_error: SSL.Error | None = None
        self._sent_close_notify = False
        self._connecting: defer.Deferred | None = None
        self._early: list[bytes] = []
        self._early_size = 0
        self._client_paused = False
        self._client_gone = False
        self._closing_client = False
        self._backend_gone = False
        self._logged = False
        self._valves: list[_Valve] = []
        self._feeding_backend = False
        self._last_activity = self.started
        self._timers: dict[str, Any] = {}

    # --- timers ------------------------------------------------------------

    def _start(self, name: str, seconds: float, fire: Any) -> None:
        self._stop(name)
        self._timers[name] = self.reactor.callLater(seconds, fire)

    def _stop(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _note(self, outcome: str) -> None:
        self.outcome = self.outcome or outcome

    # --- TLS over the client's TCP connection ----------------------------------

    def makeConnection(self, transport: Any) -> None:
        if hasattr(transport, "bufferSize"):
            transport.bufferSize = self.settings.buffer_size
        if ITCPTransport.providedBy(transport):
            # No Nagle: a greeting held behind the unacknowledged session tickets
            # waited for the client's delayed ACK, ~40 ms a connection (stunnel sets it too).
            transport.setTcpNoDelay(True)
        self.ssl = self.front.tls.serverConnectionForTLS(self)
        self.ssl.set_accept_state()
        super().makeConnection(transport)

    def connectionMade(self) -> None:
        # One timer for the handshake, then (re-armed) for the connect to the backend.
        self._start("setup", self.settings.handshake_timeout, self._setup_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._client_gone:
            return
        ssl = self.ssl
        ssl.bio_write(data)
        if self.tls is None:
            try:
                ssl.do_handshake()
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error as e:
                self._tls_failed(e)
                return
            self._flush()
            self._handshake_done()
        while not self._client_gone:
            try:
                plain = ssl.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._client_close_notify()
                break
            except SSL.Error as e:
                self._tls_failed(e)
                return
            self._from_client(plain)
        self._flush()  # TLS 1.3 tickets, alerts, our close_notify

    def _flush(self) -> None:
        """Send what OpenSSL has written to the outgoing memory BIO."""
        chunks = []
        while True:
            try:
                chunks.append(self.ssl.bio_read(65536))
            except SSL.WantReadError:
                break
        if chunks and not self._client_gone:
            self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _send(self, data: bytes) -> None:
        """Encrypt and send data to the client (dropped once TLS is closing)."""
        if self._client_gone or self._sent_close_notify or self.tls is None:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[self.ssl.send(view):]
        except SSL.Error:
            return  # TLS already failed: the connection is being aborted
        self._flush()

    def _tls_failed(self, e: SSL.Error) -> None:
        """A failed handshake (send the alert, then close) or bad TLS later (a reset)."""
        self._tls_error = e
        self._flush()
        if self.tls is None:
            self.transport.loseConnection()
        else:
            self._note(f"reset by client: {describe(e)}")
            self.transport.abortConnection()

    def _client_close_notify(self) -> None:
        """The client ended TLS: answer with ours (RFC 8446 6.1) and close TCP."""
        self._close_notify()
        self.transport.loseConnection()

    def _close_notify(self) -> None:
        if not self._sent_close_notify:
            self._sent_close_notify = True
            try:
                self.ssl.shutdown()
            except SSL.Error:
                pass
            self._flush()

    def _setup_timeout(self) -> None:
        self._timers.pop("setup", None)
        if self.tls is None:
            self._note("handshake timeout")
            self.transport.abortConnection()
        elif self._connecting is not None:
            self._connecting.cancel()  # _backend_failed says "connect timeout"

    def _handshake_done(self) -> None:
        tls = self.ssl
        subject = cn = ""
        cert = (tls.get_peer_certificate(as_cryptography=True)
                if self.settings.client_verify != "none" else None)
        if cert is not None:  # present only after a successful verification
            subject = cert.subject.rfc4514_string()
            cns = [a.value for a in cert.subject if a.oid.dotted_string == "2.5.4.3"]
            cn = str(cns[0]) if cns else ""
        sni = tls.get_servername()
        self.tls = TLSDetails(
            version=tls.get_protocol_version_name() or "", cipher=tls.get_cipher_name() or "",
            sni=sni.decode("ascii", "replace") if sni else "", client_subject=subject,
            client_cn=cn)
        self._timers["setup"].reset(self.settings.connect_timeout)
        self._connecting = self.front.backend.connect(_BackendFactory(self))
        self._connecting.addCallbacks(self._backend_connected, self._backend_failed)

    # --- the client side -----------------------------------------------------

    def _from_client(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._last_activity = self.reactor.seconds()
        if self.backend is not None and not self._backend_gone:
            self.backend.transport.write(data)
            return
        if self._backend_gone:
            return
        self._early.append(data)
        self._early_size += len(data)
        if self._early_size > self.settings.buffer_size and not self._client_paused:
            self._client_paused = True
            self.transport.pauseProducing()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        self._client_gone = True
        self._stop("setup")
        reset = not reason.check(error.ConnectionDone)
        if self.tls is None:
            self._note(f"handshake failed: {describe(self._tls_error or reason)}")
        elif reset:
            self._note(f"reset by client: {describe(reason)}")
        else:
            self._note("closed by client")
        if self._connecting is not None:
            self._connecting.cancel()
        if self.backend is not None and not self._backend_gone:
            self._stop_feeding_backend()
            if reset:
                self.backend.transport.abortConnection()
            else:
                self.backend.transport.loseConnection()
                self._start("close", self.settings.close_timeout, self._close_timeout)
        self._finish()

    # --- the backend side ----------------------------------------------------

    def _backend_connected(self, backend: BackendProtocol) -> None:
        self._connecting = None
        self._stop("setup")
        if self._client_gone:
            backend.transport.abortConnection()
            return
        self.backend = backend
        first = header(self.settings.proxy, self.address, self.transport.getHost(), self.tls)
        early, self._early, self._early_size = b"".join(self._early), [], 0
        if first or early:
            backend.transport.write(first + early)
        to_client, to_backend = _Valve(backend.transport), _Valve(self.transport)
        self._valves = [to_client, to_backend]
        backend.transport.registerProducer(to_backend, True)
        self._feeding_backend = True
        self.transport.registerProducer(to_client, True)
        if self._client_paused:
            self._client_paused = False
            self.transport.resumeProducing()
        self._last_activity = self.reactor.seconds()
        self._start("idle", self.settings.idle_timeout, self._idle_check)

    def _backend_failed(self, reason: Failure) -> None:
        self._connecting = None
        self._stop("setup")
        if self._client_gone:
            return
        self._backend_gone = True
        why = "connect timeout" if reason.check(defer.CancelledError) else describe(reason)
        self._note(f"backend unavailable: {why}")
        greeting = unavailable_greeting(self.settings.protocol, self.settings.hostname)
        if greeting:
            self._send(greeting)
            self.bytes_out += len(greeting)
        self._close_client()

    def from_backend(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self._last_activity = self.reactor.seconds()
        self._send(data)

    def backend_eof(self) -> None:
        """The backend will send no more (a half-close): pass it on, keep reading the client."""
        self._note("closed by backend")
        if not self._client_gone:
            self._close_client()

    def backend_lost(self, reason: Failure) -> None:
        self._backend_gone = True
        for valve in self._valves:
            valve.transport = None  # neither side may pause or resume a closed one
        if not self._client_gone:
            if reason.check(error.ConnectionDone):
                self._note("closed by backend")
                self._close_client()
            else:
                self._note(f"reset by backend: {describe(reason)}")
                self.transport.abortConnection()
        self._finish()

    # --- closing -------------------------------------------------------------

    def _stop_feeding_backend(self) -> None:
        """The client no longer produces for the backend (so its close can complete)."""
        if self._feeding_backend:
            self._feeding_backend = False
            self.backend.transport.unregisterProducer()

    def _close_client(self) -> None:
        """Send our close_notify and keep reading until the client's (then TCP closes,
        in _client_close_notify); abort if the client never finishes."""
        if self._closing_client:
            return
        self._closing_client = True
        if self.backend is not None:
            self.transport.unregisterProducer()
        if self.tls is None:
            self.transport.loseConnection()
        else:
            self._close_notify()
        self._start("close", self.settings.close_timeout, self._close_timeout)

    def _close_timeout(self) -> None:
        self._note("close timeout")
        if not self._client_gone:
            self.transport.abortConnection()
        if self.backend is not None and not self._backend_gone:
            self.backend.transport.abortConnection()

    def _idle_check(self) -> None:
        idle = self.reactor.seconds() - self._last_activity
        if idle < self.settings.idle_timeout:
            self._start("idle", self.settings.idle_timeout - idle, self._idle_check)
            return
        self._note("idle timeout")
        if self.backend is not None and not self._backend_gone:
            self._stop_feeding_backend()
            self.backend.transport.loseConnection()
        if not self._client_gone:
            self._close_client()

    def _finish(self) -> None:
        if self._logged or not self._client_gone:
            return
        if self.backend is not None and not self._backend_gone:
            return
        self._logged = True
        for name in list(self._timers):
            self._stop(name)
        tls = self.tls or TLSDetails("-", "-")
        # Formatted here: twisted.logger's own formatting (string.Formatter, in
        # Python) cost more than a resumed handshake's crypto.
        outcome = self.outcome or "closed"
        REGISTRY.inc("mailgateway_connections_total", service=f"tlsfront {self.settings.name}")
        REGISTRY.inc("mailgateway_tls_handshakes_total", front=self.settings.name,
                     outcome="ok" if self.tls is not None else "failed")
        log.info("{line}", line=(
            f"tlsfront {self.settings.name}: client={self.client} sni={tls.sni or '-'} "
            f"tls={tls.version} cipher={tls.cipher} in={self.bytes_in} out={self.bytes_out} "
            f"duration={self.reactor.seconds() - self.started:.3f}s outcome={outcome}"),
            front=self.settings.name, client=self.client, outcome=outcome)
        self.front.connection_finished(self)
