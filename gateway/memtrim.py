"""Give the heap memory a big one-off job freed back to the system (glibc's malloc_trim).

Used by store/folder.py (opening a folder of 100,000 messages) and
access/imap/search.py (a SEARCH that read as many): such a job allocates
tens of MiB of short-lived objects, and glibc keeps the freed pages in the
process for good, so a gateway that once opened a big folder would stay
that big (bench/RESULTS.md, 2026-11-23: 330 MiB RSS, 145 MiB after a
malloc_trim). Elsewhere than glibc this does nothing.

paused_gc() serves the same jobs while they run: they build some 100,000
objects without reference cycles (a folder's Message rows, search field
rows), and each collection the allocations trigger walks every object the
process holds, so a first SELECT of 100,000 messages spent a third of its
CPU in the cycle collector (bench/RESULTS.md, 2026-11-27).
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

BIG_JOB = 10_000  # messages: below this a job's garbage is too small to matter

_trim: Callable[[int], int] | None = None
_looked = False


def release() -> None:
    """malloc_trim(0): free pages go back to the kernel. Takes milliseconds; any thread."""
    global _trim, _looked
    if not _looked:
        _looked = True
        if sys.platform.startswith("linux"):
            try:
                _trim = ctypes.CDLL("libc.so.6").malloc_trim  # not musl: no such symbol
            except (OSError, AttributeError):
                _trim = None
    if _trim is not None:
        _trim(0)


_pauses = 0  # jobs inside paused_gc(), in any thread
_resume = False  # the collector was on when the first of them began
_pause_lock = threading.Lock()


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while the block runs (any thread; nested and
    concurrent blocks count: the collector resumes when the last one ends). Cycles
    made meanwhile, here or in other threads, are collected after it."""
    global _pauses, _resume
    with _pause_lock:
        _pauses += 1
        if _pauses == 1:
            _resume = gc.isenabled()
            gc.disable()
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _resume:
                gc.enable()


def after(count: int) -> None:
    """release() after a job over count messages, if that is a big one."""
    if count >= BIG_JOB:
        release()
