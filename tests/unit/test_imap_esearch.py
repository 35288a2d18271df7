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
