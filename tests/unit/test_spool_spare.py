"""Spare files (gateway/queue/spare.py): a removed entry's files are reused, written over, by
the next entries instead of being unlinked and created again (no inode freed or made
per message: ext4 scans recently freed inodes at each create)."""

import os
import stat

import pytest

from gateway import durable
from gateway.config import parse
from gateway.envelope import Envelope, Recipient, new_queue_id
from gateway.errors import ConfigError
from gateway.queue.spare import LIST_AFTER, SpareFiles
from gateway.queue.spool import Spool


def envelope(arrived: float) -> Envelope:
    return Envelope(sender="bob@remote.test", recipients=[Recipient("alice@example.test")],
                    queue_id=new_queue_id(arrived), arrived=arrived)


def inodes(directory) -> set[int]:
    return {p.stat().st_ino for p in directory.iterdir()}


def test_a_removed_entry_s_files_are_written_over_by_the_next(tmp_path):
    spool = Spool(tmp_path, reactor=None, spare_files=10)
    first = envelope(1000.0)
    spool.store_blocking(first, b"first message, private")
    used = inodes(tmp_path / "entries")
    spool.remove(first.queue_id)
    assert spool.queue_ids() == []
    assert list((tmp_path / "entries").iterdir()) == []
    spare = sorted((tmp_path / "spare").iterdir())
    assert [p.name for p in spare] == [f"{first.queue_id}.env", f"{first.queue_id}.msg"]
    assert inodes(tmp_path / "spare") == used
    # A spare file keeps its text until written over: only the gateway's user reads it.
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in spare)
    assert stat.S_IMODE((tmp_path / "spare").stat().st_mode) == 0o700

    second = envelope(1001.0)
    spool.store_blocking(second, b"second")
    assert inodes(tmp_path / "entries") == used  # the same two inodes, no new ones
    assert list((tmp_path / "spare").iterdir()) == []
    assert spool.load(second.queue_id).queue_id == second.queue_id
    with open(spool.message_path(second.queue_id), "rb") as f:
        assert f.read() == b"second"  # written over and cut: nothing of the first left


def test_reused_files_in_a_group_commit_of_either_sync_mode(tmp_path):
    for mode in ("filesystem", "file"):
        root = tmp_path / mode
        spool = Spool(root, reactor=None, spare_files=10)
        old = [envelope(1000.0 + i) for i in range(3)]
        durable.run_trip([(spool.store_steps, (e, b"old")) for e in old], mode)
        for e in old:
            spool.remove(e.queue_id)
        used = inodes(root / "spare")
        new = [envelope(2000.0 + i) for i in range(3)]
        results = durable.run_trip([(spool.store_steps, (e, b"new")) for e in new], mode)
        assert [ok for ok, _ in results] == [True] * 3
        assert inodes(root / "entries") == used
        assert spool.queue_ids() == sorted(e.queue_id for e in new)


def test_off_and_full_unlink_as_before(tmp_path):
    off = Spool(tmp_path / "off", reactor=None, spare_files=0)
    e = envelope(1000.0)
    off.store_blocking(e, b"m")
    off.remove(e.queue_id)
    assert list((tmp_path / "off" / "spare").iterdir()) == []
    assert list((tmp_path / "off" / "entries").iterdir()) == []

    small = Spool(tmp_path / "small", reactor=None, spare_files=3)
    for i in range(3):
        e = envelope(1000.0 + i)
        small.store_blocking(e, b"m")
    for qid in small.queue_ids():
        small.remove(qid)
    assert len(list((tmp_path / "small" / "spare").iterdir())) == 3  # at most the limit
    assert list((tmp_path / "small" / "entries").iterdir()) == []


def test_recovery_leaves_spare_files_alone_and_counts_no_entry_there(tmp_path):
    spool = Spool(tmp_path, reactor=None, spare_files=10)
    e = envelope(1000.0)
    spool.store_blocking(e, b"m")
    spool.remove(e.queue_id)
    spool.recover()
    assert spool.queue_ids() == []
    assert list((tmp_path / "quarantine").iterdir()) == []
    assert len(list((tmp_path / "spare").iterdir())) == 2


def test_two_processes_share_spare_by_listing_when_they_run_out(tmp_path):
    # The runner process gives, the listeners' process takes: each has its own list.
    d = tmp_path / "spare"
    d.mkdir()
    giver, taker = SpareFiles(str(d), 4), SpareFiles(str(d), 4)
    for i in range(4):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"data")
        giver.give(str(p))
    assert len(list(d.iterdir())) == 4 and giver.count() == 4
    got = [taker.take(str(tmp_path / f"t{i}")) for i in range(5)]
    assert got == [True] * 4 + [False]
    assert list(d.iterdir()) == []
    # The giver's list is stale (all four taken): it learns so when it seems full.
    p = tmp_path / "g"
    p.write_bytes(b"x")
    giver.give(str(p))
    assert [q.name for q in d.iterdir()] == ["g"]
    # A taker that found spare/ empty lists it again only after LIST_AFTER takes.
    assert all(not taker.take(str(tmp_path / "u")) for _ in range(LIST_AFTER))
    assert taker.take(str(tmp_path / "u")) and (tmp_path / "u").exists()
    # Full (a listing agrees): the fifth file is unlinked.
    for i in range(5):
        p = tmp_path / f"h{i}"
        p.write_bytes(b"x")
        giver.give(str(p))
    assert sorted(q.name for q in d.iterdir()) == ["h0", "h1", "h2", "h3"]
    assert all(not (tmp_path / f"h{i}").exists() for i in range(5))


def test_a_file_taken_by_the_other_process_meanwhile_is_skipped(tmp_path):
    d = tmp_path / "spare"
    d.mkdir()
    mine = SpareFiles(str(d), 4)
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(b"x")
        mine.give(str(tmp_path / name))
    os.unlink(d / "b")  # the other process took b (the last given, the first tried)
    assert mine.take(str(tmp_path / "new"))
    assert (tmp_path / "new").exists() and list(d.iterdir()) == []


def test_spare_files_setting():
    server = {"domains": ["example.test"]}
    assert parse({"server": server}).queue.spare_files == 1000
    assert parse({"server": server, "queue": {"spare_files": 0}}).queue.spare_files == 0
    with pytest.raises(ConfigError, match="spare_files"):
        parse({"server": server, "queue": {"spare_files": -1}})
