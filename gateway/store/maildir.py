"""Maildir mailboxes on disk: <root>/<domain>/<local part>/{tmp,new,cur}.

Implements IMailStore. Delivery follows the Maildir protocol (write in tmp/,
fsync, link into new/, fsync the directory) so mutt, Dovecot and mbsync can
read the same folders. A delivery's file name is derived from its queue entry,
so a repeat after a crash finds the first copy instead of making a second.
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zope.interface import implementer

from gateway.durable import (
    Steps,
    before_durable,
    complete,
    fsync_dir,
    sync_dir,
    when_durable,
    write_file,
)
from gateway.envelope import parse_address
from gateway.errors import OverQuota
from gateway.interfaces import IMailStore, IQuotaCheck, MessageFile
from gateway.store import quota
from gateway.store.folder import READ_AHEAD, Folder
from gateway.store.folders import FolderNameError, FolderRegistry, FolderSet, disk_name
from gateway.store.index import VANISHED_LIMIT

# Names from the network become directory names only through this pattern:
# no "/", no leading dot, no "..", nothing outside printable ASCII.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+=?^_`{|}~-][A-Za-z0-9!#$%&'*+=?^_`{|}~.-]{0,63}$")
_UNIQUE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_KNOWN_MAILDIRS = 64  # listings kept for recovered deliveries (a set of names each)
_KNOWN_PATHS = 10000  # mailbox -> Maildir path strings kept for deliveries


@implementer(IMailStore, IQuotaCheck)
class MaildirStore:
    def __init__(self, root: Path, announce: Callable[[Callable[[], None]], Any] | None = None,
                 limits: quota.Limits | None = None, vanished_limit: int = VANISHED_LIMIT,
                 read_ahead: int = READ_AHEAD, delivered: Callable[[str, str], Any] | None = None,
                 background: Callable[[Callable[[], None]], Any] | None = None):
        """announce(f) must run f on the thread that serves IMAP sessions (the
        gateway passes reactor.callFromThread); by default f runs at once.
        limits: each user's quota (store/quota.py); None: no limits.
        background(f): runs f in a thread later, off the path of an answer (a big first
        listing's index rows: Folder.write_rows); None: the folder's next change does it.
        delivered(path, name): told (in the delivering thread) of each file a delivery
        renamed into path's new/ with no Folder open here: the runner process tells
        the listeners' process, whose open Folder indexes it (gateway/runnerproc)."""
        self.root = Path(root)
        self.delivered = delivered
        self.limits = limits
        self._folders = FolderRegistry(announce or _call_now, vanished_limit=vanished_limit,
                                       read_ahead=read_ahead, background=background)
        # Maildir -> unique names in it, for deliveries recovered after a crash.
        self._known: OrderedDict[str, set[str]] = OrderedDict()
        self._known_lock = threading.Lock()
        # mailbox -> its Maildir, for deliveries (dict reads and writes are atomic
        # under the GIL: pool threads share it without a lock).
        self._paths: dict[str, str] = {}

    def mailbox_path(self, mailbox: str) -> Path:
        """The Maildir of mailbox (user@domain); ValueError for a name unfit for a path."""
        local, domain = parse_address(mailbox)
        local = local.lower()
        if not _SAFE_NAME.match(local) or ".." in local:
            raise ValueError(f"mailbox name not usable on disk: {mailbox!r}")
        if not _SAFE_NAME.match(domain) or ".." in domain:
            raise ValueError(f"domain not usable on disk: {mailbox!r}")
        return self.root / domain / local

    def ensure(self, mailbox: str) -> Path:
        """Create the Maildir (tmp, new, cur) if missing; returns its path."""
        path = self.mailbox_path(mailbox)
        if not (path / "cur").is_dir():
            for sub in ("tmp", "new", "cur"):
                (path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            fsync_dir(path)
            fsync_dir(path.parent)
        return path

    def _inbox(self, mailbox: str) -> str:
        """ensure(mailbox) as a string, its name checked once per mailbox (deliveries)."""
        path = self._paths.get(mailbox)
        if path is None:
            path = str(self.mailbox_path(mailbox))
            if len(self._paths) >= _KNOWN_PATHS:
                self._paths.clear()  # a cache, not a record: refilled as mail comes
            self._paths[mailbox] = path
        if not os.path.isdir(f"{path}/cur"):
            self.ensure(mailbox)
        return path

    def deliver(self, mailbox: str, message: bytes | MessageFile, unique: str,
                recovering: bool = False, folder: str = "") -> bool:
        return complete(self.deliver_steps, mailbox, message, unique, recovering, folder)

    def deliver_steps(self, mailbox: str, message: bytes | MessageFile, unique: str,
                      recovering: bool = False, folder: str = "",
                      make_folder: bool = False) -> Steps:
        """deliver() as a call in steps (gateway/durable.py): data durable, then named.

        folder (a subaddress, RFC 5233) is used when it names an existing folder;
        otherwise, or when it is no folder name at all, the message goes to INBOX.
        """
        if not _UNIQUE.match(unique):
            raise ValueError(f"bad unique name {unique!r}")
        # Plain strings, not pathlib, on this path: an alias's 1,000 copies made a
        # fifth of their work joining and parsing Path objects (bench/alias_bench.py).
        path = self._inbox(mailbox)
        if folder and make_folder:
            try:
                if FolderSet(Path(path), self._folders).create(folder):  # False: it exists
                    fsync_dir(path)  # the new folder's name durable with the message
            except (OSError, FolderNameError):
                pass  # not made: INBOX below, the message is not lost
        if folder:
            path = str(self._existing_folder(Path(path), folder))
        if recovering and self._already_there(Path(path), unique):
            return False
        size = len(message)
        limit = self.limit(mailbox)
        # Checked here, where the size is known; OverQuota is a 4.2.2 deferral,
        # and a bounce after max_age. The grace: store/quota.py Usage.accepts.
        if limit and not quota.usage(quota.account_root(Path(path)), limit).accepts(
                size, self.limits.grace):
            raise OverQuota(mailbox)
        tmp = f"{path}/tmp/{unique}"
        write_file(tmp, message)
        # Not kept across the step: a batch of 1,000 copies waiting for their sync
        # would otherwise hold 1,000 messages (deliver/maildir.py, durable.lockstep).
        del message
        yield
        # rename, not link: the name is ours alone (queue ID + recipient), and a
        # leftover tmp file from a crash is simply overwritten above.
        opened = self._folders.get(path)
        if opened is None:  # no IMAP session has it open: its first sync() lists new/
            os.rename(tmp, f"{path}/new/{unique}")
            if self.delivered is not None:
                self.delivered(path, unique)
        else:
            opened.arrived(Path(tmp), unique)
        self._note(path, unique)
        quota.note(path, size, 1)
        sync_dir(f"{path}/new")  # at once, or once for the whole trip (gateway/durable.py)
        if opened is not None:
            # The index learns of it from the name itself: no listing, so a delivery
            # into a 100,000-message INBOX costs what one into an empty one does.
            # One index transaction per trip, riding the trip's directory sync;
            # sessions (IDLE) hear of it once both are durable.
            before_durable(opened.index_arrived)
            when_durable(opened.publish_arrived)
        return True

    @staticmethod
    def _existing_folder(inbox: Path, folder: str) -> Path:
        """The folder's Maildir if it exists (never made from a name off the network)."""
        try:
            path = inbox / disk_name(folder)
        except (FolderNameError, UnicodeError):
            return inbox
        return path if path != inbox and (path / "cur").is_dir() else inbox

    def _already_there(self, path: Path, unique: str) -> bool:
        """Was this copy delivered before the crash (a flag rename moves it to cur/)?

        Asked for every entry found in the queue at start: one listing per Maildir
        for all of them, not one per entry (thousands of entries for one big INBOX
        would each list its 100,000 names). What a listing taken after the start
        misses can only be this process's own deliveries: _note adds those.
        """
        if (path / "new" / unique).exists():
            return True
        key = str(path)
        with self._known_lock:
            names = self._known.get(key)
            if names is not None:
                self._known.move_to_end(key)
        if names is None:
            names = set()
            for sub in ("new", "cur"):
                with os.scandir(path / sub) as it:
                    names.update(e.name.partition(":")[0] for e in it)
            with self._known_lock:
                names = self._known.setdefault(key, names)
                while len(self._known) > _KNOWN_MAILDIRS:
                    self._known.popitem(last=False)
        return unique in names

    def _note(self, path: Path | str, unique: str) -> None:
        with self._known_lock:
            names = self._known.get(str(path))
            if names is not None:
                names.add(unique)

    # -- quotas (store/quota.py, RFC 9208) --

    def limit(self, mailbox: str) -> int:
        """mailbox's storage limit in bytes; 0: none."""
        return self.limits.limit(mailbox) if self.limits is not None else 0

    def usage(self, mailbox: str, recalc: bool = True) -> quota.Usage | None:
        """mailbox's usage and limit (blocking). recalc=False never lists the
        folders (for the reactor thread) and answers None when it would have to."""
        limit = self.limit(mailbox)
        path = self.mailbox_path(mailbox)
        if not recalc:
            return quota.usage(path, limit, recalc=False) if path.is_dir() else None
        return quota.usage(self.ensure(mailbox), limit)

    def over_quota(self, mailbox: str) -> bool:
        """IQuotaCheck: is mailbox known to be full, without listing it (RCPT)?"""
        if not self.limit(mailbox):
            return False
        try:
            usage = self.usage(mailbox, recalc=False)
        except (ValueError, OSError):
            return False  # the delivery will tell
        return usage is not None and usage.over

    def open_maildrop(self, mailbox: str):
        from gateway.store.maildrop import Maildrop

        return Maildrop(self.ensure(mailbox))

    # -- IMAP: folders, UIDs and live updates (store/folders.py, store/folder.py) --

    def open_folders(self, mailbox: str) -> FolderSet:
        """The mailbox's Maildir++ folders, with the RFC 6154 defaults made on first use."""
        folders = FolderSet(self.ensure(mailbox), self._folders,
                            limit=lambda: self.limit(mailbox))
        folders.ensure_defaults()
        return folders

    def keep_listings(self) -> None:
        """Save the packed listing of each open folder whose rows changed since
        (store/folder.py): blocking, for the gateway's shutdown."""
        self._folders.keep_listings()

    def opened(self, path: str) -> Folder | None:
        """The Folder of the Maildir at path if this process has it open, else None."""
        return self._folders.get(path)

    def open_folder(self, mailbox: str) -> Folder:
        """The mailbox's Maildir alone as one Folder (a list archive's readers): the
        same index and registry as open_folders, but no default folders made."""
        return self._folders.open(self.ensure(mailbox))


def _call_now(f: Callable[[], None]) -> None:
    f()
