"""gateway/metrics.py: the Prometheus text it writes, fed by gateway/logs.py events."""

import re

from gateway import cli, logs
from gateway.metrics import BUCKETS, REGISTRY, Registry


def parse(text: str) -> dict[str, float]:
    """Sample lines of the exposition format: 'name{labels}' -> value."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_counters_gauges_and_a_cumulative_histogram():
    now = [1000.0]
    r = Registry(clock=lambda: now[0])
    now[0] += 42
    r.inc("mailgateway_rejects_total", command="RCPT", code="554")
    r.inc("mailgateway_rejects_total", command="RCPT", code="554")
    r.inc("mailgateway_auth_total", service="imap", outcome='fail"ed')
    r.observe("mailgateway_delivery_delay_seconds", 0.3)
    r.observe("mailgateway_delivery_delay_seconds", 7200)
    text = r.render()
    assert "# TYPE mailgateway_delivery_delay_seconds histogram" in text
    s = parse(text)
    assert s['mailgateway_rejects_total{code="554",command="RCPT"}'] == 2
    assert s['mailgateway_auth_total{outcome="fail\\"ed",service="imap"}'] == 1
    assert s["mailgateway_uptime_seconds"] == 42
    assert s['mailgateway_delivery_delay_seconds_bucket{le="0.1"}'] == 0
    assert s['mailgateway_delivery_delay_seconds_bucket{le="0.5"}'] == 1
    assert s['mailgateway_delivery_delay_seconds_bucket{le="14400"}'] == 2
    assert s['mailgateway_delivery_delay_seconds_bucket{le="+Inf"}'] == 2
    assert s["mailgateway_delivery_delay_seconds_count"] == 2
    assert s["mailgateway_delivery_delay_seconds_sum"] == 7200.3
    assert len([k for k in s if "_bucket" in k]) == len(BUCKETS) + 1


def test_logged_events_are_counted():
    before = parse(REGISTRY.render())

    def delta(key):
        return parse(REGISTRY.render()).get(key, 0) - before.get(key, 0)

    logs.auth(False, "pop3", "192.0.2.1", "USER", "bob@example.test")
    logs.reject("RCPT", "192.0.2.1", 550, "5.1.1", "User unknown", sender="a@b", recipient="c@d")
    logs.delivery("Q1", "c@d", "mx.d", 100.0, 150.0, 160.0, "5.1.1", "bounced", "550 no")
    assert delta('mailgateway_auth_total{outcome="failed",service="pop3"}') == 1
    assert delta('mailgateway_rejects_total{code="550",command="RCPT"}') == 1
    assert delta('mailgateway_deliveries_total{status="bounced"}') == 1
    assert delta("mailgateway_delivery_delay_seconds_count") == 1
    assert re.search(r"Q1: to=<c@d> bounced: 550 no$", REGISTRY.last_errors[-1])


def test_status_says_when_the_endpoint_is_off(tmp_path, capsys):
    conf = tmp_path / "c.toml"
    conf.write_text(f'[server]\ndomains = ["example.test"]\nstate_dir = "{tmp_path}"\n')
    assert cli.main(["status", "--config", str(conf)]) == 1
    assert "the status endpoint is off: set [metrics] listen" in capsys.readouterr().err


def test_a_child_process_counts_reach_the_gateway_once_each():
    # A runner process or accept worker counts its own events; changes() since the
    # last call travel to the gateway (M frames) and merge() adds them there.
    child, gateway = Registry(), Registry()
    gateway.inc("mailgateway_deliveries_total", status="sent")
    assert child.changes() is None
    child.inc("mailgateway_deliveries_total", status="sent")
    child.inc("mailgateway_deliveries_total", status="deferred")
    child.observe("mailgateway_delivery_delay_seconds", 0.3)
    child.error("Q1: to=<c@d> bounced: 550 no")
    gateway.merge(child.changes())
    child.inc("mailgateway_deliveries_total", status="sent", by=2)
    child.observe("mailgateway_delivery_delay_seconds", 60)
    gateway.merge(child.changes())
    assert child.changes() is None
    s = parse(gateway.render())
    assert s['mailgateway_deliveries_total{status="sent"}'] == 4
    assert s['mailgateway_deliveries_total{status="deferred"}'] == 1
    assert s["mailgateway_delivery_delay_seconds_count"] == 2
    assert s['mailgateway_delivery_delay_seconds_bucket{le="1"}'] == 1
    assert s["mailgateway_delivery_delay_seconds_sum"] == 60.3
    assert [e.endswith("Q1: to=<c@d> bounced: 550 no") for e in gateway.last_errors] == [True]
