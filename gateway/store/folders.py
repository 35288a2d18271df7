"""A user's folders: Maildir++ on disk, one Folder object per directory per process.

Sits in store/, above store/folder.py; access/imap/account.py is its client.
Layout (Maildir++, as Courier and Dovecot write it): the user's Maildir is
INBOX; folder "Lists.Twisted" is the directory ".Lists.Twisted" beside
tmp/new/cur, itself a Maildir holding an empty "maildirfolder" file. The
hierarchy delimiter is therefore "." (also what IMAP clients see), and a name
on disk is the IMAP modified UTF-7 form (RFC 3501 5.1.3) of the folder name,
as Dovecot does, so non-ASCII names round-trip and never contain "/".

Safety: every client name goes through disk_name(), which refuses empty
levels, "/", control characters and wildcards; the result is a single
directory entry starting with "." inside the user's Maildir, so no name can
reach outside it (nor collide with tmp/new/cur).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.store import mutf7, quota
from gateway.store.folder import READ_AHEAD, Folder, new_unique
from gateway.store.index import VANISHED_LIMIT

DELIMITER = "."
# RFC 6154 special-use folders, made for every new account.
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
               "Archive": "\\Archive"}
SUBSCRIPTIONS = "subscriptions"
_PATHS_KEPT = 256  # folder paths a FolderSet remembers
_FORBIDDEN = set("/\\*%") | {chr(c) for c in range(32)} | {"\x7f"}


class FolderNameError(ValueError):
    """A folder name that cannot be a folder (IMAP answers NO)."""


def canonical(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 5.1), also as the first level of a name."""
    first, sep, rest = name.partition(DELIMITER)
    return ("INBOX" if first.upper() == "INBOX" else first) + sep + rest


def disk_name(name: str) -> str:
    """The directory name of folder name ("" for INBOX); FolderNameError if unusable."""
    name = canonical(name)
    if name == "INBOX":
        return ""
    if not name or any(c in _FORBIDDEN for c in name):
        raise FolderNameError("invalid character in folder name")
    if any(not level or level.strip() != level for level in name.split(DELIMITER)):
        raise FolderNameError("empty or blank-padded hierarchy level in folder name")
    encoded = "." + mutf7.encode(name).decode("ascii")
    if len(encoded) > 200:
        raise FolderNameError("folder name too long")
    return encoded


def folder_name(entry: str) -> str | None:
    """The folder name of a directory entry, None if it is not one of ours."""
    if len(entry) < 2 or entry[0] != "." or entry == "..":
        return None
    try:
        name = mutf7.decode(entry[1:].encode("ascii"))
        return name if disk_name(name) == entry else None
    except (UnicodeError, ValueError, FolderNameError):
        return None


class FolderRegistry:
    """The Folder objects of this process: one per directory, so sessions share state.

    Folders nobody has selected stay cached (up to `keep`) so a second SELECT
    of a large mailbox does not reload its index.
    """

    def __init__(self, announce: Callable[[Callable[[], None]], Any], keep: int = 16,
                 vanished_limit: int = VANISHED_LIMIT, read_ahead: int = READ_AHEAD,
                 background: Callable[[Callable[[], None]], Any] | None = None) -> None:
        self.announce = announce
        self.background = background  # Folder's: runs work left for after an answer
        self.vanished_limit = vanished_limit  # [mailbox] vanished_uids (store/index.py)
        self.read_ahead = read_ahead  # [mailbox] read_ahead (Folder.heads)
        self.keep = keep
        self._lock = threading.Lock()
        self._folders: OrderedDict[str, Folder] = OrderedDict()
        # One lock per folder being opened: a second session opening the same folder
        # meanwhile waits for that Folder, never makes its own (two Folders over one
        # index would both index the same new files: UNIQUE constraint failed). Other
        # folders open in parallel, however long one index takes to build.
        self._opening: dict[str, threading.Lock] = {}

    def open(self, path: Path, retry: bool = True) -> Folder:
        key = str(path)
        with self._lock:
            folder = self._folders.get(key)
            if folder is not None:
                self._folders.move_to_end(key)
            else:
                opening = self._opening.setdefault(key, threading.Lock())
        if folder is None:
            with opening:
                with self._lock:
                    folder = self._folders.get(key)
                if folder is None:
                    made = self._make(path)
                    with self._lock:
                        folder = self._folders.setdefault(key, made)
                        self._opening.pop(key, None)
                        self._evict()
        folder.sync()
        if folder.gone and retry:  # replaced behind our back: read the new one afresh
            with self._lock:
                if self._folders.get(key) is folder:
                    del self._folders[key]
            return self.open(path, retry=False)
        return folder

    def _make(self, path: Path) -> Folder:
        try:
            return Folder(path, self.announce, self.vanished_limit, self.read_ahead,
                          self.background)
        except FileNotFoundError:
            if not (path / "cur").is_dir():
                raise
        # A Maildir with cur/ but without new/ or tmp/ (made by hand, or by a tool that
        # makes them lazily): made as Dovecot makes them, instead of failing SELECT.
        for sub in ("new", "tmp"):
            (path / sub).mkdir(mode=0o700, exist_ok=True)
        return Folder(path, self.announce, self.vanished_limit, self.read_ahead,
                      self.background)

    def _evict(self) -> None:
        # Dropped, not closed: a STATUS or APPEND in another thread may still hold
        # it; its SQLite connection closes when the last reference goes.
        # Nor a folder with deliveries not yet indexed: a second Folder for the same
        # directory would list and index them too (store/folder.py arrived()).
        idle = [k for k, f in self._folders.items() if not f.listeners and not f.pending()]
        for key in idle[:max(0, len(self._folders) - self.keep)]:
            del self._folders[key]

    def keep_listings(self) -> None:
        """Folder.keep_listing_if_stale() of every open folder (blocking: at shutdown)."""
        with self._lock:
            folders = list(self._folders.values())
        for folder in folders:
            folder.keep_listing_if_stale()

    def get(self, path: Path) -> Folder | None:
        with self._lock:
            folder = self._folders.get(str(path))
        return None if folder is None or folder.gone else folder

    def drop(self, path: Path) -> None:
        """Forget folders at or below path (deleted or renamed); sessions that have one
        selected are told it is gone (Folder.lose()), never served its old data."""
        prefix = str(path)
        with self._lock:
            dropped = [self._folders.pop(k) for k in list(self._folders)
                       if k == prefix or k.startswith(prefix + ".")]
        for folder in dropped:
            folder.lose()


