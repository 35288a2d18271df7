"""access/imap/listext.py: LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819)."""

from __future__ import annotations

import re

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock


@pytest.fixture
def s(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, b"Subject: one\r\n\r\nfirst\r\n", "1000.U1.host")
    session = Session(make_factory(store, MemoryReactorClock()))
    session.login()
    for name in ("a", "a.b", "c.d", "e", "gone"):
        session(f"CREATE {name}")
    for name in ("a.b", "c.d", "e", "gone"):
        session(f"SUBSCRIBE {name}")
    session("DELETE gone")
    return session


def lists(out: bytes) -> dict[str, bytes]:
    """name -> the LIST line's attributes and any extended data."""
    return {m.group(2).decode(): m.group(1) + m.group(3)
            for m in re.finditer(rb'^\* LIST \(([^)]*)\) "\." "?([^"\r\n ]+)"?(.*)\r$', out, re.M)}


def test_capabilities(s):
    caps = s("CAPABILITY")
    assert b" LIST-EXTENDED" in caps and b" LIST-STATUS" in caps


def test_multiple_patterns_and_return_subscribed(s):
    found = lists(s('LIST "" (a e) RETURN (SUBSCRIBED CHILDREN)'))
    assert set(found) == {"a", "e"}
    assert b"\\HasChildren" in found["a"] and b"\\Subscribed" not in found["a"]
    assert b"\\Subscribed" in found["e"]


def test_selection_subscribed_keeps_a_deleted_folder_as_nonexistent(s):
    found = lists(s('LIST (SUBSCRIBED) "" *'))
    assert {"a.b", "c.d", "e", "gone"} <= set(found) and "a" not in found
    assert b"\\NonExistent" in found["gone"] and b"\\Subscribed" in found["gone"]
    assert b"\\Subscribed" in found["e"]


def test_recursivematch_gives_childinfo(s):
    found = lists(s('LIST (SUBSCRIBED RECURSIVEMATCH) "" %'))
    assert b"CHILDINFO" in found["a"] and b"\\Subscribed" not in found["a"]
    assert b"CHILDINFO" in found["c"]  # no folder c, a subscribed c.d under it
    assert b"CHILDINFO" not in found["e"] and b"\\Subscribed" in found["e"]
    assert "a.b" not in found


def test_bad_options(s):
    s('LIST (NOSUCH) "" *', expect=b"BAD")
    s('LIST (RECURSIVEMATCH) "" *', expect=b"BAD")
    s('LIST (RECURSIVEMATCH REMOTE) "" *', expect=b"BAD")
    s('LIST "" * RETURN (NOSUCH)', expect=b"BAD")
    s('LIST "" * RETURN (STATUS (NOSUCH))', expect=b"BAD")
    s('LIST (REMOTE) "" %')


def test_list_status(s):
    out = s('LIST "" % RETURN (STATUS (MESSAGES UIDNEXT))')
    assert b'* LIST (\\HasNoChildren) "." "INBOX"\r\n* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2)' \
        in out
    assert b'STATUS "e" (MESSAGES 0 UIDNEXT 1)' in out
    assert b'STATUS "c"' not in out  # \Noselect: no STATUS
    assert b"* LIST" in out and b"LIST completed" in out


def test_plain_list_is_unchanged(s):
    found = lists(s('LIST "" %'))
    assert {"INBOX", "a", "c", "e"} <= set(found) and "a.b" not in found
    assert b"\\Noselect" in found["c"]
