"""`mailgateway status`: a running gateway at a glance, from its /status endpoint.

Where it sits: called by cli.py; reads what gateway/metrics_web.py serves
when [metrics] listen is set (over HTTP on tcp:, or on a unix: socket), and
says so plainly when it is off or the gateway does not answer.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from gateway.config import Settings, client_endpoint_for
from gateway.config_tlsfront import split_endpoint


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def fetch(settings: Settings, timeout: float = 5.0) -> dict[str, Any]:
    """The gateway's /status as a dict; OSError or ValueError when it cannot be had."""
    endpoint = client_endpoint_for(settings.metrics_listen) or ""
    parts = split_endpoint(endpoint)
    if parts[0] == "unix":
        conn: http.client.HTTPConnection = _UnixHTTPConnection(parts[1], timeout)
    else:
        fields = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        conn = http.client.HTTPConnection(fields["host"], int(fields["port"]), timeout=timeout)
    try:
        conn.request("GET", "/status")
        response = conn.getresponse()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return json.loads(response.read())
    finally:
        conn.close()


def _duration(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days}d " if days else "") + f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


def render(status: dict[str, Any]) -> str:
    """The lines `mailgateway status` prints."""
    totals: dict[str, dict[str, float]] = {}
    for c in status["counters"]:
        key = ",".join(f"{k}={v}" for k, v in sorted(c["labels"].items())) or "all"
        totals.setdefault(c["name"].removeprefix("mailgateway_"), {})[key] = c["value"]
    gauges = status["gauges"]
    lines = [f"uptime:     {_duration(status['uptime'])}",
             f"queue:      {int(gauges.get('mailgateway_queue_entries', 0))} messages "
             f"({int(gauges.get('mailgateway_queue_entries_active', 0))} being attempted, "
             f"{int(gauges.get('mailgateway_queue_entries_scheduled', 0))} waiting to retry)"]
    for name, where in sorted(status["listeners"].items()):
        lines.append(f"listener:   {name} {where}")
    for name in ("connections_total", "messages_accepted_total", "deliveries_total",
                 "rejects_total", "auth_total", "tls_handshakes_total"):
        figures = totals.get(name, {})
        shown = ", ".join(f"{k} {int(v)}" for k, v in sorted(figures.items())) or "0"
        lines.append(f"{name.removesuffix('_total').replace('_', ' ') + ':':<12}{shown}")
    lines += [f"error:      {e}" for e in status["last_errors"]] or ["errors:     none"]
    return "\n".join(lines)
