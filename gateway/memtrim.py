"""Give the heap memory a big one-off job freed back to the system (glibc's malloc_trim).

Used by store/folder.py (opening a folder of 100,000 messages) and
access/imap/search.py (a SEARCH that read as many): such a job allocates
tens of MiB of short-lived objects, and glibc keeps the freed pages in the
process for good, so a gateway that once opened a big folder would stay
that big (bench/RESULTS.md, 2026-11-23: 330 MiB RSS, 145 MiB after a
malloc_trim). Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

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


def after(count: int) -> None:
    """release() after a job over count messages, if that is a big one."""
    if count >= BIG_JOB:
        release()
