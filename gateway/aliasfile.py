"""The aliases file on disk: read it for resolve/aliases.py, and reload it when it changes.

Shared by service.py (the gateway) and cli.py (check-config, alias show), so
both see the same table the same way. resolve/ stays pure: the reading is
here. A reload (SIGHUP, or a changed mtime of the file or of an :include:
file, looked at every [aliases] check_interval) swaps the router's table whole;
a new file with any fault keeps the old table, and each fault is logged with
its file and line.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from gateway.config import Settings
from gateway.resolve import aliases
from gateway.resolve.aliases import AliasOptions, AliasTable

log = Logger()


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_table(settings: Settings) -> tuple[AliasTable, list[str]]:
    """The alias table of settings' [aliases] file, and every fault in it."""
    a = settings.aliases
    if not a.file:
        return AliasTable(), []
    if a.file_optional and not os.path.exists(a.file):
        return AliasTable(files=(a.file,)), []
    return aliases.load(a.file, read=_read, domains=settings.domains,
                        options=AliasOptions(include_commands=a.allow_include_commands,
                                             include_files=a.allow_include_files))


def _mtimes(files: tuple[str, ...]) -> dict[str, tuple[int, int, int]]:
    """What tells a file changed: its mtime, and its size and inode too, for an editor
    that truncates and writes again within one tick of the file system's clock."""
    out = {}
    for f in files:
        try:
            st = os.stat(f)
            out[f] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            out[f] = (-1, -1, -1)
    return out


class AliasReloader(service.Service):
    """Keeps router.aliases up to date with the file; SIGHUP reloads at once."""

    def __init__(self, settings: Settings, router: Any, reactor: Any, install_sighup: bool = True,
                 forward_sighup: Any = None):
        """forward_sighup(): also called on SIGHUP (the runner process reloads too)."""
        self.settings = settings
        self.forward_sighup = forward_sighup
        self.router = router
        self.reactor = reactor
        self.install_sighup = install_sighup
        self._seen = _mtimes(router.aliases.files)
        self._loop: task.LoopingCall | None = None
        self._previous: Any = None
        self._installed = False

    def privilegedStartService(self) -> None:
        # twistd binds the ports here, before startService: a SIGHUP sent as soon as
        # they answer must reload (queued for the reactor), not end the gateway.
        super().privilegedStartService()
        self._install()

    def _install(self) -> None:
        if self._installed or not (self.settings.aliases.file and self.install_sighup
                                   and hasattr(signal, "SIGHUP")):
            return
        self._previous = signal.signal(signal.SIGHUP, self._on_sighup)
        self._installed = True

    def startService(self) -> None:
        super().startService()
        self._install()
        if not self.settings.aliases.file:
            return
        interval = self.settings.aliases.check_interval
        if interval > 0:
            self._loop = task.LoopingCall(self.check)
            self._loop.clock = self.reactor
            self._loop.start(interval, now=False)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous, self._installed = None, False
        return super().stopService()

    def _on_sighup(self, signum: int, frame: Any) -> None:
        # Other SIGHUP users (the TLS front's certificates) keep theirs.
        if callable(self._previous):
            self._previous(signum, frame)
        self.reactor.callFromThread(self.reload, "SIGHUP")
        if self.forward_sighup is not None:
            self.reactor.callFromThread(self.forward_sighup)

    def check(self) -> None:
        if _mtimes(tuple(self._seen)) != self._seen:
            self.reload("changed")

    def reload(self, why: str) -> bool:
        """Load the file again; swap the table only when it has no fault."""
        # Looked at before reading: a change made while we read is then seen next time.
        before = _mtimes((*self._seen, self.settings.aliases.file))
        table, faults = load_table(self.settings)
        self._seen = {f: before[f] if f in before else _mtimes((f,))[f] for f in table.files}
        if faults:
            for fault in faults:
                log.error("aliases not reloaded ({why}): {fault}", why=why, fault=fault)
            log.warn("aliases: keeping the old table of {n} names", n=len(self.router.aliases))
            return False
        self.router.aliases = table
        log.info("aliases reloaded ({why}): {n} names from {file}", why=why, n=len(table),
                 file=self.settings.aliases.file)
        return True
