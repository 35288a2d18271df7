"""SMTP in, IMAP out, through the real gateway: smtplib -> queue -> Maildir -> imaplib.

The IMAP client is Python's imaplib (IDLE, which it lacks before 3.14, is
spoken through its socket). Most tests log in over plaintext from loopback
([auth] plaintext_from_loopback = true); one goes through STARTTLS with a
trustme certificate.
"""

from __future__ import annotations

import imaplib
import os
import re
import smtplib
import socket

import pytest
from conftest import PASSWORD, client_context, wait_for

ALICE = "alice@example.test"
PLAINTEXT = "[auth]\nplaintext_from_loopback = true\n"

MULTIPART = (
    b"From: Bob <bob@remote.test>\r\nTo: alice@example.test\r\nSubject: Report Q3\r\n"
    b"Message-ID: <q3@remote.test>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
    b"--b1\r\nContent-Type: multipart/alternative; boundary=\"b2\"\r\n\r\n"
    b"--b2\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nPlain text.\r\n"
    b"--b2\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n<p>HTML</p>\r\n--b2--\r\n"
    b"--b1\r\nContent-Type: image/png; name=\"dot.png\"\r\nContent-Transfer-Encoding: base64\r\n"
    b"Content-Disposition: attachment; filename=\"dot.png\"\r\n\r\niVBORw0KGgo=\r\n--b1--\r\n")


def send(gw, *messages: bytes, to: str = ALICE) -> list[bytes]:
    before = len(gw.messages(to))
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=60) as s:
        s.ehlo("client.test")
        for message in messages:
            assert s.sendmail("bob@remote.test", [to], message,
                              mail_options=["BODY=8BITMIME"]) == {}
    return gw.wait_messages(to, before + len(messages))


def login(gw, timeout: float = 30) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", gw.ports["imap"], timeout=timeout)
    m.login(ALICE, PASSWORD)
    return m


@pytest.fixture
def gw(make_gateway):
    return make_gateway(PLAINTEXT)


def files(gw, sub: str = "cur") -> list[str]:
    return sorted(p.name for p in (gw.maildir(ALICE) / sub).iterdir())


def test_smtp_message_is_fetched_byte_exact_over_starttls(make_tls_gateway, ca):
    gw = make_tls_gateway()
    body = (b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: exact\r\n\r\n"
            b".leading dot\r\n8-bit: \xc3\xa9\xe2\x82\xac\r\n..two dots\r\n")
    [stored] = send(gw, body)
    m = imaplib.IMAP4("127.0.0.1", gw.ports["imap"], timeout=30)
    assert "LOGINDISABLED" in m.capabilities  # loopback, but the setting is off
    m.starttls(ssl_context=client_context(ca))
    m.login(ALICE, PASSWORD)
    typ, data = m.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    typ, data = m.fetch("1", "(BODY.PEEK[] RFC822.SIZE)")
    assert data[0][1] == stored  # the file on disk, byte for byte
    assert stored.endswith(body) and data[1] == b" RFC822.SIZE %d)" % len(stored)
    m.logout()


def test_flags_set_over_imap_show_in_file_names(gw):
    send(gw, b"Subject: one\r\n\r\n1\r\n", b"Subject: two\r\n\r\n2\r\n")
    m = login(gw)
    m.select("INBOX")
    assert files(gw, "new") == []  # seen by a session: moved to cur/, as Dovecot does
    m.store("1", "+FLAGS", r"(\Seen \Flagged)")
    m.store("2", "+FLAGS", r"(\Answered \Deleted)")
    assert [f.split(":", 1)[1] for f in files(gw)] == ["2,FS", "2,RT"]
    typ, data = m.expunge()
    assert data == [b"2"]
    assert [f.split(":", 1)[1] for f in files(gw)] == ["2,FS"]
    m.logout()


