"""Durable disk work, cheaply: synced writes, directory syncs, and group commit.

BlockingBatcher runs blocking calls in the reactor's thread pool, many per
trip (group commit).

Used by service.py for everything the queue does on disk: spool writes,
envelope loads and updates, Maildir deliveries. Why: each hop into a worker
thread and back costs a lock handoff, a wake-up of the reactor and a fight
for the GIL, and each sync a journal commit. Calls that arrive while
max_trips trips are in flight wait and then go together, in order, in the
next trip.

A call may be a generator of steps: it writes its files (write_file), yields,
then renames them into place, marks the directories (sync_dir), and returns
its result. A trip runs every call up to its yield, makes all their files
durable at once, resumes them, and makes all the marked directories durable,
then runs what the calls asked for with when_durable (once each: a Maildir
folder publishes all of the trip's deliveries at once), before any call's
result is given back. So "durable before the 250" holds for each call, and
"data before the name" (the Maildir and spool rule) too. Writes that may ride
the directories' sync (an index commit) run just before it (before_durable);
in "filesystem" mode that one syncfs makes them durable too (rides_dir_sync()),
so they need no fsync of their own.

How a trip makes things durable is its sync mode:
  "filesystem"  one syncfs(2) per filesystem per step, for every file and
                directory of the trip together (Linux; PostgreSQL's
                recovery_init_sync_method=syncfs does the same). Also flushes
                whatever else is dirty on that filesystem, so keep state_dir
                off filesystems with heavy unrelated writers.
  "file"        each file written with O_DSYNC, each directory fsync'd once
                per trip: cost grows with the number of files.
Outside a trip (the CLI, tests) every write and directory sync is immediate.

A big file (a 34 MB message streamed into the spool, or its copy into a
Maildir) is sent to the disk as it is written, never more than its writeback
window behind (Writeback, [queue] writeback_window): else its tens of dirty
megabytes wait in the page cache for the next sync, and any small message's
sync (a syncfs, or an fsync whose journal commit must write the data of
every file it orders) waits for them too. So one client's big upload costs
another's small message at most a window's worth of writing per big file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import os
import threading
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.config import SYNC_MODES
from gateway.interfaces import MessageFile

# The piece a MessageFile is copied in: the whole copy never sits in memory.
COPY_CHUNK = 1 << 20

# A call that returns one of these is a call in steps (see the module's docstring).
Steps = Generator[None, None, Any]
_log = Logger()


class BlockingBatcher:
    def __init__(self, reactor, max_trips: int = 2, max_batch: int = 64,
                 sync: str = "file", writeback_window: int = 0):
        if sync not in SYNC_MODES:
            raise ValueError(f"sync mode must be one of {SYNC_MODES}, not {sync!r}")
        self.reactor = reactor
        self.max_trips = max_trips
        self.max_batch = max_batch
        self.sync = sync if sync == "file" or syncfs_available() else "file"
        self.writeback_window = writeback_window  # for the trips' big files (Writeback)
        self._waiting: list[tuple[defer.Deferred, Callable[..., Any], tuple]] = []
        self._trips = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((d, f, args))
        self._start()
        return d

    def _start(self) -> None:
        while self._waiting and self._trips < self.max_trips:
            batch = self._waiting[:self.max_batch]
            del self._waiting[:self.max_batch]
            self._trips += 1
            calls = [(f, args) for _, f, args in batch]
            trip = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                             run_trip, calls, self.sync,
                                             self.writeback_window)
            trip.addBoth(self._finished, [d for d, _, _ in batch])

    def _finished(self, results: list[tuple[bool, Any]] | Failure,
                  deferreds: list[defer.Deferred]) -> None:
        self._trips -= 1
        if isinstance(results, Failure):  # the pool itself failed: every call fails
            results = [(False, results)] * len(deferreds)
        for d, (ok, value) in zip(deferreds, results, strict=True):
            if ok:
                d.callback(value)
            else:
                d.errback(value)
        self._start()


def in_thread(reactor, pool: Any = None) -> Callable[..., defer.Deferred]:
    """A run_blocking without group commit: each call alone in a thread of pool (default:
    the reactor's). POP3 and IMAP sessions get their own pool ([threads] mailbox), so a
    login must not wait behind a batch of deliveries, nor a delivery behind a SEARCH."""
    def run_blocking(f: Callable[..., Any], *args: Any) -> defer.Deferred:
        return threads.deferToThreadPool(reactor, pool or reactor.getThreadPool(), complete,
                                         f, *args)
    return run_blocking


def run_now(f: Callable[..., Any], *args: Any) -> defer.Deferred:
    """A run_blocking that runs the call on the spot (tests)."""
    return defer.maybeDeferred(complete, f, *args)


def complete(f: Callable[..., Any], *args: Any) -> Any:
    """Call f now, running all its steps if it has them; its result."""
    result = f(*args)
    if inspect.isgenerator(result):
        try:
            while True:
                next(result)
        except StopIteration as done:
            return done.value
    return result


class _Trip:
    """What the running trip has yet to make durable (one per pool thread)."""

    def __init__(self, sync: str, writeback_window: int = 0):
        self.sync = sync
        self.writeback_window = writeback_window
        self.files: set[str] = set()  # directories of files written since the last step
        self.dirs: set[str] = set()   # directories with renames to make durable at the end
        self.before: dict[Callable[[], Any], None] = {}  # before_durable calls, once each
        self.after: dict[Callable[[], Any], None] = {}  # when_durable calls, in order, once each

    def flush_files(self) -> None:
        try:
            _syncfs_each(self.files)
        finally:
            self.files.clear()

    def flush_dirs(self) -> None:
        if self.sync == "filesystem":
            _syncfs_each(self.dirs)
        else:
            for path in sorted(self.dirs):
                fsync_dir(path)
        self.dirs.clear()


_local = threading.local()


def _trip() -> _Trip | None:
    return getattr(_local, "trip", None)


def write_file(path: Path | str, data: bytes | MessageFile, over: bool = False) -> None:
    """Create path with data: durable at once, or at the trip's next step.
    over: path may be an old file (a spare one, queue/spare.py): written over in
    place and cut to data's length, its blocks reused rather than freed and taken."""
    trip = _trip()
    flags = 0 if trip is not None and trip.sync != "file" else os.O_DSYNC
    _write(path, data, flags, over=over)
    if not flags:
        trip.files.add(os.path.dirname(path))


def append_file(path: Path | str, data: bytes) -> None:
    """Append data to path (made if missing): durable at once, or at the trip's next
    step. The caller marks the directory (sync_dir) when the file may be new."""
    trip = _trip()
    if trip is None or trip.sync == "file":
        _write(path, data, os.O_DSYNC, append=True)
        return
    _write(path, data, 0, append=True)
    trip.files.add(os.path.dirname(path))


def write_synced(path: Path | str, data: bytes) -> None:
    """Create path with data, durable when this returns (but for its directory entry).

    O_DSYNC makes the write itself synchronous (data and the metadata needed to
    read it, like fdatasync), one system call less than write + fsync: each call
    from a pool thread is one more fight for the GIL.
    """
    _write(path, data, os.O_DSYNC)


def _write(path: Path | str, data: bytes | MessageFile, flags: int,
           append: bool = False, over: bool = False) -> None:
    mode = os.O_APPEND if append else 0 if over else os.O_TRUNC
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode | flags, 0o600)
    try:
        if over:  # first: the length is then part of what the writes' sync covers
            os.ftruncate(fd, len(data))
        # O_DSYNC writes are on disk when they return: nothing to send ahead.
        write_all(fd, data, None if flags & os.O_DSYNC else writeback(fd))
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | MessageFile, wb: Writeback | None = None) -> None:
    """Write all of data to fd (os.write may write less than asked); a MessageFile's
    file in pieces of COPY_CHUNK. wb: told of each piece (a big file's writeback)."""
    if isinstance(data, MessageFile):
        write_all(fd, data.head, wb)
        piece = bytearray(COPY_CHUNK)
        with open(data.path, "rb", buffering=0) as source, memoryview(piece) as view:
            while n := source.readinto(piece):
                write_all(fd, view[:n], wb)
        return
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    if wb is not None:
        wb.wrote(len(data))


