"""IMAP4rev1 syntax: commands in (tokens, literals), responses out (strings, lists).

Part of access/imap; server.py feeds it whole commands (lines and literals
already gathered) and the command modules read arguments off the result.
RFC 3501 9 (formal syntax), RFC 7888 (LITERAL+). Twisted's IMAP4Server
parses argument by argument as it reads, which cannot see a literal's size
before deciding to read it, knows no escapes in quoted strings, and mixes
the literal limits of APPEND and of every other string: this module replaces
that layer.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from gateway.store import mutf7

_CTL = set(range(0x20)) | {0x7F}
# Bytes a quoted string cannot hold (RFC 3501 4.3): a regex, not a Python loop per byte.
_UNQUOTABLE = re.compile(rb"[\x00-\x1f\x7f-\xff]")
_ATOM_END = frozenset(b' (){"') | _CTL  # "]" and "%*" handled by callers
# A literal announced at a line's end: "~" (literal8, RFC 3516 4.4), size, "+" (RFC 7888).
LITERAL_AT_END = re.compile(rb"(~?)\{(\d{1,12})(\+?)\}$")


class Bad(Exception):
    """Malformed command: tagged BAD (RFC 3501 7.1.5)."""


class No(Exception):
    """Refused command: tagged NO (RFC 3501 7.1.2). text may start with a [CODE]."""


class Atom(bytes):
    """An atom as sent (NIL, \\Seen, BODY[TEXT]<0.10>, a sequence set ...)."""


class Raw(bytes):
    """Bytes already in wire form, written as they are by encode()."""


class Str(bytes):
    """A quoted string or a literal."""


class Upload:
    """An APPEND literal spooled to a file (server.py makes it, account.py adopts it)."""

    def __init__(self, path: Any, size: int, binary: bool = False) -> None:
        self.path = path
        self.size = size
        self.binary = binary  # sent as a literal8 (RFC 3516): may hold NUL
        # The file's writing in the thread pool (Account.stage), begun as soon as the
        # literal is in, while the command's end is still coming: its Deferred (None:
        # not staged), an Event set when it is done, and the error it met, if any.
        self.staged: Any = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.synced = False  # its data is on disk; its name not yet
        self.adopted = False  # renamed into a folder (Account.append): nothing to remove
        self._lock = threading.Lock()  # done and _then change together
        self._then: Callable[[], Any] | None = None

    def leave_to_stage(self, then: Callable[[], Any]) -> bool:
        """Have the stage's thread call then once it has written the message: True,
        unless there is no stage or it is done (the caller does then's work itself)."""
        if self.staged is None:
            return False
        with self._lock:
            if self.done.is_set():
                return False
            self._then = then
            return True

    def stage_done(self) -> None:
        """The stage's end, in its thread: waiters go on, and what was left to it runs."""
        with self._lock:
            self.done.set()
            then, self._then = self._then, None
        if then is not None:
            then()


def tokenize(pieces: Sequence[Any], max_depth: int = 32) -> list:
    """Parse a command: pieces alternate text and literal (text, lit, text, ..., text).

    Returns nested lists of Atom, Str, Upload; raises Bad on bad syntax, and on
    lists nested deeper than max_depth ([imap] max_nesting), so that what works
    on the tokens later may recurse without a client choosing the depth.
    """
    stack: list[list] = [[]]
    for k in range(0, len(pieces), 2):
        text = pieces[k]
        i, n = 0, len(text)
        while i < n:
            c = text[i]
            if c == 0x20:
                i += 1
            elif c == 0x28:  # (
                if len(stack) > max_depth:
                    raise Bad(f"parentheses nested deeper than {max_depth}")
                stack.append([])
                i += 1
            elif c == 0x29:  # )
                if len(stack) == 1:
                    raise Bad("unbalanced parenthesis")
                done = stack.pop()
                stack[-1].append(done)
                i += 1
            elif c == 0x22:  # "
                out = bytearray()
                i += 1
                while True:
                    if i >= n:
                        raise Bad("unterminated quoted string")
                    c = text[i]
                    if c == 0x5C and i + 1 < n and text[i + 1] in (0x5C, 0x22):
                        out.append(text[i + 1])
                        i += 2
                    elif c == 0x22:
                        i += 1
                        break
                    elif c in (0x0A, 0x0D, 0x5C):
                        raise Bad("bad character in quoted string")
                    else:
                        out.append(c)
                        i += 1
                stack[-1].append(Str(out))
            else:
                start = i
                i = _atom_end(text, i, True)
                if i < 0:
                    # No closing "]": "[" is a plain ATOM-CHAR (RFC 3501 9), as in a
                    # folder name "a[b"; only atom-specials end the atom then.
                    i = _atom_end(text, start, False)
                if i == start:
                    raise Bad(f"unexpected character {chr(text[i])!r}")
                stack[-1].append(Atom(text[start:i]))
        if k + 1 < len(pieces):
            lit = pieces[k + 1]
            stack[-1].append(lit if isinstance(lit, Upload) else Str(lit))
    if len(stack) != 1:
        raise Bad("unbalanced parenthesis")
    return stack[0]


def _atom_end(text: bytes, i: int, brackets: bool) -> int:
    """Where the atom starting at i ends. With brackets, "[ ... ]" is part of the
    atom, spaces and parentheses included (BODY[HEADER.FIELDS (A B)]); -1 when a
    "[" is never closed."""
    depth, n = 0, len(text)
    while i < n:
        c = text[i]
        if brackets and c == 0x5B:
            depth += 1
        elif c == 0x5D and depth:
            depth -= 1
        elif depth == 0 and c in _ATOM_END:
            break
        elif c in _CTL:
            raise Bad("control character in command")
        i += 1
    return -1 if depth else i


# -- reading arguments -------------------------------------------------------------

def astring(token: Any, what: str = "argument") -> bytes:
    if isinstance(token, (Atom, Str)):
        return bytes(token)
    raise Bad(f"{what} must be a string")


def atom(token: Any, what: str = "argument") -> bytes:
    if isinstance(token, Atom):
        return bytes(token)
    raise Bad(f"{what} must be an atom")


def number(token: Any, what: str = "number") -> int:
    if isinstance(token, Atom) and token.isdigit() and len(token) <= 10:
        value = int(token)
        if value <= 0xFFFFFFFF:
            return value
    raise Bad(f"{what} must be a number")


def modseq(token: Any, what: str = "mod-sequence") -> int:
    """RFC 7162 mod-sequence-valzer: 0 to 2^63-1."""
    if isinstance(token, Atom) and token.isdigit() and len(token) <= 19:
        value = int(token)
        if value < 1 << 63:
            return value
    raise Bad(f"{what} must be a number below 2^63")


def compact(uids: list[int]) -> bytes:
    """Sorted UIDs as a UID set in the shortest form, "1:3,7" (COPYUID, VANISHED)."""
    return compact_ranges([(u, u) for u in uids])


def compact_ranges(ranges: list[tuple[int, int]],
                   within: list[tuple[int, int]] | None = None) -> bytes:
    """Ascending UID ranges, clipped to those of within (all if None), as a UID set
    "1:3,7" (VANISHED (EARLIER)); never a list of every UID in them."""
    clipped = ranges if within is None else sorted(
        (max(lo, a), min(hi, b)) for lo, hi in ranges for a, b in within
        if max(lo, a) <= min(hi, b))
    merged: list[list[int]] = []
    for lo, hi in clipped:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return b",".join(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi) for lo, hi in merged)


