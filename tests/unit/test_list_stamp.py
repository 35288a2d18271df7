"""ListStore.data_version: the router's per-address check never waits on the
connection's lock nor makes a system call, and still sees the CLI's changes at
once (the shared change counter in lists.changed)."""

import sqlite3
import threading

from gateway.lists.directory import ListDirectory
from gateway.lists.store import ListStore


def test_a_list_made_by_another_store_is_seen_at_once_without_asking_sqlite(tmp_path):
    store = ListStore(tmp_path, recheck=3600.0)
    directory = ListDirectory(store)
    assert directory("ops", "example.test") is None
    other = ListStore(tmp_path)  # the CLI's connection
    other.create("ops@example.test", ["owner@example.test"])
    other.close()
    route = directory("ops-request", "example.test")
    assert route is not None and route.mailbox == "ops@example.test"


def test_data_version_does_not_wait_for_a_commit_in_progress(tmp_path):
    store = ListStore(tmp_path, recheck=0.0)
    answers = []
    with store._lock:  # a pool thread's commit, fsync'ing
        asker = threading.Thread(target=lambda: answers.append(store.data_version()))
        asker.start()
        asker.join(5.0)
        waited = asker.is_alive()
    asker.join()
    assert not waited and answers


def test_a_change_made_without_a_list_store_is_seen_after_recheck(tmp_path):
    store = ListStore(tmp_path, recheck=0.0)
    directory = ListDirectory(store)
    store.create("ops@example.test", ["owner@example.test"])
    assert directory("ops", "example.test") is not None
    db = sqlite3.connect(tmp_path / "lists.sqlite3", isolation_level=None)  # the sqlite3 shell
    db.execute("DELETE FROM lists")
    db.close()
    assert directory("ops", "example.test") is None


def test_data_version_makes_no_system_call(tmp_path, monkeypatch):
    """A stat() or PRAGMA on the reactor thread lets pool threads take the GIL."""
    store = ListStore(tmp_path, recheck=3600.0)
    first = store.data_version()

    def refused(*args, **kwargs):
        raise AssertionError("a system call")

    monkeypatch.setattr("os.stat", refused)
    monkeypatch.setattr(store, "_db", None)  # no SQLite either
    assert store.data_version() == first


def _stamp_many(root: str, times: int) -> None:
    store = ListStore(root)
    for _ in range(times):
        store._stamp()
    store.close()


def test_stores_in_two_processes_never_write_the_same_count(tmp_path):
    """Each commit's addition is whole: a reader that saw one process's count never
    misses the other's change (two equal counts would hide it)."""
    import multiprocessing
    import struct

    ListStore(tmp_path).close()
    counter = tmp_path / "lists.changed"
    before = struct.unpack("=Q", counter.read_bytes()[:8])[0]
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_stamp_many, args=(str(tmp_path), 3000)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    # Each worker's store adds one when it opens (its schema commit), then 3,000.
    assert struct.unpack("=Q", counter.read_bytes()[:8])[0] == before + 2 + 6000
