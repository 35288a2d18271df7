"""IMAP4rev2 (RFC 9051) beside IMAP4rev1: what ENABLE IMAP4rev2 changes in a session,
and that a rev1 session is left as it was."""

from __future__ import annotations

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock


@pytest.fixture
def factory(tmp_path):
    store = fresh_store(tmp_path)
    for i in range(1, 4):
        store.deliver(BOX, b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i), f"100{i}.U{i}.host")
    return make_factory(store, MemoryReactorClock())


def session(factory, rev2: bool) -> Session:
    s = Session(factory)
    s.login()
    if rev2:
        assert b"* ENABLED IMAP4rev2\r\n" in s("ENABLE IMAP4rev2")
    return s


def test_capability_names_both_and_enable_answers_once(factory):
    s = Session(factory)
    caps = s("CAPABILITY").split(b"\r\n")[0].split()
    assert b"IMAP4rev1" in caps and b"IMAP4rev2" in caps
    s.login()
    assert b"* ENABLED IMAP4rev2\r\n" in s("ENABLE imap4REV2")
    assert b"* ENABLED\r\n" in s("ENABLE IMAP4rev2")  # already on: not named again


def test_rev2_select_has_no_recent_and_a_list_response(factory):
    s = session(factory, rev2=True)
    out = s("SELECT inbox")
    assert b"RECENT" not in out and b"\\Recent" not in out
    assert b'* LIST () "." "INBOX"\r\n' in out
    assert b"\\Recent" not in s("FETCH 1:* FLAGS")
    assert b"\\Recent" not in s("STORE 1 +FLAGS \\Seen")
    # A rev2 session claims none, so a rev1 session still gets them as \Recent.
    old = session(factory, rev2=False)
    out = old("SELECT INBOX")
    assert b"* 3 RECENT\r\n" in out and b"* LIST" not in out
    assert b"\\Recent" in old("FETCH 1 FLAGS")


def test_rev2_new_mail_is_told_without_recent(factory):
    s = session(factory, rev2=True)
    s("SELECT INBOX")
    factory.store.deliver(BOX, b"Subject: m4\r\n\r\nbody\r\n", "1004.U4.host")
    out = s("NOOP")
    assert b"* 4 EXISTS\r\n" in out and b"RECENT" not in out


def test_rev2_search_answers_with_esearch(factory):
    s = session(factory, rev2=True)
    s("SELECT INBOX")
    out = s("SEARCH ALL")
    assert b"* SEARCH" not in out and b'* ESEARCH (TAG "a4") ALL 1:3\r\n' in out
    assert b'* ESEARCH (TAG "a5") UID ALL 2\r\n' in s("UID SEARCH SUBJECT m2")
    assert b'* ESEARCH (TAG "a6")\r\n' in s("SEARCH SUBJECT nosuch")
    assert b'* ESEARCH (TAG "a7") COUNT 3\r\n' in s("SEARCH RETURN (COUNT) ALL")
    old = session(factory, rev2=False)
    old("SELECT INBOX")
    assert b"* SEARCH 1 2 3\r\n" in old("SEARCH ALL")


def test_status_deleted_in_rev2_only(factory):
    s = session(factory, rev2=True)
    s("SELECT INBOX")
    s("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    s("UNSELECT")
    out = s("STATUS INBOX (MESSAGES DELETED SIZE)")
    assert b"* STATUS \"INBOX\" (MESSAGES 3 DELETED 2 SIZE " in out
    assert b"DELETED 2" in s('LIST "" "INBOX" RETURN (STATUS (DELETED))')
    old = session(factory, rev2=False)
    old("STATUS INBOX (DELETED)", expect=b"BAD")
    old('LIST "" "INBOX" RETURN (STATUS (DELETED))', expect=b"BAD")


def test_rev2_folder_names_are_utf8(factory):
    s = session(factory, rev2=True)
    s('CREATE "Entw\xc3\xbcrfe"'.encode("latin-1"))
    s('CREATE "R&D"')
    out = s('LIST "" "*"')
    assert "Entwürfe".encode() in out and b"R&D" in out and b"&APw-" not in out
    assert "Entwürfe".encode() in s('STATUS "Entw\xc3\xbcrfe" (MESSAGES)'.encode("latin-1"))
    s('SELECT "Entw&APw-rfe"', expect=b"NO")  # modified UTF-7 is no name in rev2
    # A rev1 session sees the same folders in modified UTF-7.
    old = session(factory, rev2=False)
    out = old('LIST "" "*"')
    assert b'"Entw&APw-rfe"' in out and b'"R&-D"' in out
    old('SELECT "Entw&APw-rfe"')


def test_rev2_delete_of_a_parent_only_says_haschildren(factory):
    s = session(factory, rev2=True)
    s("CREATE top.sub")
    s("DELETE top", expect=b"NO [HASCHILDREN]")
    s("DELETE nosuch", expect=b"NO [NONEXISTENT]")
    old = session(factory, rev2=False)
    old("DELETE top", expect=b"NO [NONEXISTENT]")


def test_rev2_select_has_no_unseen_code(factory):
    s = session(factory, rev2=True)
    assert b"[UNSEEN" not in s("SELECT INBOX")
    old = session(factory, rev2=False)
    assert b"[UNSEEN 1]" in old("SELECT INBOX")


def test_rev2_keywords_of_rfc9051_are_kept(factory):
    s = session(factory, rev2=True)
    s("SELECT INBOX")
    out = s("STORE 1 +FLAGS ($Junk $Phishing $MDNSent $NotJunk)")
    assert b"$Junk" in out and b"$Phishing" in out
    assert b"$Phishing" in s("FETCH 1 FLAGS")


def test_rev2_new_folder_names_must_be_net_unicode(factory):
    s = session(factory, rev2=True)
    decomposed = "Entwu\u0308rfe".encode()  # u + combining diaeresis: not NFC
    s(b'CREATE "' + decomposed + b'"', expect=b"NO [CANNOT]")
    s(b'CREATE "a\xc2\x85b"', expect=b"NO [CANNOT]")  # U+0085, a C1 control
    s("CREATE plain")
    s(b'RENAME plain "' + decomposed + b'"', expect=b"NO [CANNOT]")
    s('RENAME plain "Entw\xc3\xbcrfe"'.encode("latin-1"))