def writeback(fd: int) -> Writeback | None:
    """A Writeback for a file written from offset 0 in the current trip (None outside
    a trip or with no window: there every write is synced at once)."""
    trip = _trip()
    if trip is None or trip.writeback_window <= 0:
        return None
    return Writeback(fd, trip.writeback_window)


def file_written(fd: int, path: Path | str) -> None:
    """Make a file written in parts through fd (a message streamed in, queue/incoming.py)
    durable: at once (fdatasync, as O_DSYNC does for write_file), or at the trip's
    next step. fd stays open: the caller closes it."""
    trip = _trip()
    if trip is None or trip.sync == "file":
        os.fdatasync(fd)
        return
    trip.files.add(os.path.dirname(path))


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path | str) -> None:
    """Make renames into path durable: now, or at the end of the current trip."""
    trip = _trip()
    if trip is None:
        fsync_dir(path)
    else:
        trip.dirs.add(str(path))


def before_durable(f: Callable[[], Any]) -> None:
    """Call f just before the renames marked so far are made durable: now outside a
    trip, else once, after the trip's last step and before its directory sync
    (there an exception from it is logged, not raised: the trip's calls are done)."""
    trip = _trip()
    if trip is None:
        f()
    else:
        trip.before.setdefault(f, None)


def rides_dir_sync() -> bool:
    """True when the current trip's directory sync is a syncfs, which makes any file
    written before it on that file system durable too: such a write needs no fsync."""
    trip = _trip()
    return trip is not None and trip.sync == "filesystem"


