"""APPEND's message staged in the thread pool (access/imap account.py Account.stage):
no file made before the "+", the write and sync begun at the literal's end while
the command's end is still coming, one sync of the message's data, nothing left
in tmp/ whatever happens to the command or the connection.

The pool is a list of held calls here (held_pool.Held): a test runs each when it chooses.
"""

from __future__ import annotations

import os

from held_pool import Held
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.durable import complete

MESSAGE = b"Subject: staged\r\n\r\nhello\r\n"


def session(tmp_path, held: Held | None = None, **imap) -> tuple[Session, os.PathLike]:
    store = fresh_store(tmp_path)
    store.deliver(BOX, b"Subject: first\r\n\r\nx\r\n", "1000.U1.host")
    s = Session(make_factory(store, MemoryReactorClock(), imap or None,
                             **({"run_blocking": held} if held else {})))
    s.login()
    if held is not None:
        held.holding = True
    return s, store.mailbox_path(BOX)


def stored(root) -> list[bytes]:
    return sorted((root / sub / n).read_bytes() for sub in ("new", "cur")
                  for n in os.listdir(root / sub))


def test_no_file_before_the_plus_and_the_write_begins_at_the_literals_end(tmp_path):
    held = Held()
    s, root = session(tmp_path, held)
    out = s.raw(b"a APPEND INBOX {%d}\r\n" % len(MESSAGE))
    assert out.startswith(b"+ ")
    assert os.listdir(root / "tmp") == []  # nothing made on the reactor thread
    assert held.calls == []
    s.raw(MESSAGE)  # the literal is in; the line's end is not
    assert held.names() == ["stage"]
    held.run_next()
    [name] = os.listdir(root / "tmp")
    assert (root / "tmp" / name).read_bytes() == MESSAGE
    s.raw(b"\r\n")
    assert held.names() == ["append"]
    held.run_next()
    out = s.take()
    assert b"a OK [APPENDUID " in out
    assert os.listdir(root / "tmp") == []
    assert MESSAGE in stored(root)


def test_a_stage_still_running_stores_the_message_itself_and_syncs_the_data_once(
        tmp_path, monkeypatch):
    held = Held()
    s, root = session(tmp_path, held)
    syncs = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real, name=name: (syncs.append(name),
                                                                       real(fd))[1])
    s.raw(b"a APPEND INBOX {%d}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
    assert held.names() == ["stage"]  # no pool call of its own: the stage's thread stores it
    held.run_all()
    assert b"a OK [APPENDUID " in s.take()
    # The stage wrote it with O_DSYNC; the storing did not sync the data again.
    assert syncs == []
    assert MESSAGE in stored(root)


def test_a_big_message_is_streamed_to_its_file_and_synced_in_the_pool(tmp_path, monkeypatch):
    held = Held()
    s, root = session(tmp_path, held, append_in_memory=10)
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
    s.raw(b"a APPEND INBOX {%d}\r\n" % len(MESSAGE) + MESSAGE[:5])
    assert len(os.listdir(root / "tmp")) == 1  # over append_in_memory: a file from the start
    s.raw(MESSAGE[5:] + b"\r\n")
    held.run_all()
    assert b"a OK [APPENDUID " in s.take()
    assert len(syncs) == 1
    assert os.listdir(root / "tmp") == [] and MESSAGE in stored(root)


def test_a_client_gone_while_its_message_is_staged_leaves_nothing(tmp_path):
    held = Held()
    s, root = session(tmp_path, held)
    s.raw(b"a APPEND INBOX {%d}\r\n" % len(MESSAGE) + MESSAGE)
    s.drop()
    held.run_all()  # the stage writes the file after the drop: removed once written
    assert os.listdir(root / "tmp") == []
    assert stored(root) == [b"Subject: first\r\n\r\nx\r\n"]


def test_a_refused_append_removes_its_staged_message(tmp_path):
    held = Held()
    s, root = session(tmp_path, held)
    out = s.raw(b"a APPEND INBOX {%d}\r\n" % len(MESSAGE) + MESSAGE + b" junk\r\n")
    assert out.startswith(b"+ ") and b"a BAD" in out  # answered before the stage ran
    held.run_all()
    assert os.listdir(root / "tmp") == []
    s.raw(b"b APPEND INBOX {%d}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
    held.run_all()
    assert b"b OK [APPENDUID " in s.take()
    assert os.listdir(root / "tmp") == []


def test_a_stage_that_fails_gives_no_and_leaves_nothing(tmp_path, monkeypatch):
    """The command's end came first: the stage, left the storing, meets the write's error."""
    import gateway.access.imap.account as account

    def full(path, data):
        with open(path, "wb") as f:
            f.write(data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(account, "write_synced", full)
    held = Held()
    s, root = session(tmp_path, held)
    s.raw(b"a APPEND INBOX {%d}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
    held.run_all()
    assert b"a NO " in s.take()
    assert os.listdir(root / "tmp") == []
    assert stored(root) == [b"Subject: first\r\n\r\nx\r\n"]


def test_the_stage_thread_stores_the_message_once_written_and_the_reactor_answers(tmp_path,
                                                                                 monkeypatch):
    """The stage runs in a pool thread; the command's end comes meanwhile. That thread
    then stores the message once written (no second pool call, no thread woken) and
    hands the outcome to the reactor's thread, which answers."""
    import threading

    import gateway.access.imap.account as account
    from gateway.store.folder import Folder

    events: list[tuple[str, str]] = []
    real_write, real_add = account.write_synced, Folder.add_file

    def note(what: str) -> None:
        events.append((what, threading.current_thread().name))

    def write(path, data):
        real_write(path, data)
        note("written")

    def add_file(self, *args, **kwargs):
        note("stored")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(account, "write_synced", write)
    monkeypatch.setattr(Folder, "add_file", add_file)
    held = Held()
    s, root = session(tmp_path, held)
    s.raw(b"a APPEND INBOX {%d}\r\n" % len(MESSAGE) + MESSAGE + b"\r\n")
    [(stage, stage_args, staged)] = held.calls
    worker = threading.Thread(target=complete, args=(stage, *stage_args), name="stage")
    worker.start()
    worker.join()
    assert events == [("written", "stage"), ("stored", "stage")]
    assert MESSAGE in stored(root) and os.listdir(root / "tmp") == []
    staged.callback(None)
    assert b"a OK [APPENDUID " in s.take()  # sent by the reactor's thread, at its next turn
