"""twistd's entry: `twistd mailgateway [--config PATH]`.

The only module besides cli.py that imports the global reactor; it hands it
to service.build(). The configuration is found as the CLI finds it
(config.locate). Started as root, the gateway prepares state_dir for the
serving user, builds as that user, binds as root and drops root before
serving (gateway/privileges.py). twistd's text log gets an observer whose
file writes leave the reactor thread (`_log_observer`, gateway/logwriter.py).
A fault found at start ends twistd with one line naming the file, key or
listener and the reason, never a traceback.
"""

from __future__ import annotations

import os
import signal
import sys

from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.logfile import LogFile

from gateway import config, logwriter, privileges
from gateway.errors import ConfigError, StartupError
from gateway.tlsfront.certs import CertificateError

log = Logger()


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "Configuration file (default: $MAILGATEWAY_CONFIG, then "
         "/etc/mailgateway/mailgateway.toml, then the embedded default)"],
    ]


def makeService(options: Options):
    from twisted.internet import reactor

    from gateway import service, startup

    path, origin = config.locate(options["config"])
    try:
        settings = config.load(path)
    except ConfigError as e:
        raise SystemExit("\n".join(["mailgateway: configuration errors:", *e.lines()])) from None
    log.info("configuration: {path} ({origin})", path=str(path), origin=origin)
    twistd = getattr(options, "parent", None) or {}
    if twistd.get("umask") is None:
        os.umask(0o077)  # state, queue and mailboxes are private, whoever makes them
    try:
        who, drop = _serving_user(settings, twistd)
        with privileges.acting_as(who):
            problems = startup.check(settings)
            if problems:
                raise SystemExit("\n".join(["mailgateway: cannot start:", *problems]))
            top = service.build(settings, reactor, serving=who)
    except ConfigError as e:  # found while building: the aliases file's faults
        raise SystemExit("\n".join(["mailgateway: configuration errors:", *e.lines()])) from None
    except StartupError as e:
        raise SystemExit(f"mailgateway: cannot start: {settings.source}: {e}") from None
    except CertificateError as e:
        raise SystemExit(f"mailgateway: cannot start: {settings.source}: tls: {e}") from None
    except OSError as e:
        raise SystemExit(f"mailgateway: cannot start: {startup.explain(e, settings)}") from None
    # Binds as root, hands unix sockets to the user, drops root (unless twistd --uid
    # does: it drops between binding and starting); a listener that cannot bind is
    # one line, not a traceback.
    guard = startup.Guard(drop_to=who if drop else None, daemon=not twistd.get("nodaemon", True),
                          serving=who, log_observer=_log_observer(twistd, reactor),
                          log_queue_lines=settings.log_queue_lines,
                          log_flush_interval=settings.log_flush_interval)
    top.setServiceParent(guard)
    return guard


def _log_observer(twistd, reactor) -> ILogObserver | None:
    """The text log twistd would open itself (--logfile, else stdout with -n, else
    twistd.log), its writes on a thread of their own (gateway/logwriter.py). None
    where twistd's own choice stands: --logger (json_lines has its own writer),
    --syslog, and a daemon told to log to stdout (twistd refuses that itself)."""
    if not hasattr(twistd, "get") or twistd.get("logger") or twistd.get("syslog"):
        return None
    name = twistd.get("logfile") or ""
    nodaemon = twistd.get("nodaemon", False)
    if name == "-" or (nodaemon and not name):
        if not nodaemon:
            return None
        return logwriter.text_observer(sys.stdout)[0]
    file = LogFile.fromFullPath(name or "twistd.log")
    observer, writer = logwriter.text_observer(file)
    if not signal.getsignal(signal.SIGUSR1):
        # As twistd does (logrotate's postrotate sends SIGUSR1), but the rotation waits
        # for the lines logged before it, on the writer's thread.
        signal.signal(signal.SIGUSR1,
                      lambda *_: reactor.callFromThread(writer.call, file.rotate))
    return observer


def _serving_user(settings: config.Settings, twistd) -> tuple[privileges.Identity | None, bool]:
    """Who serves, and whether the gateway drops root itself (False: twistd --uid does)."""
    uid, gid = twistd.get("uid"), twistd.get("gid")
    if uid is not None:
        who = privileges.identity(uid, gid)
    else:
        who = privileges.identity(settings.user, settings.group)
    if os.geteuid() != 0:
        return None, False
    if who is None:
        raise privileges.refuse_root()
    if who.uid == 0:
        log.warn("serving as root: server.user = \"root\" (test machines only)")
        return None, False
    privileges.prepare_state_dir(settings.state_dir, who)
    return who, uid is None
