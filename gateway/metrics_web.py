"""The metrics endpoint: /metrics for Prometheus, /status for `mailgateway status`.

Where it sits: service.py starts it when [metrics] listen is set (off by
default; keep it on loopback, it has no authentication). It only reads
gateway/metrics.py's registry, with twisted.web from Twisted itself.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web import resource, server

from gateway.metrics import Registry


class _Metrics(resource.Resource):
    isLeaf = True

    def __init__(self, registry: Registry):
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        return self.registry.render().encode("utf-8")


class _Status(resource.Resource):
    isLeaf = True

    def __init__(self, registry: Registry, listeners: dict[str, str]):
        super().__init__()
        self.registry = registry
        self.listeners = listeners

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({**self.registry.snapshot(), "listeners": self.listeners}).encode()


class QuietSite(server.Site):
    """A Site that writes no access log line per scrape."""

    def log(self, request: Any) -> None:
        pass


def site(registry: Registry, listeners: dict[str, str]) -> server.Site:
    root = resource.Resource()
    root.putChild(b"metrics", _Metrics(registry))
    root.putChild(b"status", _Status(registry, listeners))
    return QuietSite(root)
