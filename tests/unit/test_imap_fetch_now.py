"""A small FETCH that changes nothing is answered on the reactor thread when the page
cache holds its messages (fetch.render_now, Folder.read_cached), and a NOOP when the
folder's directories say nothing changed (Folder.looks_unchanged), without the trip
to the pool and back that a reply would wait for; anything that could wait for the
disk or take long still goes to the pool, and gives the same bytes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from held_pool import Held
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.access.imap import fetch
from gateway.store.folder import Uncached


def message(n: int, size: int = 2000) -> bytes:
    head = b"Subject: message %d\r\nFrom: a@example.test\r\n\r\n" % n
    line = b"line of message %d\r\n" % n
    return head + line * ((size - len(head)) // len(line))


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    for n in (1, 2, 3):
        store.deliver(BOX, message(n), f"100{n}.U{n}.host")
    store.deliver(BOX, message(4, fetch.NOW_OCTETS + 1000), "1004.U4.host")
    held = Held()
    s = Session(make_factory(store, MemoryReactorClock(), run_blocking=held))
    s.login()
    s("SELECT INBOX")
    held.holding = True  # from here, a call to the pool waits until the test runs it
    return s, held, tmp_path


def through_pool(s: Session, held: Held, command: str) -> bytes:
    """The command's answer, checking that it waited for the pool."""
    out = s(command, expect=None)
    assert held.names() == ["_fetch_batch"], (command, held.names())
    held.run_all()
    out += s.take()
    assert out.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].endswith(b"OK FETCH completed"), out
    return out


def file_of(tmp_path: Path, n: int) -> Path:
    found = [p for p in (tmp_path / "mail").rglob(f"100{n}.U{n}.host*") if p.is_file()]
    assert len(found) == 1, found
    return found[0]


def test_a_small_fetch_is_answered_on_the_spot(env):
    s, held, _ = env
    out = s("UID FETCH 1:3 (UID FLAGS BODY.PEEK[])")
    assert held.calls == []
    for n in (1, 2, 3):
        assert b"UID %d FLAGS (\\Recent) BODY[] {%d}\r\n" % (n, len(message(n))) + message(n) in out
    out = s("UID FETCH 2 (RFC822.SIZE BODY.PEEK[TEXT]<5.10>)")
    assert held.calls == []
    body = message(2).split(b"\r\n\r\n", 1)[1]
    assert b"BODY[TEXT]<5> {10}\r\n" + body[5:15] in out


def test_what_could_wait_or_change_the_folder_goes_to_the_pool(env):
    s, held, _ = env
    # \Seen set (an index write), summaries (ENVELOPE, header fields), a big message.
    for command in ("UID FETCH 1 (BODY[])", "UID FETCH 2 (ENVELOPE)",
                    "UID FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
                    "UID FETCH 3:4 (BODY.PEEK[])"):
        through_pool(s, held, command)
    out = through_pool(s, held, "UID FETCH 4 (BODY.PEEK[])")
    assert message(4, fetch.NOW_OCTETS + 1000) in out


def test_a_message_moved_by_another_program_is_found_again_in_the_pool(env):
    s, held, tmp_path = env
    path = file_of(tmp_path, 2)
    path.rename(path.with_name(path.name.split(":")[0] + ":2,F"))  # flagged by mutt, say
    out = through_pool(s, held, "UID FETCH 2 (BODY.PEEK[])")
    assert message(2) in out


def test_read_cached_refuses_a_file_the_page_cache_does_not_hold(env):
    s, _, tmp_path = env
    folder = s.proto.view.folder
    uid = 1
    assert folder.read_cached(uid) == message(1)
    path = file_of(tmp_path, 1)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages only can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    try:
        data = folder.read_cached(uid)
    except Uncached:
        return
    # tmpfs keeps its pages whatever one advises: nothing to wait for there.
    assert data == message(1)
    pytest.skip(f"{path.parent} keeps file pages in memory (tmpfs?): no read would wait")


def test_an_answer_on_the_spot_still_waits_for_a_client_that_does_not_read(env):
    s, held, _ = env
    transport, write = s.transport, s.transport.writeSequence

    def fills_up(seq) -> None:  # the answer fills the socket's buffer: the client lags
        write(seq)
        if message(1) in b"".join(seq):
            transport.producer.pauseProducing()

    transport.writeSequence = fills_up
    out = s("UID FETCH 1 (BODY.PEEK[])", expect=None)
    assert held.calls == [] and message(1) in out
    assert b"OK FETCH completed" not in out  # the next command waits too
    transport.producer.resumeProducing()
    assert s.take().endswith(b" OK FETCH completed\r\n")


def test_a_noop_looks_at_the_directories_and_goes_to_the_pool_only_for_a_change(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, message(1), "1001.U1.host")
    maildir = next(p.parent for p in (tmp_path / "mail").rglob("new") if p.is_dir())
    settled = time.time() - 60  # as a folder nobody touched for a minute
    for sub in ("new", "cur"):
        os.utime(maildir / sub, (settled, settled))
    held = Held()
    s = Session(make_factory(store, MemoryReactorClock(), run_blocking=held))
    s.login()
    s("SELECT INBOX")
    held.holding = True
    assert s("NOOP").endswith(b"OK NOOP completed\r\n") and held.calls == []
    # Another program (a local delivery agent) puts a message into new/.
    (maildir / "new" / "1002.U2.elsewhere").write_bytes(message(2))
    out = s("NOOP", expect=None)
    assert held.names() == ["sync"]
    held.run_all()
    out += s.take()
    assert b"* 2 EXISTS" in out and out.endswith(b"OK NOOP completed\r\n")
