"""The accepting side of one front: limits first, then TLS, then a FrontConnection.

Where it sits: service.py (or `mailgateway tlsfront`) listens on the front's
`accept` endpoint with a FrontFactory. Before any TLS work, buildProtocol
checks the limits (connections in all, from one client address, and new
handshakes per second from one address, a token bucket); over a limit it
returns None, so Twisted closes the socket at once, and the refusal is logged.
Otherwise the connection is a relay.FrontConnection, which speaks TLS itself
with a connection from certs.FrontTLS.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from gateway.config import FrontSettings
from gateway.tlsfront.backend import backend_endpoint
from gateway.tlsfront.certs import FrontTLS
from gateway.tlsfront.relay import FrontConnection

log = Logger()


class HandshakeRate:
    """New handshakes per second per address: a token bucket of `rate` tokens a second,
    holding at most `rate` (the burst), kept only for addresses seen recently."""

    def __init__(self, rate: float, clock: Any):
        self.rate = rate
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)

    def allow(self, address: str) -> bool:
        now = self.clock.seconds()
        tokens, then = self.buckets.get(address, (self.rate, now))
        tokens = min(self.rate, tokens + (now - then) * self.rate)
        if len(self.buckets) > 10000:
            self._forget_full(now)
        if tokens < 1:
            self.buckets[address] = (tokens, now)
            return False
        self.buckets[address] = (tokens - 1, now)
        return True

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled says nothing more than a missing one.
        refill = 1.0  # seconds for any bucket to refill (capacity == rate per second)
        for address, (_, then) in list(self.buckets.items()):
            if now - then >= refill:
                del self.buckets[address]


class FrontFactory(ServerFactory):
    """Accepts clients for one front; holds its settings, reactor, backend and counts."""

    def __init__(self, settings: FrontSettings, tls: FrontTLS, reactor: Any,
                 backend: IStreamClientEndpoint | None = None):
        self.settings = settings
        self.tls = tls
        self.reactor = reactor
        self.backend = backend if backend is not None else backend_endpoint(
            reactor, settings.connect)
        self.connections: Counter[str] = Counter()
        self.total = 0
        self.rate = HandshakeRate(settings.max_handshakes_per_second, reactor)

    def refusal(self, host: str) -> str:
        """Why a new connection from host is refused, or "" to accept it."""
        s = self.settings
        if self.total >= s.max_connections:
            return f"max_connections ({s.max_connections}) reached"
        if self.connections[host] >= s.max_connections_per_client:
            return f"max_connections_per_client ({s.max_connections_per_client}) reached"
        if not self.rate.allow(host):
            return f"max_handshakes_per_second ({s.max_handshakes_per_second:g}) exceeded"
        return ""

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", "unix")
        why = self.refusal(host)
        if why:
            log.info("tlsfront {front}: client={client}:{port} refused: {why}",
                     front=self.settings.name, client=host, port=getattr(addr, "port", 0),
                     why=why)
            return None
        self.total += 1
        self.connections[host] += 1
        return FrontConnection(self, addr)

    def connection_finished(self, conn: FrontConnection) -> None:
        host = getattr(conn.address, "host", "unix")
        self.total -= 1
        self.connections[host] -= 1
        if self.connections[host] <= 0:
            del self.connections[host]
