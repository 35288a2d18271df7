"""SMTP in, POP3 out, through the real gateway: smtplib -> queue -> Maildir -> poplib.

The POP3 client is Python's poplib; TLS is STLS (RFC 2595) with a trustme
certificate for 127.0.0.1. The client connects from 127.0.0.1, and the default
[auth] plaintext_from_loopback = false, so plaintext login is refused unless a
test turns that setting on.
"""

from __future__ import annotations

import poplib
import smtplib
import socket
from contextlib import closing

import pytest
from conftest import PASSWORD, client_context, wait_for

ALICE = "alice@example.test"


def send(gw, *messages: bytes) -> list[bytes]:
    """Deliver messages to alice over SMTP; the delivered files, oldest first."""
    before = len(gw.messages(ALICE))
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=60) as s:
        s.ehlo("client.test")
        for message in messages:
            assert s.sendmail("bob@remote.test", [ALICE], message,
                              mail_options=["BODY=8BITMIME"]) == {}
    return gw.wait_messages(ALICE, before + len(messages))


def connect(gw, timeout: float = 30) -> poplib.POP3:
    return poplib.POP3("127.0.0.1", gw.ports["pop3"], timeout=timeout)


def login(gw, ca, password: str = PASSWORD) -> poplib.POP3:
    p = connect(gw)
    p.stls(context=client_context(ca))
    p.user(ALICE)
    p.pass_(password)
    return p


def retr(p: poplib.POP3, n: int) -> tuple[bytes, bytes, int]:
    """RETR n: (status line, message as the client reassembles it, octets)."""
    status, lines, octets = p.retr(n)
    return status, b"".join(line + b"\r\n" for line in lines), octets


def uidls(p: poplib.POP3) -> dict[int, bytes]:
    _, lines, _ = p.uidl()
    return {int(n): uid for n, uid in (line.split() for line in lines)}


def maildir_files(gw) -> list[str]:
    box = gw.maildir(ALICE)
    return sorted(f.name for sub in ("new", "cur") for f in (box / sub).iterdir())


def error_of(call, *args) -> bytes:
    with pytest.raises(poplib.error_proto) as e:
        call(*args)
    return e.value.args[0]


