"""Outbound relay through the real gateway: a real DNS server and scripted SMTP sinks on
loopback (127.0.0.2.. are loopback too), smtplib as the submitting client."""

from __future__ import annotations

import collections
import json
import smtplib
import ssl
from email import message_from_bytes, policy

import dns.resolver
import pytest
import trustme
from conftest import PASSWORD, free_port, wait_for
from dns_server import DNSServer, resolve_with
from smtp_sink import SinkScript, SMTPSink

ZONE = {
    ("remote.test", "MX"): ["10 mx1.remote.test.", "20 mx2.remote.test."],
    ("mx1.remote.test", "A"): ["127.0.0.2"],
    ("mx2.remote.test", "A"): ["127.0.0.3"],
    ("nullmx.test", "MX"): ["0 ."],
    ("secure.test", "MX"): ["10 mx.secure.test."],
    ("mx.secure.test", "A"): ["127.0.0.4"],
    ("good.test", "MX"): ["10 mx.good.test."],
    ("mx.good.test", "A"): ["127.0.0.5"],
    ("slow.test", "A"): ["127.0.0.6"],  # no MX: implicit MX
}


@pytest.fixture
def nameserver():
    server = DNSServer(ZONE).start()
    yield server
    server.stop()


@pytest.fixture
def sinks():
    made: list[SMTPSink] = []
    port = free_port()

    def start(address: str, script: SinkScript | None = None) -> SMTPSink:
        sink = SMTPSink(address, port, script).start()
        made.append(sink)
        return sink

    start.port = port
    yield start
    for sink in made:
        sink.stop()


def relay_gateway(make_gateway, nameserver, sinks, relay: str = "", queue: str = "",
                  cache: float = 0.5):
    return make_gateway(
        "[auth]\nplaintext_from_loopback = true\n\n"
        f"[queue]\nretry_initial = 1\nretry_max = 2\ncontrol_interval = 0.2\n{queue}\n"
        f'[relay]\nnameservers = ["127.0.0.1"]\ndns_port = {nameserver.port}\nport = {sinks.port}\n'
        "connect_timeout = 5\ncommand_timeout = 10\ndata_timeout = 10\n"
        f"connection_cache_time = {cache}\n{relay}\n")


def submit(gw, recipients, body: bytes, sender: str = "alice@example.test") -> None:
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=30) as s:
        s.login("alice@example.test", PASSWORD)
        assert s.sendmail(sender, recipients, body) == {}


def queue_entries(gw) -> list[dict]:
    return json.loads(gw.cli("queue", "list", "--json").stdout)


def queue_empty(gw) -> bool:
    return not list((gw.state / "queue" / "entries").iterdir())


def dsn_parts(raw: bytes):
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg.get_content_type() == "multipart/report"
    blocks = msg.get_payload()[1].get_payload()
    return msg, blocks[1:]


def test_dns_helper_serves_mx_and_nxdomain(nameserver):
    assert sorted(resolve_with(nameserver.port, "remote.test", "MX")) == [
        "10 mx1.remote.test.", "20 mx2.remote.test."]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolve_with(nameserver.port, "nowhere.test", "MX")


def test_mx_preference_then_fallback_to_the_second_mx(make_gateway, nameserver, sinks):
    # No connection cache: the second message must look at the MX list afresh.
    gw = relay_gateway(make_gateway, nameserver, sinks, cache=0)
    second = sinks("127.0.0.3")
    body = b"Subject: one\r\nMessage-ID: <one@c.test>\r\n\r\nfirst MX is down\r\n.dot\r\n"
    submit(gw, ["bob@remote.test"], body)  # nothing listens on mx1 (127.0.0.2)
    wait_for(lambda: second.received_for("bob@remote.test"), what="delivery to mx2")
    (got,) = second.messages
    assert got.sender == "alice@example.test" and got.recipients == ["bob@remote.test"]
    assert got.data.startswith(b"Received: from ") and got.data.endswith(body)
    assert got.helo == "mx.example.test"
    first = sinks("127.0.0.2")
    submit(gw, ["carol@remote.test"], b"Subject: two\r\n\r\nnow mx1 is up\r\n")
    wait_for(lambda: first.received_for("carol@remote.test"), what="delivery to mx1")
    assert len(second.messages) == 1
    wait_for(lambda: queue_empty(gw), what="an empty queue")


def test_4xx_then_2xx_is_delivered_once(make_gateway, nameserver, sinks):
    gw = relay_gateway(make_gateway, nameserver, sinks)
    sink = sinks("127.0.0.2", SinkScript(final=["451 4.3.0 try again later", "250 2.0.0 ok"]))
    submit(gw, ["bob@remote.test"], b"Subject: retry\r\n\r\nonce\r\n")
    wait_for(lambda: queue_empty(gw), what="the retry to succeed")
    assert len(sink.messages) == 1
    assert sum(c.startswith("MAIL FROM") for c in sink.commands) == 2
    assert gw.messages("alice@example.test") == []  # no DSN


