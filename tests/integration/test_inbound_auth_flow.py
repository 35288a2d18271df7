"""SPF, DKIM and DMARC on port 25 through the real gateway, with a loopback DNS server.

The client is 127.0.0.1, which is not in trusted_networks: its mail is checked.
"""

from __future__ import annotations

import smtplib
import threading
import time

import dkim
import pytest
from conftest import PASSWORD, wait_for
from dns_server import DNSServer

from gateway.sign.keys import generate, txt_record

PRIVATE, PUBLIC = generate("ed25519")
ZONE = {
    ("good.test", "TXT"): ['"v=spf1 ip4:127.0.0.1 -all"'],
    ("_dmarc.good.test", "TXT"): ['"v=DMARC1; p=reject"'],
    ("s1._domainkey.good.test", "TXT"): [f'"{txt_record("ed25519", PUBLIC)}"'],
    ("spoofed.test", "TXT"): ['"v=spf1 ip4:192.0.2.1 -all"'],
    ("lax.test", "TXT"): ['"v=spf1 ?all"'],
    ("_dmarc.strict.test", "TXT"): ['"v=DMARC1; p=reject"'],
    ("_dmarc.quarantined.test", "TXT"): ['"v=DMARC1; p=quarantine"'],
    ("_dmarc.watched.test", "TXT"): ['"v=DMARC1; p=none"'],
    ("slow.test", "TXT"): "DROP",
    ("slow.test", "A"): ["127.0.0.9"],
}


def message(author: str, body: str = "Hello Alice.", extra: str = "") -> bytes:
    return (f"From: {author}\r\nTo: alice@example.test\r\nSubject: test\r\n"
            f"Message-ID: <{time.time()}@x>\r\n{extra}\r\n{body}\r\n").encode()


def signed(author: str, body: str = "Hello Alice.", extra: str = "") -> bytes:
    m = message(author, body, extra)
    return dkim.sign(m, b"s1", b"good.test", PRIVATE, signature_algorithm=b"ed25519-sha256",
                     canonicalize=(b"relaxed", b"relaxed"),
                     include_headers=[b"from", b"to", b"subject", b"message-id"]) + m


@pytest.fixture
def checked(make_gateway):
    server = DNSServer(dict(ZONE)).start()
    gw = make_gateway(f'[relay]\nnameservers = ["127.0.0.1"]\ndns_port = {server.port}\n'
                      "dns_timeout = 2\n\n[inbound_auth]\ncheck = true\ntimeout = 3\n\n"
                      "[auth]\nplaintext_from_loopback = true\n")
    gw.dns = server
    yield gw
    server.stop()


