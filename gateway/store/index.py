"""The IMAP index of one Maildir folder: <folder>/mailgateway.index (SQLite).

Sits in store/, under store/folder.py (which keeps it in step with the
Maildir) and above nothing: it is the persistent half of a Folder. It holds
what Maildir cannot: UIDVALIDITY and UIDNEXT (RFC 3501 2.3.1.1), each
message's UID against its Maildir unique name, its keywords (also in the
file name, store/keywords.py; only those past Dovecot's 26 letters live here
alone), and a cache of
parsed headers (ENVELOPE, BODYSTRUCTURE) so FETCH need not reopen 100,000
files. The header fields SEARCH FROM/TO/CC/BCC/SUBJECT and SENT* look at
(decoded and case-folded by access/imap/searchfields.py; opaque text here)
are kept packed, a few thousand messages to a row per column (table
fieldpacks, store/fieldpack.py), so such a SEARCH is a substring search of a
few blobs instead of a parse of every message. They are filled on the first
SEARCH that needs them, as Dovecot fills its cache: indexing a message (a
delivery, or SELECT of a folder never seen) stays one stat per file.

Its meta table also records what the folder's last listing of new/ and cur/
saw (dir.<sub>.* keys, note_listed()), so reopening an unchanged folder need
not list 100,000 names.

Mod-sequences (RFC 7162 CONDSTORE/QRESYNC): each message has a MODSEQ, set
on arrival and raised whenever its flags or keywords change; HIGHESTMODSEQ
(meta) is the largest ever given, raised by expunges too, and the table
`vanished` keeps each expunged UID with the modseq of its expunge, so
QRESYNC can tell a client what went away since the modseq it knew (the newest
[mailbox] vanished_uids of them: a client that knew a modseq older than the
forgotten ones is told every missing UID, RFC 7162 3.2.5.1, 6). One
change (a transaction) takes one new value: max(HIGHESTMODSEQ + 1, the clock
in microseconds). Like UIDVALIDITY, the value follows the clock, so an index
rebuilt after a loss starts (seeded from the clock, and never below its new
UIDVALIDITY in microseconds) above every value its predecessor gave: a
HIGHESTMODSEQ never goes back, as RFC 7162 3.1.2.1 asks, without a counter
file written on every change. (A rebuild gives a new UIDVALIDITY as well,
which tells QRESYNC clients to resynchronise fully.)

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gateway.store import fieldpack

INDEX_NAME = "mailgateway.index"
SCHEMA_VERSION = 5
# Expunged UIDs a folder remembers for QRESYNC ([mailbox] vanished_uids); past it the
# oldest tenth is forgotten (Dovecot too forgets expunges with its old transaction logs).
VANISHED_LIMIT = 50000
# Packed search fields past twice the folder's messages plus this many are dropped
# (without_fields): the fields of expunged messages do not pile up for ever.
_STALE_SLACK = 1000

_SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE msg(
    uid INTEGER PRIMARY KEY,
    base TEXT NOT NULL UNIQUE,   -- Maildir unique name (file name before ':')
    sub TEXT NOT NULL,           -- 'new' or 'cur'
    suffix TEXT NOT NULL,        -- ':2,FS' (or '' or foreign info), as on disk
    kw TEXT NOT NULL DEFAULT '', -- IMAP keywords, space-separated (letters' ones too)
    size INTEGER NOT NULL,
    idate INTEGER NOT NULL,      -- INTERNALDATE, Unix seconds (the file's mtime)
    modseq INTEGER NOT NULL DEFAULT 1  -- RFC 7162: raised on each flag/keyword change
);
CREATE TABLE vanished(
    uid INTEGER PRIMARY KEY,     -- expunged (RFC 7162 QRESYNC: VANISHED (EARLIER))
    modseq INTEGER NOT NULL      -- the HIGHESTMODSEQ its expunge took
);
CREATE TABLE cache(
    uid INTEGER NOT NULL,
    kind TEXT NOT NULL,          -- which summary (access/imap/summary.py)
    data BLOB NOT NULL,          -- opaque to the store
    PRIMARY KEY (uid, kind)
);
CREATE TABLE fieldpacks(
    pack INTEGER NOT NULL,       -- what SEARCH's header keys look in (store/fieldpack.py)
    col TEXT NOT NULL,           -- 'uids', a text column (fieldpack.TEXTS) or 'sent'
    data BLOB NOT NULL,          -- that column of the pack's messages
    PRIMARY KEY (col, pack)
);
"""
FIELD_COLUMNS = fieldpack.TEXTS
_PACK_COLUMNS = ("uids", *FIELD_COLUMNS, "sent")  # a Pack's values, in order

