"""A message on its way into the spool: written to tmp/ as it arrives, committed at its end.

Between accept and queue: accept/smtp.py feeds the DATA lines (dot-unstuffed,
its Received header first) to the IIncomingMessage that Spool.receive() makes,
and commits it at the final dot; the 250 follows the commit. Postfix's cleanup
does the same (it writes the queue file as it reads), so memory per SMTP
session is a buffer, not a message (DESIGN.md, "Sharing one process fairly").

- Writes run off the reactor thread (run_write), one at a time per message,
  each taking what accumulated meanwhile. One starts once buffer_size bytes
  wait; while it runs, more may wait, and at buffer_size again `full` tells
  the session to stop reading its client (its ReadGate, gateway/flow.py)
  until room() fires. So at most about twice buffer_size (plus one read) is
  held, however fast the client and however slow the disk.
- A message shorter than buffer_size never touches the disk before its
  commit, which writes it in the same group-commit trip as its envelope
  (run_commit, Spool.commit_steps): a small message costs what it cost when
  messages were stored whole.
- A message past [queue] writeback_window is sent to the disk as it is
  written, at most a window behind (durable.Writeback), and at the final dot
  its session waits, in its own write lane, for the rest of its data
  (finish) before it joins the group commit. So the commit's shared sync
  (the syncfs another session's small message waits for) finds only its
  metadata left to write, not tens of MB, and a writer faster than the disk
  is slowed, not the other sessions.
- commit() makes the file durable (fdatasync, or the trip's syncfs) and
  renames it into entries/ with its envelope (queue/spool.py).
- A sender check (gateway/verify/, on port 25) reads the message at the
  final dot, before the commit: reader() gives a function that reads it
  (the file, then what is still in memory) in the check's thread, so the
  reactor holds no more than before. Its result changes the header block
  (Authentication-Results on top, forged ones out): commit(head=, skip=)
  puts head in place of the first skip bytes. The body is already on disk
  by then, and a file cannot grow at its front, so a streamed message is
  copied once into a new file (copy_file_range, in the kernel: no memory)
  in the commit's own write, before the same fsync as before, and the 250
  still follows it; a small message is rewritten in memory. Holding the
  header back until the check instead would hold a header of any size
  (up to max_message_size) in memory.
- abort() (a refused message, a timeout, a lost connection) removes the file
  once any write in flight is done; what a crash leaves in tmp/ is removed by
  Spool.recover() at start. A write error (a full disk) is kept, the rest of
  the message dropped, and commit() fails with SpoolError (452/451 at the dot).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.durable import Writeback, write_all
from gateway.errors import SpoolError
from gateway.interfaces import IIncomingMessage

log = Logger()


def spool_error(queue_id: str, e: OSError) -> SpoolError:
    """The SpoolError for an OSError; a full disk says so (smtp.py answers 452 to it)."""
    reason = "No space left on device" if e.errno == errno.ENOSPC else str(e)
    return SpoolError(f"{queue_id}: {reason}")


@implementer(IIncomingMessage)
class Incoming:
    def __init__(self, queue_id: str, path: str, buffer_size: int,
                 run_write: Callable[..., defer.Deferred],
                 run_commit: Callable[..., defer.Deferred],
                 commit_steps: Callable[..., Any], writeback_window: int = 0,
                 sync_range: Callable[[int, int, int, int], None] | None = None) -> None:
        self.queue_id = queue_id
        self.path = path  # in the spool's tmp/, so that the commit is a rename
        self.size = 0
        self._buffer_size = buffer_size
        self._run_write = run_write
        self._run_commit = run_commit
        self._commit_steps = commit_steps
        self._waiting: list[bytes] = []
        self._waiting_bytes = 0
        self._writing = False
        self._opened = False  # a write was started: the file may exist
        self._fd: int | None = None  # used by one thread at a time, one call after another
        self._writeback_window = writeback_window
        self._sync_range = sync_range
        self._wb: Writeback | None = None  # with _fd
        self._error: OSError | None = None
        self._done = False  # committed or aborted: further writes are ignored
        self._room: list[defer.Deferred] = []
        self._idle: list[defer.Deferred] = []

    # --- the reactor's side ------------------------------------------------------------

    @property
    def full(self) -> bool:
        return not self._done and self._waiting_bytes >= self._buffer_size

    def write(self, data: bytes) -> None:
        if self._done or self._error is not None or not data:
            return
        self._waiting.append(data)
        self._waiting_bytes += len(data)
        self.size += len(data)
        self._start()

    def room(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self.full:
            self._room.append(d)
        else:
            d.callback(None)
        return d

    def reader(self, start: int = 0) -> defer.Deferred:
        """Deferred function (call it in a pool thread) giving the bytes from start
        on; for after the last write(), before commit()."""
        def snapshot(_: Any):
            path, on_disk, tail = self.path, self._opened, b"".join(self._waiting)
            in_file = self.size - len(tail) if on_disk else 0

            def read() -> bytes:
                if start >= in_file:
                    return tail[start - in_file:]
                with open(path, "rb") as f:
                    f.seek(start)
                    return f.read(in_file - start) + tail

            return read

        return self._when_idle().addCallback(snapshot)

    def commit(self, envelope: Any, head: bytes | None = None, skip: int = 0) -> defer.Deferred:
        if self._done:
            return defer.fail(SpoolError(f"{self.queue_id}: already committed or aborted"))
        self._done = True
        d = self._when_idle()

        def store(_: Any) -> defer.Deferred:
            if self._error is not None:
                error = spool_error(self.queue_id, self._error)
                removed = self._run_write(self._remove_blocking)
                return removed.addBoth(lambda _: Failure(error))
            if self._wb is not None and self._wb.big:
                # Its own data on disk first, in its own lane: the shared sync then
                # waits for none of it (see the module's docstring).
                done = self._run_write(self._wb.finish)
                return done.addCallbacks(lambda _: commit_now(), self._flush_failed)
            return commit_now()

        def commit_now() -> defer.Deferred:
            tail = self._take_waiting()
            fd, self._fd = self._fd, None  # commit_steps closes it
            if head is None:
                return self._run_commit(self._commit_steps, envelope, tail, fd)
            if fd is None:  # all of it in memory
                return self._run_commit(self._commit_steps, envelope, head + tail[skip:])
            return self._run_commit(self._commit_steps, envelope, tail, fd, head, skip)

        return d.addCallback(store)

    def _flush_failed(self, failure: Failure) -> defer.Deferred:
        """The writeback of a committing message failed (EIO, ENOSPC): as a write
        error, the file goes and the commit fails (452/451 at the dot)."""
        failure.trap(OSError)
        error = spool_error(self.queue_id, failure.value)
        removed = self._run_write(self._remove_blocking)
        return removed.addBoth(lambda _: Failure(error))

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._take_waiting()
        self._wake(self._room)  # a session reading the rest of a refused body goes on
        if self._opened:
            self._when_idle().addCallback(lambda _: self._run_write(self._remove_blocking))

    def _start(self) -> None:
        """A write of all that waits, unless one runs or too little waits."""
        if self._writing or self._waiting_bytes < self._buffer_size:
            return
        self._writing = self._opened = True
        d = self._run_write(self._write_blocking, self._take_waiting())
        d.addBoth(self._written)

    def _written(self, result: Any) -> None:
        self._writing = False
        if isinstance(result, Failure):
            if result.check(OSError):
                self._error = result.value
            else:
                log.failure("writing {queue_id}", result, queue_id=self.queue_id)
                self._error = OSError(errno.EIO, str(result.value))
            self._take_waiting()
        if not self._done:
            self._start()
        if not self.full:
            self._wake(self._room)
        if not self._writing:
            self._wake(self._idle)

    def _take_waiting(self) -> bytes:
        data = b"".join(self._waiting)
        self._waiting.clear()
        self._waiting_bytes = 0
        return data

    def _when_idle(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        if self._writing:
            self._idle.append(d)
        else:
            d.callback(None)
        return d

    @staticmethod
    def _wake(waiters: list[defer.Deferred]) -> None:
        ready = waiters[:]
        waiters.clear()
        for d in ready:
            d.callback(None)

    # --- the writing thread's side -------------------------------------------------------

    def _write_blocking(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._wb = Writeback(self._fd, self._writeback_window, self._sync_range)
        write_all(self._fd, data, self._wb)

    def _remove_blocking(self) -> None:
        fd, self._fd, self._wb = self._fd, None, None
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
