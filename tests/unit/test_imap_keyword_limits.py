"""access/imap/keywordlimit.py: how many keywords a folder may know and how long one may be.

Without these bounds a client grows FLAGS without end, one new keyword per
STORE (issue 12). Over them: NO [LIMIT] (RFC 5530), nothing changed, and a
full folder's PERMANENTFLAGS stops offering \\* (RFC 3501 7.1).
"""

from __future__ import annotations

import re

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.config import ImapSettings, parse


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, b"Subject: one\r\n\r\nfirst\r\n", "1000.U1.host")
    store.deliver(BOX, b"Subject: two\r\n\r\nsecond\r\n", "1001.U2.host")
    clock = MemoryReactorClock()
    limits = {"max_keywords_per_folder": 3, "max_keyword_length": 10}

    def connect() -> Session:
        s = Session(make_factory(store, clock, limits), "127.0.0.1")
        s.login()
        return s

    return connect


def permanent(out: bytes) -> bytes:
    m = re.search(rb"^\* OK \[PERMANENTFLAGS \(([^)]*)\)\]", out, re.M)
    assert m, out
    return m.group(1)


def test_defaults_are_named_settings():
    assert ImapSettings().max_keyword_length == 50  # Dovecot's mail_max_keyword_length
    assert ImapSettings().max_keywords_per_folder >= 26  # at least Dovecot's letters
    imap = parse({"server": {"domains": ["example.test"]},
                  "imap": {"max_keywords_per_folder": 7, "max_keyword_length": 9}}).imap
    assert (imap.max_keywords_per_folder, imap.max_keyword_length) == (7, 9)


def test_a_store_past_the_folder_limit_is_refused_and_changes_nothing(env):
    s = env()
    s("SELECT INBOX")
    s("STORE 1 +FLAGS (k1 k2)")
    out = s("STORE 1 +FLAGS (\\Flagged k3 k4)", expect=b"NO")
    assert b"[LIMIT]" in out and b"at most 3" in out
    flags = s("FETCH 1 FLAGS")
    assert b"k3" not in flags and b"k4" not in flags and b"\\Flagged" not in flags
    s("STORE 2 +FLAGS (k3)")  # the last free one is still there
    # Full: no new keyword, but keywords the folder has stay usable everywhere.
    assert b"[LIMIT]" in s("STORE 2 +FLAGS (k5)", expect=b"NO")
    assert b"k1" in s("STORE 2 FLAGS (k1 k2 \\Seen)")
    s("STORE 1 -FLAGS (k1 k2)")  # removing never needs room


def test_a_full_folder_stops_offering_new_keywords_in_permanentflags(env):
    s = env()
    assert permanent(s("SELECT INBOX")).endswith(b"\\*")
    out = s("STORE 1 +FLAGS (k1 k2 k3)")
    assert not permanent(out).endswith(b"\\*")  # told at once, with the new FLAGS
    assert b"k3" in permanent(out)
    t = env()
    assert not permanent(t("SELECT INBOX")).endswith(b"\\*")


def test_a_keyword_too_long_is_refused(env):
    s = env()
    s("SELECT INBOX")
    out = s("STORE 1 +FLAGS (abcdefghijk)", expect=b"NO")
    assert b"[LIMIT]" in out and b"at most 10 characters" in out
    assert b"abcdefghijk" not in s("FETCH 1 FLAGS")
    s("STORE 1 +FLAGS (abcdefghij)")  # exactly the bound is fine


def test_append_past_the_limits_is_refused_and_stores_nothing(env):
    s = env()
    s("SELECT INBOX")
    s("STORE 1 +FLAGS (k1 k2)")
    t = env()
    out = t.raw(b'a1 APPEND INBOX (k3 k4) {18+}\r\nSubject: x\r\n\r\nhi\r\n\r\n')
    assert b"a1 NO [LIMIT]" in out, out
    out = t.raw(b'a2 APPEND INBOX (waytoolongkeyword) {18+}\r\nSubject: x\r\n\r\nhi\r\n\r\n')
    assert b"a2 NO [LIMIT]" in out, out
    assert b"MESSAGES 2" in t("STATUS INBOX (MESSAGES)")
    out = t.raw(b'a3 APPEND INBOX (k1 k3) {18+}\r\nSubject: x\r\n\r\nhi\r\n\r\n')
    assert b"a3 OK" in out, out
    assert b"MESSAGES 3" in t("STATUS INBOX (MESSAGES)")



@pytest.mark.parametrize("verb", ["COPY", "MOVE"])
def test_copy_and_move_past_the_target_limit_are_refused_and_change_nothing(env, verb):
    s = env()
    s("CREATE Full")
    s("APPEND Full (a1 a2 a3) {3}", expect=None)
    s.raw(b"x\r\n\r\n")
    s("SELECT INBOX")
    s("STORE 1 +FLAGS (k1)")
    out = s(f"{verb} 1 Full", expect=b"NO")
    assert b"[LIMIT]" in out and b"at most 3" in out
    assert b"(MESSAGES 1)" in s("STATUS Full (MESSAGES)")
    assert b"* 2 EXISTS" in s("SELECT INBOX")  # a refused MOVE leaves the source alone
    s(f"{verb} 2 Full")  # without a new keyword it goes
    assert b"(MESSAGES 2)" in s("STATUS Full (MESSAGES)")