def test_uids_survive_a_restart(gw):
    send(gw, b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n", b"Subject: c\r\n\r\nc\r\n")
    m = login(gw)
    m.select("INBOX")
    m.store("1", "+FLAGS", r"(\Deleted)")
    m.expunge()
    validity = m.response("UIDVALIDITY")
    m.store("1", "+FLAGS", r"(\Flagged)")
    before = m.uid("FETCH", "1:*", "(UID FLAGS)")[1]
    assert before == [b"1 (UID 2 FLAGS (\\Flagged \\Recent))", b"2 (UID 3 FLAGS (\\Recent))"]
    m.logout()
    gw.stop()
    gw.start()
    m = login(gw)
    m.select("INBOX")
    assert m.response("UIDVALIDITY") == validity
    # The same UIDs and flags; \Recent was the first session's alone (RFC 3501 2.3.2).
    assert m.uid("FETCH", "1:*", "(UID FLAGS)")[1] == [b"1 (UID 2 FLAGS (\\Flagged))",
                                                       b"2 (UID 3 FLAGS ())"]
    send(gw, b"Subject: d\r\n\r\nd\r\n")
    m.noop()
    assert m.uid("SEARCH", "SUBJECT", "d")[1] == [b"4"]
    m.logout()


def test_idle_wakes_on_smtp_delivery(gw):
    send(gw, b"Subject: first\r\n\r\n1\r\n")
    m = login(gw)
    m.select("INBOX")
    m.send(b"i1 IDLE\r\n")
    assert m.readline() == b"+ idling\r\n"
    send(gw, b"Subject: second\r\n\r\n2\r\n")
    # A deadline, not a wait, and under [imap] poll_interval (10 s): the delivery
    # itself wakes the session, not IDLE's periodic look at the Maildir.
    m.sock.settimeout(5)
    assert m.readline() == b"* 2 EXISTS\r\n"
    assert m.readline() == b"* 2 RECENT\r\n"  # both are new to this session
    m.send(b"DONE\r\n")
    assert m.readline() == b"i1 OK IDLE terminated\r\n"
    assert m.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1][0][1] == \
        b"Subject: second\r\n\r\n"
    m.logout()


