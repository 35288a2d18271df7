"""twistd's entry: `twistd mailgateway [--config PATH]`.

The only module besides cli.py that imports the global reactor; it hands it
to service.build().
"""

from __future__ import annotations

from twisted.python import usage

from gateway import config
from gateway.errors import ConfigError


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "Configuration file (default: the embedded etc/mailgateway.toml)"],
    ]


def makeService(options: Options):
    from twisted.internet import reactor

    from gateway import service

    try:
        settings = config.load(options["config"])
        return service.build(settings, reactor)
    except ConfigError as e:
        raise usage.UsageError(f"configuration errors:\n{e}") from None
