"""A big first listing (a migrated mailbox): names ordered in bulk, the answer before
the index has a row per message, the rows written after (store/folder.py
_index_listed, Index.add_unwritten, Folder.write_rows), and UIDs and flags that
survive a crash at any of those points."""

from __future__ import annotations

import os
import random
import sqlite3

import pytest

from gateway.store import folder as folder_module
from gateway.store.folder import Folder
from gateway.store.index import Index
from gateway.store.nameorder import bases, by_time, infos, time_key


def maildir(tmp_path):
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    return tmp_path


def put(box, name, sub="cur", body=b"Subject: x\r\n\r\nbody\r\n"):
    (box / sub / name).write_bytes(body)


def rows(box):
    """The index's rows as another process reads them (a restart after a crash)."""
    db = sqlite3.connect(box / "mailgateway.index")
    try:
        return {base: (uid, sub, suffix) for uid, base, sub, suffix in db.execute(
            "SELECT uid, base, sub, suffix FROM msg")}
    finally:
        db.close()


def uids_by_base(folder):
    return {m.base: m.uid for m in folder.by_uid.values()}


@pytest.fixture
def big(tmp_path, monkeypatch):
    """A Maildir of 7 messages, a "big" first listing (LAZY_STAT 5), 2 rows a chunk."""
    monkeypatch.setattr(folder_module, "LAZY_STAT", 5)
    monkeypatch.setattr(folder_module, "ROWS_CHUNK", 2)
    monkeypatch.setattr(folder_module, "ROWS_PAUSE", 0)
    box = maildir(tmp_path)
    for n in range(6):
        put(box, f"17000000{n:02d}.M{n}P1.host:2,{'S' if n % 2 else ''}")
    put(box, "1700000099.M1P1.host", sub="new")
    return box


def test_by_time_orders_as_the_numeric_key_does():
    names = ["1700000001.M900P1.h:2,S", "1700000001.M10P1.h:2,", "1700000000.M5P1.h",
             "1700000001.M10P0.h", "1700000002.P1Q1.h"]
    assert by_time(names) == sorted(names, key=time_key)
    assert by_time(names)[:3] == ["1700000000.M5P1.h", "1700000001.M10P0.h",
                                  "1700000001.M10P1.h:2,"]
    odd = names + ["999999999.M1P1.h", "junk", ".hidden"]  # not 10 digits: all numeric
    assert by_time(odd) == sorted(odd, key=time_key)
    assert by_time(odd)[:3] == [".hidden", "junk", "999999999.M1P1.h"]
    rng = random.Random(7)
    many = [f"17000000{rng.randrange(30):02d}.M{rng.randrange(10 ** 6)}P1Q{i}.h"
            for i in range(2000)]
    assert by_time(many) == sorted(many, key=time_key)
    assert by_time([]) == []


def test_infos_and_bases_split_names_in_bulk():
    names = ["a:2,S", "b", "c:2,"]
    assert infos(names) == [":2,S", "", ":2,"]
    assert bases(names) == "a\0b\0c"


def test_a_big_first_listing_answers_before_the_rows_and_writes_them_after(big):
    calls = []
    f = Folder(big, lambda call: call(), background=calls.append)
    assert len(f.uids) == 7 and f.uids == list(range(1, 8))
    # UIDs in name-time order, the one in new/ last (its time is the latest), \Recent.
    assert f.by_uid[7].base == "1700000099.M1P1.host" and f.by_uid[7].sub == "new"
    assert f.recent == {7} and f.in_new == {7}
    assert f.flags(2) == ["\\Seen"] and f.flags(1) == []
    assert rows(big) == {} and f.index.unwritten == 1  # the answer did not wait for them
    assert calls == [f.write_rows]  # left for the background hook
    assert f.pending()  # the registry keeps it meanwhile (no second Folder writes them)
    chunks = []
    real = f.index.write_unwritten
    f.index.write_unwritten = lambda limit: chunks.append(limit) or real(limit)
    f.write_rows()
    assert chunks == [2, 2, 2, 2]  # a transaction (and a hold of the lock) per chunk
    assert rows(big) == {m.base: (m.uid, m.sub, m.suffix) for m in f.by_uid.values()}
    assert f.index.unwritten is None and not f.pending()
    f.close()


