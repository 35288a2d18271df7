"""SEARCH's header fields of many messages packed as a few blobs: the index's format.

Sits in store/, under store/index.py (which keeps packs in its table
fieldpacks) and access/imap/searchfields.py and fieldsworker.py (which make
them; the child process imports this module alone, so it imports nothing but
the standard library). One pack holds the fields of up to a few thousand
messages as seven values:

  uids      array of unsigned ints, the messages' UIDs
  5 texts   from, to, cc, bcc, subject: each message's value (opaque bytes,
            decoded and case-folded by the IMAP side), joined with NUL
  sent      array of ints, the Date field's day ordinal (-1: none)

Why not a row per message: writing 100,000 rows was about a quarter of a
first SEARCH FROM of 100,000 messages, and scanning them with instr() (all
five columns of every row read) most of a cached one. A pack is written as
seven rows, and a search is one bytes.find() over each pack's text: NUL
separates the values, and no search string holds a NUL (RFC 3501 strings
cannot), so a match never spans two messages. A NUL inside a value (an RFC
2047 word can decode to one) is written as U+FFFD, as a decoder writes
what it cannot read.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator, Sequence

SEP = b"\0"
_NUL_AS = "\ufffd".encode()
TEXTS = ("sfrom", "sto", "scc", "sbcc", "ssubject")  # the text columns, in order
_SWAP = sys.byteorder != "little"  # packs are little-endian on disk, as on x86 and ARM

# (uids, from, to, cc, bcc, subject, sent): the index's columns of one pack.
Pack = tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes]


def join(values: Sequence[bytes]) -> bytes:
    """One text column of a pack."""
    text = SEP.join(values)
    if text.count(SEP) != max(len(values) - 1, 0):  # a value held a NUL (rare)
        text = SEP.join(v.replace(SEP, _NUL_AS) for v in values)
    return text


def ints(values: Sequence[int], code: str) -> bytes:
    """A column of numbers ("I": UIDs, "i": days) as the pack stores it."""
    a = array(code, values)
    if _SWAP:
        a.byteswap()
    return a.tobytes()


def numbers(data: bytes, code: str) -> array:
    """ints() read back."""
    a = array(code)
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a


def make(uids: Sequence[int], texts: Sequence[Sequence[bytes]], sent: Sequence[int]) -> Pack:
    """A pack of len(uids) messages: texts holds the five text columns' values."""
    return (ints(uids, "I"), *(join(t) for t in texts), ints(sent, "i"))  # type: ignore[return-value]


def of_rows(rows: Sequence[tuple]) -> Pack:
    """A pack of (uid, from, to, cc, bcc, subject, sent) rows."""
    if not rows:
        return make([], [[]] * 5, [])
    uids, f, t, c, b, s, sent = zip(*rows, strict=True)
    return make(uids, (f, t, c, b, s), sent)


def count(pack: Pack) -> int | None:
    """How many messages the pack holds; None when its columns disagree (a broken pack)."""
    n = len(pack[0]) // 4
    if len(pack[0]) != 4 * n or len(pack[6]) != 4 * n:
        return None
    for text in pack[1:6]:
        if (text.count(SEP) + 1 if n else len(text)) != n:
            return None
    return n


def find(uids: Sequence[int], text: bytes, needle: bytes) -> Iterator[int]:
    """The UIDs of the values of text (a text column of a pack) that hold needle."""
    if not needle:
        yield from uids  # the empty string is in every value, as instr() had it
        return
    if SEP in needle:
        return  # no value holds a NUL
    i = at = 0  # the value that starts at offset `at` is uids[i]
    pos = text.find(needle)
    while pos >= 0:
        i += text.count(SEP, at, pos)
        yield uids[i]
        end = text.find(SEP, pos + len(needle))
        if end < 0:
            return
        at, i = end + 1, i + 1
        pos = text.find(needle, at)


def rows(pack: Pack) -> Iterator[tuple]:
    """The (uid, from, to, cc, bcc, subject, sent) rows of a pack (for tests and checks)."""
    n = count(pack)
    if not n:
        return
    texts = [t.split(SEP) for t in pack[1:6]]
    yield from zip(numbers(pack[0], "I"), *texts, numbers(pack[6], "i"), strict=True)
