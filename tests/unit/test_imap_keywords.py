"""access/imap: keywords announced in FLAGS, RENAME INBOX, SEARCH in decoded text (issue 12)."""

from __future__ import annotations

import os
import re

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

KEYWORDS_NAME = "dovecot-keywords"  # Dovecot's name: other Maildir readers know it


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, b"Subject: one\r\n\r\nfirst\r\n", "1000.U1.host")
    store.deliver(BOX, b"Subject: two\r\n\r\nsecond\r\n", "1001.U2.host")
    clock = MemoryReactorClock()

    def connect() -> Session:
        return Session(make_factory(store, clock), "127.0.0.1")

    connect.store, connect.root = store, store.mailbox_path(BOX)
    return connect


def selected(env, name: str = "INBOX") -> Session:
    s = env()
    s.login()
    s(f"SELECT {name}")
    return s


def flags_line(out: bytes) -> bytes:
    m = re.search(rb"^\* FLAGS \(([^)]*)\)\r\n", out, re.M)
    assert m, out
    return m.group(1)


def permanent(out: bytes) -> bytes:
    m = re.search(rb"^\* OK \[PERMANENTFLAGS \(([^)]*)\)\]", out, re.M)
    assert m, out
    return m.group(1)


# -- FLAGS and PERMANENTFLAGS name every keyword (RFC 3501 7.2.6, 7.1) -------------------

def test_select_announces_the_keywords_in_the_mailbox(env):
    root = env.root
    (root / KEYWORDS_NAME).write_text("0 $Label1\n1 Work\n")
    os.rename(root / "new" / "1000.U1.host", root / "cur" / "1000.U1.host:2,Sb")
    s = env()
    s.login()
    out = s("SELECT INBOX")
    assert flags_line(out).split() == [b"\\Answered", b"\\Flagged", b"\\Deleted", b"\\Seen",
                                       b"\\Draft", b"$Forwarded", b"$Label1", b"Work"]
    assert permanent(out).split()[-3:] == [b"$Label1", b"Work", b"\\*"]
    assert b"Work" in s("FETCH 1 FLAGS")
    assert permanent(s("EXAMINE INBOX")) == b""  # read-only: nothing may be changed


def test_a_new_keyword_from_another_session_is_announced_before_fetch_shows_it(env):
    s, t = selected(env), selected(env)
    t("STORE 1 +FLAGS.SILENT ($Label2)")
    out = s("NOOP")
    assert out.index(b"* FLAGS (") < out.index(b"* 1 FETCH")
    assert b"$Label2" in flags_line(out) and b"$Label2 \\*" in permanent(out)
    assert b"* FLAGS" not in s("NOOP")  # once is enough
    # A FETCH (no EXPUNGE or flag updates allowed there) still announces first.
    t("STORE 2 +FLAGS.SILENT ($Label3)")
    out = s("FETCH 2 (FLAGS)")
    assert b"$Label3" in flags_line(out)
    assert out.index(b"* FLAGS (") < out.index(b"$Label3)")


def test_own_store_of_a_new_keyword_announces_it_first(env):
    s = selected(env)
    out = s("STORE 1 +FLAGS ($Label2)")
    assert out.index(b"* FLAGS (") < out.index(b"* 1 FETCH (FLAGS (")
    assert b"$Label2" in flags_line(out)
    assert b"* FLAGS" not in s("STORE 2 +FLAGS ($Label2)")
    t = env()
    t.login()
    assert b"$Label2" in flags_line(t("SELECT INBOX"))  # and at the next SELECT


def test_append_with_a_new_keyword_is_announced(env):
    s = selected(env)
    t = env()
    t.login()
    t.raw(b'a1 APPEND INBOX ($Todo) {18+}\r\nSubject: x\r\n\r\nhi\r\n\r\n')
    out = s("NOOP")
    assert b"$Todo" in flags_line(out)


# -- RENAME INBOX (RFC 3501 6.3.5) --------------------------------------------------------

def test_rename_inbox_moves_the_messages_and_leaves_it_empty(env):
    s = selected(env)
    s("STORE 1 +FLAGS.SILENT (\\Flagged Work)")
    out = s("RENAME INBOX Old-Mail")
    assert b"* 2 EXPUNGE" in out and b"* 1 EXPUNGE" in out  # the selected INBOX empties
    assert b"* 0 EXISTS" in s("SELECT INBOX")
    out = s("SELECT Old-Mail")
    assert b"* 2 EXISTS" in out
    out = s("FETCH 1:2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"Subject: one" in out and b"Subject: two" in out
    assert re.search(rb"\* 1 FETCH \(FLAGS \([^)]*\\Flagged[^)]*Work", out), out
    assert b"INBOX" in s('LIST "" INBOX').split(b"\r\n")[0]  # INBOX is still there
    assert b"[ALREADYEXISTS]" in s("RENAME INBOX Old-Mail", expect=b"NO")
    assert s("RENAME inbox Empty-Too")  # INBOX is case-insensitive; an empty one moves too
    assert b"* 0 EXISTS" in s("SELECT Empty-Too")


# -- SEARCH in the decoded text, in the client's CHARSET (RFC 3501 6.4.4) -------------------

ENCODED = (
    b"From: bob@example.test\r\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n"
    b"--B\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Sch=F6ne Gr=FC=DFe aus M=FCn=\r\nchen\r\n"
    b"--B\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + __import__("base64").encodebytes("<p>Ünïcödé Körper</p>".encode()) +
    b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + __import__("base64").encodebytes(b"hidden binary words") + b"--B--\r\n")


@pytest.fixture
def searching(env):
    env.store.deliver(BOX, ENCODED, "1002.U3.host")
    return selected(env)


@pytest.mark.parametrize("command, found", [
    ("SEARCH BODY München", b"3"),  # quoted-printable, a soft line break, Latin-1
    ("SEARCH BODY münchen", b"3"),
    ("SEARCH BODY MÜNCHEN", b"3"),  # case-insensitive on the decoded text
    ("SEARCH CHARSET UTF-8 BODY Körper", b"3"),  # base64, UTF-8
    ("SEARCH TEXT ünïcödé", b"3"),
    ("SEARCH TEXT grüße", b"3"),  # the header, RFC 2047 decoded, and the body
    ("SEARCH BODY hidden", b""),  # not a text part
    ("SEARCH BODY Sch=F6ne", b""),  # the encoded form is not the text
    ("SEARCH BODY second", b"2"),
])
def test_search_body_and_text_look_in_the_decoded_text(searching, command, found):
    out = searching(command.encode("utf-8"))
    assert out.split(b"\r\n")[0] == b"* SEARCH" + (b" " + found if found else b""), out


def test_search_charset_reads_the_search_strings_in_it(searching):
    # "Grüße" written in ISO-8859-1 by the client, as a literal.
    out = searching.raw(b"a1 SEARCH CHARSET ISO-8859-1 BODY {5}\r\n")
    assert out.startswith(b"+ ")
    out = searching.raw(b"Gr\xfc\xdfe\r\n")
    assert out.startswith(b"* SEARCH 3\r\n"), out
    out = searching("SEARCH CHARSET US-ASCII TEXT munchen")
    assert out.startswith(b"* SEARCH\r\n")
    out = searching("SEARCH CHARSET X-NOWHERE BODY x", expect=b"NO")
    assert b"NO [BADCHARSET (UTF-8 US-ASCII)]" in out
    for codec in ("rot13", "unicode_escape"):  # Python codecs, not charsets
        assert b"[BADCHARSET" in searching(f"SEARCH CHARSET {codec} BODY x", expect=b"NO")
