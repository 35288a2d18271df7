"""Outbound DKIM through the real gateway: a key made by `mailgateway dkim keygen`, its TXT
record served by the loopback DNS server, a message relayed to a loopback SMTP sink and
checked there by dkimpy's verifier, which looks the key up in that DNS server."""

from __future__ import annotations

import re
import smtplib

import dkim
import dns.resolver
import pytest
from conftest import PASSWORD, free_port, wait_for
from dns_server import DNSServer
from smtp_sink import SMTPSink

ZONE = {
    ("remote.test", "MX"): ["10 mx1.remote.test."],
    ("mx1.remote.test", "A"): ["127.0.0.2"],
}


@pytest.fixture
def nameserver():
    server = DNSServer(dict(ZONE)).start()
    yield server
    server.stop()


@pytest.fixture
def sink():
    port = free_port()
    server = SMTPSink("127.0.0.2", port, None).start()
    yield server
    server.stop()


def publish(nameserver: DNSServer, keygen_output: str) -> None:
    """Put the record that keygen printed into the zone, as an administrator would."""
    m = re.fullmatch(r"(\S+)\.\s+IN\s+TXT\s+(.+)", keygen_output.strip())
    assert m, keygen_output
    nameserver.records[(m.group(1).lower(), "TXT")] = [m.group(2)]


def dns_txt(port: int):
    """dkimpy's dnsfunc, asking the loopback DNS server (strings joined, RFC 6376 3.6.2.2)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(answer[0].strings)
    return txt


def test_relayed_mail_is_signed_and_verifies_against_dns(make_gateway, nameserver, sink):
    gw = make_gateway(
        "[auth]\nplaintext_from_loopback = true\n\n"
        f'[relay]\nnameservers = ["127.0.0.1"]\ndns_port = {nameserver.port}\n'
        f"port = {sink.port}\nconnection_cache_time = 0\n")
    for selector, algorithm in (("ed", "ed25519"), ("rs", "rsa")):
        made = gw.cli("dkim", "keygen", "example.test", "--selector", selector,
                      "--algorithm", algorithm)
        assert made.returncode == 0, made.stderr
        publish(nameserver, made.stdout)
    body = (b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\n"
            b"Subject: signed on the way out\r\nMessage-ID: <dkim1@example.test>\r\n\r\n"
            b"Hello Bob,\r\n.a line that is dot-stuffed on the wire\r\n")
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=30) as s:
        s.login("alice@example.test", PASSWORD)
        assert s.sendmail("alice@example.test", ["bob@remote.test"], body) == {}
    wait_for(lambda: sink.received_for("bob@remote.test"), what="the relayed message")
    (got,) = sink.messages
    assert got.data.endswith(body)
    assert got.data.count(b"DKIM-Signature:") == 2
    d = dkim.DKIM(got.data)
    txt = dns_txt(nameserver.port)
    assert d.verify(idx=0, dnsfunc=txt) and d.verify(idx=1, dnsfunc=txt)
    unfolded = got.data.replace(b"\r\n ", b" ")
    tags = re.findall(rb"^DKIM-Signature: v=1; a=([\w-]+);.*? d=([\w.]+);.*? s=(\w+);",
                      unfolded, re.M)
    assert sorted(tags) == [(b"ed25519-sha256", b"example.test", b"ed"),
                            (b"rsa-sha256", b"example.test", b"rs")]
    # Changed on the way: the signature no longer holds.
    assert not dkim.verify(got.data.replace(b"Hello Bob", b"Hello Eve"), dnsfunc=txt)