class FolderSet:
    """One user's folders. Blocking methods; names are Unicode, "." the delimiter."""

    def __init__(self, root: Path, registry: FolderRegistry,
                 limit: Callable[[], int] = lambda: 0) -> None:
        self.root = Path(root)
        self.registry = registry
        self.limit = limit  # the user's quota in bytes, 0: none (store/quota.py)
        self._paths: dict[str, Path] = {}  # folder name -> its directory

    def usage(self) -> quota.Usage:
        """The account's storage against its quota (RFC 9208), all folders together."""
        return quota.usage(self.root, self.limit())

    def path(self, name: str) -> Path:
        path = self._paths.get(name)
        if path is None:  # checked and encoded once: every APPEND names its folder
            if len(self._paths) >= _PATHS_KEPT:
                self._paths.clear()
            path = self._paths[name] = self.root / disk_name(name)
        return path

    def names(self) -> list[str]:
        """Every existing folder, INBOX first."""
        found = []
        with os.scandir(self.root) as it:
            for entry in it:
                name = folder_name(entry.name)
                if name is not None and entry.is_dir(follow_symlinks=False):
                    found.append(name)
        return ["INBOX"] + sorted(found)

    def exists(self, name: str) -> bool:
        try:
            return os.path.isdir(os.path.join(self.path(name), "cur"))
        except FolderNameError:
            return False

    def open(self, name: str) -> Folder | None:
        """The Folder, synced with the disk; None if there is no such folder."""
        if not self.exists(name):
            return None
        return self.registry.open(self.path(name))

    def create(self, name: str) -> bool:
        """Make the folder (False if it exists). Parents are not made: Maildir++ needs none."""
        path = self.path(name)
        if path == self.root or path.exists():
            return False
        # A name of its own: two sessions may create the same folder at once (the
        # defaults at a new account's first logins); one wins, the other finds it made.
        tmp = self.root / "tmp" / f"{path.name}.{new_unique()}.creating"
        for sub in ("tmp", "new", "cur"):
            (tmp / sub).mkdir(parents=True, mode=0o700)
        (tmp / "maildirfolder").touch(mode=0o600)
        try:
            os.rename(tmp, path)  # all or nothing: no half-made folder is ever listed
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if path.is_dir():  # made meanwhile by someone else
                return False
            raise
        return True

    def delete(self, name: str) -> bool:
        path = self.path(name)
        if path == self.root or not path.is_dir():
            return False
        self.registry.drop(path)
        # Rename first, then remove: the folder disappears at once, even if
        # removing thousands of files takes a while or fails half-way.
        trash = self.root / "tmp" / (path.name + ".deleting")
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(path, trash)
        quota.forget(self.root)  # its messages no longer count: summed again at the next look
        shutil.rmtree(trash, ignore_errors=True)
        # The subscription stays: RFC 3501 6.3.6 forbids dropping it unasked (LIST
        # (SUBSCRIBED) shows it \NonExistent, RFC 5258 3), as Dovecot keeps it.
        return True

    def rename(self, old: str, new: str) -> bool:
        """Rename old and every folder below it (RFC 3501 6.3.5)."""
        src, dst = self.path(old), self.path(new)
        if src == self.root or dst == self.root or not src.is_dir() or dst.exists():
            return False
        children = [n for n in self.names() if n.startswith(canonical(old) + DELIMITER)]
        moves = [(src, dst)] + [(self.path(c), self.path(canonical(new) + c[len(old):]))
                                for c in children]
        if any(d.exists() for _, d in moves):
            return False
        self.registry.drop(src)
        for s, d in moves:
            os.rename(s, d)
        subs = self.subscribed()
        if canonical(old) in subs:
            self.subscribe(new)
        return True

    # -- subscriptions (LSUB), one name per line as Dovecot's maildir keeps them --

    def subscribed(self) -> list[str]:
        try:
            text = (self.root / SUBSCRIPTIONS).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line]

    def _write_subscriptions(self, names: list[str]) -> None:
        tmp = self.root / "tmp" / f"{SUBSCRIPTIONS}.{new_unique()}.new"
        tmp.write_text("".join(n + "\n" for n in dict.fromkeys(names)), encoding="utf-8")
        os.replace(tmp, self.root / SUBSCRIPTIONS)

    def subscribe(self, name: str) -> None:
        disk_name(name)  # RFC 3501 6.3.6 allows subscribing to a name that does not exist
        self._write_subscriptions(self.subscribed() + [canonical(name)])

    def unsubscribe(self, name: str) -> None:
        name = canonical(name)
        self._write_subscriptions([n for n in self.subscribed() if n != name])

    def ensure_defaults(self) -> None:
        """A new account gets the RFC 6154 special-use folders, subscribed."""
        if (self.root / SUBSCRIPTIONS).exists():
            return
        for name in SPECIAL_USE:
            self.create(name)
        self._write_subscriptions(["INBOX", *SPECIAL_USE])

    @staticmethod
    def special_use(name: str) -> str | None:
        return SPECIAL_USE.get(name)
