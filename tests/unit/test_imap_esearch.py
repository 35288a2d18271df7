"""access/imap/esearch.py: SEARCH RETURN (MIN MAX ALL COUNT) answered with ESEARCH (RFC 4731)."""

from __future__ import annotations

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.access.imap import esearch


@pytest.fixture
def s(tmp_path):
    store = fresh_store(tmp_path)
    for i in range(1, 7):
        store.deliver(BOX, b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i), f"100{i}.U{i}.host")
    session = Session(make_factory(store, MemoryReactorClock()))
    session.login()
    session("SELECT INBOX")
    return session


def esearch_line(out: bytes) -> bytes:
    return next(line for line in out.split(b"\r\n") if line.startswith(b"* ESEARCH"))


def test_capability_is_advertised(s):
    assert b" ESEARCH" in s("CAPABILITY")


def test_return_options_with_a_compressed_set(s):
    s("STORE 4 +FLAGS \\Deleted")
    s("EXPUNGE")
    assert esearch_line(s("SEARCH RETURN (ALL) ALL")) == b'* ESEARCH (TAG "a5") ALL 1:5'
    assert esearch_line(s("SEARCH RETURN () ALL")).endswith(b"ALL 1:5")
    # UIDs 1,2,3,5,6 after 4 went: two ranges; the options in RFC 4731's order.
    assert esearch_line(s("UID SEARCH RETURN (COUNT MAX MIN ALL) ALL")) == \
        b'* ESEARCH (TAG "a7") UID MIN 1 MAX 6 ALL 1:3,5:6 COUNT 5'
    assert b"* SEARCH " not in s("SEARCH RETURN (MIN) ALL")


def test_nothing_found_gives_only_count(s):
    assert esearch_line(s("SEARCH RETURN (MIN MAX ALL) 1000")) == b'* ESEARCH (TAG "a3")'
    assert esearch_line(s("UID SEARCH RETURN (COUNT) SUBJECT nosuch")) == \
        b'* ESEARCH (TAG "a4") UID COUNT 0'


def test_charset_after_return_and_bad_options(s):
    assert esearch_line(s("SEARCH RETURN (MAX) CHARSET UTF-8 SUBJECT m2")).endswith(b"MAX 2")
    s("SEARCH RETURN (PARTIAL 1:2) ALL", expect=b"BAD")
    s("SEARCH RETURN ALL", expect=b"BAD")
    assert b"* SEARCH 1 2 3 4 5 6\r\n" in s("SEARCH ALL")  # without RETURN: plain SEARCH


def test_modseq_is_of_min_and_max_alone_unless_all_is_asked():
    modseqs = {1: 5, 2: 9, 3: 7}
    line = esearch.response(b"t", False, [1, 2, 3], [b"MIN", b"MAX"],
                            lambda ns: max(modseqs[n] for n in ns))
    assert line == b'* ESEARCH (TAG "t") MIN 1 MAX 3 MODSEQ 7'
    line = esearch.response(b"t", False, [1, 2, 3], [b"ALL"],
                            lambda ns: max(modseqs[n] for n in ns))
    assert line.endswith(b"ALL 1:3 MODSEQ 9")


# -- SEARCHRES (RFC 5182) ------------------------------------------------------------


def test_searchres_saves_and_dollar_names_the_result(s):
    assert b" SEARCHRES" in s("CAPABILITY")
    out = s("SEARCH RETURN (SAVE) SUBJECT m2")
    assert b"ESEARCH" not in out and b"* SEARCH" not in out  # SAVE alone: no answer
    assert b"* 2 FETCH (UID 2)" in s("FETCH $ (UID)")
    s("SEARCH RETURN (SAVE) OR SUBJECT m3 SUBJECT m5")
    s("STORE 3 +FLAGS \\Deleted")
    s("EXPUNGE")  # UID 3 goes: $ is UID 5 alone, now message 4
    assert esearch_line(s("UID SEARCH RETURN (ALL) $")).endswith(b"UID ALL 5")
    assert esearch_line(s("SEARCH RETURN (ALL) UID $")).endswith(b"ALL 4")
    out = s("COPY $ INBOX")
    assert b"[COPYUID" in out and b" 5 " in out
    # With MIN and MAX alone only those are kept; with ALL every message found.
    s("SEARCH RETURN (SAVE MIN MAX) ALL")
    assert esearch_line(s("UID SEARCH RETURN (ALL) $")).endswith(b"UID ALL 1,7")
    s("SEARCH RETURN (SAVE MIN ALL) 1:2")
    assert esearch_line(s("UID SEARCH RETURN (COUNT) $")).endswith(b"COUNT 2")


def test_searchres_is_empty_after_a_failed_search_and_a_new_select(s):
    s("SEARCH RETURN (SAVE) ALL")
    s("SEARCH RETURN (SAVE) NOSUCHKEY", expect=b"BAD")
    assert esearch_line(s("SEARCH RETURN (COUNT) $")).endswith(b"COUNT 0")
    s("SEARCH RETURN (SAVE) ALL")
    s("SELECT INBOX")
    assert esearch_line(s("SEARCH RETURN (COUNT) $")).endswith(b"COUNT 0")
