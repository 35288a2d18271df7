"""One folder's messages held as columns, not as one Python object per message.

Sits in store/, under store/folder.py (the only writer; it holds the folder's
lock around every change) and store/index.py (which keeps a packed copy, see
pack()). A folder of 100,000 messages opened, after a restart or for the
first time, had spent most of its time building 100,000 Message objects and
a dict of them (bench/RESULTS.md, 2026-11-27: SELECT after a restart 0.33 s
against Dovecot's 0.065 s); here a message is a position in a few arrays:

  uids     list of UIDs, ascending (the position of a UID is a bisect)
  state    per message, the number of its (sub, suffix, kw) in `states`:
           100,000 messages share a handful of those ("cur", ":2,S", "")
  size, idate, modseq   machine integers (array)
  bases    the Maildir unique names

Message objects (store/folder.py) are made on demand by get(), as copies:
the folder writes a changed one back with put(). Readers that look at many
messages (flags, STATUS counts, the first unseen) ask the columns directly.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

# (base, sub, suffix, kw, size, idate): a message's row as the index adds it.
Row = tuple[str, str, str, str, int, int]
# (uid, base, sub, suffix, kw, size, idate, modseq): a row of the index's msg table.
IndexRow = tuple[int, str, str, str, str, int, int, int]
UNKNOWN = -1  # size and idate of a message not stat'ed yet (learn())

_MAGIC = b"MGL1" + sys.byteorder[:1].encode()  # arrays are packed in this byte order
_HEAD = struct.Struct("<5sII")  # magic, messages, states
_SEP = "\0"  # no file name, flag info or IMAP keyword holds a NUL


def letters_of(suffix: str) -> str:
    """The info letters of a file name's suffix (":2,FS" -> "FS")."""
    return suffix[3:] if suffix.startswith(":2,") else ""


class _Columns:
    """One consistent set of columns. remove() builds a new set and swaps it in
    whole, so a reader in another thread (FETCH does not hold the folder's lock)
    that took the set once sees every column of the same messages: never one
    message's UID with another's file name."""

    __slots__ = ("uids", "state", "size", "idate", "modseq", "_bases", "_packed", "_lock",
                 "next")

    def __init__(self, uids: list[int], state: array, size: array, idate: array,
                 modseq: array, bases: list[str] | None, packed: bytes = b"") -> None:
        self.uids, self.state, self.size, self.idate, self.modseq = (
            uids, state, size, idate, modseq)
        self._bases, self._packed = bases, packed  # bases None: split packed when asked
        self._lock = threading.Lock()
        self.next = 0  # readers of many messages ask in UID order: no bisect then

    @property
    def bases(self) -> list[str]:
        """The unique names, split from the packed listing when first asked: a SELECT
        after a restart needs none of them (a FETCH of a body or a listing does)."""
        bases = self._bases
        if bases is None:
            with self._lock:  # readers in several threads split it once
                bases = self._bases
                if bases is None:
                    bases = self._packed.decode("utf-8", "surrogateescape").split(_SEP) \
                        if self.uids else []
                    if len(bases) != len(self.uids):  # checked here, not at every open
                        raise ValueError("a packed listing with one name too many or few")
                    self._bases, self._packed = bases, b""
        return bases

    def pos(self, uid: int) -> int:
        uids = self.uids
        i = self.next
        if i < len(uids) and uids[i] == uid:
            self.next = i + 1
            return i
        i = bisect_left(uids, uid)
        if i < len(uids) and uids[i] == uid:
            self.next = i + 1
            return i
        return -1


def _empty() -> _Columns:
    return _Columns([], array("I"), array("q"), array("q"), array("q"), [])


