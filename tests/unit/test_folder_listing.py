"""store/listing.py: a folder's messages as columns, the packed copy the index keeps
(a reopen of an unchanged folder reads no rows), and a big first listing that
learns sizes and dates when asked instead of a stat per file."""

from __future__ import annotations

import os
import sqlite3

import pytest

from gateway.store import folder as folder_module
from gateway.store.folder import Folder, Message
from gateway.store.index import Index
from gateway.store.listing import UNKNOWN, Listing


def maildir(tmp_path):
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    return tmp_path


def put(box, name, body=b"Subject: x\r\n\r\nbody\r\n", mtime=None):
    path = box / "cur" / name
    path.write_bytes(body)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def filled():
    lst = Listing(Message, "/nonexistent")
    lst.extend([1, 2, 3], [("a", "cur", ":2,S", "", 10, 100),
                           ("b", "cur", ":2,", "Work", 20, 200),
                           ("c", "new", "", "", 30, 300)], 7)
    return lst


def test_columns_answer_as_the_message_objects_did():
    lst = filled()
    assert len(lst) == 3 and 2 in lst and 4 not in lst and lst.get(4) is None
    m = lst[2]
    assert (m.uid, m.base, m.sub, m.suffix, m.kw, m.size, m.idate, m.modseq) == \
        (2, "b", "cur", ":2,", "Work", 20, 200, 7)
    assert m.flags() == ["Work"]
    assert len(lst.states) == 3
    assert lst.count("S", present=False) == 2 and lst.count("T") == 0
    assert lst.first_without("S", [1, 2, 3]) == 2
    assert lst.first_without("S", [1, 3]) == 2  # numbered as the session does
    assert lst.first_without("S", [1]) == 0
    assert lst.where_sub("new") == [3] and lst.total_size() == 60
    with pytest.raises(AssertionError):
        lst.extend([2], [("d", "cur", "", "", 1, 1)], 8)  # UIDs must grow


def test_a_copy_changes_nothing_until_put_back():
    lst = filled()
    m = lst[1]
    m.suffix, m.kw, m.modseq = ":2,FS", "Later", 9
    assert lst[1].suffix == ":2,S"
    lst.put(m)
    again = lst[1]
    assert (again.suffix, again.kw, again.modseq) == (":2,FS", "Later", 9)
    assert lst[2].kw == "Work"  # the others keep theirs
    lst.set_modseq([2, 3], 11)
    assert [lst[u].modseq for u in (1, 2, 3)] == [9, 11, 11]


def test_remove_keeps_the_columns_in_step():
    lst = filled()
    lst.remove([2])
    assert lst.uids == [1, 3]
    assert [(m.base, m.size, m.idate) for m in lst.values()] == [("a", 10, 100), ("c", 30, 300)]


def test_pack_and_unpack_give_the_same_columns_and_refuse_anything_else():
    lst = filled()
    lst.extend([9], [("d\udcff", "cur", ":2,T", "", 5, 6)], 8)  # an undecodable name
    data = lst.pack()
    back = Listing(Message, "/nonexistent")
    assert back.unpack(data)
    assert [vars_of(m) for m in back.values()] == [vars_of(m) for m in lst.values()]
    for bad in (b"", b"junk" * 10, data[:-1], data + b"x", data.replace(b"MGL1", b"MGL2")):
        other = Listing(Message, "/nonexistent")
        assert not other.unpack(bad) and other.uids == []


def vars_of(m):
    return (m.uid, m.base, m.sub, m.suffix, m.kw, m.size, m.idate, m.modseq)


def test_reopening_an_unchanged_folder_reads_no_rows(tmp_path, monkeypatch):
    box = maildir(tmp_path)
    for n in range(3):
        put(box, f"{n}.M1P1.host:2,S", mtime=1_700_000_000 + n)
    first = Folder(box, lambda call: call())
    first.store([2], 1, ["\\Flagged", "Work"])
    want = [vars_of(m) for m in first.by_uid.values()]
    first.close()

    def no_rows(self):
        raise AssertionError("read the rows")

    monkeypatch.setattr(Index, "rows", no_rows)
    again = Folder(box, lambda call: call())
    assert [vars_of(m) for m in again.by_uid.values()] == want
    assert "Work" in again.keyword_names
    again.close()


def test_a_change_after_the_listing_was_saved_makes_it_stale(tmp_path):
    box = maildir(tmp_path)
    for n in range(3):
        put(box, f"{n}.M1P1.host:2,", mtime=1_700_000_000 + n)
    Folder(box, lambda call: call())  # saved its listing, never closed
    index = Index(box)
    # Another writer renames without a flag change: no new modseq, same row count.
    index.update([(1, "new", ":2,", "")])
    index.close()
    again = Folder(box, lambda call: call())
    assert again.by_uid[1].sub == "new" or 1 in again.recent


def test_a_writer_that_does_not_count_changes_is_caught_too(tmp_path):
    """An older gateway does not count its changes (meta rowsgen): the row count,
    largest UID and HIGHESTMODSEQ saved with the listing still tell."""
    box = maildir(tmp_path)
    put(box, "1.M1P1.host:2,", mtime=1_700_000_000)
    Folder(box, lambda call: call())
    db = sqlite3.connect(box / "mailgateway.index", isolation_level=None)
    db.execute("DELETE FROM msg WHERE uid=1")
    db.close()
    assert Index(box).load_listing() is None


