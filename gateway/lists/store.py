"""The list store: each list's settings, members, held posts, pending confirmations
and bounce scores, in one SQLite database at <state_dir>/lists/lists.sqlite3.

Sits beside the flow: resolve/ asks names() whether an address is a list,
the exploder asks members(), requests.py and bounces.py change members, and
the `mailgateway list` command (lists/cli.py) changes everything while the
gateway runs. Two processes write it at once, so it is SQLite rather than
files: WAL journal (readers never wait for the writer), synchronous=FULL
(each commit is fsync'd before it returns: a change the CLI reported is on
disk), every change one transaction begun with BEGIN IMMEDIATE (the writer
takes the lock first, so two writers queue behind busy_timeout instead of
failing on a lock upgrade), and no change spans two transactions. A kill -9
at any moment leaves either the whole change or none of it.

Addresses: a list's address is lower-cased whole (list names are
case-insensitive, as in Mailman). A member keeps the local part as given
(RFC 5321 2.4: only the receiving host may fold it) with the domain
lower-cased, and is found by its fully lower-cased form, so Alice@X and
alice@x are one member.

Blocking: call it from a pool thread in the gateway (it fsyncs).
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import secrets
import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from gateway.durable import fsync_dir
from gateway.envelope import normalize_address
from gateway.errors import MailError

POLICIES = ("open", "members", "moderated", "announce")
REPLY_TO = ("none", "list", "poster")
ARCHIVE_READERS = ("members", "owners")
DMARC = ("off", "munge_from", "always")
WHO_ALLOWED = ("members", "owners", "nobody")
_CHOICES = {"policy": POLICIES, "reply_to": REPLY_TO, "archive_readers": ARCHIVE_READERS,
            "dmarc": DMARC, "who_allowed": WHO_ALLOWED}

DAY = 86400.0
# How often data_version() also asks SQLite (changes made without a ListStore).
RECHECK_SECONDS = 1.0
_COUNTER = struct.Struct("=Q")  # the change counter in lists.changed


def _map_counter(path: Path) -> tuple[mmap.mmap | None, bool]:
    """lists.changed mapped shared (read-write, or read-only when another user made
    it), and whether it is writable; None when it cannot be had. Never cut short:
    a mapped file truncated under its readers kills them (SIGBUS)."""
    for flags, access in ((os.O_RDWR | os.O_CREAT, mmap.ACCESS_WRITE),
                          (os.O_RDONLY, mmap.ACCESS_READ)):
        try:
            fd = os.open(path, flags, 0o600)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_size < _COUNTER.size:
                if access == mmap.ACCESS_READ:
                    return None, False
                os.ftruncate(fd, _COUNTER.size)
            return mmap.mmap(fd, _COUNTER.size, access=access), access == mmap.ACCESS_WRITE
        except OSError:
            continue
        finally:
            os.close(fd)
    return None, False


@dataclass(frozen=True)
class MailingList:
    address: str
    owners: tuple[str, ...] = ()
    moderators: tuple[str, ...] = ()
    policy: str = "members"
    subject_prefix: str = ""
    reply_to: str = "none"
    # Largest post in bytes; larger posts are refused (0: only smtp.max_message_size).
    max_size: int = 10 * 1024 * 1024
    archive: bool = True
    archive_readers: str = "members"
    # One envelope per member, sender dev-bounces+member=host@: bounces name the member.
    verp: bool = True
    dmarc: str = "munge_from"
    # A member whose score reaches this is disabled (Mailman's bounce_score_threshold).
    bounce_threshold: float = 5.0
    # A score older than this many days starts again from 0 (bounce_info_stale_after).
    bounce_reset_days: float = 7.0
    who_allowed: str = "owners"
    description: str = ""
    web_base_url: str = ""
    # Signs RFC 8058 one-click unsubscribe links (posting.one_click_url); never shown.
    secret: str = field(default="", repr=False)

    @property
    def name(self) -> str:
        return self.address.split("@", 1)[0]

    @property
    def domain(self) -> str:
        return self.address.split("@", 1)[1]

    def is_owner(self, address: str) -> bool:
        return member_key(address) in {member_key(a) for a in self.owners}

    def is_moderator(self, address: str) -> bool:
        """Owners moderate too."""
        key = member_key(address)
        return key in {member_key(a) for a in self.owners + self.moderators}

    def public(self) -> dict:
        """The settings as shown by `list show` (the secret left out)."""
        d = asdict(self)
        del d["secret"]
        return d


SETTINGS = tuple(f.name for f in fields(MailingList) if f.name not in ("address", "secret"))


@dataclass(frozen=True)
class Member:
    address: str
    enabled: bool
    bounce_score: float
    last_bounce: float | None


@dataclass(frozen=True)
class Held:
    id: str
    list: str
    sender: str
    reason: str
    held_at: float
    message: bytes


def normalize(address: str) -> str:
    """address with its domain lower-cased; ValueError if it is not user@domain."""
    try:
        return normalize_address(address.strip())
    except MailError as e:
        raise ValueError(e.text) from None


def member_key(address: str) -> str:
    return address.strip().lower()


def new_secret() -> str:
    """128 random bits in hex: url-safe, and immune to clients that change case."""
    return secrets.token_hex(16)


def check_setting(key: str, value: object) -> object:
    """value if it suits setting key, with the type the dataclass has; else ValueError."""
    if key not in SETTINGS:
        raise ValueError(f"unknown setting {key!r} (one of: {', '.join(SETTINGS)})")
    default = getattr(MailingList("x@y"), key)
    if key in ("owners", "moderators"):
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        return tuple(normalize(v) for v in value)  # type: ignore[union-attr]
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                raise ValueError(f"{key} must be true or false, not {value!r}")
            return value.lower() in ("true", "yes", "on", "1")
        return bool(value)
    if isinstance(default, (int, float)):
        try:
            number = type(default)(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, not {value!r}") from None
        if number < 0:
            raise ValueError(f"{key} must not be negative")
        return number
    value = str(value)
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"{key} must be one of {', '.join(_CHOICES[key])}, not {value!r}")
    if key == "web_base_url" and value and not value.startswith("https://"):
        raise ValueError("web_base_url must start with https://")
    return value


_SCHEMA = """
CREATE TABLE IF NOT EXISTS lists (address TEXT PRIMARY KEY, settings TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    list TEXT NOT NULL, key TEXT NOT NULL, address TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1, score REAL NOT NULL DEFAULT 0, last_bounce REAL,
    PRIMARY KEY (list, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_key ON members (key);
CREATE TABLE IF NOT EXISTS held (
    id TEXT PRIMARY KEY, list TEXT NOT NULL, sender TEXT NOT NULL, reason TEXT NOT NULL,
    held_at REAL NOT NULL, message BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS held_list ON held (list, held_at);
CREATE TABLE IF NOT EXISTS tokens (
    token TEXT PRIMARY KEY, list TEXT NOT NULL, action TEXT NOT NULL, subject TEXT NOT NULL,
    expires REAL NOT NULL);
"""


class ListStore:
    """All lists of the gateway. Thread-safe (one connection behind a lock)."""

    def __init__(self, root: Path, busy_timeout: float = 30.0,
                 recheck: float = RECHECK_SECONDS):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.root / "lists.sqlite3"
        # Every commit through a ListStore (the gateway's, the CLI's, another
        # gateway process's) adds one to the counter in this file, which every
        # ListStore keeps mapped (MAP_SHARED): readers learn of a change from a
        # memory read, no system call. A system call on the reactor thread lets
        # a pool thread take the GIL, and the reactor then waits for it: the
        # PRAGMA, and a stat() after it, cost ~0.1 ms each under load (py-spy,
        # bench/RESULTS.md 2026-11-26 "lists change stamp").
        self.stamp = self.root / "lists.changed"
        self._counter, self._counter_rw = _map_counter(self.stamp)
        self.recheck = recheck
        self._lock = threading.Lock()
        self._writes = 0
        self._pragma: int | None = None
        self._pragma_at = float("-inf")
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._write() as db:
            # Not executescript: it would commit in the middle of this transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        # SQLite syncs its files, not the directory entries of new ones (first start).
        fsync_dir(self.root)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._counter is not None:
                self._counter.close()
                self._counter = None

    def data_version(self) -> tuple[object, ...]:
        """Changes by other connections and by this one: equal values mean nothing
        changed in between.

        Called for every local part the router classifies (RCPT and delivery,
        on the reactor thread), so it makes no system call: the shared counter
        every ListStore commit raises (a list the CLI created is seen by the
        next call), plus SQLite's data_version at most every `recheck` seconds
        and only when the connection is free, for changes made without a
        ListStore (the sqlite3 shell; a stamp the gateway's user cannot map)."""
        counter = self._counter
        mark = _COUNTER.unpack_from(counter)[0] if counter is not None else None
        now = time.monotonic()
        if now - self._pragma_at >= self.recheck and self._lock.acquire(blocking=False):
            try:
                self._pragma = self._db.execute("PRAGMA data_version").fetchone()[0]
                self._pragma_at = now
            finally:
                self._lock.release()
        return mark, self._pragma, self._writes

    def _stamp(self) -> None:
        # After the commit: a reader that sees the new count reads the change. The
        # addition holds an flock on the file, so two processes committing at once
        # never write the same count (a reader that saw the first would miss the
        # second). Writers are rare (list changes), readers never lock.
        counter = self._counter
        if counter is None or not self._counter_rw:
            return  # readers fall back on the periodic data_version
        with self._lock, open(self.stamp, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            _COUNTER.pack_into(counter, 0, _COUNTER.unpack_from(counter)[0] + 1)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._writes += 1
        self._stamp()

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- lists ---------------------------------------------------------------

    def create(self, address: str, owners: Iterable[str], policy: str = "members"
               ) -> MailingList:
        address = normalize(address).lower()
        local = address.split("@", 1)[0]
        mlist = MailingList(address, owners=check_setting("owners", list(owners)),  # type: ignore
                            policy=check_setting("policy", policy),  # type: ignore[arg-type]
                            subject_prefix=f"[{local}] ", secret=new_secret())
        if not mlist.owners:
            raise ValueError("a list needs at least one owner")
        with self._write() as db:
            if db.execute("SELECT 1 FROM lists WHERE address=?", (address,)).fetchone():
                raise ValueError(f"list {address} exists")
            db.execute("INSERT INTO lists VALUES (?, ?)", (address, _dump(mlist)))
        return mlist

    def get(self, address: str) -> MailingList | None:
        rows = self._read("SELECT settings FROM lists WHERE address=?", (member_key(address),))
        return _load(rows[0][0]) if rows else None

    def names(self) -> list[str]:
        return [r[0] for r in self._read("SELECT address FROM lists ORDER BY address")]

    def set(self, address: str, **changes: object) -> MailingList:
        checked = {k: check_setting(k, v) for k, v in changes.items()}
        with self._write() as db:
            mlist = self._get(db, address)
            mlist = replace(mlist, **checked)
            if not mlist.owners:
                raise ValueError("a list needs at least one owner")
            db.execute("UPDATE lists SET settings=? WHERE address=?",
                       (_dump(mlist), mlist.address))
        return mlist

    def delete(self, address: str) -> None:
        with self._write() as db:
            mlist = self._get(db, address)
            for table in ("lists WHERE address", "members WHERE list", "held WHERE list",
                          "tokens WHERE list"):
                db.execute(f"DELETE FROM {table}=?", (mlist.address,))

    @staticmethod
    def _get(db: sqlite3.Connection, address: str) -> MailingList:
        row = db.execute("SELECT settings FROM lists WHERE address=?",
                         (member_key(address),)).fetchone()
        if row is None:
            raise KeyError(f"no list {address}")
        return _load(row[0])

    def _list_key(self, db: sqlite3.Connection, address: str) -> str:
        return self._get(db, address).address

    # --- members -------------------------------------------------------------

    def members(self, address: str, enabled_only: bool = True) -> list[str]:
        sql = "SELECT address FROM members WHERE list=?"
        if enabled_only:
            sql += " AND enabled=1"
        return [r[0] for r in self._read(sql + " ORDER BY key", (member_key(address),))]

    def member_records(self, address: str) -> list[Member]:
        rows = self._read("SELECT address, enabled, score, last_bounce FROM members "
                          "WHERE list=? ORDER BY key", (member_key(address),))
        return [Member(a, bool(e), s, lb) for a, e, s, lb in rows]

    def is_member(self, address: str, member: str) -> bool:
        return bool(self._read("SELECT 1 FROM members WHERE list=? AND key=?",
                               (member_key(address), member_key(member))))

    def lists_of(self, member: str) -> list[str]:
        """The lists member belongs to (enabled or not), by address (members_key index)."""
        return [r[0] for r in self._read("SELECT list FROM members WHERE key=? ORDER BY list",
                                         (member_key(member),))]

    def add_members(self, address: str, members: Iterable[str]) -> int:
        """Add members in one transaction; the number that were new. A bad address
        raises ValueError and adds nobody."""
        rows = {}
        for m in members:
            n = normalize(m)
            rows.setdefault(member_key(n), n)  # the first spelling wins
        with self._write() as db:
            key = self._list_key(db, address)
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO members (list, key, address) VALUES (?, ?, ?)",
                           ((key, k, a) for k, a in rows.items()))
            return db.total_changes - before

    def remove_members(self, address: str, members: Iterable[str]) -> int:
        keys = [(member_key(m),) for m in members]
        with self._write() as db:
            key = self._list_key(db, address)
            before = db.total_changes
            db.executemany("DELETE FROM members WHERE list=? AND key=?",
                           ((key, k) for (k,) in keys))
            return db.total_changes - before

    def enable(self, address: str, member: str) -> bool:
        """Enable a member again with a clean score; False if not a member."""
        with self._write() as db:
            cur = db.execute("UPDATE members SET enabled=1, score=0, last_bounce=NULL "
                             "WHERE list=? AND key=?",
                             (self._list_key(db, address), member_key(member)))
            return cur.rowcount > 0

    def record_bounce(self, address: str, member: str, now: float, weight: float = 1.0
                      ) -> bool:
        """Raise member's bounce score by weight; True when this bounce disabled them.

        As Mailman 3: a score whose last bounce is older than bounce_reset_days
        starts again from 0, so a member with one bad day a month stays.
        """
        with self._write() as db:
            mlist = self._get(db, address)
            row = db.execute("SELECT enabled, score, last_bounce FROM members "
                             "WHERE list=? AND key=?",
                             (mlist.address, member_key(member))).fetchone()
            if row is None or not row[0]:
                return False
            score, last = row[1], row[2]
            if last is not None and now - last > mlist.bounce_reset_days * DAY:
                score = 0.0
            score += weight
            disable = score >= mlist.bounce_threshold
            db.execute("UPDATE members SET score=?, last_bounce=?, enabled=? "
                       "WHERE list=? AND key=?",
                       (score, now, 0 if disable else 1, mlist.address, member_key(member)))
            return disable

    # --- held posts ----------------------------------------------------------

    def hold(self, address: str, sender: str, message: bytes, reason: str,
             now: float | None = None) -> str:
        """Keep a post for the moderators; its id, also the token of the notice."""
        held_id = new_secret()
        now = time.time() if now is None else now
        with self._write() as db:
            db.execute("INSERT INTO held VALUES (?, ?, ?, ?, ?, ?)",
                       (held_id, self._list_key(db, address), sender, reason, now,
                        sqlite3.Binary(message)))
        return held_id

    def held(self, address: str) -> list[Held]:
        rows = self._read("SELECT id, list, sender, reason, held_at, message FROM held "
                          "WHERE list=? ORDER BY held_at, id", (member_key(address),))
        return [Held(i, lst, s, r, t, bytes(m)) for i, lst, s, r, t, m in rows]

    def get_held(self, held_id: str) -> Held | None:
        rows = self._read("SELECT id, list, sender, reason, held_at, message FROM held "
                          "WHERE id=?", (held_id.strip().lower(),))
        return Held(*rows[0][:5], bytes(rows[0][5])) if rows else None

    def take_held(self, held_id: str) -> tuple[str, str, bytes] | None:
        """Remove a held post; (list, sender, message), or None if unknown or taken."""
        with self._write() as db:
            row = db.execute("SELECT list, sender, message FROM held WHERE id=?",
                             (held_id.strip().lower(),)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM held WHERE id=?", (held_id.strip().lower(),))
        return row[0], row[1], bytes(row[2])

    # --- confirmation tokens -------------------------------------------------

    def new_token(self, address: str, action: str, subject_address: str, now: float,
                  ttl: float) -> str:
        token = new_secret()
        with self._write() as db:
            db.execute("DELETE FROM tokens WHERE expires < ?", (now,))
            db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?)",
                       (token, self._list_key(db, address), action, subject_address,
                        now + ttl))
        return token

    def confirm(self, token: str, now: float) -> tuple[str, str, str] | None:
        """(list, action, address) of a live token, used up by this call; else None."""
        token = token.strip().lower()
        with self._write() as db:
            row = db.execute("SELECT list, action, subject, expires FROM tokens WHERE token=?",
                             (token,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM tokens WHERE token=?", (token,))
        return None if row[3] < now else (row[0], row[1], row[2])


def _dump(mlist: MailingList) -> str:
    return json.dumps(asdict(mlist), sort_keys=True)


def _load(text: str) -> MailingList:
    d = json.loads(text)
    known = {f.name for f in fields(MailingList)}
    d = {k: v for k, v in d.items() if k in known}  # settings of a later version: ignored
    d["owners"] = tuple(d.get("owners", ()))
    d["moderators"] = tuple(d.get("moderators", ()))
    return MailingList(**d)
