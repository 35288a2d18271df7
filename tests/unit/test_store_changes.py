"""store/folder.py + store/maildir.py: how an open folder learns of changes.

A delivery is learned from the name it wrote, so its cost does not grow with
the folder (no listing); changes by other programs are still found through
directory mtimes. Counting listings, not timing, keeps these tests exact.
"""

from __future__ import annotations

import os

import pytest

import gateway.durable as durable
import gateway.store.folder as folder_mod
from gateway.store.folders import FolderRegistry, FolderSet
from gateway.store.index import Index
from gateway.store.maildir import MaildirStore

BOX = "alice@example.test"


class Listener:
    def __init__(self, events=None):
        self.added: list[int] = []
        self.events = events if events is not None else []

    def folder_changed(self, expunged, flagged, added):
        self.added += added
        self.events.append(("changed", tuple(added)))

    def wake(self):
        pass


@pytest.fixture
def store(tmp_path):
    return MaildirStore(tmp_path / "mail")


@pytest.fixture
def listings(monkeypatch):
    """Every directory listing the store makes (listdir and scandir), by path."""
    seen: list[str] = []
    real_listdir, real_scandir = os.listdir, os.scandir

    def listdir(path="."):
        seen.append(str(path))
        return real_listdir(path)

    def scandir(path="."):
        seen.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "scandir", scandir)
    return seen


def big_inbox(store, n):
    """An INBOX of n read messages in cur/, as mutt or an import leaves it."""
    root = store.ensure(BOX)
    for i in range(n):
        (root / "cur" / f"OLD{i:06d}:2,S").write_bytes(b"Subject: old\r\n\r\n")
    return root


def test_a_delivery_into_a_large_open_folder_lists_nothing(store, listings):
    big_inbox(store, 3000)
    inbox = store.open_folders(BOX).open("INBOX")
    assert len(inbox.uids) == 3000
    listener = Listener()
    inbox.attach(listener)
    listings.clear()
    for n in range(20):
        assert store.deliver(BOX, b"Subject: %d\r\n\r\n" % n, f"NEW{n:02d}")
    assert listings == []  # not one directory listed, though IMAP knows them all
    assert listener.added == list(range(3001, 3021))
    assert [inbox.by_uid[u].base for u in listener.added] == [f"NEW{n:02d}" for n in range(20)]
    assert inbox.recent >= set(listener.added)
    assert not inbox.sync() and listings == []  # and nothing is left to find by listing


@pytest.fixture
def trip_events(store, monkeypatch):
    """What a trip does, in order: index commits (synced or not), syncs, session news."""
    inbox = store.open_folders(BOX).open("INBOX")
    events: list = []
    inbox.attach(Listener(events))
    real_fsync_dir, real_syncfs, real_add = durable.fsync_dir, durable._syncfs_each, Index.add
    monkeypatch.setattr(durable, "fsync_dir", lambda p: events.append(
        ("fsync", os.path.basename(p))) or real_fsync_dir(p))
    monkeypatch.setattr(durable, "_syncfs_each", lambda dirs: (dirs and events.append(
        ("syncfs", sorted(os.path.basename(d) for d in dirs)))) or real_syncfs(dirs))
    monkeypatch.setattr(Index, "add", lambda self, entries, synced=True: events.append(
        ("index", len(entries), synced)) or real_add(self, entries, synced))
    return events


def deliveries(store, n):
    return [(store.deliver_steps, (BOX, b"Subject: %d\r\n\r\n" % i, f"T{i}")) for i in range(n)]


def test_a_trip_indexes_its_deliveries_once_and_tells_sessions_after_the_sync(
        store, trip_events):
    assert durable.run_trip(deliveries(store, 5), sync="file") == [(True, True)] * 5
    assert trip_events == [("index", 5, True), ("fsync", "new"),
                           ("changed", (1, 2, 3, 4, 5))]


@pytest.mark.skipif(not durable.syncfs_available(), reason="syncfs(2) is Linux only")
def test_in_filesystem_mode_the_index_commit_rides_the_trips_syncfs(store, trip_events):
    assert durable.run_trip(deliveries(store, 3), sync="filesystem") == [(True, True)] * 3
    # No fsync of the index's own: the syncfs after it covers the index file too.
    assert trip_events == [("syncfs", ["tmp"]), ("index", 3, False), ("syncfs", ["new"]),
                           ("changed", (1, 2, 3))]


def test_a_sync_between_index_and_publication_keeps_uids_in_order(store):
    inbox = store.open_folders(BOX).open("INBOX")
    listener = Listener()
    inbox.attach(listener)
    root = store.mailbox_path(BOX)
    (root / "tmp" / "OURS").write_bytes(b"Subject: ours\r\n\r\n")
    inbox.arrived(root / "tmp" / "OURS", "OURS")
    inbox.index_arrived()  # UID 1 taken, not yet shown
    (root / "new" / "OTHER").write_bytes(b"Subject: other\r\n\r\n")
    assert inbox.sync(force=True)  # finds OTHER, and must not index OURS twice
    assert [inbox.by_uid[u].base for u in inbox.uids] == ["OURS", "OTHER"]
    assert listener.added == [1, 2]
    assert inbox.publish_arrived() == []


