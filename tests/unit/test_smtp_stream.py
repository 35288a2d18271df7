"""DATA streams to the spool file as it arrives (issue 11): memory per session is a
buffer, an aborted message leaves no file, a crash's half-written file goes at start."""

from __future__ import annotations

import hashlib
import os
import tracemalloc

import pytest
from smtp_dialogue import Dialogue
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from gateway.durable import run_now
from gateway.envelope import new_queue_id
from gateway.queue.spool import Spool


class SlowDisk:
    """A run_write whose writes happen only when the test lets the disk catch up."""

    def __init__(self) -> None:
        self.calls: list[tuple[defer.Deferred, object, tuple]] = []

    def __call__(self, f, *args) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append((d, f, args))
        return d

    def catch_up(self) -> None:
        while self.calls:
            d, f, args = self.calls.pop(0)
            try:
                result = f(*args)
            except OSError:
                d.errback(Failure())
            else:
                d.callback(result)


def session(tmp_path, run_write=run_now, **smtp) -> tuple[Dialogue, Spool]:
    d = Dialogue(overrides=smtp)
    spool = d.factory.spool = Spool(tmp_path / "queue", reactor=None, run_blocking=run_now,
                                    run_write=run_write)
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")
    d.cmd("DATA", expect=b"354")
    return d, spool


def body_pieces(size: int, piece: int = 65536):
    """About size bytes of numbered lines (a few starting with a dot), in pieces of
    the size one read from a socket gives, made as they are sent; ends with CRLF."""
    lines = b"".join(b"%s%07d 0123456789abcdefghijklmnopqrstuvwxyz\r\n"
                     % (b".." if n % 97 == 0 else b"", n) for n in range(2000))
    data = b"Subject: big\r\n\r\n"
    while size > 0:
        while len(data) < piece + 100:
            data += lines
        take = piece if size > piece else data.index(b"\r\n", max(0, size - 2)) + 2
        yield data[:take]
        data, size = data[take:], size - take


def unstuffed(pieces) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for p in pieces:
        p = p.replace(b"\r\n..", b"\r\n.")
        h.update(p)
        n += len(p)
    return h.hexdigest(), n


def test_a_large_message_streams_with_a_bounded_buffer_at_the_disk_s_pace(tmp_path):
    disk = SlowDisk()
    d, spool = session(tmp_path, run_write=disk, data_buffer_size=65536)
    size = 16 * 1024 * 1024
    paused = 0
    tracemalloc.start()
    try:
        for piece in body_pieces(size):
            while d.transport.producerState == "paused":
                paused += 1
                disk.catch_up()  # the session stopped reading: the disk catches up
            d.proto.dataReceived(piece)
        d.proto.dataReceived(b".\r\n")
        disk.catch_up()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    reply = d.read()
    assert reply.startswith(b"250 2.0.0 Ok: queued as "), reply
    # 16 MB went through, never more than a few buffers of it held at once.
    assert peak < 1024 * 1024, peak
    assert paused > 0  # the client was read at the disk's pace, not buffered
    qid = reply.split()[-1].decode()
    stored = (spool.entries / f"{qid}.msg").read_bytes()
    digest, length = unstuffed(body_pieces(size))
    head, body = stored[:-length], stored[-length:]
    assert hashlib.sha256(body).hexdigest() == digest  # byte-exact, dots unstuffed
    assert head.startswith(b"Received: from client.test") and head.count(b"Received:") == 1
    assert spool.load(qid).size == len(stored)
    assert os.listdir(spool.tmp) == []


def test_a_small_message_is_written_once_at_the_final_dot(tmp_path):
    disk = SlowDisk()
    d, spool = session(tmp_path, run_write=disk)
    reply = d.send(b"Subject: s\r\n\r\nsmall\r\n.\r\n")
    assert reply.startswith(b"250 2.0.0"), reply
    assert disk.calls == []  # no separate write: the commit's trip wrote it
    qid = reply.split()[-1].decode()
    assert (spool.entries / f"{qid}.msg").read_bytes().endswith(b"\r\n\r\nsmall\r\n")


def send_part(d: Dialogue, spool: Spool, disk: SlowDisk | None = None) -> None:
    for piece in body_pieces(50_000, 10_000):
        d.proto.dataReceived(piece)
    if disk is None:
        assert len(os.listdir(spool.tmp)) == 1  # the message is being written


@pytest.mark.parametrize("abort", ["size", "timeout", "disconnect"])
def test_an_aborted_message_leaves_no_file(tmp_path, abort):
    d, spool = session(tmp_path, data_buffer_size=4096, max_message_size=100_000)
    send_part(d, spool)
    if abort == "size":
        for piece in body_pieces(100_000, 10_000):
            d.proto.dataReceived(piece)
        assert os.listdir(spool.tmp) == []  # at once, while the rest is only read
        assert d.send(b".\r\n").startswith(b"552 5.3.4")
        d.mail()  # the session goes on
    elif abort == "timeout":
        d.clock.advance(d.settings.smtp.data_timeout)
        assert d.read().startswith(b"421 4.4.2")
    else:
        d.proto.connectionLost(Failure(ConnectionDone()))
    assert os.listdir(spool.tmp) == [] and spool.queue_ids() == []


def test_a_disconnect_while_a_write_is_on_its_way_removes_the_file_after_it(tmp_path):
    disk = SlowDisk()
    d, spool = session(tmp_path, run_write=disk, data_buffer_size=4096)
    send_part(d, spool, disk)
    disk.catch_up()
    send_part(d, spool, disk)
    assert disk.calls and os.listdir(spool.tmp)  # a write still to come
    d.proto.connectionLost(Failure(ConnectionDone()))
    disk.catch_up()
    assert os.listdir(spool.tmp) == [] and spool.queue_ids() == []


def test_a_full_disk_while_streaming_answers_452_and_leaves_no_file(tmp_path):
    disk = SlowDisk()
    d, spool = session(tmp_path, run_write=disk, data_buffer_size=4096)
    send_part(d, spool, disk)
    disk.catch_up()
    assert os.listdir(spool.tmp)

    def full(*args):
        raise OSError(28, "No space left on device")
    send_part(d, spool, disk)
    disk.calls = [(dd, full, ()) for dd, _, _ in disk.calls]
    disk.catch_up()
    d.proto.dataReceived(b".\r\n")
    disk.catch_up()
    assert d.read().startswith(b"452 4.3.1")
    assert os.listdir(spool.tmp) == [] and spool.queue_ids() == []


def test_a_message_cut_short_by_a_crash_is_removed_at_start(tmp_path):
    spool = Spool(tmp_path, reactor=None, run_blocking=run_now, run_write=run_now)
    incoming = spool.receive(new_queue_id(1000.0), 4096)
    incoming.write(b"Received: x\r\n" + b"line\r\n" * 2000)
    assert len(os.listdir(spool.tmp)) == 1  # then the process dies: no commit, no abort
    Spool(tmp_path, reactor=None).recover()  # the next start
    assert os.listdir(spool.tmp) == [] and spool.queue_ids() == []
