"""SEARCH's header fields packed (store/fieldpack.py), and what a search no longer makes.

store/fieldpack.py, store/index.py (table fieldpacks), store/listing.py
(relpaths), access/imap/search.py (no store Message per message searched),
access/imap/summary.py (FETCH ENVELOPE's summaries fill the packs) (issue 12).
"""

from __future__ import annotations

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from test_imap_search_index import HEADS, deliver_all, found
from twisted.internet.testing import MemoryReactorClock

from gateway.access.imap import search, searchfields
from gateway.access.imap.mailbox import View
from gateway.access.imap.summary import HeaderSummary, summaries
from gateway.store import fieldpack
from gateway.store.listing import Listing

ROWS = [(3, b"dana <dana@example.org>", b"alice@example.test", b"", b"", b"budget", 738886),
        (5, b"bob@example.org", b"", b"carl@example.org", b"", b"re: budget", -1),
        (9, b"zed@example.net", b"alice@example.test", b"", b"", b"", 5)]


@pytest.fixture
def env(tmp_path):
    """A store, and sessions on it (deliver_all's env)."""
    store = fresh_store(tmp_path)

    def connect() -> Session:
        return Session(make_factory(store, MemoryReactorClock()))

    connect.store = store  # type: ignore[attr-defined]
    return connect


def test_a_pack_holds_its_rows():
    pack = fieldpack.of_rows(ROWS)
    assert fieldpack.count(pack) == 3
    assert list(fieldpack.rows(pack)) == ROWS
    assert fieldpack.count(fieldpack.of_rows([])) == 0


@pytest.mark.parametrize(("column", "needle", "uids"), [
    (1, b"dana", [3]), (1, b"example", [3, 5, 9]), (1, b"org", [3, 5]), (2, b"alice", [3, 9]),
    (3, b"carl", [5]), (5, b"budget", [3, 5]), (5, b"", [3, 5, 9]), (4, b"x", []),
    (1, b"org>", [3]), (1, b"zed@example.net", [9])])
def test_find_gives_the_uids_whose_value_holds_the_needle(column, needle, uids):
    pack = fieldpack.of_rows(ROWS)
    assert list(fieldpack.find(fieldpack.numbers(pack[0], "I"), pack[column], needle)) == uids


def test_a_match_never_spans_two_values_nor_a_nul_inside_one():
    rows = [(1, b"ab", b"", b"", b"", b"", -1), (2, b"cd\0ef", b"", b"", b"", b"", -1),
            (3, b"gh", b"", b"", b"", b"", -1)]
    pack = fieldpack.of_rows(rows)
    assert fieldpack.count(pack) == 3
    uids = fieldpack.numbers(pack[0], "I")
    assert list(fieldpack.find(uids, pack[1], b"bc")) == []  # "ab" then "cd"
    assert list(fieldpack.find(uids, pack[1], b"b\0c")) == []
    assert list(fieldpack.find(uids, pack[1], b"de")) == []  # the NUL is U+FFFD now
    assert list(fieldpack.find(uids, pack[1], b"ef")) == [2]
    assert list(fieldpack.find(uids, pack[1], b"gh")) == [3]


def test_every_value_of_a_big_pack_can_match_once():
    rows = [(u, b"a%da" % u, b"", b"", b"", b"", -1) for u in range(1, 5001)]
    pack = fieldpack.of_rows(rows)
    uids = fieldpack.numbers(pack[0], "I")
    assert list(fieldpack.find(uids, pack[1], b"a")) == list(range(1, 5001))
    assert list(fieldpack.find(uids, pack[1], b"7a")) == [u for u in range(1, 5001)
                                                          if str(u).endswith("7")]


def test_a_pack_whose_columns_disagree_is_broken():
    uids, f, t, c, b, s, sent = fieldpack.of_rows(ROWS)
    assert fieldpack.count((uids, f + b"\0x", t, c, b, s, sent)) is None
    assert fieldpack.count((uids[:-4], f, t, c, b, s, sent)) is None
    assert fieldpack.count((uids, f, t, c, b, s, sent[:-1])) is None
    assert fieldpack.count((b"", b"x", b"", b"", b"", b"", b"")) is None


def test_relpaths_are_the_file_names_and_empty_for_a_uid_not_here(env):
    deliver_all(env, [h + b"body\r\n" for h in HEADS[:3]])
    folder = env.store.open_folders(BOX).open("INBOX")
    uids = list(folder.uids)
    assert folder.file_names([*uids, uids[-1] + 7]) == [
        *(folder.file_name(u) for u in uids), ""]
    assert folder.file_names(uids[::-1]) == [folder.file_name(u) for u in uids[::-1]]


