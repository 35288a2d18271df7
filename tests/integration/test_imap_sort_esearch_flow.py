"""SORT, THREAD, ESEARCH and LIST-STATUS through the real gateway with imaplib
(issue 12: the extensions mail clients use)."""

from __future__ import annotations

import smtplib

ALICE = "alice@example.test"
SUBJECTS = [b"Re: budget", b"agenda", b"budget", b"[team] Fwd: agenda"]


def test_sort_thread_esearch_and_list_status(plain_gw):
    with smtplib.SMTP("127.0.0.1", plain_gw.ports["smtp"], timeout=60) as s:
        for n, subject in enumerate(SUBJECTS, 1):
            s.sendmail("bob@remote.test", [ALICE], b"Subject: %s\r\nMessage-ID: <%d@x>\r\n"
                       b"\r\n%s\r\n" % (subject, n, b"x" * 100 * n))
    plain_gw.wait_messages(ALICE, 4)
    m = plain_gw.imap_login(ALICE)
    try:
        for cap in ("SORT", "THREAD=REFERENCES", "ESEARCH", "LIST-EXTENDED", "LIST-STATUS"):
            assert cap in m.capabilities, cap
        m.create("Work")
        m.select("INBOX")
        typ, data = m.sort("(SUBJECT REVERSE SIZE)", "UTF-8", "ALL")
        assert typ == "OK" and data == [b"4 2 3 1"]
        typ, data = m.uid("SORT", "(REVERSE SIZE)", "UTF-8", "ALL")
        assert typ == "OK" and data == [b"4 3 2 1"]
        typ, data = m.thread("ORDEREDSUBJECT", "UTF-8", "ALL")
        assert typ == "OK" and data == [b"(1 3)(2 4)"]  # no Date: by arrival

        typ, data = m._simple_command("SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "NOT", "2")
        assert typ == "OK"
        found = m.untagged_responses.pop("ESEARCH")
        assert found[-1].endswith(b"MIN 1 MAX 4 ALL 1,3:4 COUNT 3"), found

        typ, data = m._simple_command("LIST", '""', "%", "RETURN", "(STATUS (MESSAGES))")
        assert typ == "OK"
        status = m.untagged_responses.pop("STATUS")
        assert b'"INBOX" (MESSAGES 4)' in status and b'"Work" (MESSAGES 0)' in status
    finally:
        m.logout()