def test_a_change_by_another_program_is_still_found(store, listings):
    inbox = store.open_folders(BOX).open("INBOX")
    store.deliver(BOX, b"Subject: ours\r\n\r\n", "OURS")
    root = store.mailbox_path(BOX)
    # mutt files a draft into cur/ and another MDA drops a message into new/.
    (root / "cur" / "MUTT:2,D").write_bytes(b"Subject: draft\r\n\r\n")
    (root / "new" / "OTHER").write_bytes(b"Subject: other\r\n\r\n")
    for sub, stamp in (("cur", 5), ("new", 6)):  # their mtimes moved on
        os.utime(root / sub, (stamp, stamp))
    listings.clear()
    assert inbox.sync()
    assert sorted(listings) == [str(root / "cur"), str(root / "new")]
    assert [inbox.by_uid[u].base for u in inbox.uids] == ["OURS", "MUTT", "OTHER"]


def test_a_change_within_the_same_clock_tick_is_found_once_the_mtime_settles(
        store, listings, monkeypatch):
    inbox = store.open_folders(BOX).open("INBOX")  # listed with fresh mtimes
    store.deliver(BOX, b"Subject: ours\r\n\r\n", "OURS")
    new = store.mailbox_path(BOX) / "new"
    recorded = os.stat(new).st_mtime_ns
    (new / "SAMETICK").write_bytes(b"Subject: hidden\r\n\r\n")
    os.utime(new, ns=(recorded, recorded))  # a file system clock tick hides it
    monkeypatch.setattr(folder_mod, "_now_ns", lambda: recorded + 1_000_000)
    listings.clear()
    assert not inbox.sync() and listings == []  # fresh: not listed at every sync
    monkeypatch.setattr(folder_mod, "_now_ns", lambda: recorded + 3_000_000_000)
    assert inbox.sync() and str(new) in listings  # once, to check what the tick may hide
    assert [inbox.by_uid[u].base for u in inbox.uids] == ["OURS", "SAMETICK"]
    listings.clear()
    assert not inbox.sync() and listings == []  # settled and checked: trusted now


def test_a_change_racing_our_own_is_found_by_the_periodic_listing(
        store, listings, monkeypatch):
    root = store.ensure(BOX)
    for sub in ("new", "cur"):
        os.utime(root / sub, (1, 1))  # old mtimes: the first listing is trusted
    inbox = store.open_folders(BOX).open("INBOX")
    store.deliver(BOX, b"Subject: ours\r\n\r\n", "OURS")
    new = root / "new"
    recorded = os.stat(new).st_mtime_ns
    (new / "RACER").write_bytes(b"Subject: racer\r\n\r\n")
    os.utime(new, ns=(recorded, recorded))
    now = folder_mod._now_ns()
    monkeypatch.setattr(folder_mod, "_now_ns", lambda: now + 10_000_000_000)
    listings.clear()
    assert not inbox.sync() and listings == []
    monkeypatch.setattr(folder_mod, "_now_ns", lambda: now + 301_000_000_000)
    assert inbox.sync() and str(new) in listings
    assert "RACER" in inbox.by_base


def test_a_failure_to_index_a_delivery_keeps_the_message_and_a_sync_finds_it(
        store, monkeypatch):
    inbox = store.open_folders(BOX).open("INBOX")

    def broken(self, entries):
        raise OSError("disk full")

    monkeypatch.setattr(Index, "add", broken)
    assert store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")  # delivered all the same
    assert inbox.uids == [] and (store.mailbox_path(BOX) / "new" / "U1").exists()
    monkeypatch.undo()
    assert inbox.sync() and [inbox.by_uid[u].base for u in inbox.uids] == ["U1"]


def test_a_delivery_to_a_folder_nobody_opened_is_found_at_the_first_open(store, listings):
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    assert not any(p.endswith("/new") for p in listings)
    inbox = store.open_folders(BOX).open("INBOX")
    assert [inbox.by_uid[u].base for u in inbox.uids] == ["U1"]


def test_recovered_deliveries_list_a_big_maildir_once_and_are_not_repeated(store, listings):
    root = big_inbox(store, 3000)
    store.deliver(BOX, b"Subject: 0\r\n\r\n", "Q0")  # before the crash, then flagged
    os.rename(root / "new" / "Q0", root / "cur" / "Q0:2,S")
    store.deliver(BOX, b"Subject: 1\r\n\r\n", "Q1")
    again = MaildirStore(store.root)  # the process after the crash
    listings.clear()
    results = [again.deliver(BOX, b"Subject: %d\r\n\r\n" % n, f"Q{n}", recovering=True)
               for n in range(20)]
    assert results == [False, False] + [True] * 18
    assert sorted(listings) == [str(root / "cur"), str(root / "new")]  # once, not per entry
    # Delivered by this process after its listing, then flagged by a client: still known.
    os.rename(root / "new" / "Q5", root / "cur" / "Q5:2,S")
    assert again.deliver(BOX, b"Subject: 5\r\n\r\n", "Q5", recovering=True) is False
    assert len(os.listdir(root / "new")) + len(os.listdir(root / "cur")) == 3000 + 20