# (uid, base, sub, suffix, kw, size, idate, modseq)
Row = tuple[int, str, str, str, str, int, int, int]
_clock_ns = time.time_ns  # the modseq clock (in microseconds: // 1000); tests move it


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

    def __init__(self, folder: Path, vanished_limit: int = VANISHED_LIMIT) -> None:
        self.path = Path(folder) / INDEX_NAME
        self.vanished_limit = vanished_limit  # expunged UIDs remembered ([mailbox])
        self.created = False  # True when this open made a fresh index (UIDs start anew)
        self.db = self._open()
        self.highestmodseq = self.meta("highestmodseq")
        # UIDs from this one on have no row yet (add_unwritten()): the saved listing
        # holds them. None: every message has its row.
        self.unwritten: int | None = self._unwritten()
        # rows_from(uid, limit) of the Folder's columns, for the rows not written yet;
        # None (an Index opened alone): they are read from the saved listing.
        self.unwritten_rows: Callable[[int, int], list[Row]] | None = None
        self.listing_current = False  # the saved listing matches msg (this process knows)

    def _open(self) -> sqlite3.Connection:
        for attempt in range(2):
            fresh = not self.path.exists()
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                if not fresh and self._version(db) == 2:
                    self._upgrade_2(db)
                if not fresh and self._version(db) in (3, 4):
                    self._upgrade_fields(db)
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
    def _version(db: sqlite3.Connection) -> int | None:
        try:
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.DatabaseError:
            return None
        return None if row is None else row[0]

    @classmethod
    def _valid(cls, db: sqlite3.Connection) -> bool:
        return cls._version(db) == SCHEMA_VERSION

    def _upgrade_2(self, db: sqlite3.Connection) -> None:
        """Schema 2 had no mod-sequences: add them, keeping UIDs and UIDVALIDITY (a
        rebuild would make every client download the folder again). Every message
        starts at one seed; no client knew a modseq of this folder before."""
        db.execute("BEGIN IMMEDIATE")
        db.execute("ALTER TABLE msg ADD COLUMN modseq INTEGER NOT NULL DEFAULT 1")
        db.execute("CREATE TABLE IF NOT EXISTS vanished("
                   "uid INTEGER PRIMARY KEY, modseq INTEGER NOT NULL)")
        seed = self._seed(db.execute("SELECT value FROM meta WHERE key='uidvalidity'"
                                     ).fetchone()[0])
        db.execute("UPDATE msg SET modseq=?", (seed,))
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       [("highestmodseq", seed), ("schema", 3)])
        db.execute("COMMIT")

    @staticmethod
    def _upgrade_fields(db: sqlite3.Connection) -> None:
        """Schema 3 had no search fields, schema 4 a row per message (table fields):
        add the (empty) table of packs; the first SEARCH that needs them fills it."""
        db.execute("BEGIN IMMEDIATE")
        db.execute("DROP TABLE IF EXISTS fields")
        statement = _SCHEMA[_SCHEMA.index("CREATE TABLE fieldpacks"):].split(";")[0]
        db.execute(statement.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        db.execute("COMMIT")

    @staticmethod
    def _seed(uidvalidity: int) -> int:
        """The first HIGHESTMODSEQ of an index: the clock (see the module docstring)."""
        return max(_clock_ns() // 1000, uidvalidity * 1_000_000)

    def _create(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
        # A new UIDVALIDITY each time UIDs start over (RFC 3501 2.3.1.1): the
        # clock, so a rebuilt index never repeats the value its clients knew.
        uidvalidity = next_uidvalidity(self.path)
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                       [("schema", SCHEMA_VERSION), ("uidvalidity", uidvalidity),
                        ("uidnext", 1), ("highestmodseq", self._seed(uidvalidity))])
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

    def _next_modseq(self) -> int:
        """A new mod-sequence for the change being written (inside its transaction)."""
        value = max(self.highestmodseq + 1, _clock_ns() // 1000)
        self.db.execute("UPDATE meta SET value=? WHERE key='highestmodseq'", (value,))
        return value

    # -- messages -------------------------------------------------------------

    def rows(self) -> Iterator[Row]:
        """Every message, in UID order; a cursor, not a list: 100,000 rows at once
        would raise the process's memory for good (the allocator keeps it). Not those
        from UID self.unwritten on, while it is set (the saved listing has them)."""
        return iter(self.db.execute("SELECT uid, base, sub, suffix, kw, size, idate, modseq "
                                    "FROM msg ORDER BY uid"))

    def vanished_since(self, modseq: int) -> list[int] | None:
        """UIDs expunged by a change after modseq (RFC 7162 3.2.5.1, VANISHED (EARLIER));
        None when expunges after modseq were forgotten (pruned by remove())."""
        floor = self.db.execute("SELECT value FROM meta WHERE key='vanishedfloor'").fetchone()
        if floor is not None and modseq < floor[0]:
            return None
        return [u for (u,) in self.db.execute(
            "SELECT uid FROM vanished WHERE modseq > ? ORDER BY uid", (modseq,))]

    def add(self, entries: Sequence[tuple[str, str, str, str, int, int]],
            synced: bool = True) -> list[int]:
        """Give each (base, sub, suffix, kw, size, idate) the next UID; returns the UIDs.
        They share one new modseq, self.highestmodseq after the call.

        synced=False: the caller makes the index file durable (a syncfs that
        follows) before any UID reaches a client, so the commit skips its fsync.
        NORMAL, not OFF: a checkpoint still syncs before it reuses the WAL.
        """
        if not entries:
            return []
        with self._transaction(synced) as db:
            first = self.uidnext
            uids = list(range(first, first + len(entries)))
            modseq = self._next_modseq()
            self._rows_changed()
            db.executemany("INSERT INTO msg VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(u, *e, modseq) for u, e in zip(uids, entries, strict=True)])
            db.execute("UPDATE meta SET value=? WHERE key='uidnext'", (first + len(entries),))
        self.highestmodseq = modseq
        return uids

    def update(self, changes: Iterable[tuple[int, str, str, str]],
               flagged: Iterable[int] = ()) -> int | None:
        """Record (uid, sub, suffix, kw) for messages renamed or given keywords; those
        in flagged (their flags or keywords changed) get one new modseq, returned."""
        params = [(sub, suffix, kw, uid) for uid, sub, suffix, kw in changes]
        raised = [(u,) for u in flagged]
        if not params and not raised:
            return None
        with self._transaction() as db:
            self._rows_changed()
            db.executemany("UPDATE msg SET sub=?, suffix=?, kw=? WHERE uid=?", params)
            modseq = None
            if raised:
                modseq = self._next_modseq()
                db.executemany(f"UPDATE msg SET modseq={modseq} WHERE uid=?", raised)
        if modseq is not None:
            self.highestmodseq = modseq
        return modseq

    def remove(self, uids: Iterable[int]) -> None:
        """Forget expunged messages, remembering their UIDs under a new modseq (QRESYNC)."""
        params = [(u,) for u in uids]
        if not params:
            return
        with self._transaction() as db:
            modseq = self._next_modseq()
            self._rows_changed()
            db.executemany("DELETE FROM msg WHERE uid=?", params)
            db.executemany("DELETE FROM cache WHERE uid=?", params)  # every kind
            # The fieldpacks keep an expunged message's fields: a search sees only the
            # UIDs still here, and without_fields() drops packs grown stale.
            db.executemany(f"INSERT OR REPLACE INTO vanished VALUES (?, {modseq})", params)
            self._prune_vanished(db)
        self.highestmodseq = modseq

    def _prune_vanished(self, db: sqlite3.Connection) -> None:
        """Past vanished_limit expunged UIDs, forget the oldest down to nine tenths of
        it, a whole modseq at a time; "vanishedfloor" is the newest modseq forgotten, so
        a client that knew an older one is sent every missing UID (vanished_since)."""
        if db.execute("SELECT COUNT(*) FROM vanished").fetchone()[0] <= self.vanished_limit:
            return
        keep = self.vanished_limit * 9 // 10
        over = db.execute("SELECT modseq FROM vanished ORDER BY modseq DESC LIMIT 1 OFFSET ?",
                          (keep,)).fetchone()
        db.execute("DELETE FROM vanished WHERE modseq <= ?", over)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('vanishedfloor', ?)", over)

    @contextmanager
    def _transaction(self, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on leaving, rolled back on an error. synced
        False: committed without its fsync (synchronous=NORMAL), for what a crash may
        lose (a cache, or rows whose durability rides another sync)."""
        db = self.db
        if not synced:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        finally:
            if not synced:
                db.execute("PRAGMA synchronous=FULL")

    def _write(self, sql: str, params: list[tuple], synced: bool = True) -> None:
        if not params:
            return
        with self._transaction(synced) as db:
            db.executemany(sql, params)

    # -- what the folder's directories looked like at the last listing ----------

    _DIR_KEYS = ("dev", "ino", "mtime", "stable", "listed")

    def dirs_listed(self) -> dict[str, tuple[int, int, int, int, int]]:
        """sub -> (st_dev, st_ino, st_mtime_ns, stable, listed at, ns) as note_listed()
        recorded them: a Folder opened again may skip listing a directory that has not
        changed since (store/folder.py)."""
        got = dict(self.db.execute("SELECT key, value FROM meta WHERE key LIKE 'dir.%'"))
        out = {}
        for sub in ("new", "cur"):
            values = [got.get(f"dir.{sub}.{k}") for k in self._DIR_KEYS]
            if None not in values:
                out[sub] = tuple(values)
        return out  # type: ignore[return-value]

    def note_listed(self, sub: str, record: tuple[int, int, int, int, int]) -> None:
        """Record that the rows match directory sub as it was: (st_dev, st_ino,
        st_mtime_ns, stable, listed at). Lost in a crash it costs one listing: no fsync."""
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [(f"dir.{sub}.{k}", int(v))
                     for k, v in zip(self._DIR_KEYS, record, strict=True)], synced=False)

    # -- the packed listing (store/listing.py): a restart without 100,000 rows ----

    def _rows_changed(self) -> None:
        """Inside each transaction that changes msg: the rows not written yet go in
        first (a change then finds every row it touches), and a packed listing saved
        before is stale from now on (meta 'rowsgen' counts these transactions)."""
        if self.unwritten is not None:
            self._write_unwritten(None)
        self.listing_current = False
        self.db.execute("INSERT INTO meta VALUES ('rowsgen', 1) "
                        "ON CONFLICT(key) DO UPDATE SET value=value+1")

    def _rollback(self) -> None:
        self.db.execute("ROLLBACK")
        self.unwritten = self._unwritten()  # as the rolled-back transaction found it

    def _unwritten(self) -> int | None:
        row = self.db.execute("SELECT value FROM meta WHERE key='unwritten'").fetchone()
        return None if row is None else row[0]

    # -- rows written after the answer: a big first listing (store/folder.py) -----

    def add_unwritten(self, count: int, fill: Callable[[int, int], bytes]) -> tuple[int, int]:
        """Give count messages the next UIDs without writing a row each: fill(first UID,
        modseq) puts them in the folder's columns and returns Listing.pack(), saved in
        the same transaction, synchronous=FULL, as the durable record of their UIDs
        (100,000 INSERTs had been a third of the first SELECT of a migrated mailbox).
        Their rows follow, after the answer: write_unwritten() in a background thread,
        or the next transaction that changes msg (_rows_changed) writes them first.
        Until then load_listing() answers with that listing. Returns (first, modseq)."""
        if count <= 0:
            raise ValueError("add_unwritten() of no messages")
        self._listing_table()
        with self._transaction() as db:
            self._rows_changed()  # writes rows still unwritten: one range at a time
            first = self.uidnext
            modseq = self._next_modseq()
            gen, _, count_before, top = self._listing_key()
            data = fill(first, modseq)
            db.execute("UPDATE meta SET value=? WHERE key='uidnext'", (first + count,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('unwritten', ?)", (first,))
            # The key the listing will match once every row is written (load_listing).
            db.execute("INSERT OR REPLACE INTO listing VALUES (0, ?, ?, ?, ?, ?)",
                       (gen, modseq, count_before + count, max(top, first + count - 1), data))
        self.highestmodseq = modseq
        self.unwritten = first
        self.listing_current = True
        return first, modseq

    def write_unwritten(self, limit: int) -> bool:
        """Write up to limit of the rows add_unwritten() left, in one transaction; True
        while some are left. Not a change of msg (rowsgen stays): the rows are those the
        saved listing holds. No fsync: a crash loses the rows and their meta together."""
        if self.unwritten is None:
            return False
        with self._transaction(synced=False):
            self._write_unwritten(limit)
        return self.unwritten is not None

    def _write_unwritten(self, limit: int | None) -> None:
        """Inside a transaction: INSERT the next rows (all with limit None)."""
        lo = self.unwritten
        if lo is None:
            return
        rows_from = self.unwritten_rows or self._saved_rows
        rows = rows_from(lo, limit or (1 << 62))
        self.db.executemany("INSERT INTO msg VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        if limit is None or len(rows) < limit:
            self.db.execute("DELETE FROM meta WHERE key='unwritten'")
            self.unwritten = None
        else:
            self.unwritten = rows[-1][0] + 1
            self.db.execute("UPDATE meta SET value=? WHERE key='unwritten'", (self.unwritten,))

    def _saved_rows(self, lo: int, limit: int) -> list[Row]:
        """rows_from() of the saved listing: for an Index opened without its Folder."""
        from gateway.store.listing import Listing  # the listing is opaque elsewhere here

        # Not load_listing(): inside a change, HIGHESTMODSEQ may have moved already.
        row = self.db.execute("SELECT data FROM listing").fetchone()
        listing = Listing(None, str(self.path.parent))
        if row is None or not listing.unpack(row[0]):
            raise sqlite3.DatabaseError(f"{self.path}: rows unwritten and no listing of them")
        return listing.rows_from(lo, limit)

    def _listing_table(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS listing(id INTEGER PRIMARY KEY "
                        "CHECK (id = 0), gen INTEGER NOT NULL, modseq INTEGER NOT NULL, "
                        "count INTEGER NOT NULL, top INTEGER NOT NULL, data BLOB NOT NULL)")

    def _listing_key(self, count: bool = True) -> tuple[int, int, int, int]:
        """What a packed listing is saved with: the change count, and (for a writer
        that does not count changes: an older gateway) HIGHESTMODSEQ, the number of
        rows (0 without count: a scan of every row, 10 ms of a 100,000-message
        restart, so load_listing() does not compare it; any writer's expunge raises
        HIGHESTMODSEQ) and the largest UID."""
        gen = self.db.execute("SELECT value FROM meta WHERE key='rowsgen'").fetchone()
        rows, top = self.db.execute(
            f"SELECT {'count(*)' if count else '0'}, coalesce(max(uid), 0) FROM msg").fetchone()
        return (gen[0] if gen else 0), self.meta("highestmodseq"), rows, top

    def load_listing(self) -> bytes | None:
        """The listing save_listing() kept, if the rows have not changed since."""
        try:
            row = self.db.execute("SELECT gen, modseq, count, top, data FROM listing"
                                  ).fetchone()
        except sqlite3.OperationalError:  # no such table: never saved
            return None
        if row is None:
            return None
        gen, modseq, _, top = self._listing_key(count=False)
        if (row[0], row[1]) != (gen, modseq):
            return None
        # While rows are being written (unwritten), only a change of msg (which writes
        # them all first and counts itself) or of HIGHESTMODSEQ makes it stale.
        if self.unwritten is None and row[3] != top:
            return None
        self.listing_current = True
        return row[4]

    def save_listing(self, data: bytes) -> None:
        """Keep data (Listing.pack() of rows as they are now). Lost in a crash it
        costs one reading of the rows: no fsync."""
        self._listing_table()
        self._write("INSERT OR REPLACE INTO listing VALUES (0, ?, ?, ?, ?, ?)",
                    [(*self._listing_key(), data)], synced=False)
        self.listing_current = self.unwritten is None

    def put_sizes(self, rows: Sequence[tuple[int, int, int]]) -> None:
        """Record (size, idate, uid) of messages first indexed without them (a big first
        listing: store/folder.py LAZY_STAT). Lost in a crash they are learned again."""
        with self._transaction(synced=False) as db:
            self._rows_changed()
            db.executemany("UPDATE msg SET size=?, idate=? WHERE uid=?", rows)

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
        self._write("INSERT OR REPLACE INTO cache VALUES (?, ?, ?)",
                    [(u, kind, d) for u, d in items], synced=False)

    # -- the search fields ------------------------------------------------------

    def without_fields(self, uids: Sequence[int], present: int) -> list[int]:
        """Those of uids (ascending) whose search fields are not filled yet. present:
        how many messages the folder holds; when the packs hold more than twice that
        (the fields of expunged messages, kept by remove()), they are all dropped and
        filled again by the search asking: storage stays bounded by the folder."""
        if not uids:
            return []
        packed = [fieldpack.numbers(d, "I") for (d,) in self.db.execute(
            "SELECT data FROM fieldpacks WHERE col='uids'")]
        if sum(map(len, packed)) > 2 * present + _STALE_SLACK:
            self._write("DELETE FROM fieldpacks", [()])
            return list(uids)
        have: set[int] = set()
        for a in packed:
            have.update(a)
        return [u for u in uids if u not in have]

    def put_fields(self, rows: Sequence[tuple]) -> None:
        """Store (uid, from, to, cc, bcc, subject, sent) rows, as one pack."""
        self.put_pack(fieldpack.of_rows(rows))

    def put_pack(self, pack: fieldpack.Pack) -> None:
        """Store a pack (store/fieldpack.py). Like the parse cache, a crash loses only
        work: no fsync."""
        if not pack[0]:
            return
        with self._transaction(synced=False) as db:
            n = db.execute("SELECT COALESCE(MAX(pack), 0) + 1 FROM fieldpacks"
                           ).fetchone()[0]
            db.executemany("INSERT INTO fieldpacks VALUES (?, ?, ?)",
                           [(n, c, d) for c, d in zip(_PACK_COLUMNS, pack, strict=True)])

    def _column(self, col: str) -> list[bytes]:
        """One column of every pack, in pack order."""
        return [d for (d,) in self.db.execute(
            "SELECT data FROM fieldpacks WHERE col=? ORDER BY pack", (col,))]

    def match_field(self, column: str, needle: bytes) -> set[int]:
        """UIDs whose column (one of FIELD_COLUMNS) holds needle as a substring (some
        may be expunged: the caller looks only at its own)."""
        if column not in FIELD_COLUMNS:
            raise ValueError(f"no search field {column!r}")
        found: set[int] = set()
        for uids, text in zip(self._column("uids"), self._column(column), strict=True):
            found.update(fieldpack.find(fieldpack.numbers(uids, "I"), text, needle))
        return found

    def sent_days(self) -> dict[int, int]:
        """uid -> the Date field's day, for the messages whose fields are filled."""
        days: dict[int, int] = {}
        for uids, sent in zip(self._column("uids"), self._column("sent"), strict=True):
            days.update(zip(fieldpack.numbers(uids, "I"), fieldpack.numbers(sent, "i"),
                            strict=True))
        return days

    def field_rows(self) -> dict[int, tuple]:
        """uid -> (from, to, cc, bcc, subject, sent) of every message packed."""
        packs = zip(*(self._column(c) for c in _PACK_COLUMNS), strict=True)
        return {r[0]: tuple(r[1:]) for p in packs for r in fieldpack.rows(p)}
