"""SEARCH over the index's search fields, BODY's raw look, and sessions sharing UIDs.

access/imap/searchfields.py, bodyscan.py, search.py, mailbox.py; store/index.py
(table fieldpacks, store/fieldpack.py). The old path (a HeaderSummary per
message, every body decoded) is the oracle: the new one must give the same answers.
"""

from __future__ import annotations

import base64
import datetime
import os
import sqlite3

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.access.imap import bodyscan, message, searchfields, searchtext
from gateway.access.imap.mailbox import View
from gateway.access.imap.summary import summarize_header
from gateway.store import index as index_module
from gateway.store.index import INDEX_NAME

HEADS = [
    b"From: \"Dana Berg\" <dana.berg@example.org>\r\nTo: Alice <alice@example.test>\r\n"
    b"Subject: Budget review\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\n",
    b"From: =?UTF-8?Q?Jos=C3=A9_M=C3=BCller?= <jose@example.net>\r\n"
    b"Subject: =?ISO-8859-1?B?R3L832Vu?=\r\nDate: Tue, 2 Jan 2024 09:00:00 GMT\r\n\r\n",
    b"From: Ren\xe9 <rene@example.org>\r\nSubject: caf\xe9 cr\xe8me\r\n\r\n",  # raw Latin-1
    "From: Zoë Ünal <zoe@example.org>\r\nSubject: Grüße\r\n\r\n".encode(),  # raw UTF-8
    b"From: \"Last, First\" <lf@example.org>, other@example.net\r\n"
    b"Cc: team: a@example.org, b@example.org;\r\nSubject: Folded\r\n  subject line\r\n\r\n",
    b"From: bob@example.org (Bob Comment)\r\nTo: <@relay.example:carl@example.org>\r\n"
    b"Date: Wed 3 Jan 2024 12:00:00 +0100\r\n\r\n",
    b"FROM : spaced@example.org\r\nsubject:lower case name\r\nDATE: 4 Jan 24 1:00 EST\r\n\r\n",
    b" continued first line\r\nFrom: cont@example.org\r\n\r\n",
    b"From: bare-cr@example.org\rSubject: hidden\r\n\r\n",
    b"From: one@example.org\nTo: lf-only@example.org\nSubject: LF\n"
    b"Date: 31 Feb 2024 1:00 +0000\n\n",
    b"Subject: no from\r\nDate: Mon, 01 Jan 2024 00:00:00:00 +0000\r\n\r\n",
    b"From: Plain Words Name <pw@example.org>\r\nTo: , trailing@example.org,\r\n\r\n",
    b"\r\nFrom: not-a-header@example.org\r\n",
    b"From: a@b.example\r\nX-Long: " + b"y" * 9000 + b"\r\nSubject: past 8 KiB\r\n\r\n",
    b"From: Folded Name\n <folded@example.org>\nTo:   \n\tspaced@example.org  \n"
    b"Date: Mon, 01 Jan\n 2024 10:00:00 +0000\n\n",
    # Blanks of every kind Part strips between a name and its colon; the first field
    # of a name counts whatever its spelling.
    b"From\t: tab@example.org\nSubject  : spaced subject\nFrom: second@example.org\n"
    b"Date :  2 Jan 2024 1:00 GMT  \n\n",
    b"To\x0b: vt@example.org\nCc\x0c:ff@example.org\nCc: second@example.org\n"
    b"To: second@example.org\n\n",
    b"Subject: crlf blank\r\n\r\nFrom: body@example.org\n\nmore\n",  # CRLF end first
    b"Subject: lf blank\n\nFrom: body@example.org\r\n\r\n",  # LF end first, CRLF later
    b"Date: \t Mon, 01 Jan 2024 10:00:00 +0000 \r\nDATE: 5 Feb 2024 1:00 GMT\r\n\r\n",
    b"Date: Mon, 01 JAN 2024 10:00:00 +0000\nSubject: upper month\n\n",
]


@pytest.mark.parametrize("head", HEADS)
def test_fast_fields_agree_with_the_exact_definition(head):
    block = searchfields.header_block(head)
    exact = searchfields.of_part(message.Part(block, 0, len(block), "text/plain",
                                              message.MAX_DEPTH))
    assert searchfields.of_head(head + b"body text\r\n") == exact
    old = summarize_header(head)  # the old path's search fields
    assert exact == (old.sfrom, old.sto, old.scc, old.sbcc, old.ssubject, old.sent_day)