def test_5xx_for_one_of_three_bounces_only_that_one(make_gateway, nameserver, sinks):
    gw = relay_gateway(make_gateway, nameserver, sinks)
    sink = sinks("127.0.0.2", SinkScript(
        rcpt={"b@remote.test": "550 5.1.1 <b@remote.test>: Recipient address rejected"}))
    rcpts = ["a@remote.test", "b@remote.test", "c@remote.test"]
    body = b"Subject: three\r\nMessage-ID: <three@c.test>\r\n\r\nhello\r\n"
    submit(gw, rcpts, body)
    (dsn,) = gw.wait_messages("alice@example.test", 1)
    (got,) = sink.messages  # one transaction for the domain
    assert got.recipients == ["a@remote.test", "c@remote.test"]
    assert dsn.startswith(b"Return-Path: <>\r\n")
    msg, (block,) = dsn_parts(dsn.split(b"\r\n", 2)[2])
    assert block["Final-Recipient"] == "rfc822; b@remote.test"
    assert (block["Action"], block["Status"]) == ("failed", "5.1.1")
    assert block["Remote-MTA"] == "dns; mx1.remote.test"
    assert "Recipient address rejected" in block["Diagnostic-Code"]
    assert b"Message-ID: <three@c.test>" in dsn  # the original comes back
    wait_for(lambda: queue_empty(gw), what="an empty queue")


def test_connection_drop_in_data_is_retried(make_gateway, nameserver, sinks):
    gw = relay_gateway(make_gateway, nameserver, sinks)
    sink = sinks("127.0.0.2", SinkScript(drop_in_data=1))
    submit(gw, ["bob@remote.test"], b"Subject: drop\r\n\r\nline one\r\nline two\r\n")
    wait_for(lambda: queue_empty(gw), what="the retry after the drop")
    assert len(sink.messages) == 1 and sink.connections >= 2
    gw.wait_log("4.4.2")  # deferred, not bounced
    assert gw.messages("alice@example.test") == []


def test_null_mx_and_nxdomain_bounce(make_gateway, nameserver, sinks):
    gw = relay_gateway(make_gateway, nameserver, sinks)
    submit(gw, ["x@nullmx.test", "y@nowhere.test"], b"Subject: nowhere\r\n\r\nx\r\n")
    (dsn,) = gw.wait_messages("alice@example.test", 1)
    _, blocks = dsn_parts(dsn.split(b"\r\n", 2)[2])
    status = {b["Final-Recipient"]: b["Status"] for b in blocks}
    assert status == {"rfc822; x@nullmx.test": "5.1.10", "rfc822; y@nowhere.test": "5.1.2"}
    wait_for(lambda: queue_empty(gw), what="an empty queue")


def test_bounce_of_a_bounce_is_dropped(make_gateway, nameserver, sinks):
    gw = relay_gateway(make_gateway, nameserver, sinks)
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=30) as s:
        s.login("alice@example.test", PASSWORD)
        s.sendmail("", ["x@nullmx.test"], b"Subject: a bounce\r\n\r\nx\r\n")
    wait_for(lambda: queue_empty(gw), what="the failed bounce to be dropped")
    assert gw.messages("alice@example.test") == []
    gw.wait_log("no failed DSN for sender <>")