def test_a_big_first_listing_stats_nothing_and_learns_sizes_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "LAZY_STAT", 3)
    box = maildir(tmp_path)
    # Name times in one order, mtimes in the other: UIDs follow the names (Dovecot's rule).
    put(box, "1700000002.M5P1.host:2,S", b"x" * 30, mtime=1_600_000_001)
    put(box, "1700000001.M900P1.host:2,", b"x" * 20, mtime=1_600_000_002)
    put(box, "1700000001.M10P1.host:2,", b"x" * 10, mtime=1_600_000_003)
    stats = []
    real = os.stat
    monkeypatch.setattr(folder_module.os, "stat",
                        lambda p, *a, **k: stats.append(str(p)) or real(p, *a, **k))
    f = Folder(box, lambda call: call())
    assert not [p for p in stats if "/cur/" in p]  # no stat per file
    assert [f.by_uid[u].base.split(".")[1] for u in f.uids] == ["M10P1", "M900P1", "M5P1"]
    assert list(f.index.rows()) == [] and f.index.unwritten == 1  # rows after the answer
    f.write_rows()
    rows = {uid: (size, idate) for uid, _, _, _, _, size, idate, _ in f.index.rows()}
    assert set(rows.values()) == {(UNKNOWN, UNKNOWN)} and f.index.unwritten is None
    m = f.by_uid[f.uids[1]]
    assert (m.size, m.idate) == (20, 1_600_000_002)
    assert f.by_uid.total_size() == 60
    f.keep_listing()  # what was learned goes to the rows too
    assert {(s, d) for _, _, _, _, _, s, d, _ in f.index.rows()} == \
        {(10, 1_600_000_003), (20, 1_600_000_002), (30, 1_600_000_001)}
    f.close()
    again = Folder(box, lambda call: call())
    assert [again.by_uid[u].size for u in again.uids] == [10, 20, 30]


def test_expunge_of_an_unstated_message_counts_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(folder_module, "LAZY_STAT", 1)
    box = maildir(tmp_path)
    put(box, "1700000001.M1P1.host:2,T", b"x" * 40)
    f = Folder(box, lambda call: call())
    noted = []
    monkeypatch.setattr(folder_module.quota, "note",
                        lambda path, size, count: noted.append((size, count)))
    assert f.expunge() == [1]
    assert noted == [(-40, -1)]


def test_flags_are_worked_out_once_per_state_and_handed_out_as_copies(tmp_path):
    box = maildir(tmp_path)
    put(box, "1.M1P1.host:2,FS", mtime=1_700_000_000)
    put(box, "2.M1P1.host:2,FS", mtime=1_700_000_001)
    f = Folder(box, lambda call: call())
    f.store([2], 1, ["Work"])
    assert f.flags(1) == ["\\Flagged", "\\Seen"] == f.by_uid[1].flags()
    assert f.flags(2) == ["\\Flagged", "\\Seen", "Work"]
    f.flags(1).append("\\Recent")  # a session adds its own (View.flags)
    assert f.flags(1) == ["\\Flagged", "\\Seen"] and f.flags(3) is None


def test_a_reader_keeps_one_consistent_set_of_columns_across_a_remove():
    """FETCH reads without the folder's lock: an expunge meanwhile must never pair
    one message's UID with another's file name."""
    lst = filled()
    it = lst.values()
    assert next(it).uid == 1
    lst.remove([1])
    assert [(m.uid, m.base, m.size) for m in it] == [(2, "b", 20), (3, "c", 30)]
    assert lst.uids == [2, 3] and lst.get(1) is None and lst[3].base == "c"


def test_shutdown_saves_the_listing_of_a_folder_whose_rows_changed(tmp_path):
    from gateway.service import StoreService
    from gateway.store.maildir import MaildirStore

    store = MaildirStore(tmp_path)
    folder = store.open_folder("alice@example.test")
    box = folder.path
    assert Index(box).load_listing() is not None  # saved at open
    source = tmp_path / "upload"
    source.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    folder.add_file(source, ["\\Seen"], None)  # a change: the saved record is stale
    assert Index(box).load_listing() is None
    service = StoreService(store)
    service.startService()
    service.stopService()
    assert Index(box).load_listing() is not None


def test_letter_questions_scan_only_the_states_added_since_and_stay_right(monkeypatch):
    lst = filled()
    assert lst.count("S") == 1 and lst.count("S", present=False) == 2
    # Each flag change makes a new (sub, suffix, kw); the answers follow them.
    m = lst[2]
    m.suffix = ":2,ST"
    lst.put(m)
    assert lst.count("S") == 2 and lst.with_letter("T") == [2]
    scanned = []
    real = __import__("gateway.store.listing", fromlist=["letters_of"]).letters_of

    def counting(suffix):
        scanned.append(suffix)
        return real(suffix)

    monkeypatch.setattr("gateway.store.listing.letters_of", counting)
    before = lst.state_ids_where("S", True)
    for _ in range(50):  # a SELECT or STATUS each: nothing new to look at
        assert lst.count("S") == 2 and lst.first_without("S", lst.uids) == 3
    assert scanned == [":2,ST"]  # once, for the first "without S" question
    m = lst[3]
    m.suffix = ":2,S"
    lst.put(m)
    assert lst.count("S") == 3 and lst.first_without("S", lst.uids) == 0
    assert scanned == [":2,ST", ":2,S", ":2,S"]  # only the new state, once per question
    assert 0 in before and len(before) == 2  # an answer handed out is never changed
