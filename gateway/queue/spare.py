"""Spare files: the spool's finished files kept for the next entries to write over.

Where it sits: under the spool (queue/spool.py). A removed entry's files are
renamed into <queue>/spare/ instead of unlinked; a new entry's tmp/ID.msg and
tmp/ID.env are renamed out of spare/, cut to the new length and written over in
place (durable.write_file over=True) instead of created. Like PostgreSQL's
recycling of WAL segments.

Why: creating a file allocates an inode, and ext4 without a journal (the
benchmark machine's root file system) skips, one by one, every inode of the
group freed in the last minute or more (fs/ext4/ialloc.c, recently_deleted());
so with two spool files deleted per message, each create scanned thousands
of freed inodes: measured a quarter of the gateway's CPU (perf, bench/RESULTS.md
2026-11-27 06:20), creates from 57 us to over 250 us. A reused file allocates
no inode and frees none, so the Maildir's one create per message scans
nothing either. Elsewhere it saves the inode's set-up and tear-down. Written
over in place, a file keeps its blocks too: emptying it when given (truncate to
0, then allocating again when written) was a tenth of the gateway's CPU in a
py-spy profile of mailbox_bench (bench/RESULTS.md 2026-11-27 09:22).

What it does not change: a spare file is no part of any entry (recovery never
looks in spare/), and the spool's order of durable steps stays the same (a
reused file is synced exactly as a new one would be, its new length with its
data). A spare file keeps the text of the message it held until it is
reused, in the spool's private directory, as the unlinked file's blocks keep
it on the disk.

At most `limit` files wait (`[queue] spare_files`; 0: off, every file is
unlinked). Names are kept in memory; the spool's two users in two processes
(the listeners take, the runner process gives) learn of each other's by
listing spare/ when they run out (taker) or reach the limit (giver), at most
once per LIST_AFTER calls. Thread-safe: the spool's lanes run in pool threads.
"""

from __future__ import annotations

import os
import threading

# Calls between two listings of spare/ that found nothing new (a taker that found
# spare/ empty, or a giver that found it full), so that neither lists it per message.
LIST_AFTER = 64


class SpareFiles:
    def __init__(self, directory: str, limit: int):
        self.directory = directory
        self.limit = limit
        self._dir = directory.rstrip(os.sep) + os.sep
        self._names: list[str] = []
        self._lock = threading.Lock()
        self._take_skips = 0  # takes left before spare/ is listed again (found empty)
        self._give_skips = 0  # gives left before spare/ is listed again (found full)

    def take(self, path: str) -> bool:
        """Move a spare file to path (to be written over in place): True, or False
        when there is none (the caller creates path)."""
        if self.limit <= 0:
            return False
        while True:
            name = self._pop()
            if name is None:
                return False
            try:
                os.rename(self._dir + name, path)
                return True
            except FileNotFoundError:
                continue  # taken by the other process, or cleared by hand

    def give(self, path: str) -> None:
        """Remove path from where it is: into spare/ while there is room, else
        unlinked. A missing path is no error (removed already)."""
        name = os.path.basename(path)
        if self.limit > 0 and self._room():
            try:
                os.rename(path, self._dir + name)
            except FileNotFoundError:
                return
            except OSError:
                pass  # spare/ gone or on another file system: unlink as before
            else:
                with self._lock:
                    self._names.append(name)
                return
        self._unlink(path)

    def count(self) -> int:
        """Spare files known to this process."""
        with self._lock:
            return len(self._names)

    # -- inside --

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def _pop(self) -> str | None:
        with self._lock:
            if self._names:
                return self._names.pop()
            if self._take_skips > 0:
                self._take_skips -= 1
                return None
        names = self._list()
        with self._lock:
            if not names:
                self._take_skips = LIST_AFTER
                return None
            known = set(self._names)
            self._names.extend(n for n in names if n not in known)
            return self._names.pop() if self._names else None

    def _room(self) -> bool:
        with self._lock:
            if len(self._names) < self.limit:
                return True
            if self._give_skips > 0:
                self._give_skips -= 1
                return False
        names = self._list()  # the other process may have taken some
        with self._lock:
            self._names = names[:self.limit]
            if len(self._names) < self.limit:
                return True
            self._give_skips = LIST_AFTER
            return False

    def _list(self) -> list[str]:
        try:
            return [n for n in os.listdir(self.directory) if not n.startswith(".")]
        except FileNotFoundError:
            return []
