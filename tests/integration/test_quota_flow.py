"""Quotas through a real gateway (RFC 9208, RFC 3463 4.2.2): smtplib fills a mailbox,
the next RCPT meets 452, imaplib sees the usage with GETQUOTAROOT and APPEND is refused."""

from __future__ import annotations

import imaplib
import smtplib

from conftest import PASSWORD

ALICE = "alice@example.test"
# 10 KiB, grace 10%: a 9,000-byte message leaves room, the next 1,200 fill it past 10 KiB.
CONFIG = '[auth]\nplaintext_from_loopback = true\n[mailbox]\nquota = "10K"\n'


def message(size: int) -> bytes:
    return b"Subject: filler\r\n\r\n" + (b"x" * 98 + b"\r\n") * (size // 100)


def test_a_full_mailbox_gets_452_at_rcpt_and_imap_shows_the_usage(make_gateway):
    gw = make_gateway(CONFIG)
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=60) as s:
        assert s.sendmail("bob@remote.test", [ALICE], message(9000)) == {}
        gw.wait_messages(ALICE, 1)
        assert s.sendmail("bob@remote.test", [ALICE], message(1200)) == {}
        [first, second] = gw.wait_messages(ALICE, 2)
        s.ehlo_or_helo_if_needed()
        s.mail("bob@remote.test")
        code, text = s.rcpt(ALICE)
        assert (code, text) == (452, b"4.2.2 <alice@example.test>: Mailbox full")
        s.rset()
    used = len(first) + len(second)
    assert 10240 <= used <= 11264

    with imaplib.IMAP4("127.0.0.1", gw.ports["imap"], timeout=30) as m:
        m.login(ALICE, PASSWORD)
        typ, data = m.getquotaroot("INBOX")
        assert typ == "OK"
        assert data == [[b'"INBOX" ""'], [b'"" (STORAGE %d 10)' % (used // 1024)]]
        typ, data = m.append("INBOX", None, None, b"Subject: more\r\n\r\nx\r\n")
        assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]")