def test_a_header_search_makes_no_store_message_per_message(env, monkeypatch):
    """A SEARCH FROM looks at UIDs only: the store's Message of each message searched
    was made for nothing (a quarter of a cached search of 100,000)."""
    deliver_all(env, [h + b"body\r\n" for h in HEADS])
    s = env()
    s.login()
    s("SELECT INBOX")
    assert found(s, "FROM dana") == [1]
    made = []
    real = Listing._at
    monkeypatch.setattr(Listing, "_at", lambda self, c, i: made.append(i) or real(self, c, i))
    assert found(s, "FROM dana") == [1]
    assert made == []
    assert found(s, "FROM dana SEEN") == []  # flags still come from the store's Message
    assert made


def test_one_header_key_alone_is_answered_without_a_message_each(env, monkeypatch):
    """SEARCH FROM x (alone, or alone in parentheses) is the UIDs the packs give: no
    search.Message per message searched; with another key, each message is tested."""
    deliver_all(env, [h + b"body\r\n" for h in HEADS])
    s = env()
    s.login()
    s("SELECT INBOX")
    made = []
    real = search.Message
    monkeypatch.setattr(search, "Message", lambda *a: made.append(a) or real(*a))
    assert found(s, "FROM dana") == [1] and found(s, "(SUBJECT budget)") == [1]
    assert found(s, "UID 2:* FROM müller") == [2]
    assert b"* SEARCH 1\r\n" in s("UID SEARCH FROM dana")
    assert len(made) == len(HEADS)  # the UID 2:* search alone


def test_a_message_expunged_while_a_search_runs_matches_nothing(env):
    """The view still lists it; its store Message is looked up only when a key asks
    (here: a flag), and then it is Gone: no match, no error."""
    deliver_all(env, [h + b"body\r\n" for h in HEADS[:3]])
    folder = env.store.open_folders(BOX).open("INBOX")
    view = View(folder, "INBOX", False, lambda: None)
    view.open()
    uids = list(view.uids)
    asked = []

    def unseen(msg: search.Message) -> bool:
        if msg.uid == uids[1]:
            with folder.lock:  # another session's EXPUNGE, in the middle of the search
                folder.by_uid.remove([uids[1]])
        asked.append(msg.uid)
        return "S" not in msg.m.letters

    assert search.run(view, unseen, True) == [uids[0], uids[2]]
    assert asked == uids


def test_fetch_envelope_puts_the_search_fields_it_made_in_the_packs(env):
    deliver_all(env, [h + b"body\r\n" for h in HEADS])
    folder = env.store.open_folders(BOX).open("INBOX")
    uids = list(folder.uids)
    summaries(folder, uids[:5], HeaderSummary)
    assert folder.without_fields(uids) == uids[5:]
    want = {u: searchfields.of_head(folder.read_head(u)) for u in uids}
    assert folder.index.field_rows() == {u: want[u] for u in uids[:5]}
    summaries(folder, uids[:5], HeaderSummary)  # cached now: nothing made, nothing added
    searchfields.fill(folder, uids)
    assert folder.index.field_rows() == want
    rows = folder.index.db.execute("SELECT data FROM fieldpacks WHERE col='uids'").fetchall()
    assert sum(len(d) for (d,) in rows) == 4 * len(uids)  # each message once


def test_envelope_is_written_as_the_nested_lists_encode():
    """message.envelope writes ENVELOPE itself: the same bytes as wire.encode of the
    nested lists (groups, routes, missing fields, Sender and Reply-To from From)."""
    from gateway.access.imap import message
    from gateway.access.imap.wire import encode

    heads = [*HEADS, b"From: a@b.example\r\nSender: s@b.example\r\nReply-To: \r\n"
             b"To: undisclosed:;\r\nCc: team: x@y.example, \"Q \\\" N\" <z@y.example>;\r\n"
             b"Bcc: <@route.example:r@y.example>\r\nIn-Reply-To: <i@d>\r\n"
             b"Message-ID: <m@d>\r\n\r\n"]
    for head in heads:
        root = message.Head(head)
        lists = message.address_lists(root)
        got = {name: [list(a) for a in lists[name]] or None for name in lists}
        f = root.field
        want = encode([f(b"date"), f(b"subject"), got[b"from"], got[b"sender"] or got[b"from"],
                       got[b"reply-to"] or got[b"from"], got[b"to"], got[b"cc"], got[b"bcc"],
                       f(b"in-reply-to"), f(b"message-id")])
        assert message.envelope(root, lists) == want, head