def when_durable(f: Callable[[], Any]) -> None:
    """Call f once the renames marked so far are durable: now outside a trip, else
    at the end of the current trip, once however often it was asked for.

    In a trip it runs even when the trip failed (the files it may look at are on
    disk, durable or not), outside the trip; an exception from it is logged there.
    """
    trip = _trip()
    if trip is None:
        f()
    else:
        trip.after.setdefault(f, None)


def run_trip(calls: list[tuple[Callable[..., Any], tuple]], sync: str = "file",
             writeback_window: int = 0) -> list[tuple[bool, Any]]:
    """Run calls in order, steps in lock-step; (ok, result or Failure) for each."""
    results: list[tuple[bool, Any]] = [(False, None)] * len(calls)
    trip = _local.trip = _Trip(sync, writeback_window)
    try:
        running = _begin(calls, results)
        while running:
            # Every call still running is at a step: its files become durable together.
            error = None
            try:
                trip.flush_files()
            except OSError as e:
                error = e  # thrown into each waiting call, which cleans up
            running = _advance(running, results, error)
        for before in trip.before:
            try:
                before()
            except Exception:
                _log.failure("before a trip's sync: {call!r}", call=before)
        trip.flush_dirs()
    except OSError:
        # A directory could not be synced: no call of this trip may claim durability.
        return [(False, Failure())] * len(calls)
    finally:
        _local.trip = None
        for after in trip.after:
            try:
                after()
            except Exception:
                _log.failure("after a trip: {call!r}", call=after)
    return results


def lockstep(calls: list[tuple[Callable[..., Any], tuple]]) -> Steps:
    """Several calls as one call in steps: each runs to its step, then one step for
    all (their files durable at the same sync), then each runs on. Returns (ok,
    result or Failure) for each, in order: one call's failure is its own.

    A caller with many small pieces of work (an alias's 1,000 Maildir copies,
    deliver/maildir.py) hands them to a trip as one call: one Deferred, one
    thread hop and one place in the trip instead of 1,000, and all of them
    share the trip's two syncs whatever the trip's max_batch.
    """
    results: list[tuple[bool, Any]] = [(False, None)] * len(calls)
    running = _begin(calls, results)
    while running:
        error = None
        try:
            yield
        except OSError as e:
            error = e  # the files could not be made durable: each call cleans up
        running = _advance(running, results, error)
    return results


def _begin(calls: list[tuple[Callable[..., Any], tuple]], results: list[tuple[bool, Any]]
           ) -> list[tuple[int, Steps]]:
    """Call each of calls, running those in steps to their first step; those running."""
    running: list[tuple[int, Steps]] = []
    for i, (f, args) in enumerate(calls):
        try:
            result = f(*args)
        except Exception:
            results[i] = (False, Failure())
            continue
        if inspect.isgenerator(result):
            running += _advance([(i, result)], results, None)
        else:
            results[i] = (True, result)
    return running


