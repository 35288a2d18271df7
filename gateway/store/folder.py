"""One Maildir folder with IMAP UIDs: the Maildir files plus their Index, kept in step.

Sits in store/, between the Maildir on disk (written by deliver/maildir,
POP3, mutt, mbsync ...) and access/imap (which reads and changes it through
the methods here). One Folder object per folder directory per process
(store/folders.py keeps the registry), shared by every IMAP session that has
the folder selected; its lock serialises changes. Methods block (disk I/O):
access/imap runs them in the reactor's thread pool.

Maildir rules (cr.yp.to/proto/maildir.html, and Dovecot's reading of them):
system flags live in the file name's info, "<unique>:2,<letters>" with the
letters in ASCII order: D Draft, F Flagged, P Passed ($Forwarded), R Replied
(Answered), S Seen, T Trashed (Deleted). Lower-case letters are keywords,
numbered in the folder's dovecot-keywords file as Dovecot does
(store/keywords.py); a letter that file does not name is kept untouched. The
index holds each message's keywords too (Message.kw): those past the 26
letters live there only.

Finding changes: the gateway's own changes (deliveries, STORE, APPEND, COPY,
EXPUNGE) update the index as they happen, so they never cost a listing: a
delivery into new/ is learned from the name it wrote (arrived(), then
index_arrived() and publish_arrived()), whatever the folder's size. Other
programs (mutt, a POP3 session, a second gateway) are found by directory
mtimes: an mtime changes whenever a file is added, removed or renamed in the
directory, so sync() stats new/ and cur/ and lists one only when its mtime
differs from the one recorded. Two rules keep that honest:
- An mtime less than two seconds old when recorded may hide a second change
  made within the same clock tick of the file system, so such a record is
  checked by one more listing once that mtime is two seconds old (not at
  every sync: during a burst of deliveries that would be a listing each time).
- Around our own renames the mtime is recorded before and after (_own_changes);
  a foreign change inside that same tick is the one thing this cannot see, so
  a full listing every five minutes (_RELIST_NS) bounds how long it can hide.
The index keeps what each listing saw (directory identity, mtime, whether it
had settled, when it was listed: Index.note_listed), so a restart whose
directories are unchanged lists nothing either; the same two rules apply to
that record, and a directory replaced meanwhile has another identity.

A folder deleted, or deleted and made again, by another program (a second
gateway, a restore, mbsync) is noticed by the same stats: new/ or cur/ is
missing or is another directory (device and inode). Its Folder is then
"gone" (lose()): its UIDs, keywords and cached summaries belong to messages
that no longer exist, so sessions that have it selected are disconnected
and the registry (store/folders.py) opens the directory afresh, with the
index found there or a new one with a new UIDVALIDITY (RFC 3501 2.3.1.1).
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from twisted.logger import Logger

from gateway import memtrim
from gateway.durable import (
    before_durable,
    fsync_dir,
    rides_dir_sync,
    sync_dir,
    syncfs_available,
    syncfs_of,
    when_durable,
)
from gateway.store import fieldpack, nameorder, quota
from gateway.store.index import VANISHED_LIMIT, Index
from gateway.store.keywords import LETTERS, KeywordTable
from gateway.store.listing import UNKNOWN, Listing, Row

SUBS = ("new", "cur")
# IMAP system flag <-> Maildir info letter. \Recent is per session, never stored.
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "$Forwarded": "P", "\\Answered": "R",
                "\\Seen": "S", "\\Deleted": "T"}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}
_STABLE_NS = 2_000_000_000
_RELIST_NS = 300 * 1_000_000_000
# While the runner process delivers into a folder (told names within this long),
# new/'s changes are its renames on their way here by name: sync() does not list
# new/ for them (Folder.arrived_elsewhere).
_TOLD_GRACE_NS = 2_000_000_000
_counter = itertools.count()
_now_ns = time.time_ns  # the clock mtimes are compared with (tests move it)
_log = Logger()
HEAD_READ = 8192  # the first read of a message's head: nearly every header block fits
READ_AHEAD = 64  # [mailbox] read_ahead: files heads() opens ahead of the one it reads
# A listing that finds at least this many new files (a first SELECT of a folder
# never opened) does not stat them: their size and date are learned when first
# asked (Message.size), their UIDs follow the time in their names, as Dovecot's
# (maildir_time_cmp). Fewer files are stat'ed at once and take UIDs in mtime order.
LAZY_STAT = 1000
# Such a first listing answers before the index has a row per message (the listing
# saved whole is their record: Index.add_unwritten); write_rows() writes them after,
# this many per transaction, pausing ROWS_PAUSE seconds between for other commands.
ROWS_CHUNK = 5000
ROWS_PAUSE = 0.002
_WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)  # not on every system
_HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def new_unique() -> str:
    """A Maildir unique name: time.M<usec>P<pid>Q<counter>.host (the 2006 convention)."""
    now = time.time()
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(_counter)}.{_HOST}"


class Uncached(Exception):
    """Reading the message would wait: its file is not wholly in the page cache, or has
    moved (finding it again is a rescan). Folder.read_cached's caller goes to the pool."""


class Message:
    """One message's row, a copy made by Listing.get(); the folder writes changes back."""

    __slots__ = ("uid", "base", "sub", "suffix", "kw", "_size", "_idate", "modseq", "owner")

    def __init__(self, uid: int, base: str, sub: str, suffix: str, kw: str, size: int,
                 idate: int, modseq: int = 0, owner: Listing | None = None) -> None:
        self.uid, self.base, self.sub, self.suffix = uid, base, sub, suffix
        self.kw, self._size, self._idate = kw, size, idate
        self.modseq = modseq  # RFC 7162: raised with each change of flags or keywords
        self.owner = owner  # who learns size and date when the row has none (UNKNOWN)

    @property
    def size(self) -> int:
        if self._size == UNKNOWN:
            self._learn()
        return self._size

    @property
    def idate(self) -> int:
        if self._idate == UNKNOWN:
            self._learn()
        return self._idate

    def _learn(self) -> None:
        """A first listing of a big folder left size and date to be learned when
        asked (see Folder._index_found): one stat now."""
        if self.owner is not None:
            self._size, self._idate = self.owner.learn(self.uid, self.relpath())
        else:
            self._size = self._idate = 0

    @property
    def letters(self) -> str:
        return self.suffix[3:] if self.suffix.startswith(":2,") else ""

    def flags(self) -> list[str]:
        """IMAP flags: system flags from the file name, then keywords."""
        out = [LETTER_FLAGS[c] for c in self.letters if c in LETTER_FLAGS]
        if self.kw:
            out.extend(self.kw.split(" "))
        return out

    def relpath(self) -> str:
        return f"{self.sub}/{self.base}{self.suffix}"


