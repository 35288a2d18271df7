"""twistd's entry: `twistd mailgateway [--config PATH]`.

The only module besides cli.py that imports the global reactor; it hands it
to service.build().
"""

from __future__ import annotations

from twisted.python import usage

from gateway import config
from gateway.errors import ConfigError, StartupError


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "Configuration file (default: the embedded etc/mailgateway.toml)"],
    ]


def makeService(options: Options):
    from twisted.internet import reactor

    from gateway import service

    # Errors as lines for the admin, not tracebacks: twistd calls this after it has
    # parsed its options, where a UsageError is no longer turned into a message.
    try:
        settings = config.load(options["config"])
    except ConfigError as e:
        raise SystemExit(f"mailgateway: configuration errors:\n{e}") from None
    try:
        return service.build(settings, reactor)
    except StartupError as e:
        raise SystemExit(f"mailgateway: {e}") from None