def _advance(running: list[tuple[int, Steps]], results: list[tuple[bool, Any]],
             error: OSError | None) -> list[tuple[int, Steps]]:
    """Run each call to its next step; those still running."""
    still = []
    for i, steps in running:
        try:
            if error is None:
                next(steps)
            else:
                steps.throw(error)
        except StopIteration as done:
            results[i] = (True, done.value)
        except Exception:
            results[i] = (False, Failure())
        else:
            still.append((i, steps))
    return still


# --- syncfs(2), by ctypes: the os module has no binding ---------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)
_devices: dict[str, int] = {}  # directory -> st_dev, so a step needs no stat


def syncfs_available() -> bool:
    return _syncfs is not None


def syncfs_of(path: Path | str) -> bool:
    """One syncfs of the file system holding path: the renames and unsynced writes made
    there so far are durable when it returns. False (nothing done) without syncfs(2)."""
    if _syncfs is None:
        return False
    _syncfs_each({str(path)})
    return True


def _syncfs_each(dirs: set[str]) -> None:
    """One syncfs per filesystem that holds any of dirs."""
    done: set[int] = set()
    for path in dirs:
        dev = _devices.get(path)
        if dev is None:
            dev = _devices[path] = os.stat(path).st_dev
        if dev in done:
            continue
        done.add(dev)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
        finally:
            os.close(fd)


# --- a big file's writeback, bounded: sync_file_range(2), by ctypes ---------------

# <linux/fs.h>: wait for writeback already under way; start it; wait for it to end.
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
_WAIT_ALL = SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER

_sync_file_range_c = getattr(_libc, "sync_file_range", None)
if _sync_file_range_c is not None:
    _sync_file_range_c.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range_c.restype = ctypes.c_int


def sync_file_range(fd: int, offset: int, nbytes: int, flags: int) -> None:
    """sync_file_range(2) (Linux); a no-op where there is none (the commit's sync
    still makes the file durable: this only moves when its data is written)."""
    if _sync_file_range_c is None:
        return
    if _sync_file_range_c(fd, offset, nbytes, flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sync_file_range: {os.strerror(err)}")


class Writeback:
    """Keeps a big file's data going to the disk as it is written, at most `window`
    bytes (two windows in flight) behind the last write.

    A file smaller than the window is left alone: the trip's sync writes it with the
    rest, as before. From the window on, each write starts the writeback of what
    was written (SYNC_FILE_RANGE_WRITE), and the writer waits for the data more
    than a window behind (its disk, its thread), so what a big file leaves dirty
    for someone else's sync is bounded, and the writer is slowed to the disk's pace
    (an SMTP session then stops reading its client: back-pressure). This moves
    only *when* data is written: a file is durable only after its fsync, fdatasync
    or syncfs, which still comes before any 250 or rename (sync_file_range
    makes no metadata durable). Like PostgreSQL's backend_flush_after.
    """

    def __init__(self, fd: int, window: int,
                 sync_range: Callable[[int, int, int, int], None] | None = None) -> None:
        self.fd = fd
        self.window = window
        self._range = sync_range or sync_file_range
        self.written = 0   # bytes written so far (from offset 0)
        self._started = 0  # writeback started up to here
        self._done = 0     # on disk up to here (waited for)

    @property
    def big(self) -> bool:
        """True once the file reached the window (its writeback is under way)."""
        return self._started > 0

    def wrote(self, n: int) -> None:
        """n more bytes were written at the end."""
        self.written += n
        if self.window <= 0 or self.written < self.window:
            return
        self._range(self.fd, self._started, self.written - self._started, SYNC_FILE_RANGE_WRITE)
        self._started = self.written
        behind = self.written - self.window
        if behind > self._done:
            self._range(self.fd, self._done, behind - self._done, _WAIT_ALL)
            self._done = behind

    def finish(self) -> None:
        """For a big file, wait until all its data is written (not its metadata: the
        commit's sync does that, and has then only that left to write for it)."""
        if self.big and self.written > self._done:
            self._range(self.fd, self._done, self.written - self._done, _WAIT_ALL)
            self._done = self.written
