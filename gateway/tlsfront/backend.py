"""The front's way to its backend: a connect that starts at once, for plain addresses.

Where it sits: listener.FrontFactory gets its backend endpoint here, and
relay.FrontConnection calls its connect() once the client's handshake is done.

For `unix:PATH` and `tcp:`/`tcp6:` with an IP address (the gateway's own
listeners, and most stunnel-like set-ups) DirectEndpoint makes the socket,
connects it at once and hands the connected socket to the reactor
(IReactorSocket.adoptStreamConnection). Twisted's own client endpoint first
waits a reactor turn (tcp.Client defers its connect with callLater(0)), goes
through a resolver Deferred even for an address, and needs a Connector and a
Failure chain to cancel: on a resumed handshake that was a quarter of the
front's CPU. Everything else (host names, options such as bindAddress) goes
to Twisted's clientFromString.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from typing import Any

from twisted.internet import defer, error
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint, IWriteDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config_tlsfront import split_endpoint


def backend_endpoint(reactor: Any, connect: str) -> IStreamClientEndpoint:
    """The endpoint for a front's `connect` string."""
    direct = direct_address(connect)
    if direct is not None:
        return DirectEndpoint(reactor, *direct)
    return clientFromString(reactor, connect)


def direct_address(connect: str) -> tuple[int, Any] | None:
    """(family, address) for unix:PATH or tcp:ADDRESS:PORT; None for anything else."""
    kind, *args = split_endpoint(connect)
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    named.pop("timeout", None)  # the front's own connect_timeout applies
    if kind == "unix":
        path = named.pop("path", None) or (positional.pop(0) if positional else "")
        return (socket.AF_UNIX, path) if path and not positional and not named else None
    if kind not in ("tcp", "tcp6"):
        return None
    host = named.pop("host", None) or (positional.pop(0) if positional else "")
    port = named.pop("port", None) or (positional.pop(0) if positional else "")
    if positional or named or not port.isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: Twisted resolves it
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, (str(ip), int(port))


@implementer(IStreamClientEndpoint)
class DirectEndpoint:
    def __init__(self, reactor: Any, family: int, address: Any):
        self.reactor = reactor
        self.family = family
        self.address = address

    def connect(self, factory: Any) -> defer.Deferred:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            code = sock.connect_ex(self.address)
        except OSError as e:
            code = e.errno or errno.EINVAL
        if code in (0, errno.EISCONN):
            return self._adopt(sock, factory)
        if code == errno.EINPROGRESS:  # TCP: done when the socket is writable
            return _Connecting(self, sock, factory).deferred
        sock.close()
        # A UNIX socket says EAGAIN when the listener's backlog is full.
        return defer.fail(error.getConnectError((code, os.strerror(code))))

    def _adopt(self, sock: socket.socket, factory: Any) -> defer.Deferred:
        try:
            transport = self.reactor.adoptStreamConnection(sock.fileno(), self.family, factory)
        except OSError as e:  # reset before it could be adopted
            return defer.fail(error.getConnectError((e.errno, e.strerror)))
        finally:
            sock.close()  # the transport has its own descriptor
        if transport is None:
            return defer.fail(error.ConnectError(string="the factory refused the connection"))
        return defer.succeed(transport.protocol)


@implementer(IWriteDescriptor)
class _Connecting:
    """A TCP connect in progress: writable means done (RFC 793 handshake finished or failed)."""

    def __init__(self, endpoint: DirectEndpoint, sock: socket.socket, factory: Any):
        self.endpoint = endpoint
        self.sock = sock
        self.factory = factory
        self.deferred: defer.Deferred = defer.Deferred(self._cancel)
        endpoint.reactor.addWriter(self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "tlsfront-connect"

    def doWrite(self) -> None:
        self.endpoint.reactor.removeWriter(self)
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.sock.close()
            self.deferred.errback(error.getConnectError((code, os.strerror(code))))
            return
        self.endpoint._adopt(self.sock, self.factory).chainDeferred(self.deferred)

    def connectionLost(self, reason: Failure) -> None:
        self.endpoint.reactor.removeWriter(self)
        self.sock.close()
        if not self.deferred.called:
            self.deferred.errback(reason)

    def _cancel(self, _: defer.Deferred) -> None:
        self.endpoint.reactor.removeWriter(self)
        self.sock.close()
