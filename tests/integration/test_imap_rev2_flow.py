"""IMAP4rev2 (RFC 9051) through the real gateway with imaplib, which knows only
IMAP4rev1: the rev2 commands go raw (_simple_command). Issue 12."""

from __future__ import annotations

import imaplib
import smtplib

ALICE = "alice@example.test"


def test_rev2_session_beside_a_rev1_session(plain_gw):
    with smtplib.SMTP("127.0.0.1", plain_gw.ports["smtp"], timeout=60) as s:
        for n in (1, 2, 3):
            s.sendmail("bob@remote.test", [ALICE], b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n))
    plain_gw.wait_messages(ALICE, 3)
    m = plain_gw.imap_login(ALICE)
    try:
        assert "IMAP4REV1" in m.capabilities and "IMAP4REV2" in m.capabilities
        typ, _ = m._simple_command("ENABLE", "IMAP4rev2")
        assert typ == "OK" and m.untagged_responses.pop("ENABLED") == [b"IMAP4rev2"]
        name = "Entwürfe".encode()
        typ, _ = m._simple_command("CREATE", b'"' + name + b'"')
        assert typ == "OK"
        typ, data = m.list()
        # Not ASCII, so a literal: imaplib gives (line head, name).
        assert typ == "OK" and name in b"".join(
            d if isinstance(d, bytes) else b"".join(d) for d in data), data
        typ, data = m.select("INBOX")
        assert typ == "OK" and data == [b"3"]
        assert "RECENT" not in m.untagged_responses
        assert m.untagged_responses.pop("LIST") == [b'() "." "INBOX"']
        typ, data = m.fetch("1:*", "(FLAGS)")
        assert typ == "OK" and not any(b"\\Recent" in d for d in data), data
        typ, _ = m._simple_command("SEARCH", "ALL")
        assert typ == "OK" and "SEARCH" not in m.untagged_responses
        assert m.untagged_responses.pop("ESEARCH")[-1].endswith(b"ALL 1:3")
        m.store("1", "+FLAGS", "(\\Deleted $Phishing)")
        m.unselect()
        typ, _ = m._simple_command("STATUS", "INBOX", "(MESSAGES DELETED SIZE)")
        assert typ == "OK"
        assert b"DELETED 1" in m.untagged_responses.pop("STATUS")[-1]
    finally:
        m.logout()

    # A rev1 session (imaplib as it is) sees the same mailbox as before rev2 existed.
    old = plain_gw.imap_login(ALICE)
    try:
        typ, data = old.list()
        assert typ == "OK" and any(b'"Entw&APw-rfe"' in d for d in data), data
        typ, data = old.select("INBOX")
        assert typ == "OK" and old.untagged_responses.get("RECENT") == [b"3"]
        typ, data = old.search(None, "ALL")
        assert typ == "OK" and data == [b"1 2 3"]
        typ, _ = old._simple_command("STATUS", "INBOX", "(DELETED)")
    except imaplib.IMAP4.error as e:
        assert "unknown STATUS item" in str(e)
    else:
        raise AssertionError("STATUS DELETED answered in a rev1 session")
    finally:
        old.logout()
