"""Mailbox quotas (RFC 9208 STORAGE): each account's limit and its running usage.

Sits in store/, beside maildir.py: deliver/maildir (delivery), access/imap
(APPEND, COPY, MOVE, EXPUNGE, GETQUOTA), access/pop3 (DELE) and accept/policy
(RCPT, through IQuotaCheck) all go through here, so every way a message comes
or goes keeps one total.

Usage is the Maildir++ quota record Courier and Dovecot keep, `maildirsize` in
the account's Maildir (courier-imap's maildirquota(7)): a first line with the
limit ("<bytes>S"), then one "<bytes> <count>" line per change, appended
(O_APPEND, one write: lines from several threads never mix). The sum of the
lines is the usage, so a delivery into a 100,000-message INBOX costs one small
append, never a listing. The record is recalculated from the folders (one
scandir per new/ and cur/) when it is missing, when it has grown past 5,120
bytes, when the limit in its first line is not the current one, or when it
says "over quota" but is older than 15 minutes: messages removed by another
program (mutt, a shell) then count again at the next look, as in Courier.

Deliveries may end up to [mailbox] quota_grace percent past the limit (so the
mailbox fills and RCPT refuses what follows); IMAP APPEND and COPY never pass it.
Limits: [mailbox] quota for everyone, and per-user overrides in
<state_dir>/quotas ("address bytes" lines, written by `mailgateway user
quota`, re-read when it changes, as the users file is).
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.durable import write_synced

RECORD = "maildirsize"
_MAX_RECORD = 5120  # bytes: past this the record is summed up again (maildirquota(7))
STALE = 15 * 60  # seconds after which an "over quota" record is checked against the disk
_SIZE_IN_NAME = re.compile(r",S=(\d+)")


@dataclass(frozen=True)
class Usage:
    """One account's storage: bytes and messages used, and its limit (0: none)."""

    used: int
    count: int
    limit: int

    def allows(self, adding: int) -> bool:
        """May adding more bytes be stored (RFC 9208 5.1: a limit is never passed)?"""
        return not self.limit or self.used + adding <= self.limit

    def accepts(self, adding: int, grace: int) -> bool:
        """May a delivery store adding bytes? Only while under the limit, and then up
        to grace percent past it: the last message that fills the mailbox is
        delivered, and the next ones meet 452 at RCPT (Dovecot's quota_grace)."""
        if not self.limit:
            return True
        return not self.over and self.used + adding <= self.limit * (100 + grace) // 100

    @property
    def over(self) -> bool:
        return bool(self.limit) and self.used >= self.limit


def account_root(folder: Path) -> Path:
    """The account's Maildir for one of its folders: Maildir++ folders are ".Name"
    directories in it (an account's own directory never starts with a dot)."""
    return Path(_root(os.fspath(folder)))


def _root(folder: str) -> str:
    # On strings: note() runs for every APPEND, and pathlib cost 2% of its CPU.
    return os.path.dirname(folder) if os.path.basename(folder).startswith(".") else folder


def note(folder: Path, size: int, count: int) -> None:
    """Record messages added (positive) or removed (negative) in folder.

    Only appends to an existing record: with none, the next read sums the
    folders anyway. Not fsynced: the record is a cache the folders can rebuild.
    """
    if not size and not count:
        return
    try:
        record = os.path.join(_root(os.fspath(folder)), RECORD)
        fd = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.write(fd, f"{size} {count}\n".encode())
    finally:
        os.close(fd)


def forget(folder: Path) -> None:
    """Drop the record (a folder deleted whole): the next read recalculates."""
    try:
        os.unlink(account_root(folder) / RECORD)
    except FileNotFoundError:
        pass


def _file_size(entry: os.DirEntry) -> int:
    # Dovecot and Courier put the size in the name (",S=1234"): no stat needed.
    m = _SIZE_IN_NAME.search(entry.name)
    if m:
        return int(m.group(1))
    try:
        return entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0


