"""SMTP -> queue -> Maildir through the real gateway, with smtplib, ssl and raw sockets."""

from __future__ import annotations

import json
import os
import random
import smtplib
import socket
import threading

import pytest
from conftest import PASSWORD, client_context, wait_for


def body_of(stored: bytes) -> bytes:
    """The message as the client sent it: after our Return-Path, Delivered-To, Received."""
    head, sep, rest = stored.partition(b"\r\n\tby mx.example.test (mailgateway)")
    assert sep, stored[:300]
    return rest.split(b"\r\n", 2)[-1] if b"\r\n\tfor <" in rest[:200] else \
        rest.split(b"\r\n", 1)[1]


def test_round_trip_is_byte_exact_with_dots_8bit_and_10mb(gateway):
    small = (b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: dots\r\n\r\n"
             b".leading dot\r\n..two dots\r\n.\r\n8-bit: \xc3\xa9\xe2\x82\xac\xff\r\n")
    line = b"0123456789abcdef" * 4 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + line * (10 * 1024 * 1024 // len(line))
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as s:
        s.ehlo("client.test")
        assert s.sendmail("bob@remote.test", ["alice@example.test"], small,
                          mail_options=["BODY=8BITMIME"]) == {}
        assert s.sendmail("bob@remote.test", ["alice@example.test"], big) == {}
    stored = gateway.wait_messages("alice@example.test", 2)
    bodies = sorted((body_of(m) for m in stored), key=len)
    assert bodies == [small, big]
    assert stored[0].startswith(b"Return-Path: <bob@remote.test>\r\n"
                                b"Delivered-To: alice@example.test\r\n"
                                b"Received: from client.test ([127.0.0.1])\r\n")


def test_unknown_user_550_relay_denied_554(gateway):
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as s:
        s.ehlo("client.test")
        s.mail("bob@remote.test")
        code, text = s.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = s.rcpt("carol@remote.test")
        assert (code, text[:5]) == (554, b"5.7.1")


def test_pipelined_commands_in_one_packet(gateway):
    with socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO c.test\r\nMAIL FROM:<b@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                  b"RCPT TO:<nobody@example.test>\r\nDATA\r\nSubject: p\r\n\r\npipelined\r\n"
                  b".\r\nQUIT\r\n")
        codes = []
        while True:
            line = f.readline()
            if not line:
                break
            if line[3:4] == b" ":
                codes.append(line[:3])
    assert codes == [b"250", b"250", b"250", b"550", b"354", b"250", b"221"]
    assert body_of(gateway.wait_messages("alice@example.test", 1)[0]).endswith(b"pipelined\r\n")


def test_auth_refused_before_starttls_then_relay_after(tls_gateway, ca):
    gw = tls_gateway
    with smtplib.SMTP("127.0.0.1", gw.ports["submission"], timeout=10) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth")
        code, text = s.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABwdw==")
        assert (code, text[:6]) == (538, b"5.7.11")
        code, _ = s.mail("alice@example.test")
        assert code == 530
        s.starttls(context=client_context(ca))
        s.ehlo("client.test")
        assert "PLAIN" in s.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice@example.test", "wrong")
        s.login("alice@example.test", PASSWORD)
        assert s.sendmail("alice@example.test", ["carol@remote.test"],
                          b"Subject: out\r\n\r\nrelay me\r\n") == {}

    def queued():
        entries = json.loads(gw.cli("queue", "list", "--json").stdout)
        return entries if entries and entries[0]["recipients"][0]["attempts"] else None

    (entry,) = wait_for(queued, what="the relayed entry in the queue")
    assert entry["sender"] == "alice@example.test"
    assert entry["authenticated"] == "alice@example.test"
    assert entry["tls"].startswith("TLSv1.")
    assert [r["address"] for r in entry["recipients"]] == ["carol@remote.test"]
    assert entry["recipients"][0]["state"] == "pending"


def test_received_header_names_tls(tls_gateway, ca):
    with smtplib.SMTP("127.0.0.1", tls_gateway.ports["smtp"], timeout=10) as s:
        s.starttls(context=client_context(ca))
        s.sendmail("bob@remote.test", ["alice@example.test"], b"Subject: t\r\n\r\nx\r\n")
    (stored,) = tls_gateway.wait_messages("alice@example.test", 1)
    assert b"with ESMTPS id " in stored and b"(TLSv1.3 with cipher " in stored


def test_fifty_concurrent_senders_all_delivered(make_gateway):
    # Room above the 50: the fixture's own port probes may still count for a moment.
    gateway = make_gateway("[smtp]\nmax_connections_per_client = 60\n")
    errors = []

    def send(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as s:
                s.sendmail("bob@remote.test", ["alice@example.test"],
                           f"Subject: {n}\r\nMessage-ID: <{n}@c.test>\r\n\r\nbody {n}\r\n")
        except Exception as e:  # collected and reported below
            errors.append(e)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = gateway.wait_messages("alice@example.test", 50)
    ids = sorted(int(m.split(b"Message-ID: <")[1].split(b"@")[0]) for m in stored)
    assert ids == list(range(50))


def test_garbage_input_gets_errors_and_gateway_still_serves(gateway):
    rng = random.Random(5321)
    payloads = [bytes(rng.randrange(256) for _ in range(4000)) + b"\r\n",
                b"A" * 100_000 + b"\r\n",
                b"HELO \x00\x00\x00\r\nMAIL FROM:<\x00@x>\r\n"]
    for payload in payloads:
        with socket.create_connection(("127.0.0.1", gateway.ports["smtp"]), timeout=10) as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"220")
            s.sendall(payload + b"QUIT\r\n")
            replies = f.read()
        codes = [line[:1] for line in replies.split(b"\r\n") if line]
        assert codes[-1:] == [b"2"], replies[-200:]  # 221 to QUIT: the session survived
        assert codes[:-1] and set(codes[:-1]) <= {b"5"}, replies[:200]
    with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as s:
        assert s.noop()[0] == 250
        s.sendmail("bob@remote.test", ["alice@example.test"], b"Subject: after\r\n\r\nok\r\n")
    gateway.wait_messages("alice@example.test", 1)


def test_kill_9_while_sending_loses_nothing_duplicates_nothing(gateway):
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n: int) -> None:
        i = 0
        while not stop.is_set():
            mid = f"{n}.{i}"
            i += 1
            try:
                with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=10) as s:
                    s.sendmail("bob@remote.test", ["alice@example.test"],
                               f"Message-ID: <{mid}@c.test>\r\n\r\n{mid}\r\n")
            except (OSError, smtplib.SMTPException):
                return  # the server died under us: only a 250 counts
            with lock:
                accepted.append(mid)

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    wait_for(lambda: len(accepted) >= 60, what="60 accepted messages")
    gateway.kill9()
    stop.set()
    for t in threads:
        t.join()
    gateway.start()
    want = sorted(accepted)
    stored = gateway.wait_messages("alice@example.test", len(want), timeout=60)
    wait_for(lambda: not os.listdir(gateway.state / "queue" / "entries"),
             what="the queue to drain")
    got = [m.split(b"Message-ID: <")[1].split(b"@")[0].decode()
           for m in gateway.messages("alice@example.test")]
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert set(want) <= set(got)
    assert len(stored) >= len(want)