def arity(args: list, fewest: int, most: int | None = None) -> None:
    most = fewest if most is None else most
    if not fewest <= len(args) <= most:
        raise Bad("wrong number of arguments")


def sequence_set(token: Any, largest: int) -> list[tuple[int, int]]:
    """RFC 3501 sequence-set -> sorted, merged (low, high) ranges; "*" is largest."""
    text = atom(token, "sequence set")
    ranges = []
    for item in text.split(b","):
        ends = item.split(b":")
        if not 1 <= len(ends) <= 2:
            raise Bad("bad sequence set")
        values = []
        for e in ends:
            if e == b"*":
                values.append(largest)
            elif e.isdigit() and len(e) <= 10 and 0 < int(e) <= 0xFFFFFFFF:
                values.append(int(e))
            else:
                raise Bad("bad sequence set")
        lo, hi = min(values), max(values)
        ranges.append((lo, hi))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def is_sequence_set(token: Any) -> bool:
    return isinstance(token, Atom) and bool(re.fullmatch(rb"[0-9*:,]+", token))


# -- writing responses -----------------------------------------------------------------

def quoted(s: bytes) -> bytes:
    """A quoted string if s can be one (RFC 3501 4.3), else a literal."""
    if len(s) < 1024 and not _UNQUOTABLE.search(s):
        return b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n%s" % (len(s), s)


def encode(item: Any) -> bytes:
    """NIL, numbers, strings and nested lists in IMAP syntax."""
    kind = type(item)  # the common kinds first: an ENVELOPE is some 30 of them
    if kind is bytes:
        return quoted(item)
    if kind is list:
        return b"(" + b" ".join([encode(i) for i in item]) + b")"
    if item is None:
        return b"NIL"
    if isinstance(item, Raw):
        return bytes(item)
    if isinstance(item, bool):
        raise TypeError("no booleans in IMAP")
    if isinstance(item, int):
        return b"%d" % item
    if isinstance(item, str):
        item = item.encode("utf-8")
    if isinstance(item, (bytes, bytearray)):
        return quoted(bytes(item))
    return b"(" + b" ".join(encode(i) for i in item) + b")"


def mailbox_name(name: str, utf8: bool = False) -> bytes:
    """A folder name for LIST/STATUS: modified UTF-7 (RFC 3501 5.1.3), quoted; UTF-8
    once the session enabled IMAP4rev2 (RFC 9051 5.1: no modified UTF-7 then)."""
    return quoted(name.encode("utf-8") if utf8 else mutf7.encode(name))


def decode_mailbox(raw: bytes, utf8: bool = False) -> str:
    """A folder name as the client sent it: modified UTF-7, or UTF-8 in an IMAP4rev2
    session (RFC 9051 5.1), where "&" is just a character."""
    if utf8:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise No("[CANNOT] folder name is not valid UTF-8") from None
    try:
        name = mutf7.decode(raw)
        if mutf7.encode(name) == raw:  # only the one canonical spelling
            return name
    except (UnicodeError, ValueError):
        pass
    raise No("[CANNOT] folder name is not valid modified UTF-7")
