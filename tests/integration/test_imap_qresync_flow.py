"""QRESYNC (RFC 7162) through the real gateway: a client that was away learns,
in its SELECT, exactly which messages another session expunged meanwhile and
which changed flags, the way Thunderbird and K-9 resynchronise (issue 12).
"""

from __future__ import annotations

import imaplib
import re
import smtplib

ALICE = "alice@example.test"


def code(m: imaplib.IMAP4, name: str) -> int:
    return int(m.untagged_responses.pop(name)[-1])


def qresync_select(m: imaplib.IMAP4, arguments: str) -> dict[str, list[bytes]]:
    """SELECT with QRESYNC (imaplib has no form for it); the untagged responses."""
    m.untagged_responses.clear()
    typ, data = m._simple_command("SELECT", "INBOX", arguments)
    assert typ == "OK", data
    return dict(m.untagged_responses)


def test_reconnecting_client_gets_the_vanished_set_and_changed_flags(plain_gw):
    with smtplib.SMTP("127.0.0.1", plain_gw.ports["smtp"], timeout=60) as s:
        for n in range(1, 7):
            s.sendmail("bob@remote.test", [ALICE], b"Subject: m%d\r\n\r\nbody\r\n" % n)
    plain_gw.wait_messages(ALICE, 6)

    # The client syncs, remembers UIDVALIDITY and HIGHESTMODSEQ, and goes away.
    away = plain_gw.imap_login(ALICE)
    assert "QRESYNC" in away.capabilities and "CONDSTORE" in away.capabilities
    away.enable("QRESYNC")
    assert away.untagged_responses.pop("ENABLED") == [b"QRESYNC"]
    typ, data = away.select("INBOX")
    assert data == [b"6"]
    validity, known = code(away, "UIDVALIDITY"), code(away, "HIGHESTMODSEQ")
    away.logout()

    # A second client that stays: it hears VANISHED live.
    live = plain_gw.imap_login(ALICE)
    live.enable("QRESYNC")
    live.select("INBOX")

    # Meanwhile another session expunges UIDs 2, 3 and 5 and flags UID 6.
    other = plain_gw.imap_login(ALICE)
    other.select("INBOX")
    other.uid("STORE", "2,3,5", "+FLAGS", r"(\Deleted)")
    other.expunge()
    other.uid("STORE", "6", "+FLAGS", r"(\Flagged)")
    other.logout()

    live.untagged_responses.clear()
    live.noop()
    assert live.untagged_responses.get("VANISHED") == [b"2:3,5"]
    assert "EXPUNGE" not in live.untagged_responses
    live.logout()

    back = plain_gw.imap_login(ALICE)
    back.enable("QRESYNC")
    got = qresync_select(back, f"(QRESYNC ({validity} {known} 1:6))")
    assert got["VANISHED"] == [b"(EARLIER) 2:3,5"]
    changed = [line for line in got.get("FETCH", []) if b"UID" in line]
    assert len(changed) == 1 and re.match(rb"3 \(UID 6 FLAGS \(.*\\Flagged.*\) MODSEQ \(\d+\)\)",
                                          changed[0]), changed
    assert int(got["HIGHESTMODSEQ"][-1]) > known
    assert got["EXISTS"] == [b"3"]

    # Nothing more to learn from the new HIGHESTMODSEQ.
    latest = int(got["HIGHESTMODSEQ"][-1])
    again = qresync_select(back, f"(QRESYNC ({validity} {latest}))")
    assert "VANISHED" not in again and not any(b"UID" in x for x in again.get("FETCH", []))
    back.logout()