@pytest.fixture
def tls_ca(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return ca, tmp_path / "ca.pem"


def server_context(ca: trustme.CA, name: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(ctx)
    return ctx


def test_starttls_verify_refuses_a_wrong_certificate(make_gateway, nameserver, sinks, tls_ca):
    ca, ca_file = tls_ca
    gw = relay_gateway(make_gateway, nameserver, sinks, relay=(
        f'tls_ca_file = "{ca_file}"\n\n[relay.tls_policy]\n'
        '"secure.test" = "verify"\n"good.test" = "verify"\n'))
    wrong = sinks("127.0.0.4", SinkScript(tls=server_context(ca, "wrong.test")))
    right = sinks("127.0.0.5", SinkScript(tls=server_context(ca, "mx.good.test")))
    submit(gw, ["bob@secure.test"], b"Subject: secret\r\n\r\nfor secure\r\n")
    submit(gw, ["bob@good.test"], b"Subject: secret\r\n\r\nfor good\r\n")
    wait_for(lambda: right.messages, what="delivery with a verified certificate")
    assert right.messages[0].tls is True

    def refused():
        entries = queue_entries(gw)
        errors = [r["last_error"] for e in entries for r in e["recipients"]]
        return errors if errors and "4.7.5" in errors[0] else None

    (error,) = wait_for(refused, what="the TLS refusal to be recorded")
    assert "TLS handshake failed" in error
    assert "STARTTLS" in wrong.commands
    assert not any(c.startswith("MAIL") for c in wrong.commands)
    assert wrong.messages == []
    assert gw.messages("alice@example.test") == []  # deferred, not bounced


def test_may_falls_back_to_plaintext_when_the_handshake_fails(make_gateway, nameserver,
                                                              sinks, tls_ca):
    ca, _ = tls_ca
    context = server_context(ca, "mx.good.test")
    context.verify_mode = ssl.CERT_REQUIRED  # we have no client certificate: handshake fails
    ca.configure_trust(context)
    gw = relay_gateway(make_gateway, nameserver, sinks)  # default policy: "may"
    sink = sinks("127.0.0.5", SinkScript(tls=context))
    submit(gw, ["bob@good.test"], b"Subject: opportunistic\r\n\r\nx\r\n")
    wait_for(lambda: sink.messages, what="delivery in plaintext after the failed handshake")
    assert sink.messages[0].tls is False and sink.connections == 2
    assert sink.commands.count("STARTTLS") == 1


def test_kill9_during_a_relay_run_loses_and_repeats_nothing_confirmed(make_gateway,
                                                                       nameserver, sinks):
    gw = relay_gateway(make_gateway, nameserver, sinks)
    sink = sinks("127.0.0.6", SinkScript(final_delay=0.2))
    total = 40
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=30) as s:
        s.login("alice@example.test", PASSWORD)
        for n in range(total):
            s.sendmail("alice@example.test", [f"r{n}@slow.test"],
                       f"Subject: {n}\r\nMessage-ID: <{n}@kill.test>\r\n\r\nbody {n}\r\n")
    wait_for(lambda: len(sink.messages) >= 8, what="the relay run to be under way")
    # The runner process too: killed with the gateway alone, it would finish its
    # deliveries (and change the queue read below) before it stops.
    gw.crash()

    def message_id(data: bytes) -> str:
        return message_from_bytes(data, policy=policy.default)["Message-ID"]

    entries = gw.state / "queue" / "entries"
    waiting = set()
    for env in entries.glob("*.env"):
        if any(r["state"] == "pending" for r in json.loads(env.read_bytes())["recipients"]):
            waiting.add(message_id(env.with_suffix(".msg").read_bytes()))
    confirmed = {f"<{n}@kill.test>" for n in range(total)} - waiting
    before = collections.Counter(message_id(m.data) for m in sink.messages)
    assert confirmed and waiting  # killed in the middle of the run
    assert all(before[m] == 1 for m in confirmed)

    gw.start()
    wait_for(lambda: queue_empty(gw), timeout=60, what="the queue to drain after restart")
    after = collections.Counter(message_id(m.data) for m in sink.messages)
    assert set(after) == {f"<{n}@kill.test>" for n in range(total)}  # nothing lost
    assert all(after[m] == 1 for m in confirmed)  # nothing confirmed sent again


def test_queue_administration_while_running(gateway):
    # The fixture's default relay has an unreachable name server: remote mail waits.
    gw = gateway
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=30) as s:
        s.starttls()
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["carol@remote.test"], b"Subject: q\r\n\r\nx\r\n")

    def attempted():
        entries = queue_entries(gw)
        return entries if entries and entries[0]["recipients"][0]["attempts"] >= 1 else None

    (entry,) = wait_for(attempted, what="a first attempt")
    entry_id = entry["queue_id"]
    assert entry["recipients"][0]["last_error"].startswith("451 4.4.3")

    result = gw.cli("queue", "hold", entry_id)
    assert result.returncode == 0 and "done" in result.stdout, result
    assert queue_entries(gw)[0]["held"] is True
    listing = gw.cli("queue", "list").stdout
    assert entry_id in listing and "HELD" in listing and "451 4.4.3" in listing
    shown = gw.cli("queue", "show", entry_id).stdout
    assert "<carol@remote.test> pending" in shown and "Subject: q" in shown

    assert "done" in gw.cli("queue", "release", entry_id).stdout
    wait_for(lambda: queue_entries(gw)[0]["recipients"][0]["attempts"] >= 2,
             what="the released entry to be tried at once")
    assert queue_entries(gw)[0]["held"] is False
    assert "done" in gw.cli("queue", "retry", entry_id).stdout
    wait_for(lambda: queue_entries(gw)[0]["recipients"][0]["attempts"] >= 3,
             what="the retry")
    assert "done" in gw.cli("queue", "flush").stdout

    assert "done" in gw.cli("queue", "delete", entry_id).stdout
    assert queue_entries(gw) == []
    assert gw.cli("queue", "show", entry_id).returncode == 1
    assert gw.cli("queue", "hold", "NOSUCHENTRY0000").returncode == 1
    assert gw.messages("alice@example.test") == []  # deleting never bounces


def test_a_logged_in_user_cannot_send_as_someone_else(make_gateway):
    gw = make_gateway("[auth]\nplaintext_from_loopback = true\n",
                      users=("alice@example.test", "bob@example.test"))
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=30) as s:
        s.login("alice@example.test", PASSWORD)
        code, text = s.mail("bob@example.test")
        assert (code, text[:5]) == (553, b"5.7.1"), text
        s.rset()
        assert s.mail("alice+news@example.test")[0] == 250
