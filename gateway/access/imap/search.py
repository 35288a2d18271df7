"""SEARCH (RFC 3501 6.4.4): search keys into a predicate, run over the index and cache.

Part of access/imap: selected.py parses on the reactor thread (parse()) and
runs run() in the thread pool. Twisted's fallback search walks every message
through IMessage objects for every key (quadratic on big folders); here flags,
sizes, dates and UIDs come from the in-memory index, FROM/TO/CC/BCC/SUBJECT
and SENT* from the index's search field columns (RFC 2047 decoded,
searchfields.py: one SQL query per key, filled on the first such SEARCH),
and only BODY/TEXT/HEADER read files. BODY first looks for the string in
the raw file when that cannot miss a match (bodyscan.py), and decodes only
the messages where it may be. Matching is case-insensitive substring, as
6.4.4 says; BODY and TEXT look in the decoded text (base64, quoted-printable, the part's charset:
searchtext.py), and the search strings are read in the CHARSET the client
named (6.4.4: any charset Python has a text codec for; others get BADCHARSET).
MODSEQ (RFC 7162 3.1.5) compares each message's one modseq: this server
keeps no separate modseq per flag, which the RFC allows (the entry name and
type are read and not used).

One SEARCH has a Budget ([imap] max_search_keys, max_nesting,
max_search_bytes): past it the search stops with NO [LIMIT] (RFC 5530), so
one command can neither recurse without bound nor read a whole mailbox many
times over while other sessions wait for the thread pool.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from gateway import memtrim
from gateway.access.imap import bodyscan, message, searchfields, searchtext
from gateway.access.imap.mailbox import View
from gateway.access.imap.wire import (
    Atom,
    Bad,
    No,
    Str,
    astring,
    atom,
    is_sequence_set,
    modseq,
    number,
    sequence_set,
)
from gateway.store.folder import FLAG_LETTERS

_FLAG_KEYS = {b"ANSWERED": ("R", True), b"DELETED": ("T", True), b"DRAFT": ("D", True),
              b"FLAGGED": ("F", True), b"SEEN": ("S", True), b"UNANSWERED": ("R", False),
              b"UNDELETED": ("T", False), b"UNDRAFT": ("D", False),
              b"UNFLAGGED": ("F", False), b"UNSEEN": ("S", False)}
_ADDRESS_KEYS = {b"FROM": "from", b"TO": "to", b"CC": "cc", b"BCC": "bcc",
                 b"SUBJECT": "subject"}
_DATE_KEYS = {b"BEFORE", b"ON", b"SINCE", b"SENTBEFORE", b"SENTON", b"SENTSINCE"}
_MONTHS = {m: i for i, m in enumerate(
    [b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN", b"JUL", b"AUG", b"SEP", b"OCT",
     b"NOV", b"DEC"], 1)}


class Budget:
    """What one SEARCH may cost: keys and nesting (parsing), message bytes read (running)."""

    def __init__(self, settings) -> None:
        self.keys = settings.max_search_keys
        self.depth = settings.max_nesting
        self.bytes = settings.max_search_bytes
        self.bytes_read = 0
        # Header fields to fill past which a child process parses a share of them
        # ([imap] search_process_min, searchfields.fill); 0: never.
        self.process_min = settings.search_process_min

    def read(self, n: int) -> None:
        self.bytes_read += n
        if self.bytes_read > self.bytes:
            raise No(f"[LIMIT] SEARCH would read more than {self.bytes} octets of "
                     "messages; narrow it (a UID range, fewer text keys)")


class Shared:
    """What one SEARCH works out once for all its messages: the answers of the header
    keys (one SQL query each over the index's search fields, filled first where
    missing) and the Date days for SENT*."""

    def __init__(self, view: View, pairs: list[tuple[int, int]],
                 process_min: int = 0) -> None:
        self.view, self.pairs = view, pairs  # (seq, uid) searched
        self.process_min = process_min  # Budget.process_min
        self._filled = False
        self._matches: dict[tuple[str, str], set[int]] = {}
        self._sent: dict[int, int] | None = None

    def _fill(self) -> None:
        if not self._filled:
            searchfields.fill(self.view.folder, [u for _, u in self.pairs],
                              self.process_min)
            self._filled = True

    def matches(self, field: str, s: str) -> set[int]:
        """UIDs whose field (from, to, cc, bcc, subject) holds s (case-folded)."""
        found = self._matches.get((field, s))
        if found is None:
            self._fill()
            found = self._matches[field, s] = self.view.folder.match_field(
                "s" + field, s.encode("utf-8", "surrogatepass"))
        return found

    def sent_day(self, uid: int) -> int:
        if self._sent is None:
            self._fill()
            self._sent = self.view.folder.sent_days()
        return self._sent.get(uid, -1)


class Gone(Exception):
    """The message was expunged while the search ran: it matches nothing."""


class Message:
    """One message as a predicate sees it; the expensive parts load on first use,
    the store's Message (flags, size, dates) too: a SEARCH FROM of 100,000 messages
    made 100,000 of them for nothing (a quarter of a cached one's time)."""

    __slots__ = ("seq", "uid", "_m", "view", "shared", "_data", "_budget", "_root",
                 "_body", "_text", "_scan")

    def __init__(self, seq: int, uid: int, view: View, shared: Shared,
                 budget: Budget | None = None) -> None:
        self.seq, self.uid, self.view, self.shared = seq, uid, view, shared
        self._m = None
        self._data: bytes | None = None
        self._budget = budget
        self._root: message.Part | None = None
        self._body: str | None = None
        self._text: str | None = None
        self._scan: bodyscan.Scan | None = None

    @property
    def m(self):
        """The store's Message (store/folder.py); Gone if it was expunged meanwhile."""
        if self._m is None:
            self._m = self.view.folder.by_uid.get(self.uid)
            if self._m is None:
                raise Gone(self.uid)
        return self._m

    @property
    def data(self) -> bytes:
        if self._data is None:
            if self._budget is not None:
                self._budget.read(self.m.size)  # before reading: never past the budget
            self._data = self.view.folder.read(self.uid) or b""
        return self._data

    @property
    def root(self) -> message.Part:
        if self._root is None:
            self._root = searchtext.parse(self.data)
        return self._root

    def may_hold(self, s: str) -> bool:
        """False only when the decoded body cannot hold s (bodyscan.py): no decoding."""
        if self._body is not None:
            return True
        if self._scan is None:
            self._scan = bodyscan.Scan(self.data)
        return self._scan.may_hold(s)

    @property
    def body(self) -> str:
        """The decoded, case-folded body (SEARCH BODY); made once for all keys."""
        if self._body is None:
            self._body = searchtext.body_text(self.root)
        return self._body

    @property
    def text(self) -> str:
        """Header and decoded body (SEARCH TEXT)."""
        if self._text is None:
            self._text = searchtext.header_text(self.root) + "\n" + self.body
        return self._text


Predicate = Callable[[Message], bool]


def _date(token) -> int:
    text = astring(token, "date")
    try:
        day, month, year = text.split(b"-")
        return datetime.date(int(year), _MONTHS[month.upper()], int(day)).toordinal()
    except (ValueError, KeyError) as e:
        raise Bad("bad date (d-Mon-yyyy expected)") from e


class Parser:
    def __init__(self, tokens: list, view: View, budget: Budget, depth: int = 0,
                 codec: str = "utf-8") -> None:
        self.tokens, self.i, self.view = tokens, 0, view
        self.budget, self.depth = budget, depth
        self.codec = codec  # of the search strings (SEARCH CHARSET)
        self.modseq = False  # a MODSEQ key: the answer ends with (MODSEQ n)
        self.keys = 0  # keys parsed, this parser and those nested in it

    def take(self):
        if self.i >= len(self.tokens):
            raise Bad("search key incomplete")
        self.i += 1
        return self.tokens[self.i - 1]

    def all(self) -> Predicate:
        keys = []
        while self.i < len(self.tokens):
            keys.append(self.key())
        if not keys:
            raise Bad("search keys expected")
        return keys[0] if len(keys) == 1 else (lambda msg: all(k(msg) for k in keys))

    def key(self) -> Predicate:
        token = self.take()
        self.keys += 1
        if self.keys > self.budget.keys:
            raise No(f"[LIMIT] more than {self.budget.keys} search keys")
        if isinstance(token, list):
            inner = self._nested(token)
            p = inner.all()
            self.modseq |= inner.modseq
            self.keys = inner.keys
            return p
        if not isinstance(token, Atom):
            raise Bad("search key expected")
        k = bytes(token).upper()
        if k == b"ALL":
            return lambda msg: True
        if k in _FLAG_KEYS:
            letter, want = _FLAG_KEYS[k]
            return lambda msg: (letter in msg.m.letters) == want
        if k in (b"RECENT", b"OLD", b"NEW"):
            recent = self.view.recent
            if k == b"NEW":
                return lambda msg: msg.uid in recent and "S" not in msg.m.letters
            return lambda msg: (msg.uid in recent) == (k == b"RECENT")
        if k in (b"KEYWORD", b"UNKEYWORD"):
            word = astring(self.take(), "keyword").decode("utf-8", "replace")
            want = k == b"KEYWORD"
            letter = FLAG_LETTERS.get(word)
            if letter:  # $Forwarded lives in the file name
                return lambda msg: (letter in msg.m.letters) == want
            return lambda msg: (word in msg.m.kw.split(" ")) == want
        if k in _ADDRESS_KEYS:
            field, s = _ADDRESS_KEYS[k], self._text()
            found: list = [None, set()]  # (Shared, its answer): asked once per SEARCH

            def test(msg: Message) -> bool:
                if found[0] is not msg.shared:
                    found[:] = [msg.shared, msg.shared.matches(field, s)]
                return msg.uid in found[1]
            test.header = (field, s)  # type: ignore[attr-defined]  # run(): alone, no Message
            return test
        if k == b"HEADER":
            name = astring(self.take(), "header name").lower()
            s = self._text()
            return lambda msg: _header_has(msg.root, name, s)
        if k == b"BODY":
            s = self._text()
            return lambda msg: msg.may_hold(s) and s in msg.body
        if k == b"TEXT":
            s = self._text()
            return lambda msg: s in msg.text
        if k in _DATE_KEYS:
            return self._date_key(k, _date(self.take()))
        if k in (b"LARGER", b"SMALLER"):
            n = number(self.take(), "size")
            return (lambda msg: msg.m.size > n) if k == b"LARGER" else (
                lambda msg: msg.m.size < n)
        if k == b"NOT":
            inner = self._nested_key()
            return lambda msg: not inner(msg)
        if k == b"OR":
            a, b = self._nested_key(), self._nested_key()
            return lambda msg: a(msg) or b(msg)
        if k == b"MODSEQ":
            token = self.take()
            if isinstance(token, Str) or (isinstance(token, Atom) and not token.isdigit()):
                astring(token, "entry name")  # "/flags/\\Seen": one modseq serves all
                entry_type = atom(self.take(), "entry type").lower()
                if entry_type not in (b"priv", b"shared", b"all"):
                    raise Bad("MODSEQ entry type is priv, shared or all")
                token = self.take()
            since = modseq(token)
            self.modseq = True
            return lambda msg: msg.m.modseq >= since
        if k == b"$" or (k == b"UID" and self.tokens[self.i:self.i + 1] == [b"$"]):
            self.i += k == b"UID"  # RFC 5182: the saved result, as UIDs either way
            saved = set(self.view.saved)
            return lambda msg: msg.uid in saved
        if k == b"UID":
            return _in_ranges(sequence_set(self.take(), self.view.largest(True)), "uid")
        if is_sequence_set(token):
            return _in_ranges(sequence_set(token, self.view.largest(False)), "seq")
        raise Bad(f"unknown search key {k[:30].decode('ascii', 'replace')}")

    def _text(self) -> str:
        raw = astring(self.take(), "search string")
        return searchtext.decode_bytes(raw, self.codec).casefold()

    def _nested(self, tokens: list) -> Parser:
        """A parser one level down: the nesting is bounded here, so recursion stays shallow."""
        if self.depth >= self.budget.depth:
            raise Bad(f"search keys nested deeper than {self.budget.depth}")
        inner = Parser(tokens, self.view, self.budget, self.depth + 1, self.codec)
        inner.keys = self.keys
        return inner

    def _nested_key(self) -> Predicate:
        """The key after NOT or OR, parsed one level down."""
        inner = self._nested(self.tokens)
        inner.i = self.i
        p = inner.key()
        self.i, self.keys = inner.i, inner.keys
        self.modseq |= inner.modseq
        return p

    def _date_key(self, k: bytes, day: int) -> Predicate:
        if k.startswith(b"SENT"):

            def value(msg: Message) -> int:
                return msg.shared.sent_day(msg.uid)
            k = k[4:]
        else:
            def value(msg: Message) -> int:
                # INTERNALDATE's day, in UTC like the INTERNALDATE we send.
                return datetime.date(*time.gmtime(msg.m.idate)[:3]).toordinal()
        if k == b"BEFORE":
            return lambda msg: 0 <= value(msg) < day
        if k == b"ON":
            return lambda msg: value(msg) == day
        return lambda msg: value(msg) >= day


def _in_ranges(ranges: list[tuple[int, int]], attr: str) -> Predicate:
    def test(msg: Message) -> bool:
        v = getattr(msg, attr)
        return any(lo <= v <= hi for lo, hi in ranges)
    return test


def _header_has(root: message.Part, name: bytes, s: str) -> bool:
    return any(n == name and s in message.decoded(message.unfold(raw))
               for n, raw in root.fields)


def parse(tokens: list, view: View, budget: Budget) -> tuple[Predicate, bool]:
    """(predicate, has a MODSEQ key) for SEARCH's arguments after the tag."""
    codec = "utf-8"
    if tokens and isinstance(tokens[0], Atom) and tokens[0].upper() == b"CHARSET":
        if len(tokens) < 2 or not isinstance(tokens[1], (Atom, Str)):
            raise Bad("charset expected")
        found = searchtext.charset_codec(bytes(tokens[1]).decode("ascii", "replace"))
        if found is None:  # RFC 3501 6.4.4, 7.1: NO, with charsets we do know
            raise No(f"[BADCHARSET ({searchtext.ADVERTISED})] charset not supported")
        codec, tokens = found, tokens[2:]
    p = Parser(tokens, view, budget, codec=codec)
    predicate = p.all()
    return predicate, p.modseq


def run(view: View, predicate: Predicate, uid: bool, budget: Budget | None = None
        ) -> list[int]:
    """Sequence numbers (or UIDs) of the matching messages. Blocking: runs in a thread.
    The header fields a key needs load when it first asks."""
    folder = view.folder
    with folder.lock:
        here = set(folder.by_uid.uids)
    pairs = [(n, u) for n, u in enumerate(view.uids, 1) if u in here]
    shared = Shared(view, pairs, budget.process_min if budget is not None else 0)
    header = getattr(predicate, "header", None)
    if header is not None:  # one header key alone (SEARCH FROM x): its UIDs, no Message each
        found = shared.matches(*header)
        return [u if uid else n for n, u in pairs if u in found]

    def test(n: int, u: int) -> bool:
        try:
            return predicate(Message(n, u, view, shared, budget))
        except Gone:
            return False
    try:
        return [u if uid else n for n, u in pairs if test(n, u)]
    finally:
        memtrim.after(len(pairs))  # what the search read and parsed is garbage now
