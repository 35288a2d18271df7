"""A list's archive over IMAP, through the real gateway: smtplib post -> list
explosion -> archive Maildir -> imaplib, as the shared folder "Lists.dev"."""

from __future__ import annotations

import imaplib
import re
import smtplib

from conftest import wait_for

ALICE, DAVE, LIST = "alice@example.test", "dave@example.test", "dev@example.test"
POST = (b"From: alice@example.test\r\nTo: dev@example.test\r\nSubject: release plan\r\n"
        b"Message-ID: <plan@example.test>\r\n\r\nWe ship on Friday.\r\n")


def archived(gw) -> list[str]:
    box = gw.state / "lists" / "archive" / "example.test" / "dev"
    return [p.name for sub in ("new", "cur") if (box / sub).is_dir()
            for p in (box / sub).iterdir()]


def post(gw, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=60) as s:
        assert s.sendmail(ALICE, [LIST], message) == {}


def test_members_read_the_archive_read_only_and_others_do_not_see_it(make_gateway):
    # IDLE's own poll far off: only the wake-up of the filing can reach the session in time.
    gw = make_gateway("[auth]\nplaintext_from_loopback = true\n[imap]\npoll_interval = 600\n",
                      users=(ALICE, DAVE))
    for args in (("create", LIST, "--owner", "owner@example.test"), ("add", LIST, ALICE)):
        result = gw.cli("list", *args)
        assert result.returncode == 0, result.stderr
    post(gw, POST)
    wait_for(lambda: archived(gw), what="the post in the archive")

    m = gw.imap_login(ALICE)
    typ, data = m.namespace()
    assert typ == "OK" and data == [b'(("" ".")) NIL (("Lists." "."))']
    typ, data = m.list()
    assert b'(\\Noselect \\HasChildren) "." "Lists"' in data
    assert b'(\\HasNoChildren) "." "Lists.dev"' in data
    typ, data = m.lsub()
    assert b'(\\HasNoChildren) "." "Lists.dev"' in data

    # SELECT answers [READ-ONLY] (imaplib refuses to go on without readonly=True).
    try:
        m.select("Lists.dev")
        raise AssertionError("SELECT of the archive was not read-only")
    except imaplib.IMAP4.readonly:
        pass
    typ, data = m.select("Lists.dev", readonly=True)
    assert (typ, data) == ("OK", [b"1"])
    typ, data = m.fetch("1", "(BODY[])")
    message = data[0][1]
    assert b"List-Id: " in message and b"<dev.example.test>" in message
    # The header names the folder it is read from (RFC 2369, RFC 5092).
    assert b"List-Archive: <imap://example.test/Lists.dev>" in message
    assert b"We ship on Friday." in message and b"Subject: [dev] release plan" in message
    typ, data = m.uid("SEARCH", "SUBJECT", "release")
    assert typ == "OK" and data == [b"1"]

    typ, data = m.store("1", "+FLAGS", "(\\Flagged)")
    assert typ == "NO" and b"[READ-ONLY]" in data[0]
    typ, data = m.append("Lists.dev", None, None, b"From: x@example.test\r\n\r\nspam\r\n")
    assert typ == "NO" and b"[NOPERM]" in data[0]
    typ, data = m.create("Lists.mine")
    assert typ == "NO" and b"[NOPERM]" in data[0]
    assert len(archived(gw)) == 1

    # A new post shows at once in a session that has the archive open.
    m.send(b"i1 IDLE\r\n")
    assert m.readline() == b"+ idling\r\n"
    post(gw, POST.replace(b"<plan@", b"<plan2@"))
    m.sock.settimeout(20)  # a deadline, not a wait: the line comes as soon as it is filed
    assert m.readline() == b"* 2 EXISTS\r\n"
    assert m.readline() == b"* 0 RECENT\r\n"  # no reader owns a post (shared.py)
    m.send(b"DONE\r\n")
    assert m.readline() == b"i1 OK IDLE terminated\r\n"
    m.logout()

    m = gw.imap_login(DAVE)
    typ, data = m.list()
    assert not any(re.search(rb'"\." "?Lists', line) for line in data), data
    typ, data = m.select("Lists.dev", readonly=True)
    assert typ == "NO" and b"[NONEXISTENT]" in data[0]
    m.logout()
