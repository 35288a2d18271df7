"""Faults at start, said in one line each: for twistd (tap.py) and check-config (cli.py).

Where it sits: before service.build() and around the service it returns. The
checks here find what would otherwise show only at the first connection (a
state_dir the serving user cannot write, a key it cannot read, a key that is
not the certificate's); Guard turns a StartupError raised while the listeners
bind (gateway/listeners.py) into one line on stderr and in the log and a
non-zero exit, where twistd would print a traceback. Guard also hands twistd
the log observer tap.py made and starts and stops the log writers
(gateway/logwriter.py) with the services.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

from twisted.application import service
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from gateway import fdlimit, logwriter, privileges
from gateway.config import Settings
from gateway.errors import StartupError
from gateway.listeners import Listener
from gateway.tlsfront.certs import CertificateError, load_pair

log = Logger()

_RWX = os.R_OK | os.W_OK | os.X_OK


def explain(e: OSError, settings: Settings) -> str:
    """An OSError met while building the gateway, named by the setting it concerns."""
    path = Path(e.filename) if e.filename else None
    key = "server.state_dir"
    if path == settings.certificate:
        key = "tls.certificate"
    elif path == settings.private_key:
        key = "tls.private_key"
    what = f"{e.filename}: " if e.filename else ""
    return f"{settings.source}: {key}: {what}{e.strerror or e}"


def _denied(path: Path, need: int) -> str | None:
    # effective_ids: the gateway may be checking as the user it will serve as (seteuid).
    if os.access(path, need, effective_ids=os.access in os.supports_effective_ids):
        return None
    st = path.stat()
    return (f"{path}: permission denied (owner uid {st.st_uid}, gid {st.st_gid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}; running as uid {os.geteuid()})")


def check_state_dir(state_dir: Path) -> str | None:
    """Why the current (effective) user cannot use state_dir, or None.

    Looks two levels down (queue/tmp, mail/DOMAIN, tls/key.pem, users): a tree
    made by root earlier fails here instead of at the first message.
    """
    if not state_dir.exists():
        parent = state_dir.parent
        while not parent.exists():
            parent = parent.parent
        fault = _denied(parent, os.W_OK | os.X_OK)
        return f"{state_dir} does not exist and cannot be made: {fault}" if fault else None
    if not state_dir.is_dir():
        return f"{state_dir}: not a directory"
    paths = [state_dir]
    for child in sorted(state_dir.iterdir()) if not _denied(state_dir, _RWX) else []:
        paths.append(child)
        if child.is_dir() and not child.is_symlink() and not _denied(child, _RWX):
            paths.extend(sorted(child.iterdir()))
    for path in paths:
        if path.is_symlink() or path.is_socket():
            continue
        fault = _denied(path, _RWX if path.is_dir() else os.R_OK | os.W_OK)
        if fault:
            return fault
    return None


def check(settings: Settings) -> list[str]:
    """Every start-up fault of settings beyond the file's own syntax, one line each."""
    problems = []
    try:
        privileges.identity(settings.user, settings.group)
    except StartupError as e:
        problems.append(f"{settings.source}: {e}")
    fault = check_state_dir(settings.state_dir)
    if fault:
        problems.append(f"{settings.source}: server.state_dir: {fault}")
    if settings.certificate.exists() or settings.private_key.exists() or \
            settings.raw.get("tls", {}).get("certificate"):
        try:
            load_pair(settings.certificate, settings.private_key)
        except CertificateError as e:
            problems.append(f"{settings.source}: tls: {e}")
    return problems


class Guard(service.MultiService):
    """The top service: binds the listeners (as root if started so), then drops to
    drop_to; a StartupError while binding or starting ends twistd in one line (log
    and stderr) with exit status 1, instead of a traceback."""

    def __init__(self, drop_to: privileges.Identity | None = None, daemon: bool = False,
                 serving: privileges.Identity | None = None,
                 log_observer: ILogObserver | None = None,
                 log_queue_lines: int = logwriter.DEFAULT_LIMIT,
                 log_flush_interval: float = logwriter.DEFAULT_INTERVAL):
        super().__init__()
        self.drop_to = drop_to
        self.daemon = daemon
        # Who serves: drop_to, or the user twistd --uid switches to after binding.
        self.serving = serving or drop_to
        self.log_observer = log_observer
        self.log_queue_lines = log_queue_lines
        self.log_flush_interval = log_flush_interval

    def setServiceParent(self, parent) -> None:
        # twistd makes the application (a Componentized) and hands it here; the log
        # observer it finds on it is the one it starts logging to (AppLogger.start).
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        fdlimit.raise_open_files()
        try:
            super().privilegedStartService()
            if self.serving is not None:
                self._give_sockets(self, self.serving)
            if self.drop_to is not None:
                privileges.drop(self.drop_to)
        except StartupError as e:
            self._fail(e)
        except OSError as e:
            self._fail(StartupError(f"{e.filename or ''}: {e.strerror}"))

    def _give_sockets(self, parent: service.IServiceCollection, who) -> None:
        # The TLS front reaches the proxied listeners over these unix sockets as the
        # serving user; made by root while binding, they must be theirs.
        for child in parent:
            if isinstance(child, Listener) and child.socket_path():
                path = child.socket_path()
                for made in (path, f"{path}.lock"):  # lockfile=1: a symlink beside it
                    if os.path.lexists(made):
                        os.lchown(made, who.uid, who.gid)
            elif isinstance(child, service.MultiService):
                self._give_sockets(child, who)

    def startService(self) -> None:
        # From here (twistd has daemonized: no fork to come) log lines are written by
        # the log writers' threads; until the stop below, written at once.
        logwriter.start_all(self.log_queue_lines, self.log_flush_interval)
        try:
            super().startService()
        except StartupError as e:
            self._fail(e)
        if signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None):
            # `systemctl reload` sends SIGHUP; with no TLS front to reload it must not kill.
            # (A handler that does nothing: no logging inside a signal handler.)
            signal.signal(signal.SIGHUP, lambda *_: None)
        notify_systemd(b"READY=1\nSTATUS=serving")

    def stopService(self):
        # Every line logged while stopping is written before the writers stop.
        return defer.maybeDeferred(super().stopService).addBoth(_then_close_logs)

    def _fail(self, e: StartupError) -> None:
        log.critical("cannot start: {reason}", reason=str(e))
        if self.daemon:
            # Daemonized, twistd's waiting parent hears only of an Exception (it writes
            # it to the parent's status pipe and prints it); stderr is /dev/null here.
            raise RuntimeError(f"mailgateway: cannot start: {e}") from None
        raise SystemExit(f"mailgateway: cannot start: {e}")


def _then_close_logs(result):
    logwriter.close_all()
    return result


def notify_systemd(message: bytes) -> bool:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (Type=notify)."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path.startswith(("/", "@")):
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # "@": abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(address)
            s.sendall(message)
        except OSError as e:
            log.warn("cannot notify systemd at {path}: {reason}", path=path, reason=e.strerror)
            return False
    return True
