"""Durable disk work, cheaply: synced writes, directory syncs, and group commit.

BlockingBatcher runs blocking calls in the reactor's thread pool, many per
trip (group commit).

Used by service.py for everything the queue does on disk: spool writes,
envelope loads and updates, Maildir deliveries. Why: each hop into a worker
thread and back costs a lock handoff, a wake-up of the reactor and a fight
for the GIL, and each fsync of a directory a journal commit. Calls that
arrive while max_trips trips are in flight wait and then go together, in
order, in the next trip; a directory that several calls of one trip renamed
files into is fsync'd once, at the end of the trip, before any call's result
is given back (sync_dir), so "durable" still holds for each of them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.python.failure import Failure


class BlockingBatcher:
    def __init__(self, reactor, max_trips: int = 2, max_batch: int = 64):
        self.reactor = reactor
        self.max_trips = max_trips
        self.max_batch = max_batch
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
                                             _run_all, calls)
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


_trip = threading.local()


def write_synced(path: Path | str, data: bytes) -> None:
    """Create path with data, durable when this returns (but for its directory entry).

    O_DSYNC makes the write itself synchronous (data and the metadata needed to
    read it, like fdatasync), one system call less than write + fsync: each call
    from a pool thread is one more fight for the GIL.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DSYNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_dir(path: Path | str) -> None:
    """Make renames into path durable: now, or at the end of the current trip."""
    pending = getattr(_trip, "dirs", None)
    if pending is None:
        fsync_dir(path)
    else:
        pending.add(str(path))


def _run_all(calls: list[tuple[Callable[..., Any], tuple]]) -> list[tuple[bool, Any]]:
    results: list[tuple[bool, Any]] = []
    _trip.dirs = set()
    try:
        for f, args in calls:
            try:
                results.append((True, f(*args)))
            except Exception:
                results.append((False, Failure()))
        for path in sorted(_trip.dirs):
            fsync_dir(path)
    except OSError:
        # A directory could not be synced: no call of this trip may claim durability.
        return [(False, Failure())] * len(calls)
    finally:
        _trip.dirs = None
    return results