class Listing:
    """The columns. Changes come from the folder alone, under its lock; readers
    need no lock (see _Columns)."""

    def __init__(self, make: Any, path: str) -> None:
        """make(uid, base, sub, suffix, kw, size, idate, modseq, owner): a Message;
        path: the folder's directory (learn() stats its files)."""
        self._make = make
        self.path = path
        self._learned: set[int] = set()  # UIDs whose size and date learn() found
        # (sub, suffix, kw) by number: only grows, so a number read once stays valid.
        self.states: list[tuple[str, str, str]] = []
        self._state_ids: dict[tuple[str, str, str], int] = {}
        # state_ids_where()'s answers: (letter, present) -> (states, how many seen, ids).
        self._where_ids: dict[tuple[str, bool], tuple[list, int, set[int]]] = {}
        self._c = _empty()

    # The current columns (read-only views for the folder and tests).
    @property
    def uids(self) -> list[int]:
        return self._c.uids

    @property
    def bases(self) -> list[str]:
        return self._c.bases

    @property
    def state(self) -> array:
        return self._c.state

    @property
    def size(self) -> array:
        return self._c.size

    def _pos(self, uid: int) -> int:
        return self._c.pos(uid)

    def state_id(self, sub: str, suffix: str, kw: str) -> int:
        """The number of this (sub, suffix, kw) in states, added if new."""
        key = (sub, suffix, kw)
        n = self._state_ids.get(key)
        if n is None:
            n = len(self.states)
            self.states.append(key)  # before any column holds n
            self._state_ids[key] = n
        return n

    # -- the mapping face (uid -> Message), as the dict of Messages had -------

    def __len__(self) -> int:
        return len(self._c.uids)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self._c.pos(uid) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self._c.uids)

    def get(self, uid: int, default: Any = None) -> Any:
        c = self._c
        i = c.pos(uid)
        return default if i < 0 else self._at(c, i)

    def __getitem__(self, uid: int) -> Any:
        c = self._c
        i = c.pos(uid)
        if i < 0:
            raise KeyError(uid)
        return self._at(c, i)

    def values(self) -> Iterator[Any]:
        c = self._c
        return (self._at(c, i) for i in range(len(c.uids)))

    def relpath_of(self, uid: int) -> str | None:
        """The message's file, as Message.relpath() has it, without making the Message
        (SEARCH's first fill asks it for 100,000 messages)."""
        c = self._c
        i = c.pos(uid)
        if i < 0:
            return None
        sub, suffix, _ = self.states[c.state[i]]
        return f"{sub}/{c.bases[i]}{suffix}"

    def relpaths(self, uids: Iterable[int], root: str = "") -> list[str]:
        """root + relpath_of(uid) of each of uids ("" for a UID not here): SEARCH's
        first fill names 100,000 files for its child before the child can start."""
        c = self._c
        ends = [(f"{root}{sub}/", suffix) for sub, suffix, _ in self.states]
        state, bases, pos = c.state, c.bases, c.pos
        out = []
        for uid in uids:
            i = pos(uid)
            if i < 0:
                out.append("")
            else:
                head, tail = ends[state[i]]
                out.append(head + bases[i] + tail)
        return out

    def _at(self, c: _Columns, i: int) -> Any:
        sub, suffix, kw = self.states[c.state[i]]
        return self._make(c.uids[i], c.bases[i], sub, suffix, kw, c.size[i], c.idate[i],
                          c.modseq[i], self)

    def learn(self, uid: int, relpath: str) -> tuple[int, int]:
        """(size, INTERNALDATE) of a message whose row has them UNKNOWN: its file's
        size and mtime, kept in the columns (take_learned() tells which). (0, 0),
        kept UNKNOWN, for a file gone meanwhile: sync() finds where it went."""
        try:
            st = os.stat(f"{self.path}/{relpath}")
        except FileNotFoundError:
            return 0, 0
        size, idate = st.st_size, int(st.st_mtime)
        c = self._c
        i = c.pos(uid)
        if i >= 0:
            c.size[i], c.idate[i] = size, idate
            self._learned.add(uid)
        return size, idate

    def has_learned(self) -> bool:
        return bool(self._learned)

    def take_learned(self) -> list[tuple[int, int, int]]:
        """(size, idate, uid) learned since the last call, for the index's rows."""
        learned, self._learned = self._learned, set()
        c = self._c
        out = []
        for u in sorted(learned):
            i = c.pos(u)
            if i >= 0:
                out.append((c.size[i], c.idate[i], u))
        return out

    def learn_all(self) -> None:
        """learn() every size and date still UNKNOWN (STATUS SIZE sums them all)."""
        c = self._c
        if len(c.size) and min(c.size) == UNKNOWN:
            for i, s in enumerate(c.size):
                if s == UNKNOWN:
                    sub, suffix, _ = self.states[c.state[i]]
                    self.learn(c.uids[i], f"{sub}/{c.bases[i]}{suffix}")

    # -- changes (the folder's, under its lock) -------------------------------

    def extend(self, uids: Sequence[int], rows: Iterable[Row], modseq: int) -> None:
        """Add messages with UIDs above every one held, all at modseq. The UIDs go in
        last: a reader finds a new message only once its other columns hold it."""
        c = self._c
        if uids and c.uids and uids[0] <= c.uids[-1]:
            raise AssertionError("UIDs must grow")
        rows = list(rows)
        if len(rows) != len(uids):
            raise AssertionError("one UID per row")
        keys = [(sub, suffix, kw) for _, sub, suffix, kw, _, _ in rows]
        for key in dict.fromkeys(keys):  # a handful of distinct ones
            self.state_id(*key)
        ids = self._state_ids
        c.bases.extend([row[0] for row in rows])
        c.state.extend(array("I", [ids[key] for key in keys]))
        c.size.extend(array("q", [row[4] for row in rows]))
        c.idate.extend(array("q", [row[5] for row in rows]))
        c.modseq.frombytes(array("q", [modseq]).tobytes() * len(rows))
        c.uids.extend(uids)

    def load(self, rows: Iterable[IndexRow]) -> None:
        """Fill empty columns from index rows (uid, base, sub, suffix, kw, size, idate,
        modseq) in UID order (Index.rows())."""
        if self._c.uids:
            raise AssertionError("load() fills empty columns only")
        sid = self.state_id
        uids, bases, state, size, idate, modseq = [], [], [], [], [], []
        for uid, base, sub, suffix, kw, sz, idt, ms in rows:
            uids.append(uid)
            bases.append(base)
            state.append(sid(sub, suffix, kw))
            size.append(sz)
            idate.append(idt)
            modseq.append(ms)
        self._c = _Columns(uids, array("I", state), array("q", size), array("q", idate),
                           array("q", modseq), bases)

    def fill(self, first: int, state: array, bases: bytes, modseq: int) -> None:
        """Fill empty columns with len(state) messages of UIDs first, first + 1, ...:
        state numbers from state_id(), bases the unique names joined by NUL (kept
        joined until asked, as unpack() does), size and date UNKNOWN. A big first
        listing (store/folder.py) builds no Python object per message."""
        if self._c.uids:
            raise AssertionError("fill() fills empty columns only")
        n = len(state)
        if (not n and bases) or max(state, default=-1) >= len(self.states):
            raise AssertionError("one name and a known state per message")
        unknown = array("q", [UNKNOWN]) * n
        self._c = _Columns(list(range(first, first + n)), state, unknown, array("q", unknown),
                           array("q", [modseq]) * n, None, bases)

    def clear(self) -> None:
        """Empty columns (the states stay: their numbers never change)."""
        self._c = _empty()

    def rows_from(self, uid: int, limit: int) -> list[IndexRow]:
        """Up to limit index rows (uid, base, sub, suffix, kw, size, idate, modseq) of the
        messages from uid on, in UID order: the rows store/index.py had not written."""
        c = self._c
        start = bisect_left(c.uids, uid)
        end = min(len(c.uids), start + limit)
        states, bases = self.states, c.bases
        return [(c.uids[i], bases[i], *states[c.state[i]], c.size[i], c.idate[i], c.modseq[i])
                for i in range(start, end)]

    def put(self, m: Any) -> None:
        """Write back a Message's sub, suffix, kw and modseq (its other fields never change)."""
        c = self._c
        i = c.pos(m.uid)
        if i < 0:
            return
        c.state[i] = self.state_id(m.sub, m.suffix, m.kw)
        c.modseq[i] = m.modseq

    def set_modseq(self, uids: Iterable[int], modseq: int) -> None:
        c = self._c
        for u in uids:
            i = c.pos(u)
            if i >= 0:
                c.modseq[i] = modseq

    def remove(self, uids: Iterable[int]) -> None:
        """Drop these messages: new columns, swapped in whole (see _Columns)."""
        gone = set(uids)
        c = self._c
        keep = [i for i, u in enumerate(c.uids) if u not in gone]
        if len(keep) == len(c.uids):
            return
        bases = c.bases
        self._c = _Columns([c.uids[i] for i in keep],
                           *(array(col.typecode, [col[i] for i in keep])
                             for col in (c.state, c.size, c.idate, c.modseq)),
                           [bases[i] for i in keep])

    # -- what readers of many messages ask ------------------------------------

    def state_of(self, uid: int) -> int | None:
        """The number of the message's (sub, suffix, kw) in states; None when it is
        not here. A number stays the same (sub, suffix, kw) for the Listing's life."""
        c = self._c
        i = c.pos(uid)
        return None if i < 0 else c.state[i]

    def state_ids_where(self, letter: str, present: bool) -> set[int]:
        """The numbers of the states whose info has (or lacks) letter. Kept and only
        extended by the states added since: a busy folder gathers thousands of
        (sub, suffix, kw) (imaptest's stress: every flag and keyword mix), and each
        SELECT and STATUS asks this. Never changed once returned (a new set instead)."""
        states = self.states
        key = (letter, present)
        seen = self._where_ids.get(key)
        if seen is not None and seen[0] is states and seen[1] == len(states):
            return seen[2]
        start, ids = (seen[1], seen[2]) if seen is not None and seen[0] is states else (0, set())
        more = {n for n in range(start, len(states))
                if (letter in letters_of(states[n][1])) == present}
        if more:
            ids = ids | more
        self._where_ids[key] = (states, len(states), ids)
        return ids

    def count(self, letter: str, present: bool = True) -> int:
        """Messages whose info has (or lacks) letter ("S": seen, "T": deleted)."""
        c = self._c
        ids = self.state_ids_where(letter, present)
        return sum(1 for s in c.state if s in ids) if ids else 0

    def first_without(self, letter: str, uids: Sequence[int]) -> int:
        """The sequence number (1-based, in uids) of the first message lacking letter
        (RFC 3501 UNSEEN with "S"); 0 when none does."""
        ids = self.state_ids_where(letter, False)
        if not ids:
            return 0
        c = self._c
        state = c.state
        if len(uids) == len(c.uids) and (not uids or (
                uids[0] == c.uids[0] and uids[-1] == c.uids[-1])):
            for i, s in enumerate(state):  # the session numbers as the folder does
                if s in ids:
                    return i + 1
            return 0
        for n, u in enumerate(uids, 1):
            i = c.pos(u)
            if i >= 0 and state[i] in ids:
                return n
        return 0

    def _where(self, ids: set[int]) -> list[int]:
        c = self._c
        return [c.uids[i] for i, s in enumerate(c.state) if s in ids] if ids else []

    def with_letter(self, letter: str) -> list[int]:
        """UIDs of the messages whose info has letter ("T": \\Deleted)."""
        return self._where(self.state_ids_where(letter, True))

    def where_sub(self, sub: str) -> list[int]:
        """UIDs of the messages in directory sub ("new" or "cur")."""
        return self._where({n for n, state in enumerate(self.states) if state[0] == sub})

    def total_size(self) -> int:
        self.learn_all()
        return sum(s for s in self._c.size if s > 0)

    def positions(self, uids: Iterable[int] | None = None) -> Iterator[tuple[int, str, str, str]]:
        """(uid, base, sub, suffix) of every message, or of those of uids held."""
        c = self._c
        states, state, bases = self.states, c.state, c.bases
        if uids is None:
            for i, u in enumerate(c.uids):
                sub, suffix, _ = states[state[i]]
                yield u, bases[i], sub, suffix
            return
        for u in uids:
            i = c.pos(u)
            if i >= 0:
                sub, suffix, _ = states[state[i]]
                yield u, bases[i], sub, suffix

    # -- the packed copy the index keeps (store/index.py save_listing) ---------

    def pack(self) -> bytes:
        """Everything in one byte string: a restart reads it back in milliseconds
        instead of building the columns from 100,000 SQLite rows."""
        c = self._c
        texts = _SEP.join("\1".join(s) for s in self.states)
        parts = [_HEAD.pack(_MAGIC, len(c.uids), len(self.states)),
                 array("I", c.uids).tobytes(), c.state.tobytes(), c.size.tobytes(),
                 c.idate.tobytes(), c.modseq.tobytes()]
        packed = c._packed  # read before _bases: a split meanwhile empties _packed
        if c._bases is not None:
            packed = b""  # split already: joined again below
        for text in (texts, None if packed else _SEP.join(c.bases)):
            data = packed if text is None else text.encode("utf-8", "surrogateescape")
            parts += [struct.pack("<Q", len(data)), data]
        return b"".join(parts)

    def unpack(self, data: bytes) -> bool:
        """Load pack()'s output; False (nothing changed) when it is not one."""
        try:
            magic, n, nstates = _HEAD.unpack_from(data)
            if magic != _MAGIC:
                return False
            at = _HEAD.size
            view = memoryview(data)  # slices without copies: the columns are copied once
            cols = []
            for code in ("I", "I", "q", "q", "q"):
                col = array(code)
                end = at + n * col.itemsize
                col.frombytes(view[at:end])
                cols.append(col)
                at = end
            texts = []
            for _ in range(2):
                (length,) = struct.unpack_from("<Q", data, at)
                at += 8
                texts.append(view[at:at + length])
                at += length
            states = [tuple(s.split("\1")) for s in str(
                texts[0], "utf-8", "surrogateescape").split(_SEP)] if nstates else []
            bases = bytes(texts[1])  # split when first asked (the bases property)
        except (struct.error, ValueError, UnicodeError):
            return False
        # The count of names is checked when they are split (_Columns.bases): 5 ms here.
        if at != len(data) or (not n and bases) or len(states) != nstates \
                or any(len(s) != 3 for s in states) or max(cols[1], default=-1) >= nstates:
            return False
        uids = cols[0].tolist()
        if uids != sorted(uids):
            return False
        self.states = states  # type: ignore[assignment]
        self._state_ids = {s: i for i, s in enumerate(states)}  # type: ignore[misc]
        self._c = _Columns(uids, *cols[1:], None, bases)
        return True
