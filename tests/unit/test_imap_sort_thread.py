"""access/imap/sort.py and thread.py: SORT and THREAD (RFC 5256)."""

from __future__ import annotations

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.access.imap.sort import base_subject

MESSAGES = [  # (header lines, body): arrival order is this order
    b"From: Zed <zed@b.test>\r\nTo: amy@a.test\r\nSubject: Re: lunch\r\n"
    b"Date: Tue, 2 Jan 2024 10:00:00 +0000\r\nMessage-ID: <2@x>\r\nReferences: <1@x>\r\n",
    b"From: bob@b.test\r\nTo: zoe@a.test\r\nSubject: lunch\r\n"
    b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@x>\r\n",
    b"From: amy@b.test\r\nCc: cy@c.test\r\nSubject: [list] agenda (fwd)\r\n"
    b"Date: Mon, 1 Jan 2024 09:00:00 -0300\r\nMessage-ID: <3@x>\r\n",
    b"From: carl@b.test\r\nSubject: Fwd: Re: lunch\r\n"
    b"Date: Wed, 3 Jan 2024 10:00:00 +0000\r\nMessage-ID: <4@x>\r\nIn-Reply-To: <2@x>\r\n",
]


@pytest.fixture
def s(tmp_path):
    store = fresh_store(tmp_path)
    for i, head in enumerate(MESSAGES, 1):
        store.deliver(BOX, head + b"\r\n" + b"x" * (100 * (5 - i)) + b"\r\n",
                      f"100{i}.U{i}.host")
    session = Session(make_factory(store, MemoryReactorClock()))
    session.login()
    session("SELECT INBOX")
    return session


def untagged(out: bytes, verb: bytes) -> bytes:
    return next(line for line in out.split(b"\r\n") if line.startswith(b"* " + verb))


@pytest.mark.parametrize(("subject", "base", "reply"), [
    ("Re: lunch", "lunch", True),
    ("RE: [list] Re: lunch (fwd)", "lunch", True),
    ("[fwd: Re: hello]", "hello", True),
    ("[list]   plain \t text ", "plain text", False),
    ("[a] Re: [b]", "[b]", True),  # a blob is kept when nothing would be left
    ("Re[2]: x", "x", True),
])
def test_base_subject(subject, base, reply):
    assert base_subject(subject) == (base, reply)


def test_capabilities(s):
    caps = s("CAPABILITY")
    assert b" SORT" in caps and b"THREAD=REFERENCES" in caps and b"THREAD=ORDEREDSUBJECT" in caps


def test_sort_keys(s):
    assert untagged(s("SORT (SUBJECT) UTF-8 ALL"), b"SORT") == b"* SORT 3 1 2 4"
    assert untagged(s("SORT (DATE) UTF-8 ALL"), b"SORT") == b"* SORT 2 3 1 4"
    assert untagged(s("SORT (REVERSE DATE) US-ASCII ALL"), b"SORT") == b"* SORT 4 1 3 2"
    assert untagged(s("SORT (FROM) UTF-8 ALL"), b"SORT") == b"* SORT 3 2 4 1"
    assert untagged(s("SORT (TO ARRIVAL) UTF-8 ALL"), b"SORT") == b"* SORT 3 4 1 2"
    assert untagged(s("SORT (SIZE) UTF-8 ALL"), b"SORT") == b"* SORT 4 3 2 1"
    # Equal subjects keep mailbox order, REVERSE or not; the second key decides first.
    assert untagged(s("SORT (SUBJECT REVERSE SIZE) UTF-8 ALL"), b"SORT") == b"* SORT 3 1 2 4"
    assert untagged(s("SORT (REVERSE SUBJECT) UTF-8 ALL"), b"SORT") == b"* SORT 1 2 4 3"
    assert untagged(s("UID SORT (SUBJECT) UTF-8 NOT 1"), b"SORT") == b"* SORT 3 2 4"
    assert untagged(s("SORT (CC) UTF-8 SUBJECT nosuch"), b"SORT") == b"* SORT"


def test_sort_errors(s):
    s("SORT (SUBJECT) UTF-8", expect=b"BAD")
    s("SORT (REVERSE) UTF-8 ALL", expect=b"BAD")
    s("SORT (COLOUR) UTF-8 ALL", expect=b"BAD")
    s("SORT SUBJECT UTF-8 ALL", expect=b"BAD")
    assert b"BADCHARSET" in s("SORT (SUBJECT) X-NOSUCH ALL", expect=b"NO")


def test_thread_references(s):
    # 2 <- 1 <- 4 by References and In-Reply-To; 3 alone, sent at 12:00 UTC: later than 2
    out = untagged(s("THREAD REFERENCES UTF-8 ALL"), b"THREAD")
    assert out == b"* THREAD (2 1 4)(3)"
    assert untagged(s("UID THREAD REFERENCES UTF-8 NOT 1"), b"THREAD") == b"* THREAD (2 4)(3)"


def test_thread_orderedsubject(s):
    out = untagged(s("THREAD ORDEREDSUBJECT UTF-8 ALL"), b"THREAD")
    assert out == b"* THREAD (2 (1)(4))(3)"
    s("THREAD NOSUCH UTF-8 ALL", expect=b"BAD")


def test_a_long_reply_chain_does_not_recurse(tmp_path):
    from gateway.access.imap import sort, thread
    items = [sort.Facts(n, n, n, 1, n, "Re: x", {}, f"{n}@x", [f"{n - 1}@x"] if n > 1 else [],
                        True) for n in range(1, 5001)]
    data = thread.render(thread.references(items), False)
    assert data.startswith(b"(1 2 3 ") and data.endswith(b" 5000)")


def test_deeply_nested_branches_render_without_recursion():
    """Each message answered twice, the second answer answered again, 5,000 deep: the
    THREAD reply nests 5,000 groups (a hostile sender can deliver such a mailbox)."""
    from gateway.access.imap import sort, thread

    def facts(n: int, parent: int | None) -> sort.Facts:
        refs = [f"{parent}@x"] if parent else []
        return sort.Facts(n, n, n, 1, n, "x", {}, f"{n}@x", refs, True)

    depth = 5000
    items = [facts(1, None)]
    for level in range(depth):
        leaf, spine = 2 + 2 * level, 3 + 2 * level
        parent = 1 if level == 0 else 1 + 2 * level
        items += [facts(leaf, parent), facts(spine, parent)]
    data = thread.render(thread.references(items), False)
    assert data.startswith(b"(1 (2)(3 (4)(5 (6)(7 ")
    assert data.count(b"(") == data.count(b")") == 1 + 2 * depth
    small = thread.render(thread.references(items[:5]), False)
    assert small == b"(1 (2)(3 (4)(5)))"