def test_the_uids_survive_a_crash_before_the_rows_are_written(big):
    f = Folder(big, lambda call: call())
    want = uids_by_base(f)
    uidvalidity = f.uidvalidity
    # kill -9: the Folder is never closed, no row was written.
    again = Folder(big, lambda call: call())
    assert uids_by_base(again) == want and again.uidvalidity == uidvalidity
    assert again.index.unwritten == 1 and again.uidnext == 8
    again.write_rows()
    assert {b: u for b, (u, _, _) in rows(big).items()} == want


def test_a_change_writes_the_unwritten_rows_first_and_survives_a_crash(big):
    f = Folder(big, lambda call: call())
    want = uids_by_base(f)
    f.store([3], 1, ["\\Flagged"])  # a message whose row is not written yet
    assert f.index.unwritten is None
    assert rows(big)[f.by_uid[3].base] == (3, "cur", ":2,F")
    # kill -9 now: the rows are the record.
    again = Folder(big, lambda call: call())
    assert uids_by_base(again) == want and again.flags(3) == ["\\Flagged"]


def test_a_delivery_while_rows_are_unwritten_comes_after_them(big):
    f = Folder(big, lambda call: call())
    put(big, "tmp-one", sub="tmp")
    f.arrived(big / "tmp" / "tmp-one", "1800000000.M1P2.host")
    f.index_arrived()
    f.publish_arrived()
    assert f.uids[-1] == 8 and f.index.unwritten is None
    assert {u for u, _, _ in rows(big).values()} == set(range(1, 9))


def test_an_index_opened_alone_writes_the_rows_from_the_saved_listing(big):
    f = Folder(big, lambda call: call())
    want = {m.base: (m.uid, m.sub, m.suffix) for m in f.by_uid.values()}
    alone = Index(big)  # another tool, no columns of its own
    assert alone.unwritten == 1
    alone.update([(1, "cur", ":2,T", "")])
    alone.close()
    want[f.by_uid[1].base] = (1, "cur", ":2,T")
    assert rows(big) == want


def test_an_unusable_listing_with_rows_unwritten_rebuilds_the_index(big):
    f = Folder(big, lambda call: call())
    uidvalidity = f.uidvalidity
    db = sqlite3.connect(big / "mailgateway.index", isolation_level=None)
    db.execute("UPDATE listing SET data=x'00'")
    db.close()
    again = Folder(big, lambda call: call())
    # The UIDs clients saw are unknown: a new UIDVALIDITY tells them (RFC 3501 2.3.1.1).
    assert again.uidvalidity != uidvalidity and len(again.uids) == 7
    assert (big / "mailgateway.index.broken").exists()


def test_the_first_listing_keeps_a_copy_in_both_directories_once(big):
    put(big, "1700000003.M3P1.host", sub="new")  # a crash mid-rename: cur/ wins
    put(big, ".hidden")
    f = Folder(big, lambda call: call())
    assert len(f.uids) == 7
    assert [m.sub for m in f.by_uid.values() if m.base == "1700000003.M3P1.host"] == ["cur"]
    assert not any(m.base.startswith(".") for m in f.by_uid.values())


def test_a_small_first_listing_still_writes_its_rows_at_once(tmp_path):
    box = maildir(tmp_path)
    put(box, "1700000000.M1P1.host:2,S")
    f = Folder(box, lambda call: call())
    assert f.index.unwritten is None and len(rows(box)) == 1
    assert os.path.exists(box / "mailgateway.index")


def test_closing_writes_the_rows_left_so_a_restart_has_none_to_write(big):
    f = Folder(big, lambda call: call())
    assert f.index.unwritten == 1
    f.close()  # also what StoreService does at shutdown (keep_listing_if_stale)
    assert len(rows(big)) == 7
    calls = []
    again = Folder(big, lambda call: call(), background=calls.append)
    assert again.index.unwritten is None and calls == [] and len(again.uids) == 7
