"""Counters of what the gateway did, for Prometheus and `mailgateway status`.

Where it sits: beside the kernel, fed by gateway/logs.py (each logged event
counts itself, so a log line and its metric never disagree) and read by
gateway/metrics_web.py, which serves them when [metrics] listen is set. The
text format is Prometheus's exposition format 0.0.4; no client library is
needed for counters, gauges and one histogram.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]

HELP = {
    "mailgateway_connections_total": ("counter", "Connections accepted, by service"),
    "mailgateway_rejects_total": ("counter", "Refused commands, by command and reply code"),
    "mailgateway_auth_total": ("counter", "Logins, by service and outcome (ok, failed)"),
    "mailgateway_messages_accepted_total": ("counter", "Messages queued (250 after DATA)"),
    "mailgateway_deliveries_total": (
        "counter", "Recipient delivery attempts, by status (sent, deferred, bounced, expired)"),
    "mailgateway_tls_handshakes_total": ("counter", "TLS front handshakes, by front and outcome"),
    "mailgateway_delivery_delay_seconds": (
        "histogram", "Seconds from arrival to a final delivery (sent, bounced, expired)"),
    "mailgateway_queue_entries": ("gauge", "Messages in the queue now"),
    "mailgateway_queue_entries_active": ("gauge", "Queue entries being attempted now"),
    "mailgateway_queue_entries_scheduled": (
        "gauge", "Queue entries waiting for their next attempt (retries, backoff)"),
    "mailgateway_uptime_seconds": ("gauge", "Seconds since the gateway started"),
}

# Mail latency spans seconds to days (retries): buckets to five days (queue.max_age).
BUCKETS = (0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 14400, 86400, 432000)


class Registry:
    """Counters and one histogram in memory; gauges read when asked."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.started = clock()
        self.counters: dict[tuple[str, Labels], float] = {}
        self.histograms: dict[tuple[str, Labels], list[float]] = {}
        self.gauges: dict[str, Callable[[], float]] = {
            "mailgateway_uptime_seconds": lambda: self.clock() - self.started}
        # The last faults (rejects, failed logins, bounces), for `mailgateway status`.
        self.last_errors: deque[str] = deque(maxlen=10)
        self._errors = 0  # errors ever added: changes() sends those since its last call
        self._sent: tuple[dict, dict, int] = ({}, {}, 0)  # what changes() has sent

    def inc(self, name: str, by: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0.0) + by

    def observe(self, name: str, value: float, **labels: str) -> None:
        """A histogram observation: counts per bucket (+Inf last), then sum."""
        key = (name, tuple(sorted(labels.items())))
        h = self.histograms.setdefault(key, [0.0] * (len(BUCKETS) + 2))
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                h[i] += 1
        h[len(BUCKETS)] += 1
        h[-1] += value

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def error(self, text: str) -> None:
        self.last_errors.append(
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.clock())) + " " + text)
        self._errors += 1

    def changes(self) -> dict | None:
        """What was counted since the last call (None: nothing), as JSON-ready lists:
        a child process (runner, accept worker) counts its own events and sends this
        to the gateway, whose merge() adds it, so /metrics covers every process."""
        counters, histograms, errors = self._sent
        c = [[n, list(map(list, labels)), v - counters.get((n, labels), 0.0)]
             for (n, labels), v in self.counters.items() if v != counters.get((n, labels))]
        h = []
        for key, now in self.histograms.items():
            before = histograms.get(key) or [0.0] * len(now)
            if now != before:
                h.append([key[0], list(map(list, key[1])),
                          [a - b for a, b in zip(now, before, strict=True)]])
        e = list(self.last_errors)[-min(self._errors - errors, len(self.last_errors)):] \
            if self._errors != errors else []
        if not (c or h or e):
            return None
        self._sent = (dict(self.counters), {k: list(v) for k, v in self.histograms.items()},
                      self._errors)
        return {"c": c, "h": h, "e": e}

    def merge(self, changes: dict) -> None:
        """Another process's changes() added to this registry."""
        for name, labels, by in changes.get("c", ()):
            self.inc(name, float(by), **dict(labels))
        for name, labels, steps in changes.get("h", ()):
            key = (name, tuple(sorted((str(k), str(v)) for k, v in labels)))
            h = self.histograms.setdefault(key, [0.0] * (len(BUCKETS) + 2))
            if len(steps) == len(h):
                for i, step in enumerate(steps):
                    h[i] += float(step)
        for text in changes.get("e", ()):
            self.last_errors.append(str(text))
            self._errors += 1

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4."""
        out: list[str] = []
        names = sorted({n for n, _ in self.counters} | {n for n, _ in self.histograms}
                       | set(self.gauges))
        for name in names:
            kind, text = HELP.get(name, ("untyped", name))
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if name in self.gauges:
                out.append(f"{name} {_number(self.gauges[name]())}")
            for (n, labels), value in sorted(self.counters.items()):
                if n == name:
                    out.append(f"{name}{_labels(labels)} {_number(value)}")
            for (n, labels), h in sorted(self.histograms.items()):
                if n == name:
                    for bound, count in zip((*BUCKETS, "+Inf"), h, strict=False):
                        le = (("le", str(bound)),)
                        out.append(f"{name}_bucket{_labels(labels + le)} {_number(count)}")
                    out.append(f"{name}_sum{_labels(labels)} {_number(h[-1])}")
                    out.append(f"{name}_count{_labels(labels)} {_number(h[len(BUCKETS)])}")
        return "\n".join(out) + "\n"

    def snapshot(self) -> dict:
        """What `mailgateway status` prints: uptime, gauges, counters, last errors."""
        return {
            "uptime": self.clock() - self.started,
            "gauges": {name: read() for name, read in self.gauges.items()},
            "counters": [{"name": n, "labels": dict(labels), "value": v}
                         for (n, labels), v in sorted(self.counters.items())],
            "last_errors": list(self.last_errors),
        }


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
               for _, v in labels)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(labels, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


REGISTRY = Registry()