def send(gw, sender: str, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        s.mail(sender)
        s.rcpt("alice@example.test")
        return s.data(data)


def header_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode()


def test_authenticated_mail_gets_one_results_field_and_forged_ones_go(checked):
    forged = "Authentication-Results: mx.example.test; dmarc=pass header.from=bank.test\r\n"
    code, _ = send(checked, "news@good.test", forged.encode() + signed("news@good.test"))
    assert code == 250
    [raw] = checked.wait_messages("alice@example.test", 1)
    head = header_of(raw)
    assert head.count("Authentication-Results:") == 1 and "bank.test" not in head
    assert "\r\nAuthentication-Results: mx.example.test;\r\n\tspf=pass" in head
    assert "spf=pass smtp.mailfrom=good.test" in head
    assert "dkim=pass header.d=good.test header.s=s1 header.a=ed25519-sha256" in head
    assert "dmarc=pass" in head and "header.from=good.test" in head
    assert "Received-SPF: Pass" in head


def test_spf_fail_refused_with_5_7_23_at_mail_from(checked):
    # RFC 7208 2.4: checked at MAIL FROM, so the message itself is never sent.
    with smtplib.SMTP("127.0.0.1", checked.ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        code, reply = s.mail("ceo@spoofed.test")
        assert code == 550 and reply.startswith(b"5.7.23 SPF: spoofed.test")
        assert s.mail("news@good.test")[0] == 250  # the session goes on
    assert checked.dns.queries.count(("spoofed.test", "TXT")) == 1
    assert checked.messages("alice@example.test") == []


def test_dmarc_reject_refused_and_body_change_fails_dkim(checked):
    code, reply = send(checked, "a@lax.test", message("boss@strict.test"))
    assert code == 550 and reply.startswith(b"5.7.1 DMARC policy of strict.test")
    # signed by good.test, then changed on the way: DKIM fails, SPF still passes
    changed = signed("news@good.test").replace(b"Hello Alice.", b"Pay Mallory.")
    assert send(checked, "news@good.test", changed)[0] == 250
    [raw] = checked.wait_messages("alice@example.test", 1)
    assert "dkim=fail" in header_of(raw) and "dmarc=pass" in header_of(raw)


def test_dmarc_quarantine_goes_to_junk_and_none_to_inbox(checked):
    assert send(checked, "a@lax.test", message("promo@quarantined.test"))[0] == 250
    junk = checked.maildir("alice@example.test") / ".Junk" / "new"
    wait_for(lambda: junk.is_dir() and any(junk.iterdir()), what="a message in Junk")
    [raw] = [p.read_bytes() for p in junk.iterdir()]
    assert "dmarc=fail (p=quarantine dis=quarantine)" in header_of(raw)
    assert send(checked, "a@lax.test", message("x@watched.test"))[0] == 250
    [raw] = checked.wait_messages("alice@example.test", 1)
    assert "dmarc=fail (p=none dis=none)" in header_of(raw)


def test_authenticated_submission_is_not_checked(checked):
    with smtplib.SMTP("127.0.0.1", checked.ports["submission"], timeout=30) as s:
        s.ehlo("client.test")
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["alice@example.test"],
                   message("alice@example.test"))
    [raw] = checked.wait_messages("alice@example.test", 1)
    assert "Authentication-Results" not in header_of(raw)


def test_dns_that_never_answers_delays_only_its_message(checked):
    outcome: list = []

    def slow() -> None:
        outcome.append(send(checked, "a@slow.test", message("a@slow.test"))[0])

    thread = threading.Thread(target=slow)
    thread.start()
    wait_for(lambda: ("slow.test", "TXT") in checked.dns.queries, what="the SPF query")
    code, _ = send(checked, "news@good.test", signed("news@good.test"))
    assert code == 250 and thread.is_alive()  # the other message went while this waits
    thread.join(30)
    assert outcome == [250]  # SPF temperror without a DMARC policy: accepted, marked
    wait_for(lambda: len(checked.messages("alice@example.test")) == 2, what="both messages")
    heads = [header_of(m) for m in checked.messages("alice@example.test")]
    assert any("spf=temperror smtp.mailfrom=slow.test" in h for h in heads)


def test_streamed_big_message_is_verified_and_delivered_whole(checked):
    body = "\r\n".join(f"line {n:07d} of a message bigger than the DATA buffer"
                       for n in range(40_000))  # about 2 MB: streamed to the spool file
    forged = "Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n"
    sent = forged.encode() + signed("news@good.test", body)
    code, _ = send(checked, "news@good.test", sent)
    assert code == 250
    [raw] = checked.wait_messages("alice@example.test", 1)
    head = header_of(raw)
    assert head.count("Authentication-Results:") == 1 and "bank.test" not in head
    assert "dkim=pass header.d=good.test" in head and "dmarc=pass" in head
    assert raw.endswith(sent[len(forged):])  # the rest byte for byte


def test_list_post_is_sealed_with_the_results_of_its_arrival(checked):
    from test_dkim_flow import publish

    gw = checked
    made = gw.cli("dkim", "keygen", "example.test", "--selector", "lists", "--algorithm", "rsa")
    assert made.returncode == 0, made.stderr
    publish(gw.dns, made.stdout)
    assert gw.cli("list", "create", "dev@example.test", "--owner", "alice@example.test",
                  "--policy", "open").returncode == 0
    assert gw.cli("list", "add", "dev@example.test", "alice@example.test").returncode == 0
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        assert s.sendmail("news@good.test", ["dev@example.test"],
                          signed("news@good.test")) == {}
    [raw] = gw.wait_messages("alice@example.test", 1)
    # One authserv-id for both: the seal carries what the inbound checks wrote.
    aar = header_of(raw).split("ARC-Authentication-Results: ", 1)[1].split("\r\nARC-", 1)[0]
    assert "i=1; mx.example.test;" in " ".join(aar.split())
    assert "spf=pass smtp.mailfrom=good.test" in aar and "dkim=pass header.d=good.test" in aar
    # good.test publishes p=reject, found by verify/dmarc as the inbound checks find
    # it: the list's copy comes from the list's address (munge_from, its default).
    fields = {line.split(":", 1)[0].lower(): line for line in header_of(raw).split("\r\n")}
    assert "dev@example.test" in fields["from"] and "news@good.test" in fields["reply-to"]
