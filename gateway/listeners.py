"""A listener that names its setting when it cannot listen.

Used wherever the gateway or the TLS front opens a server endpoint
(service.py, tlsfront/service.py) in place of twisted's strports.service.
It binds in privilegedStartService (before privileges are dropped, so ports
below 1024 work) and turns "cannot listen" into one StartupError line such as
`listen.smtp: 127.0.0.1:2525 is in use`, which tap.py prints instead of a
traceback. Imports only Twisted and the kernel, so tlsfront may use it alone.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.application import internet, service
from twisted.internet import endpoints, protocol
from twisted.internet.error import CannotListenError

from gateway.errors import StartupError


def cannot_listen(setting: str, description: str, e: CannotListenError) -> str:
    """One line for an endpoint that could not listen: setting, address, reason."""
    if isinstance(e.port, int):
        where = f"{e.interface or '*'}:{e.port}"
    else:
        where = str(e.port or description)  # a unix socket's path
    code = getattr(e.socketError, "errno", None)
    if code == errno.EADDRINUSE:
        return f"{setting}: {where} is in use"
    if code == errno.EACCES and isinstance(e.port, int) and e.port < 1024:
        return (f"{setting}: {where}: permission denied (ports below 1024 need root, "
                "then [server] user or twistd --uid, or CAP_NET_BIND_SERVICE)")
    reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
    return f"{setting}: {where}: {reason}"


class Listener(internet.StreamServerEndpointService):
    """strports.service(description, factory) that knows which setting made it."""

    def __init__(self, setting: str, description: str, factory: Any, reactor: Any):
        super().__init__(endpoints.serverFromString(reactor, description), factory)
        factory.noisy = False  # no "Starting factory <... at 0x...>" lines; logs.py says more
        self.setting = setting
        self.description = description
        # Twisted's documented switch: raise listen errors from privilegedStartService
        # instead of logging them and running on without the port.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise StartupError(cannot_listen(self.setting, self.description, e)) from None

    def socket_path(self) -> str | None:
        """The path of a bound unix socket (to hand it to the serving user), else None."""
        port = getattr(self._waitingForPort, "result", None)
        host = port.getHost() if hasattr(port, "getHost") else None
        name = getattr(host, "name", None)
        return name.decode() if isinstance(name, bytes) else name


class HeldSocket(protocol.ServerFactory):
    """A held listener's factory, never used ("HeldSocket starting on 25" in the log)."""


class HeldListener(Listener):
    """A listener bound here (before privileges are dropped) but never accepted on
    here: child processes inherit the socket and accept on it (the SMTP accept
    workers, gateway/acceptproc), also children started again after the drop."""

    def __init__(self, setting: str, description: str, reactor: Any):
        super().__init__(setting, description, HeldSocket(), reactor)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.result.stopReading()  # the children accept, not this reactor

    def fileno(self) -> int:
        """The listening socket's descriptor, for the children's childFDs."""
        return self._waitingForPort.result.fileno()


class AdoptedListener(service.Service):
    """A child's end of a HeldListener: accepts with factory on the inherited
    descriptor fd (closed here once the reactor holds its own duplicate)."""

    def __init__(self, setting: str, fd: int, factory: Any, reactor: Any):
        self.setting = setting
        self.fd = fd
        self.factory = factory
        self.reactor = reactor
        self.port: Any = None
        factory.noisy = False

    def startService(self) -> None:
        super().startService()
        family = socket.socket(fileno=self.fd)
        try:
            kind = family.family
        finally:
            family.detach()  # the descriptor stays open: it is closed below
        self.port = self.reactor.adoptStreamPort(self.fd, kind, self.factory)
        os.close(self.fd)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None
