"""The metrics endpoint of a real gateway, scraped and parsed after real sessions,
and `mailgateway status` reading the same figures."""

from __future__ import annotations

import urllib.request

import pytest
from conftest import free_port, wait_for
from test_logs import PLAINTEXT, sessions

from tests.unit.test_metrics import parse


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse(r.read().decode())


# With accept workers (and the runner process, the default), each process counts
# what it did and the gateway adds it up (gateway/runnerproc/channel.py, M frames).
@pytest.mark.parametrize("workers", ["", "[smtp]\naccept_workers = 2\n"],
                         ids=["one listener", "accept workers"])
def test_scrape_and_status(make_gateway, workers):
    port = free_port()
    gw = make_gateway(f'{PLAINTEXT}\n[metrics]\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
                      + workers)
    sessions(gw)
    wait_for(lambda: scrape(port).get('mailgateway_deliveries_total{status="deferred"}')
             and scrape(port).get("mailgateway_messages_accepted_total") == 2,
             what="the deferred delivery and both messages counted")
    s = scrape(port)
    assert s["mailgateway_messages_accepted_total"] == 2
    assert s['mailgateway_deliveries_total{status="sent"}'] == 1
    assert s['mailgateway_rejects_total{code="554",command="RCPT"}'] == 1
    assert s['mailgateway_rejects_total{code="550",command="RCPT"}'] == 1
    assert s['mailgateway_auth_total{outcome="failed",service="imap"}'] == 1
    assert s['mailgateway_auth_total{outcome="ok",service="submission"}'] == 1
    assert s['mailgateway_connections_total{service="smtp"}'] >= 2
    assert s["mailgateway_delivery_delay_seconds_count"] == 1
    assert s["mailgateway_queue_entries"] == 1  # the deferred remote message
    assert s["mailgateway_uptime_seconds"] > 0
    result = gw.cli("status")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("uptime:     ") and "queue:      1 messages" in out
    assert f"listener:   listen.smtp tcp:{gw.ports['smtp']}:interface=127.0.0.1" in out
    assert "auth failed: imap LOGIN <mallory@example.test> from 127.0.0.1" in out
