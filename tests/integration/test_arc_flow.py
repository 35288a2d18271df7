"""ARC through the real gateway: a list whose domain has a key made by `mailgateway dkim
keygen` (its record in the loopback DNS server); posts arrive in members' Maildirs with
an ARC set that dkimpy's arc_verify accepts, first hop and after an upstream seal."""

from __future__ import annotations

import re
import smtplib

import dkim
import pytest
from dns_server import DNSServer
from test_dkim_flow import dns_txt, publish

from gateway.sign import keys

LIST = "dev@example.test"


@pytest.fixture
def nameserver():
    server = DNSServer({}).start()
    yield server
    server.stop()


def field(message: bytes, name: bytes) -> str:
    m = re.search(rb"^" + name + rb": (.*?)\r?\n(?![ \t])", message, re.M | re.S | re.I)
    assert m, name
    return " ".join(m.group(1).decode().split())


def post(gw, sender: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=10) as s:
        assert s.sendmail(sender, [LIST], message) == {}


def test_list_posts_arrive_sealed_and_the_seal_verifies(make_gateway, nameserver):
    gw = make_gateway(
        "[queue]\nretry_initial = 1\nretry_max = 2\n\n[dkim]\ncheck_interval = 0.2\n\n"
        f'[relay]\nnameservers = ["127.0.0.1"]\ndns_port = {nameserver.port}\n'
        "dns_timeout = 2\n",
        users=("owner@example.test", "alice@example.test", "bob@example.test"))
    made = gw.cli("dkim", "keygen", "example.test", "--selector", "lists", "--algorithm", "rsa")
    assert made.returncode == 0, made.stderr
    publish(nameserver, made.stdout)
    assert gw.cli("list", "create", LIST, "--owner", "owner@example.test", "--policy",
                  "open").returncode == 0
    assert gw.cli("list", "add", LIST, "alice@example.test", "bob@example.test").returncode == 0
    txt = dns_txt(nameserver.port)

    # First hop: a post from outside, with the results our inbound check recorded.
    first = (b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=carol@far.test\r\n"
             b"From: Carol <carol@far.test>\r\nTo: dev@example.test\r\nSubject: hello\r\n"
             b"Message-ID: <arc1@far.test>\r\n\r\nfirst post\r\n")
    post(gw, "carol@far.test", first)
    for member in ("alice@example.test", "bob@example.test"):
        (got,) = gw.wait_messages(member, 1)
        cv, results, reason = dkim.arc_verify(got, dnsfunc=txt)
        assert cv == dkim.CV_Pass, reason
        assert [(r["instance"], r["cv"]) for r in results] == [(1, b"none")]
        assert field(got, b"ARC-Authentication-Results") == (
            "i=1; mx.example.test; spf=pass smtp.mailfrom=carol@far.test; arc=none")
        assert "d=example.test" in field(got, b"ARC-Seal")
        # And the list domain's DKIM signature (From is far.test's: no key of ours).
        assert "d=example.test" in field(got, b"DKIM-Signature")
        assert dkim.verify(got, dnsfunc=txt)
    # One seal for the post: both members' copies carry the same one.
    seals = {field(m, b"ARC-Seal") for u in ("alice@example.test", "bob@example.test")
             for m in gw.messages(u)}
    assert len(seals) == 1

    # Second hop: an upstream list at up.test sealed the post before it reached ours.
    private, public = keys.generate("rsa")
    record = keys.txt_record("rsa", public)
    publish(nameserver, "s._domainkey.up.test. IN TXT " + " ".join(
        f'"{record[i:i + 255]}"' for i in range(0, len(record), 255)))
    original = (b"From: Carol <carol@far.test>\r\nTo: upstream@up.test\r\n"
                b"Subject: relayed\r\nMessage-ID: <arc2@far.test>\r\n\r\nsecond post\r\n")
    upstream = dkim.arc_sign(b"Authentication-Results: mx.up.test; arc=none\r\n" + original,
                             b"s", b"up.test", private, b"mx.up.test")
    assert upstream
    post(gw, "upstream-bounces@up.test", b"".join(upstream) + original)
    got = gw.wait_messages("alice@example.test", 2)
    (second,) = [m for m in got if b"second post" in m]
    cv, results, reason = dkim.arc_verify(second, dnsfunc=txt)
    assert cv == dkim.CV_Pass, reason
    assert sorted((r["instance"], r["cv"]) for r in results) == [(1, b"none"), (2, b"pass")]
    assert b"Subject: [dev] relayed" in second  # the list changed it, and sealed after