def test_round_trip_smtp_to_pop3_retr_is_byte_exact(tls_gateway, ca):
    small = (b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: dots\r\n\r\n"
             b".leading dot\r\n..two dots\r\n.\r\n8-bit: \xc3\xa9\xe2\x82\xac\xff\r\n"
             b". \r\nend\r\n")
    line = b"0123456789abcdef" * 4 + b"\r\n"
    big = b"Subject: big\r\n\r\n" + (b"." + line) * (10 * 1024 * 1024 // len(line))
    stored = send(tls_gateway, small, big)
    by_size = sorted(stored, key=len)
    with closing(login(tls_gateway, ca)) as p:
        _, listing, _ = p.list()
        numbers = {int(size): int(n) for n, size in (x.split() for x in listing)}
        assert sorted(numbers) == [len(m) for m in by_size]
        for delivered, original in zip(by_size, (small, big), strict=True):
            status, message, octets = retr(p, numbers[len(delivered)])
            assert status == b"+OK %d octets" % len(delivered)
            # The POP3 message is the delivered file, byte for byte: our trace
            # fields in front of exactly what the SMTP client sent.
            assert message == delivered
            assert octets == len(delivered)
            assert message.startswith(b"Return-Path: <bob@remote.test>\r\n"
                                      b"Delivered-To: alice@example.test\r\n"
                                      b"Received: from client.test ([127.0.0.1])\r\n")
            assert message.endswith(b"\r\n" + original)
        p.quit()


def test_plaintext_login_refused_before_stls_then_allowed_after(tls_gateway, ca):
    p = connect(tls_gateway)
    try:
        caps = p.capa()
        assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
        assert error_of(p.user, ALICE) == b"-ERR [AUTH] TLS required: use STLS"
        assert error_of(p._shortcmd, "AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdAB4") == \
            b"-ERR [AUTH] TLS required: use STLS"
        p.stls(context=client_context(ca))
        caps = p.capa()
        assert "STLS" not in caps and "USER" in caps and caps["SASL"] == ["PLAIN"]
        p.user(ALICE)
        assert p.pass_(PASSWORD).startswith(b"+OK Logged in, 0 messages")
        assert p.stat() == (0, 0)
        assert p.quit() == b"+OK Bye"
    finally:
        p.close()


def test_wrong_password_then_the_session_goes_on(tls_gateway, ca):
    send(tls_gateway, b"Subject: one\r\n\r\nbody\r\n")
    with closing(connect(tls_gateway)) as p:
        p.stls(context=client_context(ca))
        p.user(ALICE)
        assert error_of(p.pass_, "wrong") == b"-ERR [AUTH] Authentication failed"
        p.user(ALICE)  # the same connection, still in AUTHORIZATION state
        p.pass_(PASSWORD)
        assert p.stat()[0] == 1
        p.quit()


def test_too_many_wrong_passwords_close_the_connection(make_tls_gateway, ca):
    gw = make_tls_gateway("[pop3]\nmax_auth_failures = 2\nauth_failure_delay = 0.1\n")
    with closing(connect(gw)) as p:
        p.stls(context=client_context(ca))
        p.user(ALICE)
        assert error_of(p.pass_, "wrong") == b"-ERR [AUTH] Authentication failed"
        p.user(ALICE)
        assert error_of(p.pass_, "wrong") == b"-ERR [AUTH] Authentication failed"
        # Closed cleanly by the server: the next read is end of file.
        assert error_of(p.noop) == "-ERR EOF"  # poplib's words for end of file
    with closing(login(gw, ca)) as p:  # the account is not locked, only that session ended
        p.quit()


def test_dele_then_rset_keeps_the_message(tls_gateway, ca):
    send(tls_gateway, b"Subject: keep\r\n\r\nkeep me\r\n")
    files = maildir_files(tls_gateway)
    with closing(login(tls_gateway, ca)) as p:
        assert p.dele(1) == b"+OK Message 1 deleted"
        assert p.stat() == (0, 0)
        assert error_of(p.retr, 1) == b"-ERR Message 1 already deleted"
        p.rset()
        assert p.stat()[0] == 1
        p.quit()
    assert maildir_files(tls_gateway) == files
    with closing(login(tls_gateway, ca)) as p:
        assert p.stat()[0] == 1
        p.quit()


def test_dele_then_quit_removes_the_file(tls_gateway, ca):
    send(tls_gateway, b"Subject: one\r\n\r\none\r\n", b"Subject: two\r\n\r\ntwo\r\n")
    assert len(maildir_files(tls_gateway)) == 2
    with closing(login(tls_gateway, ca)) as p:
        _, two, _ = retr(p, 2)
        p.dele(1)
        assert p.quit() == b"+OK Bye"
    (left,) = tls_gateway.messages(ALICE)
    assert left == two
    with closing(login(tls_gateway, ca)) as p:
        assert p.stat() == (1, len(two))
        p.quit()


def test_uidl_is_stable_across_sessions(tls_gateway, ca):
    send(tls_gateway, b"Subject: one\r\n\r\none\r\n", b"Subject: two\r\n\r\ntwo\r\n")
    with closing(login(tls_gateway, ca)) as p:
        first = uidls(p)
        retr(p, 1)  # marks it seen at QUIT: the file is renamed into cur/
        p.quit()
    assert any(name.endswith(":2,S") for name in maildir_files(tls_gateway))
    with closing(login(tls_gateway, ca)) as p:
        assert uidls(p) == first
        assert p.uidl(2) == b"+OK 2 " + first[2]
        p.quit()
    assert len(first) == 2 and len(set(first.values())) == 2


def test_second_simultaneous_session_is_in_use(tls_gateway, ca):
    send(tls_gateway, b"Subject: one\r\n\r\none\r\n")
    with closing(login(tls_gateway, ca)) as first, closing(connect(tls_gateway)) as second:
        second.stls(context=client_context(ca))
        second.user(ALICE)
        assert error_of(second.pass_, PASSWORD).startswith(b"-ERR [IN-USE]")
        assert first.stat()[0] == 1  # the first session is untouched
        first.quit()
        second.user(ALICE)  # the refused session survives and may try again
        assert second.pass_(PASSWORD).startswith(b"+OK Logged in, 1 messages")
        second.quit()


def test_plaintext_from_loopback_when_configured(make_gateway):
    gw = make_gateway("[auth]\nplaintext_from_loopback = true\n")
    message = b"Subject: plain\r\n\r\nno TLS here\r\n"
    (delivered,) = send(gw, message)
    with closing(connect(gw)) as p:
        assert "USER" in p.capa()
        p.user(ALICE)
        p.pass_(PASSWORD)
        assert retr(p, 1)[1] == delivered
        p.quit()


def test_connections_per_client_limit(make_gateway):
    gw = make_gateway("[pop3]\nmax_connections_per_client = 2\n")

    def greeting() -> bytes:
        with socket.create_connection(("127.0.0.1", gw.ports["pop3"]), timeout=10) as s:
            return s.makefile("rb").readline()

    with closing(connect(gw)), closing(connect(gw)):
        assert greeting() == (b"-ERR [SYS/TEMP] Too many connections from your address, "
                              b"try again later\r\n")
    # Both closed: once the server has seen that, the address may connect again.
    wait_for(lambda: greeting().startswith(b"+OK"), what="a free connection slot")