def test_an_address_value_is_parsed_once_and_the_memo_stays_bounded(monkeypatch):
    parsed: list[bytes] = []
    real = searchfields._parse_addresses
    monkeypatch.setattr(searchfields, "_parse_addresses", lambda v: parsed.append(v) or real(v))
    monkeypatch.setattr(searchfields, "_texts", {})
    monkeypatch.setattr(searchfields, "_TEXTS_MAX", 3)
    head = b"From: Dana <dana@example.org>\nTo: alice@example.test\n\n"
    assert searchfields.of_head(head) == searchfields.of_head(head)
    assert parsed == [b"dana <dana@example.org>", b"alice@example.test"]
    for n in range(10):
        assert searchfields.of_head(b"From: s%d@example.org\n\n" % n)[0] == b"s%d@example.org" % n
    assert len(searchfields._texts) <= 3


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    clock = MemoryReactorClock()

    def connect(**kw) -> Session:
        return Session(make_factory(store, clock, **kw))

    connect.store = store
    return connect


def deliver_all(env, messages):
    for n, data in enumerate(messages):
        env.store.deliver(BOX, data, f"{1000 + n}.U{n}.host")


def found(s: Session, key: str) -> list[int]:
    out = s("SEARCH " + key)
    first = out.split(b"\r\n")[0]
    assert first.startswith(b"* SEARCH"), out
    return [int(n) for n in first.split()[2:]]


NEEDLES = ["dana", "BERG", "josé", "müller", "rené", "zoë", "last, first", "team:",
           "carl@example.org", "bob comment", "spaced", "example", "@", "nobody"]


def test_search_by_index_columns_matches_the_old_path(env):
    deliver_all(env, [h + b"body\r\n" for h in HEADS])
    s = env()
    s.login()
    s("SELECT INBOX")
    heads = [searchfields.header_block(h) for h in HEADS]
    old = [summarize_header(h) for h in heads]
    for key, attr in (("FROM", "sfrom"), ("TO", "sto"), ("CC", "scc"), ("SUBJECT", "ssubject")):
        for needle in NEEDLES + ["grüße", "café", "folded subject", "lower case"]:
            want = [n for n, o in enumerate(old, 1)
                    if needle.casefold() in getattr(o, attr).decode()]
            assert found(s, f'CHARSET UTF-8 {key} "{needle}"') == want, (key, needle)
    day = datetime.date(2024, 1, 3).toordinal()
    want = [n for n, o in enumerate(old, 1) if 0 <= o.sent_day < day]
    assert found(s, "SENTBEFORE 3-Jan-2024") == want
    # The fields live in the index now, packed: seven rows (one pack) for them all.
    index = env.store.mailbox_path(BOX) / INDEX_NAME
    db = sqlite3.connect(index)
    assert db.execute("SELECT count(*) FROM fieldpacks").fetchone()[0] == 7
    db.close()
    # An expunged message's fields stay in its pack, and no search finds it.
    assert found(s, "FROM dana") == [1]
    s("STORE 1 +FLAGS.SILENT (\\Deleted)")
    s("EXPUNGE")
    assert found(s, "FROM dana") == []
    assert found(s, "FROM müller") == [1]