def test_two_sessions_see_each_others_expunges(gw):
    send(gw, b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n")
    one, two = login(gw), login(gw)
    one.select("INBOX")
    two.select("INBOX")
    one.store("1", "+FLAGS", r"(\Deleted)")
    one.expunge()
    typ, _ = two.noop()
    assert two.response("EXPUNGE") == ("EXPUNGE", [b"1"])
    assert two.fetch("1", "(UID)")[1] == [b"1 (UID 2)"]
    two.store("1", "+FLAGS", r"(\Flagged)")
    one.noop()
    assert one.response("FETCH") == ("FETCH", [b"1 (UID 2 FLAGS (\\Flagged \\Recent))"])
    one.logout()
    two.logout()


def test_move_and_uidplus_responses(gw):
    send(gw, b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n")
    m = login(gw)
    typ, data = m.append("Drafts", r"(\Draft)", None, b"Subject: draft\r\n\r\nx\r\n")
    validity_drafts = m.status("Drafts", "(UIDVALIDITY)")[1][0]
    assert re.fullmatch(rb"\[APPENDUID (\d+) 1\] APPEND completed", data[0])
    assert re.search(rb"\d+", data[0]).group() in validity_drafts
    m.select("INBOX")
    # imaplib keeps the tagged OK's text (with its COPYUID code) only this way.
    typ, data = m._simple_command("UID", "COPY", "1:2", "Archive")
    assert re.fullmatch(rb"\[COPYUID \d+ 1:2 1:2\] COPY completed", data[0])
    typ, data = m.uid("MOVE", "2", "Trash")
    assert typ == "OK"
    assert re.fullmatch(rb"\d+ 2 1", m.response("COPYUID")[1][-1])
    assert m.response("EXPUNGE") == ("EXPUNGE", [b"2"])
    m.store("1", "+FLAGS", r"(\Deleted)")
    assert m.uid("EXPUNGE", "1")[0] == "OK"
    assert m.response("EXPUNGE") == ("EXPUNGE", [b"1"])
    assert m.select("Trash") == ("OK", [b"1"])
    m.logout()
    assert len(list((gw.maildir(ALICE) / ".Trash" / "cur").iterdir())) == 1


# RFC 3501 9, the parts of the grammar this message uses.
_S = rb'(?:NIL|"[^"\\]*")'
_PARAMS = rb'(?:NIL|\((?:"[^"]*" "[^"]*")(?: "[^"]*" "[^"]*")*\))'
_FIELDS = rb'"[A-Z]+" "[A-Z]+" ' + _PARAMS + rb" " + _S + rb" " + _S + rb' "[A-Z0-9]+" \d+'
_EXT1 = rb" " + _S + rb" (?:NIL|\(\"[A-Z]+\" " + _PARAMS + rb"\)) " + _S + rb" " + _S
_TEXT = rb'\("TEXT" "[A-Z]+" ' + _PARAMS + rb" " + _S + rb" " + _S + rb' "[A-Z0-9]+" \d+ \d+' \
    + _EXT1 + rb"\)"
_BASIC = rb"\(" + _FIELDS + _EXT1 + rb"\)"
_MPART_EXT = rb" " + _PARAMS + rb" (?:NIL|\(\"[A-Z]+\" " + _PARAMS + rb"\)) " + _S + rb" " + _S


def test_multipart_bodystructure_matches_the_grammar(gw):
    send(gw, MULTIPART)
    m = login(gw)
    m.select("INBOX")
    data = m.fetch("1", "(BODYSTRUCTURE)")[1][0]
    inner = rb"\((?:" + _TEXT + rb"){2} \"ALTERNATIVE\"" + _MPART_EXT + rb"\)"
    grammar = rb"1 \(BODYSTRUCTURE \(" + inner + _BASIC + rb' "MIXED"' + _MPART_EXT + rb"\)\)"
    assert re.fullmatch(grammar, data), data
    assert m.fetch("1", "(BODY.PEEK[1.2])")[1][0][1] == b"<p>HTML</p>"
    assert m.fetch("1", "(BODY.PEEK[2])")[1][0][1] == b"iVBORw0KGgo="
    m.logout()


@pytest.mark.parametrize("key,hit,miss", [
    ("FROM", "BOB@remote", "carol"), ("TO", "alice", "zed"), ("SUBJECT", "report q3", "q4"),
    ("BODY", "html", "markdown"), ("TEXT", "q3@remote", "q5@remote"),
])
def test_search_keys_find_and_miss_over_the_wire(gw, key, hit, miss):
    send(gw, MULTIPART)
    m = login(gw)
    m.select("INBOX")
    assert m.search(None, key, f'"{hit}"')[1] == [b"1"]
    assert m.search(None, key, f'"{miss}"')[1] == [b""]
    m.logout()


def test_oversized_literal_is_refused_before_it_is_read_and_bad_input_is_survived(make_gateway):
    gw = make_gateway(PLAINTEXT + "[imap]\nmax_message_size = 1000\n")
    m = login(gw)
    m.send(b"a1 APPEND INBOX {5000}\r\n")
    assert m.readline() == b"a1 NO [TOOBIG] Literal of 5000 octets is over the limit of 1000\r\n"
    m.send(b"a2 FETCH\r\na3 BOGUS\r\n\r\n")
    assert m.readline() == b"a2 BAD command not valid in this state\r\n"
    assert m.readline() == b"a3 BAD unknown command\r\n"
    assert m.readline() == b"* BAD missing or bad tag\r\n"
    assert m.noop()[0] == "OK"
    m.logout()


def test_client_dropping_mid_append_leaves_no_message(gw):
    raw = socket.create_connection(("127.0.0.1", gw.ports["imap"]), timeout=30)
    f = raw.makefile("rb")
    f.readline()
    raw.sendall(f'l LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
    assert f.readline().startswith(b"l OK")
    # Over [imap] append_in_memory: streamed to tmp/ as it comes (a smaller one waits in
    # memory; tests/unit/test_imap_append_staging.py).
    raw.sendall(b"a APPEND INBOX {400000}\r\n")
    assert f.readline().startswith(b"+")
    raw.sendall(b"Subject: half\r\n\r\n" + b"x" * 5000)
    tmp = gw.maildir(ALICE) / "tmp"
    wait_for(lambda: any(tmp.iterdir()), what="the upload to start")
    f.close()
    raw.close()
    wait_for(lambda: not any(tmp.iterdir()), what="the partial upload to be removed")
    assert gw.messages(ALICE) == []


@pytest.mark.parametrize("port,starttls,ok,logout,bye", [
    ("imap", b"a STARTTLS", b"a OK", b"b LOGOUT", b"b OK"),
    ("pop3", b"STLS", b"+OK", b"QUIT", b"+OK")])
def test_the_server_closes_after_logout_inside_starttls(make_tls_gateway, ca, port, starttls,
                                                        ok, logout, bye):
    """mbsync (SSLType STARTTLS) waits for the server to close after LOGOUT."""
    gw = make_tls_gateway()
    with socket.create_connection(("127.0.0.1", gw.ports[port]), timeout=10) as raw:
        reader = raw.makefile("rb")
        assert reader.readline()[:3] in (b"* O", b"+OK")
        raw.sendall(starttls + b"\r\n")
        assert reader.readline().startswith(ok)
        reader.close()
        with client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(logout + b"\r\n")
            got = b""
            while True:  # until the server closes: EOF, never the 10 s timeout
                chunk = tls.recv(4096)
                if not chunk:
                    break
                got += chunk
            # That was TLS's close_notify. The TCP connection must end too, without
            # the client's close_notify (mbsync sends none and waits).
            with socket.socket(fileno=os.dup(tls.fileno())) as tcp:
                tcp.settimeout(5)
                assert tcp.recv(1) == b""
        assert bye in got
