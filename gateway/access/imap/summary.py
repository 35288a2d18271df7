"""What FETCH and SEARCH need of a message without reading it all again: cached summaries.

Part of access/imap. Two kinds, each made once per message and kept in the
folder's index cache as an opaque blob (store/index.py):
- "h", from the header block alone: ENVELOPE, the header block (for
  BODY[HEADER...]) and the search fields (searchfields.of_part; SEARCH itself
  reads them from the index's columns). Cheap: only the head is read.
- "b", from the whole message: BODY and BODYSTRUCTURE.
The blob is a plain record, never pickle: the index lives in the user's
Maildir. After the kind letter and the layout, the length of each value (4
octets each, little-endian), then the values: a FETCH ENVELOPE of 10,000
cached messages reads 10,000 of them, and one struct call finds every value
(layout v2 had "length:value" pairs, walked one at a time: half of such a
FETCH's time).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields
from itertools import accumulate
from typing import TypeVar

from gateway import memtrim
from gateway.access.imap import message, searchfields

MAX_CACHED_HEADER = 32 * 1024  # longer header blocks are read from the file when asked
# After the kind letter in each blob: a summary made by an older layout (v2: the
# lengths as digits before each value; before it, ENVELOPE without groups and
# routes) does not match, so it is made again. Never a digit: a blob of the first
# layout has its first field's length there.
_LAYOUT = b"v3."


@dataclass
class HeaderSummary:
    envelope: bytes
    header: bytes  # the top-level header block, b"" if longer than MAX_CACHED_HEADER
    header_complete: bytes  # b"1" when header holds the whole block
    sfrom: bytes
    sto: bytes
    scc: bytes
    sbcc: bytes
    ssubject: bytes
    sent: bytes  # the Date field's day ordinal (message.sent_day), as digits

    KIND = "h"
    LAYOUT = _LAYOUT

    @property
    def sent_day(self) -> int:
        return int(self.sent)

    def search_field(self, name: str) -> str:
        return getattr(self, "s" + name).decode("utf-8")


@dataclass
class StructureSummary:
    body: bytes
    bodystructure: bytes

    KIND = "b"
    LAYOUT = _LAYOUT


def summarize_header(head: bytes) -> HeaderSummary:
    root = message.Head(head)
    header = root.header()
    complete = len(header) <= MAX_CACHED_HEADER
    lists = message.address_lists(root)
    # The search fields by their fast path (searchfields.of_head, checked against
    # of_part by the tests): half the cost of of_part over the parsed lists.
    sfrom, sto, scc, sbcc, ssubject, sent = searchfields.of_head(root.data)
    return HeaderSummary(
        envelope=message.envelope(root, lists),
        header=header if complete else b"",
        header_complete=b"1" if complete else b"0",
        sfrom=sfrom, sto=sto, scc=scc, sbcc=sbcc, ssubject=ssubject, sent=b"%d" % sent,
    )


def summarize_structure(data: bytes) -> StructureSummary:
    root = message.Part(data, 0, len(data), "text/plain", 0)
    return StructureSummary(body=message.bodystructure(root, extended=False),
                            bodystructure=message.bodystructure(root, extended=True))


def pack(s: HeaderSummary | StructureSummary) -> bytes:
    values = [getattr(s, name) for name in _FIELD_NAMES[type(s)]]
    return b"".join([s.KIND.encode() + s.LAYOUT,
                     _LENGTHS[type(s)].pack(*map(len, values)), *values])


T = TypeVar("T", HeaderSummary, StructureSummary)


def unpack(blob: bytes, cls: type[T]) -> T | None:
    """The summary in blob; None if it is of another layout or damaged (then re-made)."""
    kind = cls.KIND.encode() + cls.LAYOUT
    lengths = _LENGTHS[cls]
    start = len(kind) + lengths.size
    if not blob.startswith(kind) or len(blob) < start:
        return None
    ends = list(accumulate(lengths.unpack_from(blob, len(kind)), initial=start))
    if ends[-1] != len(blob):
        return None
    return cls(*[blob[a:b] for a, b in zip(ends, ends[1:], strict=False)])


# fields() is slow enough to show when 100,000 cached summaries are unpacked.
# (dataclasses.astuple deep-copies each value: a fifth of pack's cost.)
_FIELD_NAMES = {cls: tuple(f.name for f in fields(cls))
                for cls in (HeaderSummary, StructureSummary)}
_LENGTHS = {cls: struct.Struct(f"<{len(names)}I") for cls, names in _FIELD_NAMES.items()}


def _keep_fields(folder, uids: list[int], found: dict) -> None:
    """The search fields of the header summaries just made into the index's packs
    (searchfields.fill), where missing: a first FETCH ENVELOPE of 10,000 messages
    spares the first SEARCH FROM as many heads to read and parse."""
    rows = [(u, s.sfrom, s.sto, s.scc, s.sbcc, s.ssubject, int(s.sent))
            for u in folder.without_fields(uids) if (s := found.get(u)) is not None]
    if rows:
        folder.put_fields(rows)


def summaries(folder, uids: list[int], cls: type[T]) -> dict[int, T]:
    """Summaries of uids from the cache, made (and cached) where missing. Blocking.
    Heads are read ahead (Folder.heads), so a first FETCH ENVELOPE of thousands of
    messages waits for the disk once, not once per file."""
    blobs = folder.cached(uids, cls.KIND)
    found: dict[int, T] = {}
    missing = []
    for uid in uids:
        s = unpack(blobs[uid], cls) if uid in blobs else None
        if s is None:
            missing.append(uid)
        else:
            found[uid] = s
    made = []
    if cls is HeaderSummary:
        with memtrim.paused_gc():  # thousands of summaries, no cycles among them
            for uid, head in folder.heads(missing):
                s = summarize_header(head)
                found[uid] = s
                made.append((uid, pack(s)))
    else:
        for uid in missing:
            data = folder.read(uid)
            if data is not None:  # else expunged meanwhile
                found[uid] = s = summarize_structure(data)
                made.append((uid, pack(s)))
    if made:
        folder.put_cached(made, cls.KIND)
        if cls is HeaderSummary:
            _keep_fields(folder, [u for u, _ in made], found)
    return {uid: found[uid] for uid in uids if uid in found}
