"""twistd's entry: `twistd mailgateway [--config PATH]`.

The only module besides cli.py that imports the global reactor; it hands it
to service.build(). The configuration is found as the CLI finds it
(config.locate). A fault found at start ends twistd with one line naming the
file, key or listener and the reason, never a traceback.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python import usage

from gateway import config
from gateway.errors import ConfigError
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
    problems = startup.check(settings)
    if problems:
        raise SystemExit("\n".join(["mailgateway: cannot start:", *problems]))
    try:
        top = service.build(settings, reactor)
    except CertificateError as e:
        raise SystemExit(f"mailgateway: cannot start: {settings.source}: tls: {e}") from None
    except OSError as e:
        raise SystemExit(f"mailgateway: cannot start: {startup.explain(e, settings)}") from None
    guard = startup.Guard()  # listeners that cannot bind: one line, not a traceback
    top.setServiceParent(guard)
    return guard