def test_stale_packs_are_dropped_once_they_hold_twice_the_folder(env, monkeypatch):
    """Expunged messages' fields are kept in their packs (remove() does not rewrite
    them) only until the packs hold more than twice the folder's messages."""
    monkeypatch.setattr(index_module, "_STALE_SLACK", 0)
    deliver_all(env, [h + b"body\r\n" for h in HEADS])
    folder = env.store.open_folders(BOX).open("INBOX")
    uids = list(folder.uids)
    searchfields.fill(folder, uids)
    assert set(folder.index.field_rows()) == set(uids)
    with folder.lock:
        folder.index.remove(uids[:len(uids) // 2])  # half gone: still kept
    assert folder.index.without_fields(uids[len(uids) // 2:], len(uids) - len(uids) // 2) == []
    assert set(folder.index.field_rows()) == set(uids)
    with folder.lock:
        folder.index.remove(uids[:-2])  # far more gone: dropped, filled again on asking
    assert folder.index.without_fields(uids[-2:], 2) == uids[-2:]
    assert folder.index.field_rows() == {}


def test_fields_are_filled_again_after_a_rebuild_and_kept_by_an_upgrade(env, tmp_path):
    deliver_all(env, [HEADS[0] + b"x\r\n", HEADS[1] + b"y\r\n"])
    s = env()
    s.login()
    s("SELECT INBOX")
    assert found(s, "FROM dana") == [1]
    s("LOGOUT", expect=None)
    # A schema 3 index (no fields) and a schema 4 one (a row per message in table
    # fields) are upgraded in place: same UIDVALIDITY, the fields packed anew.
    index = env.store.mailbox_path(BOX) / INDEX_NAME
    for schema in (3, 4):
        db = sqlite3.connect(index)
        validity = db.execute("SELECT value FROM meta WHERE key='uidvalidity'").fetchone()[0]
        db.execute("DROP TABLE fieldpacks")
        if schema == 4:
            db.execute("CREATE TABLE fields(uid INTEGER PRIMARY KEY, sfrom BLOB, sto BLOB, "
                       "scc BLOB, sbcc BLOB, ssubject BLOB, sent INTEGER)")
            db.execute("INSERT INTO fields VALUES (2, 'stale', '', '', '', '', -1)")
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (schema,))
        db.commit()
        db.close()
        fresh = fresh_store(tmp_path)  # a new process: the index is opened again
        s = Session(make_factory(fresh, MemoryReactorClock()))
        s.login()
        assert b"[UIDVALIDITY %d]" % validity in s("SELECT INBOX")
        assert found(s, "FROM müller") == [2] and found(s, "FROM stale") == []
        s("LOGOUT", expect=None)
        db = sqlite3.connect(index)
        assert db.execute("SELECT name FROM sqlite_master WHERE name='fields'").fetchall() == []
        db.close()
    # Deleted: rebuilt with a new UIDVALIDITY, the fields made again from the files.
    os.unlink(index)
    fresh = fresh_store(tmp_path)
    s = Session(make_factory(fresh, MemoryReactorClock()))
    s.login()
    assert b"[UIDVALIDITY %d]" % validity not in s("SELECT INBOX")
    assert found(s, "FROM dana") == [1] and found(s, "SUBJECT grün") == []


# -- BODY: the raw look --------------------------------------------------------------------

def _multipart(*parts: bytes) -> bytes:
    out = b"Subject: m\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
    for p in parts:
        out += b"--b1\r\n" + p + b"\r\n"
    return out + b"--b1--\r\n"


BODIES = [
    b"Subject: plain\r\n\r\nThe Quokka sleeps.\r\n",
    b"Subject: b64\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(b"a hidden quokka\r\n").replace(b"\n", b"\r\n"),
    b"Subject: qp\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"quo=\r\nkka and Gr=FC=DFe\r\n",
    b"Subject: latin\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\nGr\xfc\xdfe quokka\r\n",
    "Subject: utf8\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße QUOKKA\r\n".encode(),
    b"Subject: 2231\r\nContent-Type: text/plain; charset*=us-ascii''x\r\n\r\nquokka\r\n",
    b"Subject: utf16\r\nContent-Type: text/plain; charset=utf-16-le\r\n\r\n"
    + "quokka".encode("utf-16-le"),
    _multipart(b"Content-Type: text/plain\r\n\r\nfirst part ends",
               b"Content-Type: text/plain\r\n\r\nsecond begins"),
    _multipart(b"Content-Type: message/rfc822\r\n\r\nSubject: =?UTF-8?Q?inner_quokka?=\r\n\r\nx"),
    _multipart(b"Content-Type: image/png\r\n\r\nquokka in a picture"),
    b"Subject: kelvin\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xe2\x84\xaaelvin\r\n",
]


@pytest.mark.parametrize("needle", ["quokka", "grüße", "kelvin", "ends\nsecond", "inner quokka",
                                    "picture", "nothing here", ""])
def test_the_raw_look_never_passes_over_a_match(needle):
    needle = needle.casefold()
    for data in BODIES:
        text = searchtext.body_text(searchtext.parse(data))
        if needle in text:
            assert bodyscan.Scan(data).may_hold(needle), (needle, data)


def test_body_search_decodes_only_what_the_raw_look_cannot_rule_out(env, monkeypatch):
    plain = [b"Subject: %d\r\n\r\nnothing to see %d\r\n" % (n, n) for n in range(20)]
    deliver_all(env, BODIES + plain)
    s = env()
    s.login()
    s("SELECT INBOX")
    decoded = []
    real = searchtext.body_text
    monkeypatch.setattr(searchtext, "body_text", lambda part: decoded.append(1) or real(part))
    want = [n for n, d in enumerate(BODIES, 1)
            if "quokka" in real(searchtext.parse(d))]
    assert found(s, "BODY QUOKKA") == want
    # The 20 plain ones and the others without the word are never decoded.
    assert len(decoded) < len(BODIES)


# -- memory: one UID array for every session of a folder ------------------------------------

def test_sessions_share_the_uid_snapshot_until_their_numbering_differs(env):
    deliver_all(env, [b"Subject: %d\r\n\r\nx\r\n" % n for n in range(5)])
    folder = env.store.open_folders(BOX).open("INBOX")
    a = View(folder, "INBOX", False, lambda: None)
    b = View(folder, "INBOX", False, lambda: None)
    a.open()
    b.open()
    assert a.uids is b.uids and list(a.uids) == [1, 2, 3, 4, 5]
    folder.store([2], 1, ["\\Deleted"])
    folder.expunge(origin=a)
    a.forget([2])
    assert list(a.uids) == [1, 3, 4, 5] and list(b.uids) == [1, 2, 3, 4, 5]
    assert a.uids is folder.snapshot() and b.uids is not a.uids  # b not told yet
    b.take_updates(allow_expunge=False)
    assert list(b.uids) == [1, 2, 3, 4, 5]  # no EXPUNGE during FETCH (RFC 3501 7.4.1)
    assert b"* 2 EXPUNGE" in b.take_updates(allow_expunge=True)
    assert b.uids is a.uids
    env.store.deliver(BOX, b"Subject: new\r\n\r\nx\r\n", "2000.U9.host")
    folder.sync(force=True)
    assert b"* 5 EXISTS" in a.take_updates(True) and b"* 5 EXISTS" in b.take_updates(True)
    assert a.uids is b.uids and list(a.uids) == [1, 3, 4, 5, 6]


@pytest.mark.parametrize("ctype,passed_over", [
    (b"application/pdf", True), (b"text/plain", False), (b"application", False),
    (b"application/pdf/x", False), (None, False), (b"image/png; name=x.png", True)])
def test_an_encoded_part_is_passed_over_only_when_it_is_surely_no_text(ctype, passed_over):
    head = b"Content-Type: " + ctype + b"\r\n" if ctype else b""
    data = _multipart(b"Content-Type: text/plain\r\n\r\nvisible words",
                      head + b"Content-Transfer-Encoding: base64\r\n\r\n"
                      + base64.encodebytes(b"secret quokka"))
    assert bodyscan.Scan(data).may_hold("quokka") is not passed_over
    if not passed_over and ctype != b"application/pdf/x":
        assert "quokka" in searchtext.body_text(searchtext.parse(data))


def test_many_fields_are_written_a_batch_at_a_time_and_a_failed_write_fails(env,
                                                                            monkeypatch):
    """Past one batch, fill() writes each batch as it is parsed: every row arrives,
    and a write that fails makes the fill (the SEARCH) fail, never a silent gap."""
    monkeypatch.setattr(searchfields, "_BATCH", 4)
    deliver_all(env, [h + b"body\r\n" for h in HEADS])
    folder = env.store.open_folders(BOX).open("INBOX")
    uids = list(folder.uids)
    searchfields.fill(folder, uids)
    assert folder.without_fields(uids) == []
    want = {u: searchfields.of_head(folder.read_head(u)) for u in uids}
    index = folder.index
    assert index.field_rows() == want
    packs = -(-len(HEADS) // 4)  # 4 messages a pack, the last one smaller
    assert index.db.execute("SELECT count(*) FROM fieldpacks").fetchone()[0] == 7 * packs
    index.db.execute("DELETE FROM fieldpacks")
    calls = []

    def broken(rows):
        calls.append(len(rows))
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(folder, "put_fields", broken)
    with pytest.raises(sqlite3.OperationalError):
        searchfields.fill(folder, uids)
    assert calls[:2] == [4, 4]
