"""Keywords kept in the Maildir, through the real gateway: imaplib, a restart, no index.

A keyword set over IMAP must outlive the SQLite index (store/index.py is a
cache): it is a letter in the file name, numbered in dovecot-keywords
(store/keywords.py), as Dovecot keeps it.
"""

from __future__ import annotations

import os
import smtplib

ALICE = "alice@example.test"


def test_a_keyword_survives_losing_the_index(plain_gw):
    with smtplib.SMTP("127.0.0.1", plain_gw.ports["smtp"], timeout=60) as s:
        s.sendmail("bob@remote.test", [ALICE], b"Subject: keep me\r\n\r\nbody\r\n")
    plain_gw.wait_messages(ALICE, 1)
    m = plain_gw.imap_login(ALICE)
    m.select("INBOX")
    m.store("1", "+FLAGS", r"($Label2 \Flagged)")
    m.logout()
    plain_gw.stop()
    root = plain_gw.maildir(ALICE)
    index_files = [n for n in os.listdir(root) if n.startswith("mailgateway.index")]
    assert index_files
    for name in index_files:  # the index is lost while the gateway is down
        os.unlink(root / name)
    plain_gw.start()
    m = plain_gw.imap_login(ALICE)
    typ, _ = m.select("INBOX")
    assert typ == "OK"
    flags = m.response("FLAGS")[1][0]
    assert b"$Label2" in flags  # announced before any FETCH uses it (RFC 3501 7.2.6)
    typ, data = m.fetch("1", "(FLAGS)")
    assert b"$Label2" in data[0] and b"\\Flagged" in data[0]
    assert m.search(None, "KEYWORD", "$Label2")[1] == [b"1"]
    m.logout()