def measure(root: Path) -> tuple[int, int]:
    """Bytes and messages in all the account's folders, from the disk."""
    total = count = 0
    dirs = [Path(root)]
    with os.scandir(root) as it:
        dirs += [Path(e.path) for e in it
                 if e.name.startswith(".") and e.name not in (".", "..")
                 and e.is_dir(follow_symlinks=False)]
    for d in dirs:
        for sub in ("new", "cur"):
            try:
                with os.scandir(d / sub) as it:
                    for e in it:
                        if not e.name.startswith(".") and e.is_file(follow_symlinks=False):
                            total += _file_size(e)
                            count += 1
            except (FileNotFoundError, NotADirectoryError):
                continue
    return total, count


def recalculate(root: Path, limit: int) -> Usage:
    """Sum the folders and write a fresh record (tmp file, then rename)."""
    used, count = measure(root)
    tmp = Path(root) / "tmp" / f"{RECORD}.{os.getpid()}.{threading.get_ident()}"
    write_synced(tmp, f"{limit}S\n{used} {count}\n".encode())
    os.replace(tmp, Path(root) / RECORD)
    return Usage(used, count, limit)


def read_record(root: Path) -> tuple[Usage, float] | None:
    """(usage, age in seconds) from the record; None if missing, too big or unreadable."""
    path = Path(root) / RECORD
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size > _MAX_RECORD:
                return None
            text = f.read().decode("ascii")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    lines = text.split("\n")
    try:
        head = lines[0]
        limit = int(head.split(",")[0].rstrip("S")) if head.strip() else 0
        used = count = 0
        for line in lines[1:]:
            if line.strip():
                b, c = line.split()
                used, count = used + int(b), count + int(c)
    except ValueError:
        return None
    return Usage(used, count, limit), time.time() - st.st_mtime


def usage(root: Path, limit: int, recalc: bool = True) -> Usage | None:
    """The account's usage against limit (blocking: may list every folder).

    recalc=False (the SMTP RCPT check, on the reactor thread) never lists:
    without a record it answers None, and a record saying "over quota" that
    is stale answers None too; the delivery, which may list, decides then.
    """
    found = read_record(root)
    if found is not None:
        record, age = found
        current = Usage(record.used, record.count, limit)
        if record.limit == limit and (not current.over or age < STALE):
            return current
        if not recalc:
            return current if age < STALE else None
    elif not recalc:
        return None
    if not (Path(root) / "cur").is_dir():
        return Usage(0, 0, limit)
    return recalculate(root, limit)


# -- limits ---------------------------------------------------------------------

def read_limits(path: Path) -> dict[str, int]:
    """Per-user limits from <state_dir>/quotas: "address bytes" lines, # comments."""
    limits: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return limits
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) == 2 and parts[1].isdigit():
            limits[parts[0].lower()] = int(parts[1])
    return limits


def write_limits(path: Path, limits: dict[str, int]) -> None:
    """Replace the quotas file atomically (the gateway re-reads it when it changes)."""
    tmp = path.with_name(path.name + ".tmp")
    lines = ["# address bytes (0: unlimited), managed by `mailgateway user quota`\n"]
    lines += [f"{a} {limits[a]}\n" for a in sorted(limits)]
    write_synced(tmp, "".join(lines).encode("utf-8"))
    os.replace(tmp, path)


class Limits:
    """Each user's limit: the override in the quotas file, else the default."""

    def __init__(self, path: Path, default: int = 0, grace: int = 10) -> None:
        self.path = Path(path)
        self.default = default
        self.grace = grace  # percent a delivery may go past a limit (Usage.accepts)
        self._mtime: int | None = None
        self._limits: dict[str, int] = {}
        self._lock = threading.Lock()

    def limit(self, address: str) -> int:
        try:
            mtime: int | None = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        with self._lock:
            if mtime != self._mtime:
                self._limits = read_limits(self.path) if mtime is not None else {}
                self._mtime = mtime
            return self._limits.get(address.lower(), self.default)
