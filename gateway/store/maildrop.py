"""The POP3 view of one Maildir INBOX: a locked snapshot of new/ and cur/.

Sits in store/, between deliver/maildir (which writes messages into new/) and
access/pop3 (which reads them). It follows RFC 1939: the maildrop is locked for
one session at a time, messages are numbered from a snapshot taken at login,
and deletions happen only at commit (the UPDATE state). File names follow the
Maildir convention (cr.yp.to/proto/maildir.html): "<unique>:2,<flags>", the
flags in ASCII order.

Messages are read back exactly as stored: deliver/maildir writes them as they
arrived over SMTP, CRLF line ends included, so a file's size is its size on
the wire before dot-stuffing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from twisted.mail.pop3 import IMailbox
from zope.interface import implementer

from gateway.durable import fsync_dir
from gateway.store import quota

LOCK_FILE = ".pop3.lock"
_INFO = ":2,"

# Maildirs locked by this process. flock() alone would do, but the registry
# makes the rule visible and does not depend on the file system honouring it.
_held: set[str] = set()
_held_guard = threading.Lock()


class MaildropInUse(Exception):
    """Another session holds the maildrop (POP3 answers -ERR [IN-USE])."""


@dataclass
class MaildropMessage:
    unique: str
    uidl: str
    size: int
    path: Path


def uidl_for(unique: str) -> str:
    """A UIDL for a Maildir unique name: itself if RFC 1939 allows it, else its SHA-1.

    RFC 1939 7: 1 to 70 characters in 0x21-0x7E. The unique part never changes
    when clients set flags, so neither does the UIDL.
    """
    if 0 < len(unique) <= 70 and all("\x21" <= c <= "\x7e" for c in unique):
        return unique
    return hashlib.sha1(unique.encode("utf-8", "surrogateescape")).hexdigest()


def unique_part(name: str) -> str:
    """The file name without its ":2,flags" info (the colon never occurs in a unique name)."""
    return name.split(":", 1)[0]


@implementer(IMailbox)
class Maildrop:
    """One Maildir's INBOX for one POP3 session. Indices are 0-based.

    Also Twisted's IMailbox (listMessages ... sync), which keeps the session's
    DELE marks until sync(), the UPDATE state.
    """

    loginDelay = 0
    messageExpiration = None

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._messages: list[MaildropMessage] = []
        self.deleted: set[int] = set()  # DELE marks, applied by sync()
        self.retrieved: set[int] = set()  # RETR'd: flagged seen by sync()
        self._lock_fd: int | None = None
        self._key: str | None = None

    # -- session ------------------------------------------------------------

    def open(self) -> None:
        """Lock the maildrop and take the snapshot; MaildropInUse if already locked."""
        if self._key is not None:
            raise RuntimeError("maildrop already open")
        key = os.path.realpath(self.path)
        with _held_guard:
            if key in _held:
                raise MaildropInUse(str(self.path))
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                # Other processes (a second gateway, a maintenance script) honour this too.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise MaildropInUse(str(self.path)) from None
            except BaseException:
                os.close(fd)
                raise
            _held.add(key)
        self._key, self._lock_fd = key, fd
        try:
            self._messages = self._scan()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock without changing anything (safe to call twice)."""
        if self._key is None:
            return
        with _held_guard:
            _held.discard(self._key)
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing the descriptor drops the flock
        self._key = self._lock_fd = None

    def __enter__(self) -> Maildrop:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scan(self) -> list[MaildropMessage]:
        found: list[tuple[int, str, Path, int]] = []
        for sub in ("new", "cur"):
            with os.scandir(self.path / sub) as it:
                for entry in it:
                    if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # moved by another client meanwhile
                        continue
                    found.append((st.st_mtime_ns, unique_part(entry.name),
                                  Path(entry.path), st.st_size))
        # Delivery order: mtime is when deliver/maildir wrote the file (renames
        # keep it); the unique name breaks ties.
        found.sort(key=lambda f: (f[0], f[1]))
        messages, seen = [], set()
        for _, unique, path, size in found:
            if unique in seen:  # a copy left in new/ and cur/ by a crash mid-rename
                continue
            seen.add(unique)
            messages.append(MaildropMessage(unique, uidl_for(unique), size, path))
        return messages

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def messages(self) -> tuple[MaildropMessage, ...]:
        return tuple(self._messages)

    def size(self, i: int) -> int:
        return self._messages[i].size

    def uidl(self, i: int) -> str:
        return self._messages[i].uidl

    def open_message(self, i: int) -> BinaryIO:
        """The message file, opened for reading; FileNotFoundError if it is gone."""
        m = self._messages[i]
        try:
            return open(m.path, "rb")
        except FileNotFoundError:
            # Another client (IMAP, mutt) may have renamed it to set flags.
            if self._relocate(m) is None:
                raise
            return open(m.path, "rb")

    def read(self, i: int) -> bytes:
        with self.open_message(i) as f:
            return f.read()

    def _relocate(self, m: MaildropMessage) -> Path | None:
        """Find m again by its unique name after a rename; None if it is gone."""
        prefix = m.unique + ":"
        for sub in ("cur", "new"):
            with os.scandir(self.path / sub) as it:
                for entry in it:
                    if entry.name == m.unique or entry.name.startswith(prefix):
                        m.path = Path(entry.path)
                        return m.path
        return None

    # -- IMailbox (twisted.mail.pop3) ------------------------------------------

    def _check(self, i: int) -> None:
        if not 0 <= i < len(self._messages):
            raise ValueError(f"no message {i}")

    def listMessages(self, i: int | None = None) -> Any:
        """Sizes, 0 for a message marked deleted (Twisted's convention)."""
        if i is None:
            return [0 if n in self.deleted else m.size for n, m in enumerate(self._messages)]
        self._check(i)
        return 0 if i in self.deleted else self._messages[i].size

    def getMessage(self, i: int) -> BinaryIO:
        self._check(i)
        return self.open_message(i)

    def getUidl(self, i: int) -> bytes:
        self._check(i)
        return self._messages[i].uidl.encode("ascii")

    def deleteMessage(self, i: int) -> None:
        self._check(i)
        self.deleted.add(i)

    def undeleteMessages(self) -> None:
        self.deleted.clear()

    def sync(self) -> list[int]:
        """The UPDATE state: commit the marks; returns indices that could not be deleted."""
        return self.commit(self.deleted, self.retrieved)

    def live(self) -> list[int]:
        """Indices of the messages not marked deleted."""
        return [n for n in range(len(self._messages)) if n not in self.deleted]

    # -- the UPDATE state ---------------------------------------------------

    def commit(self, deleted: Iterable[int], seen: Iterable[int] = ()) -> list[int]:
        """Apply a session's changes; returns the deleted indices that could not be removed."""
        deleted = set(deleted)
        failed = self.delete(deleted)
        self.mark_seen(i for i in seen if i not in deleted)
        return failed

    def delete(self, indices: Iterable[int]) -> list[int]:
        """Unlink messages now (a message already gone counts as deleted)."""
        failed, dirs, freed, count = [], set(), 0, 0
        for i in sorted(set(indices)):
            m = self._messages[i]
            path: Path | None = m.path
            for _ in range(2):  # the second try follows a rename by another client
                try:
                    os.unlink(path)
                    dirs.add(path.parent)
                    freed, count = freed + m.size, count + 1
                    break
                except FileNotFoundError:
                    path = self._relocate(m)
                    if path is None:
                        break
                except OSError:
                    failed.append(i)
                    break
        for d in dirs:
            fsync_dir(d)
        quota.note(self.path, -freed, -count)  # the account's usage (store/quota.py)
        return failed

    def mark_seen(self, indices: Iterable[int]) -> None:
        """Move retrieved messages to cur/ with the S flag, as Dovecot does.

        Best effort: the UIDL does not depend on it, so a failure changes nothing
        a POP3 client can see.
        """
        dirs = set()
        for i in indices:
            m = self._messages[i]
            if not m.path.exists() and self._relocate(m) is None:
                continue
            target = self._seen_path(m)
            if target is None or target == m.path:
                continue
            try:
                os.rename(m.path, target)
            except OSError:
                continue
            dirs.update((m.path.parent, target.parent))
            m.path = target
        for d in dirs:
            fsync_dir(d)

    def _seen_path(self, m: MaildropMessage) -> Path | None:
        info = m.path.name[len(m.unique):]
        if not info:
            flags = "S"
        elif info.startswith(_INFO):
            flags = "".join(sorted(set(info[len(_INFO):]) | {"S"}))
        else:
            return None  # ":1," (experimental) or foreign info: leave it alone
        return self.path / "cur" / f"{m.unique}{_INFO}{flags}"
