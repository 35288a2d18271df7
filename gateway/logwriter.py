"""Log lines written by a thread of their own, so the reactor never waits on a disk.

Where it sits: at the very end of logging. The observer twistd logs to (the
text log on --logfile or stdout, see `text_observer`, or
`gateway.logs.json_lines`) hands each event to a LineWriter; one writer
thread per file formats the waiting events into lines, writes them in order
and flushes once per batch. Why: a write to a file on
the file system that holds the spool waits whenever a syncfs commits the
journal; on the reactor thread that stalled every session (bench/RESULTS.md,
2026-11-26: ~19% of the reactor's time was the log's write and flush, and
formatting the line, time zone included, about as much again). An event is a
dict made by Logger.emit for this one call and not changed after it, so
formatting it later on another thread reads the same values; its time
(log_time) was taken when it was logged.

The rules it keeps:
- Batches: the writer waits up to `interval` (`[log] flush_interval`) after a
  batch's first line, so one wake-up of its thread formats and writes many
  lines (a wake-up per line measured slower than writing on the reactor:
  each hands the GIL back and forth).
- Order: one queue and one thread per file, so lines leave as they came.
- Bounded: at most `limit` lines wait (`[log] queue_lines`). Past that a
  line is dropped, counted (mailgateway_log_lines_dropped_total) and, once
  the writer has caught up, one warning says how many were lost: a stalled
  disk must not grow the gateway's memory without end.
- Nothing lost at a stop: `close` (the top service's stop, and atexit)
  writes every waiting line; after it, and before `start`, lines are
  written at once on the caller's thread, so twistd's first lines (before
  it daemonizes: a thread does not survive fork) and last lines (after the
  reactor stopped) are there too. A forked child forgets the parent's queue.
A line in the queue when the process is killed (SIGKILL) is lost, as a
line in a libc stdio buffer would be.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import IO

from twisted.logger import ILogObserver, LogEvent, Logger
from zope.interface import provider

from gateway.logformat import classic_line
from gateway.metrics import REGISTRY

log = Logger(namespace="mailgateway")

DEFAULT_LIMIT = 10000
DEFAULT_INTERVAL = 0.1
# A batch this big is written without waiting for the rest of the interval.
_EARLY = 512

# What waits: a line, an event with its formatter, or work such as a rotation.
Item = str | tuple[Callable[[LogEvent], str | None], LogEvent] | Callable[[], object]

_writers: weakref.WeakSet[LineWriter] = weakref.WeakSet()


class LineWriter:
    """A file-like sink (write, flush) whose writes a thread of its own performs.

    `out` is a text file (sys.stdout, a twisted.python.logfile.LogFile). Only
    this writer touches it once it is handed over; `call` runs something that
    must not race the writes (LogFile.rotate on SIGUSR1) in the line order.
    """

    def __init__(self, out: IO[str], limit: int = DEFAULT_LIMIT,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.out = out
        self.limit = limit
        self.interval = interval
        self.dropped = 0  # lines lost to a full queue since the start
        self._reset()
        _writers.add(self)

    def _reset(self) -> None:
        # Also after fork, in the child: the parent's locks and thread are not ours.
        self._queue: deque[Item] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._io = threading.Lock()  # one writer of `out` at a time
        self._thread: threading.Thread | None = None
        self._closing = False
        self._unreported = 0

    # --- the logging threads' side ------------------------------------------------------

    def write(self, text: str) -> None:
        """A line (or lines) as text."""
        self._put_one(text)

    def observer(self, format_event: Callable[[LogEvent], str | None]) -> ILogObserver:
        """An ILogObserver whose events this writer formats (on its thread) and writes."""
        put = self._put_one

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            put((format_event, event))

        return observe

    def _put_one(self, item: Item) -> None:
        with self._ready:
            if self._thread is not None:
                if len(self._queue) >= self.limit:
                    self.dropped += 1
                    self._unreported += 1
                    REGISTRY.inc("mailgateway_log_lines_dropped_total")
                    return
                self._queue.append(item)
                if len(self._queue) in (1, _EARLY):
                    self._ready.notify()  # the first of a batch starts its wait; a big one ends it
                return
        with self._io:
            self._put([item])

    def flush(self) -> None:
        """Nothing to do here: the writer flushes after each batch (FileLogObserver calls
        this after every line)."""

    def call(self, work: Callable[[], object]) -> None:
        """Run `work` on the writer's thread after the lines logged before it (or now)."""
        with self._ready:
            if self._thread is not None:
                self._queue.append(work)  # not bounded: a rotation is never dropped
                self._ready.notify()
                return
        with self._io:
            work()

    # --- life --------------------------------------------------------------------------

    def start(self, limit: int | None = None, interval: float | None = None) -> None:
        """From now on lines are written by the writer's thread."""
        with self._ready:
            if limit is not None:
                self.limit = limit
            if interval is not None:
                self.interval = interval
            if self._thread is not None:
                return
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="log writer", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write every waiting line, stop the thread; later lines are written at once."""
        with self._ready:
            thread = self._thread
            if thread is None:
                return
            self._closing = True
            self._ready.notify()
        if thread is not threading.current_thread():
            thread.join(timeout)
        with self._ready:
            # Lines that came while the thread was finishing; under the lock, so that
            # none written from now on (at once, by their caller) can pass them.
            left, self._queue = list(self._queue), deque()
            self._thread = None
            with self._io:
                self._put(left)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._closing and len(self._queue) < _EARLY:
                    # Let the batch gather: one wake-up (and one turn of the GIL away
                    # from the reactor) per interval, not one per line.
                    self._ready.wait(self.interval)
                if not self._queue:  # closing, and all written
                    return
                batch, self._queue = list(self._queue), deque()
                unreported, self._unreported = self._unreported, 0
            with self._io:
                self._put(batch)
            if unreported:
                # Logged again through the observers, so it reads like every line.
                log.warn("log: {count} lines dropped: the log writer fell behind "
                         "([log] queue_lines = {limit})", count=unreported, limit=self.limit)

    def _put(self, batch: list[Item]) -> None:
        text: list[str] = []
        for item in batch:
            if isinstance(item, str):
                text.append(item)
            elif isinstance(item, tuple):
                line = _formatted(*item)
                if line:
                    text.append(line)
            else:
                self._write(text)
                text = []
                item()
        self._write(text)

    def _write(self, text: list[str]) -> None:
        if text:
            self.out.write("".join(text))
            self.out.flush()


def _formatted(format_event: Callable[[LogEvent], str | None], event: LogEvent) -> str | None:
    try:
        return format_event(event)
    except Exception as e:  # noqa: BLE001 (a line that cannot be formatted must not stop the log)
        return f"log: an event could not be formatted: {e!r}: {event.get('log_format')!r}\n"


def start_all(limit: int, interval: float = DEFAULT_INTERVAL) -> None:
    """Start every writer of this process (the top service's start, after any fork)."""
    for writer in list(_writers):
        writer.start(limit, interval)


def close_all() -> None:
    """Write what waits and stop every writer: the top service's stop, and at exit."""
    for writer in list(_writers):
        writer.close()


def _forget_in_child() -> None:
    for writer in list(_writers):
        writer._reset()


atexit.register(close_all)
os.register_at_fork(after_in_child=_forget_in_child)


def text_observer(out: IO[str], limit: int = DEFAULT_LIMIT) -> tuple[ILogObserver, LineWriter]:
    """twistd's own text log (the same lines as its --logfile/stdout observer), written
    by a LineWriter; the writer is returned for `call` (log rotation)."""
    writer = LineWriter(out, limit)
    return writer.observer(classic_line), writer
