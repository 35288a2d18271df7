"""The fronts as twistd services: listen, and reload certificates on SIGHUP and file change.

Where it sits: gateway/service.py adds one FrontsService for the [[tlsfront]]
sections of the configuration (after the proxied listeners they connect to);
`mailgateway tlsfront` runs one on its own. Certificates are loaded when the
service is built, so a broken file stops start-up with its reason; later
reloads keep the old certificates when the new ones are broken.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from gateway.config import FrontSettings
from gateway.listeners import Listener
from gateway.tlsfront.certs import FrontTLS
from gateway.tlsfront.listener import FrontFactory

log = Logger()


class FrontService(service.MultiService):
    """One front: its listener and its certificate watch."""

    def __init__(self, settings: FrontSettings, reactor: Any, backend: Any = None):
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.tls = FrontTLS(settings)  # CertificateError here stops start-up
        self.factory = FrontFactory(settings, self.tls, reactor, backend)
        self._watch: task.LoopingCall | None = None
        Listener(f"tlsfront.{settings.name}.accept", settings.accept, self.factory,
                 reactor).setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        if self.settings.reload_interval > 0:
            self._watch = task.LoopingCall(self.tls.check)
            self._watch.clock = self.reactor
            self._watch.start(self.settings.reload_interval, now=False)
        log.info("tlsfront {front}: {accept} -> {connect} (proxy {proxy})",
                 front=self.settings.name, accept=self.settings.accept,
                 connect=self.settings.connect, proxy=self.settings.proxy)

    def stopService(self) -> Any:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        return super().stopService()


class FrontsService(service.MultiService):
    """Every front of one process; SIGHUP reloads all their certificates."""

    def __init__(self, fronts: tuple[FrontSettings, ...] | list[FrontSettings], reactor: Any,
                 install_sighup: bool = True, backends: dict[str, Any] | None = None):
        super().__init__()
        self.reactor = reactor
        self.install_sighup = install_sighup
        self._previous: Any = None
        self._installed = False
        self.fronts = [FrontService(f, reactor, (backends or {}).get(f.name)) for f in fronts]
        for front in self.fronts:
            front.setServiceParent(self)

    def reload(self) -> None:
        for front in self.fronts:
            front.tls.reload("SIGHUP")

    def _on_sighup(self, signum: int, frame: Any) -> None:
        # A signal arrives between any two bytecodes: do the work in the reactor's turn.
        self.reactor.callFromThread(self.reload)

    def privilegedStartService(self) -> None:
        # Under twistd the ports answer from here on, before startService: a SIGHUP
        # from then on must reload, not end the process (SIGHUP's default action).
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        super().startService()
        self._install()  # `mailgateway tlsfront` starts without the privileged step

    def _install(self) -> None:
        if not self._installed and self.install_sighup and hasattr(signal, "SIGHUP"):
            self._previous = signal.signal(signal.SIGHUP, self._on_sighup)
            self._installed = True

    def stopService(self) -> Any:
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous, self._installed = None, False
        return super().stopService()