def test_a_folder_with_deliveries_not_yet_indexed_stays_in_the_registry(tmp_path):
    store = MaildirStore(tmp_path / "mail")
    registry = FolderRegistry(lambda f: f(), keep=1)
    folders = FolderSet(store.ensure(BOX), registry)
    folders.ensure_defaults()
    inbox = folders.open("INBOX")
    root = store.mailbox_path(BOX)
    (root / "tmp" / "U1").write_bytes(b"Subject: x\r\n\r\n")
    inbox.arrived(root / "tmp" / "U1", "U1")  # its trip has not indexed it yet
    folders.open("Trash")  # over keep: the registry evicts what it can
    assert registry.get(root) is inbox
    inbox.index_arrived()
    inbox.publish_arrived()
    folders.open("Drafts")
    assert registry.get(root) is None  # idle again: evicted as before


def reopen(root):
    """The folder as a restarted gateway opens it: a new Folder on the same index."""
    folder = folder_mod.Folder(root, lambda call: None)
    folder.close()
    return folder


def test_a_restart_lists_only_the_directories_changed_while_it_was_down(store, listings):
    root = big_inbox(store, 50)
    for sub in ("new", "cur"):
        os.utime(root / sub, (1, 1))  # old mtimes: the listing is trusted
    first = reopen(root)
    assert sorted(listings) == [str(root / "cur"), str(root / "new")]
    listings.clear()
    again = reopen(root)
    assert listings == []  # the index recorded what the listing saw
    assert list(again.uids) == list(first.uids) and again.uidvalidity == first.uidvalidity
    # While it is down, mutt marks a message answered, another MDA delivers.
    os.rename(root / "cur" / "OLD000007:2,S", root / "cur" / "OLD000007:2,RS")
    (root / "new" / "OTHER").write_bytes(b"Subject: other\r\n\r\n")
    os.utime(root / "new", (6, 6))
    os.utime(root / "cur", (5, 5))
    listings.clear()
    third = reopen(root)
    assert sorted(listings) == [str(root / "cur"), str(root / "new")]
    assert third.by_uid[8].flags() == ["\\Answered", "\\Seen"]
    assert third.by_uid[third.uids[-1]].base == "OTHER" and len(third.uids) == 51


def test_a_restart_lists_a_directory_replaced_or_not_listed_for_five_minutes(
        store, listings, monkeypatch):
    root = big_inbox(store, 5)
    for sub in ("new", "cur"):
        os.utime(root / sub, (1, 1))
    reopen(root)
    # Another directory with the same mtime (a restore): its identity tells.
    os.rename(root / "cur", root / "cur.old")
    (root / "cur").mkdir()
    (root / "cur.old" / "OLD000001:2,S").rename(root / "cur" / "OLD000001:2,S")
    os.utime(root / "cur", (1, 1))
    listings.clear()
    assert reopen(root).uids == [2] and listings == [str(root / "cur")]
    # The record of a listing more than five minutes old is not trusted either.
    now = folder_mod._now_ns()
    monkeypatch.setattr(folder_mod, "_now_ns", lambda: now + 301_000_000_000)
    listings.clear()
    assert len(reopen(root).uids) == 1
    assert sorted(listings) == [str(root / "cur"), str(root / "new")]


def test_an_append_is_made_durable_by_one_syncfs_for_its_name_and_its_index_row(
        store, tmp_path, monkeypatch):
    if not durable.syncfs_available():
        pytest.skip("no syncfs(2) here")
    folder = store.open_folder(BOX)
    upload = folder.tmp_path()
    upload.write_bytes(b"Subject: appended\r\n\r\nbody\r\n")
    syncs: list[str] = []
    real_syncfs, real_add = durable._syncfs_each, folder.index.add
    monkeypatch.setattr(durable, "_syncfs_each", lambda dirs: (syncs.append("syncfs"),
                                                             real_syncfs(dirs)))
    monkeypatch.setattr(folder_mod, "fsync_dir", lambda path: syncs.append("fsync_dir"))
    monkeypatch.setattr(folder.index, "add", lambda entries, synced=True: (
        syncs.append(f"index synced={synced}"), real_add(entries, synced))[1])
    uid = folder.add_file(upload, ["\\Seen"], None, "rename")
    # The row is committed without an fsync of its own, then one syncfs covers it
    # and the rename: no directory fsync, no third journal commit.
    assert syncs == ["index synced=False", "syncfs"]
    assert folder.message(uid).flags() == ["\\Seen"]
    assert Index(folder.path).rows() and not upload.exists()
