"""The IMAP index of one Maildir folder: <folder>/mailgateway.index (SQLite).

Sits in store/, under store/folder.py (which keeps it in step with the
Maildir) and above nothing: it is the persistent half of a Folder. It holds
what Maildir cannot: UIDVALIDITY and UIDNEXT (RFC 3501 2.3.1.1), each
message's UID against its Maildir unique name, its keywords (also in the
file name, store/keywords.py; only those past Dovecot's 26 letters live here
alone), and a cache of
parsed headers (ENVELOPE, BODYSTRUCTURE, search fields) so FETCH and SEARCH
need not reopen 100,000 files.

It is a cache: the Maildir file names (unique name + ":2,FLAGS") stay the
truth for which messages exist and their system flags. Delete the file and
the next open rebuilds it from the Maildir with a new UIDVALIDITY, as RFC 3501
requires when UIDs cannot be kept. A file that is not a valid index is moved
aside and rebuilt.

Durability: UIDs handed to a client must never be handed out again, so
commits are synchronous=FULL in WAL mode (one fsync per transaction).
Callers serialise access (Folder holds a lock); the connection may be used
from any thread.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

INDEX_NAME = "mailgateway.index"
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE msg(
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL UNIQUE,   -- Maildir unique name (file name before ':')
    sub TEXT NOT NULL,           -- 'new' or 'cur'
    suffix TEXT NOT NULL,        -- ':2,FS' (or '' or foreign info), as on disk
    kw TEXT NOT NULL DEFAULT '', -- IMAP keywords, space-separated (letters' ones too)
    size INTEGER NOT NULL,
    idate INTEGER NOT NULL       -- INTERNALDATE, Unix seconds (the file's mtime)
);
CREATE TABLE cache(
    uid INTEGER NOT NULL,
    kind TEXT NOT NULL,          -- which summary (access/imap/summary.py)
    data BLOB NOT NULL,          -- opaque to the store
    PRIMARY KEY (uid, kind)
);
"""

# (uid, base, sub, suffix, kw, size, idate)
Row = tuple[int, str, str, str, str, int, int]


UIDVALIDITY_NAME = "mailgateway-uidvalidity"


def next_uidvalidity(index_path: Path) -> int:
    """The clock, but always above any UIDVALIDITY given before in this account, as
    Dovecot's dovecot-uidvalidity file does: a folder deleted and created again in
    the same second must not get its old value (RFC 3501 2.3.1.1), or clients would
    keep the deleted messages' data."""
    folder = index_path.parent
    root = folder.parent if folder.name.startswith(".") else folder  # Maildir++ layout
    record = root / UIDVALIDITY_NAME
    try:
        last = int(record.read_text().strip() or 0)
    except (OSError, ValueError):
        last = 0
    value = max(int(time.time()), last + 1)
    tmp = record.with_name(UIDVALIDITY_NAME + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, record)
    return value


class Index:
    """One folder's SQLite index. Not thread-safe by itself: the Folder's lock guards it."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / INDEX_NAME
        self.created = False  # True when this open made a fresh index (UIDs start anew)
        self.db = self._open()

    def _open(self) -> sqlite3.Connection:
        for attempt in range(2):
            fresh = not self.path.exists()
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                if fresh or not self._valid(db):
                    if not fresh:
                        raise sqlite3.DatabaseError("not a mailgateway index")
                    self._create(db)
                return db
            except sqlite3.DatabaseError:
                db.close()
                if attempt:
                    raise
                # Damaged or foreign: keep it for inspection, rebuild from the Maildir.
                os.replace(self.path, self.path.with_name(f"{INDEX_NAME}.broken"))
                for extra in ("-wal", "-shm"):
                    Path(str(self.path) + extra).unlink(missing_ok=True)
        raise AssertionError("unreachable")

    @staticmethod
    def _valid(db: sqlite3.Connection) -> bool:
        try:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError:
            return False
        return row is not None and row[0] == SCHEMA_VERSION

    def _create(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
        # A new UIDVALIDITY each time UIDs start over (RFC 3501 2.3.1.1): the
        # clock, so a rebuilt index never repeats the value its clients knew.
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       [("schema", SCHEMA_VERSION), ("uidvalidity", next_uidvalidity(self.path)),
                        ("uidnext", 1)])
        db.execute("COMMIT")
        self.created = True

    def close(self) -> None:
        self.db.close()

    # -- meta -----------------------------------------------------------------

    def meta(self, key: str) -> int:
        return self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]

    @property
    def uidvalidity(self) -> int:
        return self.meta("uidvalidity")

    @property
    def uidnext(self) -> int:
        return self.meta("uidnext")

    # -- messages -------------------------------------------------------------

    def rows(self) -> list[Row]:
        return self.db.execute(
            "SELECT uid, base, sub, suffix, kw, size, idate FROM msg ORDER BY uid").fetchall()

    def add(self, entries: Sequence[tuple[str, str, str, str, int, int]],
            synced: bool = True) -> list[int]:
        """Give each (base, sub, suffix, kw, size, idate) the next UID; returns the UIDs.

        synced=False: the caller makes the index file durable (a syncfs that
        follows) before any UID reaches a client, so the commit skips its fsync.
        NORMAL, not OFF: a checkpoint still syncs before it reuses the WAL.
        """
        if not entries:
            return []
        db = self.db
        if not synced:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                first = self.uidnext
                uids = list(range(first, first + len(entries)))
                db.executemany("INSERT INTO msg VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(u, *e) for u, e in zip(uids, entries, strict=True)])
                db.execute("UPDATE meta SET value=? WHERE key='uidnext'",
                           (first + len(entries),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            if not synced:
                db.execute("PRAGMA synchronous=FULL")
        return uids

    def update(self, changes: Iterable[tuple[int, str, str, str]]) -> None:
        """Record (uid, sub, suffix, kw) for messages renamed or given keywords."""
        self._write("UPDATE msg SET sub=?, suffix=?, kw=? WHERE uid=?",
                    [(sub, suffix, kw, uid) for uid, sub, suffix, kw in changes])

    def remove(self, uids: Iterable[int]) -> None:
        params = [(u,) for u in uids]
        if not params:
            return
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM msg WHERE uid=?", params)
            db.executemany("DELETE FROM cache WHERE uid=?", params)  # every kind
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _write(self, sql: str, params: list[tuple]) -> None:
        if not params:
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(sql, params)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    # -- the parse cache ------------------------------------------------------

    def cached(self, uids: Sequence[int], kind: str) -> dict[int, bytes]:
        """Cached summaries of this kind for uids (those that have one)."""
        out: dict[int, bytes] = {}
        if not uids:
            return out
        lo, hi = min(uids), max(uids)
        if len(uids) * 4 >= hi - lo:  # dense: one range scan beats many lookups
            wanted = set(uids)
            for uid, data in self.db.execute(
                    "SELECT uid, data FROM cache WHERE kind=? AND uid BETWEEN ? AND ?",
                    (kind, lo, hi)):
                if uid in wanted:
                    out[uid] = data
        else:
            for uid in uids:
                row = self.db.execute("SELECT data FROM cache WHERE uid=? AND kind=?",
                                      (uid, kind)).fetchone()
                if row is not None:
                    out[uid] = row[0]
        return out

    def put_cached(self, items: Iterable[tuple[int, bytes]], kind: str) -> None:
        # Losing this on a crash costs only a re-parse: no fsync needed.
        db = self.db
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._write("INSERT OR REPLACE INTO cache VALUES (?, ?, ?)",
                        [(u, kind, d) for u, d in items])
        finally:
            db.execute("PRAGMA synchronous=FULL")