class FolderListener(Protocol):
    """A session's view of the folder (access/imap/mailbox.py)."""

    def folder_changed(self, expunged: list[int], flagged: list[int], added: list[int]) -> None:
        """Called under the folder's lock, in whatever thread made the change."""

    def wake(self) -> None:
        """Called through the store's announce hook (the reactor thread in the gateway)."""


def suffix_with(letters: Iterable[str], old_suffix: str) -> str:
    """The ':2,' info for these flag and keyword letters, keeping other characters."""
    keep = [c for c in old_suffix[3:] if c not in LETTER_FLAGS and c not in LETTERS] \
        if old_suffix.startswith(":2,") else []
    return ":2," + "".join(sorted(set(letters) | set(keep)))


class Folder:
    def __init__(self, path: Path, announce: Callable[[Callable[[], None]], Any],
                 vanished_limit: int = VANISHED_LIMIT, read_ahead: int = READ_AHEAD,
                 background: Callable[[Callable[[], None]], Any] | None = None) -> None:
        """background(f): run f later in a thread of its own, off the answer's path (the
        gateway: a pool thread a moment after); None: rows a big first listing left
        unwritten are written by the folder's next change (write_rows())."""
        self.path = Path(path)
        # new/, cur/ and tmp/ as strings: joined once, not by pathlib at every change
        # (a tenth of an APPEND's CPU went to building Paths).
        self.dirs = {sub: os.path.join(self.path, sub) for sub in ("new", "cur", "tmp")}
        self.read_ahead = read_ahead
        self.announce = announce
        self.background = background
        self._writing = False  # write_rows() is queued or running
        self._closed = False
        self.lock = threading.RLock()
        self.listeners: set[FolderListener] = set()
        self.recent: set[int] = set()  # found in new/, not yet claimed by a session
        self._seen: dict[str, tuple[int, bool] | None] = {"new": None, "cur": None}
        self._arrived: list[str] = []  # renamed into new/ by arrived(), not yet indexed
        self._told_until = 0  # _now_ns() until which new/ changes are the runner's (told)
        # Indexed by index_arrived(), not yet published: (UIDs, rows, modseq) batches.
        self._staged: list[tuple[list[int], list[Row], int]] = []
        self._listed: dict[str, int] = {}  # when each directory was last listed
        # Which directories new/ and cur/ are: another one there means the folder
        # was deleted and made again behind our back (see the module docstring).
        self._dirs = {sub: _identity(os.stat(self.dirs[sub])) for sub in SUBS}
        self.gone = False  # deleted or replaced on disk: never serve its data again
        self.index = Index(self.path, vanished_limit)
        # The index file too: a directory made again may get the inode number the
        # deleted one had (file systems reuse them), its index file is new anyway.
        self._index_id = _identity(os.stat(self.index.path))
        self.uidvalidity = self.index.uidvalidity
        self.keywords = KeywordTable(self.path)
        # Every keyword the folder has known, in the order learned; it only grows,
        # so a session announces (FLAGS) what lies past the count it has told.
        self.keyword_names: list[str] = []
        self._keyword_set: set[str] = set()
        self._learn(self.keywords.by_name)
        # The messages as columns (store/listing.py), not one object each: from the
        # packed copy the index keeps when the rows have not changed since it was
        # saved, else from the rows; with the cycle collector paused (100,000 rows
        # of a first listing hold no cycles: memtrim.paused_gc).
        with memtrim.paused_gc():
            self.by_uid = Listing(Message, str(self.path))
            self._flag_lists: dict[int, list[str]] = {}  # flags(), by state number
            packed = self.index.load_listing()
            if packed is None or not self.by_uid.unpack(packed):
                if self.index.unwritten is not None:
                    self._index_lost()
                packed = None
                self.by_uid.load(self.index.rows())
            # Rows a big first listing left unwritten come from the columns.
            self.index.unwritten_rows = self.by_uid.rows_from
            for _, _, kw in self.by_uid.states:  # distinct (sub, suffix, kw): a handful
                if kw:
                    self._learn(kw.split(" "))
            self._by_base: set[str] | None = None  # built when first asked
            self._snapshot: array[int] | None = None  # uids, shared by sessions (snapshot())
            self.in_new: set[int] = set(self.by_uid.where_sub("new"))
            # What the last listing saw, if the index recorded it for these very
            # directories: an unchanged one is not listed again (the rules of the
            # module docstring apply to the record as to one taken in this process).
            for sub, (dev, ino, mtime, stable, listed) in self.index.dirs_listed().items():
                if (dev, ino) == self._dirs[sub]:
                    self._seen[sub], self._listed[sub] = (mtime, bool(stable)), listed
            if (self.sync() or packed is None) and not self.gone:
                self.keep_listing()
            self._write_later()
        memtrim.after(len(self.uids))  # the rows and the listing were garbage

    def _index_lost(self) -> None:
        """The index has messages without rows and no usable listing of them (damaged):
        their UIDs are unknown, so it is set aside and the folder indexed afresh with a
        new UIDVALIDITY (RFC 3501 2.3.1.1), as for a lost index."""
        _log.error("index of {path}: rows unwritten and their listing unusable; rebuilding",
                   path=str(self.path))
        self.index.close()
        os.replace(self.index.path, self.index.path.with_name(self.index.path.name + ".broken"))
        for extra in ("-wal", "-shm"):
            Path(str(self.index.path) + extra).unlink(missing_ok=True)
        self.index = Index(self.path, self.index.vanished_limit)
        self._index_id = _identity(os.stat(self.index.path))
        self.uidvalidity = self.index.uidvalidity

    def _write_later(self) -> None:
        """Have write_rows() run in the background if rows are unwritten."""
        if self.index.unwritten is not None and self.background is not None \
                and not self._writing:
            self._writing = True
            self.background(self.write_rows)

    def write_rows(self) -> None:
        """Write the index rows a big first listing left for after its answer
        (Index.add_unwritten), ROWS_CHUNK per transaction and per hold of the lock, so
        the folder's other commands wait for one chunk at most, not for 100,000 rows."""
        try:
            while True:
                with self.lock:
                    if self.gone or self._closed or \
                            not self.index.write_unwritten(ROWS_CHUNK):
                        return
                time.sleep(ROWS_PAUSE)  # a command waiting for the lock takes it now
        except Exception:  # the next change of the folder writes them instead
            _log.failure("writing the index rows of {path}", path=str(self.path))
        finally:
            self._writing = False

    @property
    def uids(self) -> list[int]:
        """Every UID, ascending (the columns' own list: never change it in place)."""
        return self.by_uid.uids

    def keep_listing(self) -> None:
        """Save the columns in the index (Index.save_listing), so the next open of
        an unchanged folder reads one record instead of every row; sizes and dates
        learned since the rows were written go to the rows first."""
        with self.lock:
            try:
                learned = self.by_uid.take_learned()
                if learned:
                    self.index.put_sizes(learned)
                elif self.index.listing_current:
                    return  # saved as it is (a big first listing saves its own)
                self.index.save_listing(self.by_uid.pack())
            except Exception:  # a cache: the next open reads the rows instead
                _log.failure("saving the listing of {path}", path=str(self.path))

    @property
    def by_base(self) -> set[str]:
        """The Maildir unique names held; built on first use (a listing, a delivery),
        not at open: a restart whose directories are unchanged never needs it."""
        if self._by_base is None:
            self._by_base = set(self.by_uid.bases)
        return self._by_base

    def snapshot(self) -> Sequence[int]:
        """The UIDs now, as one compact read-only array shared by every session that
        selects the folder while it is unchanged: a session keeps its own list only
        while its numbering differs from the folder's (RFC 3501 7.4.1), so 200
        sessions of a 100,000-message folder hold one 400 KB array, not 200 lists."""
        with self.lock:
            if self._snapshot is None:
                self._snapshot = array("I", self.uids)  # UIDs are 32-bit (RFC 3501 2.3.1.1)
            return self._snapshot

    @property
    def uidnext(self) -> int:
        return self.index.uidnext

    @property
    def highestmodseq(self) -> int:
        """RFC 7162 HIGHESTMODSEQ: raised by every arrival, flag change and expunge."""
        return self.index.highestmodseq

    def vanished_since(self, modseq: int) -> list[tuple[int, int]]:
        """UID ranges expunged after modseq (QRESYNC), ascending. When the index has
        forgotten expunges that old (index.py VANISHED_LIMIT), every UID below UIDNEXT
        that no message has: RFC 7162 3.2.5.1 and 6 let a server that does not remember
        send all such UIDs in VANISHED (EARLIER), as Dovecot does."""
        with self.lock:
            gone = self.index.vanished_since(modseq)
            if gone is not None:
                return [(u, u) for u in gone]
            out, last = [], 0
            for u in [*self.uids, self.uidnext]:
                if u > last + 1:
                    out.append((last + 1, u - 1))
                last = u
            return out

    def close(self) -> None:
        with self.lock:
            self.keep_listing_if_stale()
            self._closed = True  # write_rows() stops
            self.index.close()

    def keep_listing_if_stale(self) -> None:
        """keep_listing() when the rows changed since it was saved, or sizes were
        learned: at shutdown (MaildirStore.keep_listings), so the next start reads
        the record, not every row. Rows a big first listing left unwritten are written
        first: the next start then has no writing left to do beside its first commands."""
        with self.lock:
            if self.gone:
                return
            try:
                while self.index.write_unwritten(ROWS_CHUNK * 20):
                    pass
                stale = self.by_uid.has_learned() or self.index.load_listing() is None
            except Exception:  # a cache: at worst the next open reads the rows
                _log.failure("checking the listing of {path}", path=str(self.path))
                return
            if stale:
                self.keep_listing()

    # -- finding changes on disk ---------------------------------------------

    def _listing(self, sub: str, force: bool) -> list[str] | None:
        d = self.dirs[sub]
        now = _now_ns()
        st = os.stat(d)  # FileNotFoundError: the folder was deleted
        if _identity(st) != self._dirs[sub]:
            raise FileNotFoundError(f"{d} was replaced")
        mtime = st.st_mtime_ns
        if not force and self._fresh(sub, mtime, now):
            return None
        names = os.listdir(d)
        self._seen[sub] = (mtime, now - mtime > _STABLE_NS)
        self._listed[sub] = now
        return names

    def _fresh(self, sub: str, mtime: int, now: int) -> bool:
        """Nothing in sub to list: what we last listed still holds."""
        seen = self._seen[sub]
        if seen is None:
            return False
        if sub == "new" and now < self._told_until:
            # The runner process is renaming files into new/ and tells each by name
            # moments later (arrived_elsewhere, which then records new/'s mtime): a
            # listing now would only race its messages (an IMAP client polling STATUS
            # had new/ listed at every poll while mail came in). As there, a foreign
            # change meanwhile waits for the next listing.
            return True
        # Unchanged since we last looked (or changed only by us); a record taken
        # while the mtime was fresh waits until it has settled.
        return seen[0] == mtime and now - self._listed.get(sub, 0) < _RELIST_NS \
            and (seen[1] or now - mtime < _STABLE_NS)

    def looks_unchanged(self) -> bool:
        """Whether sync() would find nothing to do, seen without waiting: the folder's
        lock free, the index file and the directories as last seen (stat()s only). So
        a NOOP is answered on the spot, without a trip to the pool; False when unsure
        (sync() in the pool looks)."""
        if not self.lock.acquire(blocking=False):
            return False  # a pool thread is at work on the folder
        try:
            if self.gone or self._staged:
                return False
            if _identity(os.stat(self.index.path)) != self._index_id:
                return False
            now = _now_ns()
            for sub in SUBS:
                st = os.stat(self.dirs[sub])
                if _identity(st) != self._dirs[sub] or not self._fresh(sub, st.st_mtime_ns,
                                                                      now):
                    return False
            return True
        except OSError:
            return False
        finally:
            self.lock.release()

    @contextmanager
    def _own_changes(self, subs: tuple[str, ...] = SUBS) -> Iterator[None]:
        """Around our own renames/links/unlinks: if nobody else had changed a
        directory since we last looked, its new mtime is ours and needs no listing."""
        before = {sub: os.stat(self.dirs[sub]).st_mtime_ns for sub in subs}
        try:
            yield
        finally:
            for sub in subs:
                seen = self._seen[sub]
                if seen is not None and seen[0] == before[sub]:
                    self._seen[sub] = (os.stat(self.dirs[sub]).st_mtime_ns, seen[1])

    # -- deliveries: learned from the delivery itself, never by listing ----------

    def arrived(self, tmp: Path, name: str) -> None:
        """Rename a delivered file from tmp/ into new/ as name (under the lock, so
        the change is known to be ours); index_arrived() then indexes it."""
        with self.lock:
            with self._own_changes(("new",)):
                os.rename(tmp, os.path.join(self.dirs["new"], name))
            self._arrived.append(name)

    def index_arrived(self) -> None:
        """Give the files arrived() put into new/ their UIDs, in arrival order and one
        transaction: one stat per file, whatever the folder holds. publish_arrived()
        shows them to sessions once they are durable. In a trip whose directory sync
        is a syncfs, the index commit rides that sync (no fsync of its own).

        The files are delivered already, so a failure here is logged, not raised:
        the next sync() lists new/ and finds them."""
        with self.lock:
            names, self._arrived = self._arrived, []
            fresh = []
            for name in names:
                base, sep, info = name.partition(":")
                if base not in self.by_base:  # a sync() may have found it first
                    fresh.append((base, "new", sep + info))
            try:
                staged = self._index_found(fresh, synced=not rides_dir_sync())
            except Exception:
                self._seen["new"] = None
                _log.failure("indexing deliveries in {path}", path=str(self.path))
                return
            # Known: a sync() meanwhile must not add them again.
            self.by_base.update(row[0] for row in staged[1])
            self._staged.append(staged)

    def arrived_elsewhere(self, names: list[str]) -> None:
        """Files the runner process (gateway/runnerproc) renamed into new/, told by
        name: indexed as this process's own deliveries are, without a listing, and
        published. new/'s mtime is then taken as known: every change
        there since the last look is taken for that process's, each told by name.
        A foreign change in that window waits for the five-minute listing, as one
        inside an own rename's clock tick does; a runner that dies before telling
        what it renamed is covered by relist()."""
        with self.lock:
            if self.gone:
                return
            self._arrived.extend(names)
            seen = self._seen["new"]
            if seen is not None:
                self._seen["new"] = (os.stat(self.dirs["new"]).st_mtime_ns, seen[1])
            self._told_until = _now_ns() + _TOLD_GRACE_NS
        # As a delivery's: in a trip (gateway/durable.py) the index commit rides the
        # trip's sync; sessions hear of the messages once the index is durable.
        before_durable(self.index_arrived)
        sync_dir(self.path / "new")
        when_durable(self.publish_arrived)

    def relist(self) -> None:
        """The next sync() lists new/ and cur/ whatever their mtimes."""
        with self.lock:
            self._seen = {sub: None for sub in SUBS}
            self._told_until = 0

    def pending(self) -> bool:
        """Deliveries renamed in and not yet published, or index rows being written in
        the background (the registry keeps such a folder: a second Folder of the same
        directory would index them too)."""
        return bool(self._arrived or self._staged or self._writing)

    def publish_arrived(self) -> list[int]:
        """Show what index_arrived() indexed to the sessions (EXISTS, IDLE); its UIDs."""
        with self.lock:
            staged, self._staged = self._staged, []
            added = [u for batch in staged for u in self._publish(batch)]
            if added:
                self._notify([], [], added, None)
            return added

    def sync(self, force: bool = False) -> bool:
        """Bring the index in line with the Maildir; True when anything changed."""
        with self.lock:
            if self.gone:
                return False
            if self._staged:  # UIDs taken before any this sync hands out: theirs come first
                self.publish_arrived()
            try:
                if _identity(os.stat(self.index.path)) != self._index_id:
                    raise FileNotFoundError(f"{self.index.path} was replaced")
                listings = {sub: names for sub in SUBS
                            if (names := self._listing(sub, force)) is not None}
            except FileNotFoundError:  # deleted, or replaced by another directory
                self.lose()
                return True
            if not listings:
                return False
            if self.keywords.reload():  # another program numbered new keywords
                self._learn(self.keywords.by_name)
            if not self.uids and len(listings) == len(SUBS) and \
                    sum(map(len, listings.values())) >= LAZY_STAT:
                added = self._index_listed(listings)
                self._noted(listings)
                if added:
                    self._notify([], [], added, None)
                    self._write_later()
                return bool(added)
            found: dict[str, tuple[str, str]] = {}
            for sub, names in listings.items():
                for name in names:
                    if name[:1] == ".":
                        continue
                    base, sep, info = name.partition(":")
                    # A copy in both new/ and cur/ (a crash mid-rename): cur/ wins.
                    if base not in found or sub == "cur":
                        found[base] = (sub, sys.intern(sep + info))  # few distinct ones
            candidates = self.by_uid.positions(None if "cur" in listings
                                               else sorted(self.in_new))
            gone, changed = [], []
            for uid, base, sub, suffix in candidates:
                where = found.get(base)
                if where is None:
                    if sub in listings:
                        gone.append(uid)
                elif where != (sub, suffix):
                    changed.append((self.by_uid[uid], *where))
            if self.uids:
                fresh = [(base, sub, suffix) for base, (sub, suffix) in found.items()
                         if base not in self.by_base]
            else:  # a first listing: every name is new (by_base is built when needed)
                fresh = [(base, sub, suffix) for base, (sub, suffix) in found.items()]
            added = self._add_found(fresh)
            flagged = []
            for m, sub, suffix in changed:
                if m.letters != suffix[3:]:
                    flagged.append(m.uid)
                    m.kw = self._kw_of(suffix, m.kw)  # renamed by another Maildir program
                self._moved(m, sub, suffix)
            self._bumped(self.index.update(
                [(m.uid, m.sub, m.suffix, m.kw) for m, _, _ in changed], flagged), flagged)
            self._forget(gone)
            self._noted(listings)
            if gone or flagged or added:
                self._notify(gone, flagged, added, None)
            return bool(gone or changed or added)

    def _noted(self, listings: dict[str, list[str]]) -> None:
        for sub in listings:  # the rows match these listings now
            mtime, stable = self._seen[sub]  # type: ignore[misc]
            self.index.note_listed(sub, (*self._dirs[sub], mtime, stable, self._listed[sub]))

    def _index_listed(self, listings: dict[str, list[str]]) -> list[int]:
        """The first listing of a big folder (a migrated mailbox, an index lost): each
        file gets a UID in name-time order (store/nameorder.py), no stat (LAZY_STAT),
        and no Python object nor index row of its own before the answer: the columns
        are filled whole (Listing.fill) and saved packed as the record of the UIDs
        (Index.add_unwritten); write_rows() writes the rows after. Returns the UIDs."""
        cur = listings["cur"]
        new = listings["new"]
        if new:  # a copy in both new/ and cur/ (a crash mid-rename): cur/ wins
            in_cur = {n.partition(":")[0] for n in cur}
            new = [n for n in new if n[:1] != "." and n.partition(":")[0] not in in_cur]
        names = nameorder.by_time(cur + new if new else cur)
        if names and not names[0][:1].isdigit():  # dot files sort first (or with such)
            names = [n for n in names if n[:1] != "."]
        if not names:
            return []
        infos = nameorder.infos(names)
        # A folder has few distinct infos: their keywords are worked out once each.
        ids = {info: self.by_uid.state_id("cur", info, self._kw_of(info))
               for info in dict.fromkeys(infos)}
        state = array("I", map(ids.__getitem__, infos))
        if new:
            fresh = set(new)
            for i, name in enumerate(names):
                if name in fresh:
                    state[i] = self.by_uid.state_id("new", infos[i], self._kw_of(infos[i]))
        bases = nameorder.bases(names).encode("utf-8", "surrogateescape")

        def fill(first: int, modseq: int) -> bytes:
            self.by_uid.fill(first, state, bases, modseq)
            return self.by_uid.pack()

        try:
            first, _ = self.index.add_unwritten(len(names), fill)
        except BaseException:
            self.by_uid.clear()  # none of it is in the index
            raise
        uids = list(range(first, first + len(names)))
        self._by_base = None  # built from the columns when first asked
        self._snapshot = None
        if new:
            fresh_uids = self.by_uid.where_sub("new")
            self.in_new.update(fresh_uids)
            self.recent.update(fresh_uids)
        return uids

    def _add_found(self, fresh: list[tuple[str, str, str]]) -> list[int]:
        return self._publish(self._index_found(fresh))

    def _index_found(self, fresh: list[tuple[str, str, str]], synced: bool = True
                     ) -> tuple[list[int], list[Row], int]:
        """UIDs in the index for these (base, sub, suffix), with their rows and modseq;
        not yet in by_uid."""
        entries = []
        folder = str(self.path)  # a str path: pathlib's joins cost more than the stat
        if len(fresh) >= LAZY_STAT:
            return self._index_unstated(fresh, synced)
        for base, sub, suffix in fresh:
            try:
                st = os.stat(f"{folder}/{sub}/{base}{suffix}")
            except FileNotFoundError:
                continue  # moved again while we looked: the next sync sees it
            entries.append((st.st_mtime_ns, base, sub, suffix, st.st_size))
        entries.sort()  # UIDs in arrival order; the unique name breaks ties
        # A folder has few distinct infos (":2,S", ":2,RS" ...): their keywords are
        # worked out once each, not once per message (a first SELECT of 100,000).
        kw_of: dict[str, str] = {}
        rows = []
        for mt, base, sub, suffix, size in entries:
            kw = kw_of.get(suffix)
            if kw is None:
                kw = kw_of[suffix] = self._kw_of(suffix)
            rows.append((base, sub, suffix, kw, size, mt // 1_000_000_000))
        uids = self.index.add(rows, synced)
        return uids, rows, self.index.highestmodseq

    def _index_unstated(self, fresh: list[tuple[str, str, str]], synced: bool
                        ) -> tuple[list[int], list[Row], int]:
        """_index_found() of many files without a stat each (LAZY_STAT): UIDs in the
        order of the time their names begin with, size and date UNKNOWN until asked."""
        # The order of a first listing's (store/nameorder.py), of the unique names.
        order = sorted(fresh, key=lambda f: nameorder.time_key(f[0]))
        # A folder has few distinct infos: their keywords are worked out once each.
        kw_of = {suffix: self._kw_of(suffix) for suffix in dict.fromkeys(o[2] for o in order)}
        rows = [(base, sub, suffix, kw_of[suffix], UNKNOWN, UNKNOWN)
                for base, sub, suffix in order]
        uids = self.index.add(rows, synced)
        return uids, rows, self.index.highestmodseq

    def _bumped(self, modseq: int | None, uids: Iterable[int]) -> None:
        """The in-memory side of Index.update(..., flagged): their new modseq."""
        if modseq is not None:
            self.by_uid.set_modseq(uids, modseq)

    # -- keywords: letters in file names, numbered in dovecot-keywords (keywords.py) --

    def _kw_of(self, suffix: str, old_kw: str = "") -> str:
        """Message.kw for a file name's info: its letters' keywords, then those of
        old_kw that have no letter (kept in the index only)."""
        # The file was read again at this sync's start (not per message: a rebuild
        # of 100,000 messages would stat it 100,000 times).
        letters = suffix[3:] if suffix.startswith(":2,") else ""
        names = self.keywords.names(letters)
        if old_kw:
            names += [k for k in old_kw.split(" ") if k not in self.keywords.by_name]
        self._learn(names)
        return " ".join(names)

    def _letters_for(self, system: Iterable[str], keywords: list[str], old: str = "") -> str:
        """Info letters for these system letters and keywords (slots given as needed),
        keeping letters of old that the keywords file does not name."""
        letters, _index_only = self.keywords.letters(keywords)
        foreign = [c for c in old if c in LETTERS and c not in self.keywords.by_letter]
        self._learn(keywords)
        return "".join(sorted(set(system) | set(letters) | set(foreign)))

    def _learn(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._keyword_set:
                self._keyword_set.add(name)
                self.keyword_names.append(name)

    def _publish(self, batch: tuple[list[int], list[Row], int]) -> list[int]:
        """Add a batch of _index_found() (UIDs ascending) to the columns, in one pass:
        a first SELECT publishes 100,000."""
        uids, rows, modseq = batch
        if not uids:
            return []
        self.by_uid.extend(uids, rows, modseq)  # AssertionError unless UIDs grow
        if self._by_base is not None:  # else built from the columns when first asked
            self._by_base.update(row[0] for row in rows)
        self._snapshot = None
        fresh = [u for u, row in zip(uids, rows, strict=True) if row[1] == "new"]
        self.in_new.update(fresh)
        self.recent.update(fresh)
        return list(uids)

    def _moved(self, m: Message, sub: str, suffix: str) -> None:
        m.sub, m.suffix = sub, suffix
        self.by_uid.put(m)
        if sub == "new":
            self.in_new.add(m.uid)
        else:
            self.in_new.discard(m.uid)

    def _forget(self, uids: list[int]) -> None:
        if not uids:
            return
        self.index.remove(uids)
        if self._by_base is not None:
            self._by_base.difference_update(base for _, base, _, _ in
                                            self.by_uid.positions(uids))
        self.by_uid.remove(uids)
        self.in_new.difference_update(uids)
        self.recent.difference_update(uids)
        self._snapshot = None

    def _notify(self, expunged: list[int], flagged: list[int], added: list[int],
                origin: FolderListener | None) -> None:
        for listener in list(self.listeners):
            if listener is not origin:
                listener.folder_changed(expunged, flagged, added)
                self.announce(listener.wake)

    def lose(self) -> None:
        """The folder was deleted or replaced: tell its sessions (they must leave it,
        View.pending()); the registry opens the directory afresh. The index stays
        open for threads still inside a call; it closes with the last reference."""
        with self.lock:
            if not self.gone:
                self.gone = True
                self._notify([], [], [], None)

    # -- sessions -------------------------------------------------------------

    def attach(self, listener: FolderListener) -> None:
        with self.lock:
            self.listeners.add(listener)

    def detach(self, listener: FolderListener) -> None:
        with self.lock:
            self.listeners.discard(listener)

    def claim_recent(self) -> set[int]:
        """Messages no session has seen yet; they move from new/ to cur/ (as Dovecot does)."""
        with self.lock:
            claimed, self.recent = self.recent, set()
            self._rename_all([(m, m.letters) for u in claimed
                              if (m := self.by_uid[u]).sub == "new"])
            return claimed

    def _rename_all(self, todo: list[tuple[Message, str]]) -> list[Message]:
        """Rename each message to cur/ with these letters; returns those renamed."""
        if not todo:
            return []
        done = []
        with self._own_changes():
            self._rename_each(todo, done)
        self.index.update((m.uid, m.sub, m.suffix, m.kw) for m in done)
        return done

    def _rename_each(self, todo: list[tuple[Message, str]], done: list[Message]) -> None:
        for m, letters in todo:
            suffix = suffix_with(letters, m.suffix)
            if m.sub == "cur" and suffix == m.suffix:
                continue
            try:
                os.rename(self.path / m.relpath(), self.path / "cur" / (m.base + suffix))
            except FileNotFoundError:
                continue  # renamed or removed by someone else: sync() will tell
            self._moved(m, "cur", suffix)
            done.append(m)

    # -- reading ----------------------------------------------------------------

    def message(self, uid: int) -> Message | None:
        return self.by_uid.get(uid)

    def flags(self, uid: int) -> list[str] | None:
        """Message.flags() of the message, None when it is not here. Worked out once
        per distinct (sub, suffix, kw): FETCH 1:* FLAGS asks it 100,000 times."""
        state = self.by_uid.state_of(uid)
        if state is None:
            return None
        flags = self._flag_lists.get(state)
        if flags is None:
            flags = self._flag_lists[state] = Message(
                uid, "", *self.by_uid.states[state], 0, 0).flags()
        return list(flags)

    def file_name(self, uid: int) -> str | None:
        """file_path() as a str, without pathlib's cost (SEARCH asks it 100,000 times)."""
        rel = self.by_uid.relpath_of(uid)
        return None if rel is None else f"{self.path}/{rel}"

    def file_names(self, uids: Iterable[int]) -> list[str]:
        """file_name() of each of uids, "" for one gone: many at once, faster."""
        return self.by_uid.relpaths(uids, f"{self.path}/")

    def file_path(self, uid: int) -> Path | None:
        m = self.by_uid.get(uid)
        return None if m is None else self.path / m.relpath()

    def read(self, uid: int) -> bytes | None:
        """The message's bytes as stored; None if it has gone."""
        fd = self.open_message(uid)
        if fd is None:
            return None
        try:
            m = self.by_uid.get(uid)
            want = max(m.size if m is not None else 0, 4096) + 1
            data = os.read(fd, want)
            if len(data) < want:  # the whole file: one read
                return data
            chunks = [data]  # grown since it was indexed
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def read_cached(self, uid: int) -> bytes | None:
        """read(), for a caller that must not wait for the disk (the reactor thread):
        the bytes only if the page cache holds them all (preadv2 with RWF_NOWAIT); else
        Uncached, as for a file moved since it was listed. None if it has gone."""
        m = self.by_uid.get(uid)
        if m is None:
            return None
        nowait = getattr(os, "RWF_NOWAIT", None)  # Linux
        if nowait is None:
            raise Uncached(uid)
        try:
            fd = os.open(f"{self.path}/{m.sub}/{m.base}{m.suffix}", os.O_RDONLY)
        except FileNotFoundError:
            raise Uncached(uid) from None
        try:
            data, past = bytearray(m.size), bytearray(1)  # past: the file is no longer
            got = os.preadv(fd, [data, past], 0, nowait)
        except OSError as e:  # EAGAIN: not in the cache; EOPNOTSUPP: not on this filesystem
            raise Uncached(uid) from e
        finally:
            os.close(fd)
        if got != len(data):  # partly in the cache, or not the size indexed: read() knows
            raise Uncached(uid)
        return bytes(data)

    def open_message(self, uid: int) -> int | None:
        """An open descriptor of the message's file (the caller closes it); None if it
        has gone. The file's content never changes (flags are in its name), so what
        the descriptor reads stays the message even if the file is renamed meanwhile."""
        for _ in range(2):
            m = self.by_uid.get(uid)
            if m is None:
                return None
            try:  # os-level, no Path: SEARCH BODY reads 100,000 files this way
                return os.open(f"{self.path}/{m.sub}/{m.base}{m.suffix}", os.O_RDONLY)
            except FileNotFoundError:
                self.sync(force=True)  # renamed by another program: find it again
        return None

    def read_head(self, uid: int, limit: int = 65536) -> bytes | None:
        """The message's header block (up to limit octets); None if it has gone."""
        path = self.file_path(uid)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                data = b""
                while len(data) < limit:
                    chunk = f.read(8192)
                    data += chunk
                    end = min((i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n"))
                               if i >= 0), default=-1)
                    if end >= 0 or not chunk:
                        return data if end < 0 else data[:end + (4 if data[end] == 13 else 2)]
                return data[:limit]
        except FileNotFoundError:
            return self.read(uid)  # renamed meanwhile: read() finds it again

    def heads(self, uids: Iterable[int]) -> Iterator[tuple[int, bytes]]:
        """(uid, head) of each of uids still here, in their order: head is the file's
        first HEAD_READ octets when the header block ends within them (the caller
        cuts it), else read_head()'s. For SEARCH's header fields and FETCH ENVELOPE
        of many messages: it keeps read_ahead files open ahead of the one it reads,
        each with posix_fadvise(WILLNEED), so the kernel reads them from disk in
        parallel while this thread parses (one file at a time, a cold 100,000-message
        folder was read at disk latency: 3.7 s of a first SEARCH FROM's 8.5 s)."""
        window: deque[tuple[int, int | None]] = deque()
        pending = iter(uids)
        ahead = self.read_ahead

        def open_next() -> bool:
            nonlocal ahead
            for uid in pending:
                name = self.file_name(uid)
                if name is None:
                    continue  # expunged
                fd = None
                try:
                    fd = os.open(name, os.O_RDONLY)
                    if _WILLNEED is not None:
                        os.posix_fadvise(fd, 0, HEAD_READ, _WILLNEED)
                except FileNotFoundError:
                    pass  # renamed meanwhile: read_head() finds it
                except OSError:  # out of descriptors: read one at a time from here
                    ahead = 1
                window.append((uid, fd))
                return True
            return False

        try:
            while len(window) < ahead and open_next():
                pass
            while window:
                uid, fd = window.popleft()
                if len(window) < ahead:
                    open_next()
                head = None
                if fd is not None:
                    try:
                        head = os.read(fd, HEAD_READ)
                    finally:
                        os.close(fd)
                    if len(head) == HEAD_READ and b"\n\n" not in head \
                            and b"\n\r\n" not in head:
                        head = None  # a longer header block
                if head is None:
                    head = self.read_head(uid)
                if head is not None:
                    yield uid, head
        finally:
            for _, fd in window:
                if fd is not None:
                    os.close(fd)

    def unseen(self) -> int:
        return self.by_uid.count("S", present=False)

    def cached(self, uids: list[int], kind: str) -> dict[int, bytes]:
        with self.lock:
            return self.index.cached(uids, kind)

    def put_cached(self, items: list[tuple[int, bytes]], kind: str) -> None:
        with self.lock:
            self.index.put_cached(((u, d) for u, d in items if u in self.by_uid), kind)

    def without_fields(self, uids: list[int]) -> list[int]:
        """Those of uids (ascending) whose search fields (Index.put_fields) are missing."""
        with self.lock:
            return self.index.without_fields(uids, len(self.by_uid))

    def put_fields(self, rows: list[tuple]) -> None:
        """Store search field rows (uid first) as one pack (store/fieldpack.py)."""
        with self.lock:
            self.index.put_fields(rows)

    def put_pack(self, pack: fieldpack.Pack) -> None:
        """Store a pack of search fields made elsewhere (a child process)."""
        with self.lock:
            self.index.put_pack(pack)

    def match_field(self, column: str, needle: bytes) -> set[int]:
        with self.lock:
            return self.index.match_field(column, needle)

    def sent_days(self) -> dict[int, int]:
        with self.lock:
            return self.index.sent_days()

    # -- changing ---------------------------------------------------------------

    def store(self, uids: Iterable[int], mode: int, flags: Iterable[str],
              origin: FolderListener | None = None,
              unchangedsince: int | None = None) -> dict[int, list[str]]:
        """Set (mode 0), add (1) or remove (-1) flags; returns uid -> new flags for each
        message still here. \\Recent cannot be stored (RFC 3501 2.3.2).
        unchangedsince (RFC 7162 3.1.3): a message whose modseq is above it is left
        alone and missing from the answer (the caller reports it MODIFIED)."""
        letters = {FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS}
        keywords = [f for f in flags if f not in FLAG_LETTERS and not f.startswith("\\")]
        with self.lock:
            renames, kw_only, result, flagged = [], [], {}, []
            for uid in uids:
                m = self.by_uid.get(uid)
                if m is None or (unchangedsince is not None and m.modseq > unchangedsince):
                    continue
                have = set(c for c in m.letters if c in LETTER_FLAGS)
                kws = m.kw.split(" ") if m.kw else []
                if mode == 0:
                    new, new_kw = letters, list(dict.fromkeys(keywords))
                elif mode > 0:
                    new, new_kw = have | letters, list(dict.fromkeys(kws + keywords))
                else:
                    new, new_kw = have - letters, [k for k in kws if k not in keywords]
                kw = " ".join(new_kw)
                info = self._letters_for(new, new_kw, m.letters)
                if kw != m.kw or new != have:
                    flagged.append(uid)
                if kw != m.kw:
                    m.kw = kw
                    self.by_uid.put(m)
                    kw_only.append(m)
                if set(info) != set(m.letters) or m.sub == "new":
                    renames.append((m, info))
                result[uid] = m
            done = {m.uid for m in self._rename_all(renames)}
            kw_uids = {m.uid for m in kw_only}
            flagged = [u for u in flagged if u in done or u in kw_uids]
            self._bumped(self.index.update([(m.uid, m.sub, m.suffix, m.kw) for m in kw_only
                                            if m.uid not in done], flagged), flagged)
            changed = sorted(done | {m.uid for m in kw_only})
            if changed:
                self._notify([], changed, [], origin)
            return {u: m.flags() for u, m in result.items()}

    def expunge(self, uids: Iterable[int] | None = None,
                origin: FolderListener | None = None) -> list[int]:
        """Remove the \\Deleted messages (among uids, if given); returns the UIDs removed."""
        with self.lock:
            pool = filter(None, (self.by_uid.get(u) for u in (
                self.by_uid.with_letter("T") if uids is None else uids)))
            doomed = [m for m in pool if "T" in m.letters]
            removed, freed, unlinked = [], 0, 0
            with self._own_changes():
                for m in doomed:
                    size = m.size  # learned (Message.size) while the file is there
                    try:
                        os.unlink(self.path / m.relpath())
                        freed, unlinked = freed + size, unlinked + 1
                    except FileNotFoundError:
                        pass  # already gone (and uncounted by whoever removed it)
                    removed.append(m.uid)
            quota.note(self.path, -freed, -unlinked)
            removed.sort()
            self._forget(removed)
            if removed:
                self._notify(removed, [], [], origin)
            return removed

    def add_file(self, source: Path | str, flags: Iterable[str], idate: int | None,
                 how: str = "rename", origin: FolderListener | None = None) -> int | None:
        """Bring a complete file in (how: rename, link or copy); returns its UID."""
        return self.add_files([(source, list(flags), idate)], how, origin)[0]

    def add_files(self, items: list[tuple[Path | str, list[str], int | None]], how: str,
                  origin: FolderListener | None = None) -> list[int | None]:
        """Add each (file, flags, internal date); UIDs in order, None for a file gone."""
        with self.lock:
            entries, slots = [], []
            for n, (source, flags, idate) in enumerate(items):
                kws = list(dict.fromkeys(f for f in flags if f not in FLAG_LETTERS
                                         and not f.startswith("\\")))
                letters = self._letters_for({FLAG_LETTERS[f] for f in flags
                                             if f in FLAG_LETTERS}, kws)
                kw = " ".join(kws)
                base = new_unique()
                suffix = ":2," + letters
                target = os.path.join(self.dirs["cur"], base + suffix)
                source = os.fspath(source)
                # Only cur/ changes, unless the file comes from our own new/.
                touched = SUBS if os.path.dirname(source) == self.dirs["new"] else ("cur",)
                try:
                    with self._own_changes(touched):
                        _bring(source, target, how)  # its name synced below
                except FileNotFoundError:
                    continue
                if idate is not None and how != "link":  # a link shares the source's inode
                    os.utime(target, (idate, idate))
                st = os.stat(target)
                entries.append((base, "cur", suffix, kw, st.st_size,
                                idate if idate is not None else int(st.st_mtime)))
                slots.append(n)
            # The renames and the index rows made durable together before any UID is
            # told: one syncfs for both (APPEND: the upload was fsync'd before), else a
            # directory fsync and the index's own commit. Three journal commits per
            # APPEND had made it 0.74-0.80x Dovecot's rate (bench/imap_transfer.py).
            cur = self.dirs["cur"]
            if entries and syncfs_available():
                uids = self.index.add(entries, synced=False)
                syncfs_of(cur)
            else:
                if entries:
                    fsync_dir(cur)
                uids = self.index.add(entries)
            quota.note(self.path, sum(e[4] for e in entries), len(entries))
            self._publish((uids, entries, self.index.highestmodseq))
            # RFC 3501 6.3.11, 6.4.7: appended and copied messages are \Recent.
            self.recent.update(uids)
            if uids:
                self._notify([], [], uids, origin)
            out: list[int | None] = [None] * len(items)
            for n, uid in zip(slots, uids, strict=True):
                out[n] = uid
            return out

    def tmp_path(self) -> Path:
        """A fresh file name in tmp/ for a message being written (APPEND)."""
        return self.path / "tmp" / (new_unique() + ".part")


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def transfer(src: Folder, dst: Folder, uids: Iterable[int], move: bool,
             origin: FolderListener | None = None) -> list[tuple[int, int]]:
    """COPY or MOVE (RFC 6851) messages; returns (source UID, new UID) pairs.

    A copy is a hard link (same bytes, no second write); a move renames the
    file, so a crash leaves the message in one folder or the other, never lost.
    """
    # Two locks, always taken in the same order: no deadlock between COPY A->B and B->A.
    first, second = sorted((src, dst), key=lambda f: str(f.path))
    with first.lock, second.lock:
        chosen = [m for m in (src.by_uid.get(u) for u in sorted(set(uids))) if m is not None]
        with src._own_changes():
            new = dst.add_files([(src.path / m.relpath(), m.flags(), m.idate) for m in chosen],
                                "rename" if move else "link")
        pairs = [(m.uid, u) for m, u in zip(chosen, new, strict=True) if u is not None]
        if move:
            moved = [m.uid for m, u in zip(chosen, new, strict=True) if u is not None]
            src._forget(moved)
            quota.note(src.path, -sum(m.size for m, u in zip(chosen, new, strict=True)
                                      if u is not None), -len(moved))
            if moved:
                src._notify(moved, [], [], origin)
        return pairs


def _bring(source: str, target: str, how: str) -> None:
    if how == "link":
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            how = "copy"
    if how == "copy":
        folder, name = os.path.split(os.path.dirname(target))[0], os.path.basename(target)
        tmp = os.path.join(folder, "tmp", name.split(":")[0] + ".copy")
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.utime(tmp, ns=(os.stat(source).st_atime_ns, os.stat(source).st_mtime_ns))
        source = tmp
    os.rename(source, target)
