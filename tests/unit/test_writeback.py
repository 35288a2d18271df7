"""A big file's writeback, bounded ([queue] writeback_window, durable.Writeback).

One client's 34 MB upload must not leave tens of MB dirty for the sync another
client's small message waits on: a big file goes to the disk as it is written,
at most a window behind, and a streamed message's data is on disk before it
joins the group commit. The rule that does not move: the accepted message is
still fdatasync'd (or syncfs'd) in its commit, before the 250.
"""

from __future__ import annotations

import errno
import os

import pytest
from twisted.internet import defer

from gateway import durable
from gateway.config import load
from gateway.durable import (
    SYNC_FILE_RANGE_WAIT_AFTER,
    SYNC_FILE_RANGE_WAIT_BEFORE,
    SYNC_FILE_RANGE_WRITE,
    Writeback,
)
from gateway.envelope import Envelope, Recipient, new_queue_id
from gateway.errors import ConfigError, SpoolError
from gateway.interfaces import MessageFile
from gateway.queue.spool import Spool

SERVER = '[server]\ndomains = ["example.test"]\n'
WAIT = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER
KIB = 1024


class Disk:
    """Stands in for sync_file_range(2) and fdatasync(2): one log of both, in order."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.fail_wait = False

    def sync_range(self, fd: int, offset: int, nbytes: int, flags: int) -> None:
        if flags == WAIT and self.fail_wait:
            raise OSError(errno.EIO, "sync_file_range: Input/output error")
        self.log.append(("wait" if flags == WAIT else "start", offset, offset + nbytes))

    def fdatasync(self, fd: int) -> None:
        self.log.append(("fdatasync", os.fstat(fd).st_size))

    def on_disk(self) -> int:
        """Up to where the data was waited for (all of it before that, in order)."""
        end = 0
        for entry in self.log:
            if entry[0] == "wait":
                assert entry[1] == end, "each wait takes up where the last one ended"
                end = entry[2]
        return end


@pytest.fixture
def disk(monkeypatch):
    d = Disk()
    monkeypatch.setattr(durable, "sync_file_range", d.sync_range)
    monkeypatch.setattr(durable.os, "fdatasync", d.fdatasync)
    return d


# --- Writeback itself ------------------------------------------------------------------

def test_a_file_smaller_than_the_window_is_left_to_the_commit(disk):
    wb = Writeback(3, 64 * KIB)
    for _ in range(3):
        wb.wrote(16 * KIB)
    wb.finish()
    assert disk.log == [] and not wb.big


def test_a_big_file_is_never_more_than_the_window_behind(disk):
    window = 64 * KIB
    wb = Writeback(3, window)
    for _ in range(40):
        wb.wrote(24 * KIB)
        if wb.written >= window:
            assert wb.written - disk.on_disk() <= window
            assert disk.log[-1][0] in ("start", "wait")
    starts = [e for e in disk.log if e[0] == "start"]
    assert starts[-1][2] == wb.written  # writeback of all that was written is under way
    wb.finish()
    assert disk.on_disk() == wb.written == 40 * 24 * KIB


def test_no_window_means_no_writeback(disk):
    wb = Writeback(3, 0)
    for _ in range(10):
        wb.wrote(1 << 20)
    wb.finish()
    assert disk.log == []


# --- a streamed message: its data on disk before the commit, still synced in it ---------

def trip_lane(sync: str):
    """A run_blocking that runs each call as a trip of its own, at once."""
    def run(f, *args):
        [(ok, value)] = durable.run_trip([(f, args)], sync, 64 * KIB)
        return defer.succeed(value) if ok else defer.fail(value)
    return run


def stream(tmp_path, disk, size: int, window: int = 64 * KIB, sync: str = "file"):
    spool = Spool(tmp_path / "queue", reactor=None, run_blocking=trip_lane(sync),
                  run_write=lambda f, *a: defer.maybeDeferred(f, *a),
                  writeback_window=window)
    qid = new_queue_id(1000.0)
    incoming = spool.receive(qid, 8 * KIB)
    for _ in range(size // (8 * KIB)):
        incoming.write(b"x" * (8 * KIB - 2) + b"\r\n")
    envelope = Envelope(sender="bob@remote.test", recipients=[Recipient("a@example.test")],
                        queue_id=qid, arrived=1000.0)
    results = []
    incoming.commit(envelope).addBoth(results.append)
    return spool, qid, results


def test_a_big_message_is_on_disk_before_its_commit_which_still_syncs_it(tmp_path, disk):
    spool, qid, results = stream(tmp_path, disk, 1 << 20)
    assert results == [qid] and spool.queue_ids() == [qid]
    synced = [i for i, e in enumerate(disk.log) if e[0] == "fdatasync"]
    # The commit's fdatasync (the 250's rule) saw the whole file, and came after the
    # session's own wait for all its data: the shared sync had only metadata to do.
    assert len(synced) == 1 and disk.log[synced[0]][1] == 1 << 20
    assert disk.on_disk() == 1 << 20
    last_wait = max(i for i, e in enumerate(disk.log) if e[0] == "wait")
    assert last_wait < synced[0]


def test_in_filesystem_mode_the_commit_s_syncfs_follows_the_session_s_flush(
        tmp_path, disk, monkeypatch):
    syncs = []

    def syncfs(fd):
        syncs.append(len(disk.log))
        return 0
    monkeypatch.setattr(durable, "_syncfs", syncfs)
    monkeypatch.setattr(durable, "_devices", {})
    spool, qid, results = stream(tmp_path, disk, 1 << 20, sync="filesystem")
    assert results == [qid]
    assert len(syncs) == 2  # files, then the renames: the commit still makes it durable
    assert disk.on_disk() == 1 << 20 and syncs[0] == len(disk.log)


def test_a_message_under_the_window_is_written_and_synced_as_before(tmp_path, disk):
    spool, qid, results = stream(tmp_path, disk, 32 * KIB)
    assert results == [qid]
    assert [e[0] for e in disk.log] == ["fdatasync"]


def test_a_failed_writeback_at_the_commit_refuses_the_message_and_leaves_no_file(
        tmp_path, disk):
    disk.fail_wait = True
    spool, qid, results = stream(tmp_path, disk, 32 * KIB, window=16 * KIB)
    # The first wait already failed while streaming: a write error, kept for the dot.
    assert results[0].check(SpoolError)
    assert os.listdir(spool.tmp) == [] and spool.queue_ids() == []


def test_a_failed_final_flush_refuses_the_message_and_leaves_no_file(tmp_path, disk):
    spool = Spool(tmp_path / "queue", reactor=None, run_blocking=trip_lane("file"),
                  run_write=lambda f, *a: defer.maybeDeferred(f, *a),
                  writeback_window=64 * KIB)
    qid = new_queue_id(1000.0)
    incoming = spool.receive(qid, 8 * KIB)
    for _ in range(8):  # 64 KiB: at the window (its writeback started), nothing waited for
        incoming.write(b"x" * (8 * KIB - 2) + b"\r\n")
    assert [e[0] for e in disk.log if e[0] == "wait"] == []
    disk.fail_wait = True
    envelope = Envelope(sender="bob@remote.test", recipients=[Recipient("a@example.test")],
                        queue_id=qid, arrived=1000.0)
    results = []
    incoming.commit(envelope).addBoth(results.append)
    assert results[0].check(SpoolError) and "Input/output error" in str(results[0].value)
    assert os.listdir(spool.tmp) == [] and spool.queue_ids() == []
    assert not any(e[0] == "fdatasync" for e in disk.log)


# --- a Maildir copy (write_file of a MessageFile) in a trip ---------------------------

def test_a_big_copy_in_a_trip_goes_out_as_it_is_made(tmp_path, disk, monkeypatch):
    monkeypatch.setattr(durable, "COPY_CHUNK", 16 * KIB)
    source = tmp_path / "spooled"
    source.write_bytes(b"y" * (256 * KIB))
    target = tmp_path / "copy"

    def deliver():
        durable.write_file(target, MessageFile(b"Delivered-To: a\r\n", str(source)))
    monkeypatch.setattr(durable, "_syncfs", lambda fd: 0)
    [(ok, _)] = durable.run_trip([(deliver, ())], "filesystem", 64 * KIB)
    assert ok and target.stat().st_size == 256 * KIB + 17
    assert target.stat().st_size - disk.on_disk() <= 64 * KIB
    assert disk.on_disk() > 0


def test_the_window_is_a_setting(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(SERVER + '[queue]\nwriteback_window = 1048576\n')
    assert load(path).queue.writeback_window == 1 << 20
    path.write_text(SERVER + '[queue]\nwriteback_window = -1\n')
    with pytest.raises(ConfigError, match="writeback_window"):
        load(path)


def test_the_real_system_call_takes_these_arguments(tmp_path):
    """No fake: the ctypes binding of sync_file_range(2) (64-bit offsets) works here."""
    fd = os.open(tmp_path / "big", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        wb = Writeback(fd, 64 * KIB)
        for _ in range(20):
            durable.write_all(fd, b"z" * (16 * KIB), wb)
        wb.finish()
        assert wb.big and wb.written == 320 * KIB
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        durable.sync_file_range(-1, 0, 1, SYNC_FILE_RANGE_WRITE)
