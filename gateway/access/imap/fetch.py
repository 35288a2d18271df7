"""FETCH (RFC 3501 6.4.5, 7.4.2): which items a client asked for, and their bytes.

Part of access/imap: selected.py parses the request with parse() on the
reactor thread and runs render() in the thread pool, a batch of messages at
a time; a small one whose files the page cache holds, on the spot
(render_now). Sections are slices of the stored file (message.py), so BODY[]
is the message byte for byte; a partial <o.n> answers with <o> and exactly
those octets (Twisted returns the whole message, its issue 5613). FLAGS,
UID, INTERNALDATE and RFC822.SIZE come from the index alone; ENVELOPE,
BODY and BODYSTRUCTURE from the summary cache (summary.py). MODSEQ (RFC
7162 3.1.4) comes from the index too. BINARY[part], BINARY.PEEK and
BINARY.SIZE (RFC 3516) are a part's content decoded (binary.py).

In a message of at least files_from octets, a section literal as long is an
open file range (filesend.FileRange) in render()'s output: a whole-message
literal is not read at all, and a part is found in the message read once
and then sent from the file, so a client asking for it many times in one
FETCH does not make as many copies; a BINARY part is decoded once, a piece
at a time, into a temporary file (filesend.Spill) and sent from there. On a
plaintext connection (selected.py decides: [imap] sendfile_from) the
transport sends a range with sendfile(2), or copies it to a client on this
host; over TLS or COMPRESS ([imap] fetch_buffer) selected.py reads and
sends it a piece at a time.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import memtrim
from gateway.access.imap import binary, message
from gateway.access.imap.mailbox import View
from gateway.access.imap.summary import HeaderSummary, StructureSummary, summaries
from gateway.access.imap.wire import Atom, Bad, quoted
from gateway.filesend import FileRange, Spill, read_range
from gateway.store.folder import Uncached

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SIMPLE = {b"FLAGS", b"UID", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODYSTRUCTURE",
           b"MODSEQ"}
_MACROS = {b"ALL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE"],
           b"FAST": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE"],
           b"FULL": [b"FLAGS", b"INTERNALDATE", b"RFC822.SIZE", b"ENVELOPE", b"BODY"]}
_BODY = re.compile(rb"(BODY(?:\.PEEK)?)\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>)?", re.I)
# RFC 3516 4.2: section-binary is part numbers only; BINARY.SIZE takes no partial.
_BINARY = re.compile(rb"(BINARY(?:\.PEEK|\.SIZE)?)\[((?:[1-9]\d{0,4}\.)*[1-9]\d{0,4})?\]"
                     rb"(?:<(\d{1,10})\.(\d{1,10})>)?", re.I)
_BINARY_KINDS = (b"BINARY", b"BINARY.SIZE")
# A message read whole to find its parts (or decode one): past this size, the pages
# freed afterwards go back to the system (memtrim), or each pool thread's heap would
# stay as big as the biggest message it read.
TRIM_AFTER = 8 << 20
# Messages sent from their files (sendfile) in one batch: the open descriptors a
# session holds for its client are at most two batches' worth.
FILES_PER_BATCH = 16
# A FETCH of at most this many messages, and this many octets of them, is rendered
# on the reactor thread when their files are in the page cache (render_now).
NOW_MESSAGES = 100
NOW_OCTETS = 65536
_SECTION = re.compile(rb"((?:[1-9]\d{0,4}\.)*[1-9]\d{0,4})?\.?"
                      rb"(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?"
                      rb"(?: \((.*)\))?", re.I | re.S)


@dataclass
class Item:
    kind: bytes  # FLAGS, UID, ..., BODY (structure), SECTION
    name: bytes = b""  # as it appears in the response, e.g. BODY[1.MIME] or RFC822
    path: tuple[int, ...] = ()
    spec: bytes = b""  # b"", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[bytes, ...] = ()
    origin: int | None = None
    count: int = 0
    seen: bool = False  # sets \Seen (BODY[...] without PEEK, RFC822, RFC822.TEXT)


def parse(tokens: list) -> list[Item]:
    """The fetch attributes of a FETCH command; Bad if any is not RFC 3501's."""
    if len(tokens) == 1 and isinstance(tokens[0], list):
        tokens = tokens[0]
    if len(tokens) == 1 and isinstance(tokens[0], Atom) and tokens[0].upper() in _MACROS:
        tokens = [Atom(t) for t in _MACROS[tokens[0].upper()]]
    if not tokens:
        raise Bad("no fetch attributes")
    return [_item(t) for t in tokens]


def _item(token) -> Item:
    if not isinstance(token, Atom):
        raise Bad("fetch attribute expected")
    upper = bytes(token).upper()
    if upper in _SIMPLE:
        return Item(upper)
    if upper == b"BODY":
        return Item(b"BODY")
    if upper == b"RFC822":
        return Item(b"SECTION", b"RFC822", seen=True)
    if upper == b"RFC822.HEADER":
        return Item(b"SECTION", b"RFC822.HEADER", spec=b"HEADER")
    if upper == b"RFC822.TEXT":
        return Item(b"SECTION", b"RFC822.TEXT", spec=b"TEXT", seen=True)
    if upper.startswith(b"BINARY"):
        return _binary_item(token)
    m = _BODY.fullmatch(bytes(token))
    if not m:
        raise Bad(f"unknown fetch attribute {token[:40].decode('ascii', 'replace')}")
    s = _SECTION.fullmatch(m.group(2))
    if not s:
        raise Bad("bad section")
    path = tuple(int(p) for p in s.group(1).split(b".")) if s.group(1) else ()
    spec = (s.group(2) or b"").upper()
    if spec == b"MIME" and not path:
        raise Bad("MIME needs a part number")
    fields: tuple[bytes, ...] = ()
    if spec.startswith(b"HEADER.FIELDS"):
        if s.group(3) is None:
            raise Bad("header field list expected")
        fields = tuple(f.strip(b'"') for f in s.group(3).split())
        if not fields:
            raise Bad("empty header field list")
    elif s.group(3) is not None:
        raise Bad("bad section")
    section = b".".join(b"%d" % p for p in path)
    if spec:
        section += (b"." if section else b"") + spec
    if fields:
        section += b" (" + b" ".join(fields) + b")"
    item = Item(b"SECTION", b"BODY[" + section + b"]", path, spec, fields,
                seen=m.group(1).upper() == b"BODY")
    if m.group(3) is not None:
        item.origin, item.count = int(m.group(3)), int(m.group(4))
        if item.count == 0:
            raise Bad("partial length must not be 0")
    return item


def _binary_item(token: bytes) -> Item:
    m = _BINARY.fullmatch(bytes(token))
    if not m:
        raise Bad("bad BINARY section (part numbers only)")
    kind = m.group(1).upper()
    path = tuple(int(p) for p in m.group(2).split(b".")) if m.group(2) else ()
    section = b"[" + (m.group(2) or b"") + b"]"
    if kind == b"BINARY.SIZE":
        if m.group(3) is not None:
            raise Bad("BINARY.SIZE takes no partial")
        return Item(b"BINARY.SIZE", b"BINARY.SIZE" + section, path)
    item = Item(b"BINARY", b"BINARY" + section, path, seen=kind == b"BINARY")
    if m.group(3) is not None:
        item.origin, item.count = int(m.group(3)), int(m.group(4))
        if item.count == 0:
            raise Bad("partial length must not be 0")
    return item


def _header_only(i: Item) -> bool:
    return i.kind == b"SECTION" and not i.path and i.spec.startswith(b"HEADER")


def _whole(i: Item) -> bool:
    """BODY[], BODY.PEEK[], RFC822 (partial or not): octets of the file as they are."""
    return i.kind == b"SECTION" and not i.path and not i.spec


def needs(items: list[Item]) -> tuple[bool, bool]:
    """(needs summaries, needs file contents) for these items."""
    summary = any(i.kind in (b"ENVELOPE", b"BODYSTRUCTURE", b"BODY") or _header_only(i)
                  for i in items)
    content = any(is_content(i) for i in items)
    return summary, content


def is_content(i: Item) -> bool:
    """Carries message octets (a section or BINARY), not only metadata."""
    return i.kind == b"SECTION" and not _header_only(i) or i.kind in _BINARY_KINDS


def batches(folder, pairs: list[tuple[int, int]], items: list[Item],
            buffer: int, files_from: int = 0) -> list[list[tuple[int, int]]]:
    """The (seq, uid) pairs cut into the batches render() takes one at a time.

    With message contents, a batch holds about `buffer` bytes of messages ([imap]
    fetch_buffer; at least one message), so what a session holds for its client is
    bounded and the next batch can be read while this one is sent; without, many
    messages go together, as their responses are small. A message render() sends
    from its file (files_from, as there) holds no bytes but a file descriptor:
    FILES_PER_BATCH of them make a batch, so each trip to the thread pool (a
    wait the client sees when the machine is busy) serves many megabytes.
    """
    summary, content = needs(items)
    if not content:
        size = 1000 if summary else 5000
        return [pairs[start:start + size] for start in range(0, len(pairs), size)]
    # Each content item carries up to the whole message (BODY[] BODY[]<0.9999> ...):
    # a message counts once per item, in octets held and in files opened.
    each = sum(1 for i in items if is_content(i))
    out: list[list[tuple[int, int]]] = []
    batch: list[tuple[int, int]] = []
    held = files = 0
    for pair in pairs:
        m = folder.message(pair[1])
        size = m.size if m is not None else 0
        from_file = files_from > 0 and size >= files_from
        holds = 0 if from_file else size * each
        if batch and (held + holds > buffer or len(batch) >= 100
                      or from_file and files + each > FILES_PER_BATCH):
            out.append(batch)
            batch, held, files = [], 0, 0
        batch.append(pair)
        held += holds
        if from_file:
            files += each
    if batch:
        out.append(batch)
    return out


def internaldate(seconds: int) -> bytes:
    t = time.gmtime(seconds)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def _span(item: Item, data: bytes) -> tuple[int, int] | bytes | None:
    """Where the section lies in the message: (start, end) of its octets, or for
    HEADER.FIELDS (.NOT) the picked fields themselves; None if there is no such part."""
    if not item.path and not item.spec:  # BODY[]: the whole message, nothing to parse
        return 0, len(data)
    root = message.Part(data, 0, len(data), "text/plain", 0)
    part = message.find(root, item.path)
    if part is None:
        return None
    msg = part if not item.path else part.message
    if item.spec == b"":
        return (0, len(data)) if not item.path else (part.body, part.end)
    if item.spec == b"MIME":
        return part.start, part.body
    if msg is None:
        return None  # HEADER/TEXT of a part that is not a message/rfc822
    if item.spec == b"TEXT":
        return msg.body, msg.end
    if not item.fields:
        return msg.start, msg.body
    return _header(msg.header(), item)


def _section(item: Item, data: bytes) -> bytes | None:
    span = _span(item, data)
    return data[span[0]:span[1]] if isinstance(span, tuple) else span


def _header(block: bytes, item: Item) -> bytes:
    if not item.fields:
        return block
    wanted = {f.lower() for f in item.fields}
    keep = item.spec == b"HEADER.FIELDS"
    picked = [raw for name, raw in message.header_fields(block) if (name in wanted) == keep]
    return b"".join(picked) + b"\r\n"


def render_now(view: View, pairs: list[tuple[int, int]], items: list[Item],
               with_uid: bool, files_from: int = 0) -> list[bytes | FileRange] | None:
    """render() (joined) on the spot, for the reactor thread; None where that could wait
    or take long: a message not wholly in the page cache (Folder.read_cached), a
    summary to read or make (ENVELOPE, BODYSTRUCTURE, header fields), more than
    NOW_MESSAGES messages or NOW_OCTETS octets of them. The caller then goes to the
    pool, whose trip costs more than such a FETCH itself: mbsync and Thunderbird
    fetch one message a command, and two wake-ups across CPUs (there and back) took
    110 us a command on a 2-CPU VM, against 30 us to render a 20 KB message."""
    summary, content = needs(items)
    if summary or len(pairs) > NOW_MESSAGES:
        return None
    if content:
        folder = view.folder
        sizes = [m.size for _, u in pairs if (m := folder.message(u)) is not None]
        if sum(sizes) > NOW_OCTETS or files_from and any(s >= files_from for s in sizes):
            return None
    try:
        return joined(render(view, pairs, items, with_uid, set(), files_from,
                             view.folder.read_cached))
    except Uncached:
        return None


def render(view: View, pairs: list[tuple[int, int]], items: list[Item],
           with_uid: bool, seen_now: set[int], files_from: int = 0,
           read: Callable[[int], bytes | None] | None = None) -> list[bytes | FileRange]:
    """The untagged FETCH responses for (seq, uid) pairs, as pieces to send in order.
    files_from > 0: in messages of that many octets or more, a section literal
    (BODY[], BODY[1], BODY[TEXT] ..., or a partial of one) of that many octets or
    more is a FileRange instead of bytes; so a message is never held once per item
    asked for. read: how a message's bytes are read (Folder.read). Blocking: runs in
    a thread."""
    folder = view.folder
    read = read or folder.read
    want_summary, want_content = needs(items)
    whole_only = all(_whole(i) for i in items if is_content(i))
    uids = [u for _, u in pairs]
    heads: dict[int, HeaderSummary] = summaries(folder, uids, HeaderSummary) if any(
        i.kind == b"ENVELOPE" or _header_only(i) for i in items) else {}
    structures: dict[int, StructureSummary] = summaries(folder, uids, StructureSummary) if any(
        i.kind in (b"BODY", b"BODYSTRUCTURE") for i in items) else {}
    out: list[bytes | FileRange] = []
    for seq, uid in pairs:
        m = folder.message(uid)
        flags = view.flags(uid)
        if m is None or flags is None:
            continue  # expunged by another session; its EXPUNGE comes later
        if want_content and files_from > 0 and m.size >= files_from:
            fd = folder.open_message(uid)
            if fd is None:
                continue
            spill = Spill(folder.dirs["tmp"])
            try:
                # Whole-message literals need no read; a part's place needs the bytes
                # once, here in the pool, but its literal is a range of the file too.
                data = None if whole_only else read_range(fd, 0, os.fstat(fd).st_size)
                parts = _parts(view, m, uid, flags, items, with_uid, data, heads, structures,
                               seen_now, fd, files_from, spill)
            finally:
                os.close(fd)  # each FileRange holds its own descriptor
                spill.close()
            big = data is not None and len(data) >= TRIM_AFTER
            data = None  # before the next message is read
            if big:
                memtrim.release()  # this pool thread's heap would keep its size
        else:
            data = read(uid) if want_content else None
            if want_content and data is None:
                continue
            parts = _parts(view, m, uid, flags, items, with_uid, data, heads, structures,
                           seen_now, None)
        if not any(isinstance(p, tuple) for p in parts):
            out.append(b"* %d FETCH (%s)\r\n" % (seq, b" ".join(parts)))
            continue
        # With message bytes: pieces, so the file's bytes are sent without copies here.
        out.append(b"* %d FETCH (" % seq)
        for n, part in enumerate(parts):
            if n:
                out.append(b" ")
            if isinstance(part, tuple):
                out.extend(part)
            else:
                out.append(part)
        out.append(b")\r\n")
    return out


def _parts(view: View, m, uid: int, flags, items: list[Item], with_uid: bool,
           data: bytes | None, heads: dict, structures: dict, seen_now: set[int],
           fd: int | None, files_from: int = 0, spill: Spill | None = None) -> list:
    """One message's FETCH items: bytes, or (literal head, its bytes or FileRange)."""
    folder = view.folder
    ask_flags = any(i.kind == b"FLAGS" for i in items)
    parts: list = []  # bytes, or (literal head, its bytes or FileRange)
    decoded: dict[tuple[int, ...], bytes] = {}  # BINARY's parts, each decoded once
    # RFC 7162 3.2.4: with QRESYNC on, every FETCH response names its UID.
    if (with_uid or view.qresync) and not any(i.kind == b"UID" for i in items):
        parts.append(b"UID %d" % uid)
    for item in items:
        k = item.kind
        if k == b"FLAGS":
            parts.append(b"FLAGS (" + " ".join(flags).encode() + b")")
        elif k == b"UID":
            parts.append(b"UID %d" % uid)
        elif k == b"INTERNALDATE":
            parts.append(b"INTERNALDATE " + internaldate(m.idate))
        elif k == b"MODSEQ":
            parts.append(b"MODSEQ (%d)" % m.modseq)
        elif k == b"RFC822.SIZE":
            parts.append(b"RFC822.SIZE %d" % m.size)
        elif k == b"ENVELOPE":
            parts.append(b"ENVELOPE " + heads[uid].envelope)
        elif k == b"BODYSTRUCTURE":
            parts.append(b"BODYSTRUCTURE " + structures[uid].bodystructure)
        elif k == b"BODY":
            parts.append(b"BODY " + structures[uid].body)
        elif k in _BINARY_KINDS:
            parts.append(_render_binary(item, data or b"", decoded, spill, files_from))
        elif fd is not None and _whole(item):  # sent from the file, never read
            parts.append(_file_section(item, fd, 0, os.fstat(fd).st_size, files_from))
        elif fd is not None and data is not None:  # a part: its place in the file
            parts.append(_part_section(item, data, fd, files_from))
        else:  # a literal: its head, then the message bytes as they are
            parts.append(_render_section(item, uid, data, heads.get(uid), folder))
    if uid in seen_now and not ask_flags:  # RFC 3501 6.4.5: tell of the implied \Seen
        parts.append(b"FLAGS (" + " ".join(flags).encode() + b")")
        if view.condstore and not any(i.kind == b"MODSEQ" for i in items):
            parts.append(b"MODSEQ (%d)" % m.modseq)  # RFC 7162 3.2
    return parts


def _file_section(item: Item, fd: int, start: int, count: int,
                  files_from: int) -> tuple[bytes, bytes | FileRange]:
    """The literal of a section at file[start:start + count] (or its <o.n>): a range of
    the open file fd if files_from octets or more, else the octets themselves."""
    name = item.name
    if item.origin is not None:
        name += b"<%d>" % item.origin
        skip = min(item.origin, count)
        start, count = start + skip, min(item.count, count - skip)
    if not count:
        return name + b" " + quoted(b""), b""
    head = name + b" {%d}\r\n" % count
    if count >= files_from:
        return head, FileRange(os.dup(fd), start, count)
    return head, read_range(fd, start, count)


def _part_section(item: Item, data: bytes, fd: int,
                  files_from: int) -> tuple[bytes, bytes | FileRange]:
    """A section of the message read as data, as a literal: from the file by its place
    in data, or the picked header fields (HEADER.FIELDS) as they are."""
    span = _span(item, data)
    if isinstance(span, tuple):
        return _file_section(item, fd, span[0], span[1] - span[0], files_from)
    return _literal(item, span)


def joined(pieces: list[bytes | FileRange]) -> list[bytes | FileRange]:
    """Runs of bytes joined into one (in the pool thread, so the reactor sends each
    without copying); FileRanges between them as they are."""
    out: list[bytes | FileRange] = []
    run: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, FileRange):
            if run:
                out.append(b"".join(run))
                run = []
            out.append(piece)
        else:
            run.append(piece)
    if run:
        out.append(b"".join(run))
    return out


def _render_section(item: Item, uid: int, data: bytes | None, summary: HeaderSummary | None,
                    folder) -> tuple[bytes, bytes]:
    if data is None and summary is not None and summary.header_complete == b"1":
        value = _header(summary.header, item)
    else:
        if data is None:
            data = folder.read(uid) or b""
        value = _section(item, data)
    return _literal(item, value)


def _literal(item: Item, value: bytes | None) -> tuple[bytes, bytes]:
    """A section's octets as its literal, cut to its <o.n> if asked for. A literal
    always: message data may hold CR, LF and 8-bit bytes (RFC 3501 4.3)."""
    name = item.name
    value = value or b""
    if item.origin is not None:
        name += b"<%d>" % item.origin
        value = value[item.origin:item.origin + item.count]
    return (name + b" {%d}\r\n" % len(value), value) if value else (name + b" " + quoted(b""), b"")


def _render_binary(item: Item, data: bytes, decoded: dict, spill: Spill | None,
                   files_from: int) -> bytes | tuple[bytes, bytes | FileRange]:
    """BINARY[part] (a literal8, ~{n}, when it holds NUL) or BINARY.SIZE[part]
    (RFC 3516 4.2); BINARY[] is the whole message as stored. A part is decoded once
    per message however often it is asked for; in a big message (spill), a long
    value goes from a temporary file of the decoded octets, as a section goes from
    the message's file, so a session holds neither; a long base64 part is decoded
    into that file a piece at a time, never held whole."""
    value = decoded.get(item.path)
    if value is None:
        value = decoded[item.path] = _decode(item, data, spill, files_from)
    if item.kind == b"BINARY.SIZE":
        return item.name + b" %d" % len(value)
    name, start, count = item.name, 0, len(value)
    if item.origin is not None:
        name += b"<%d>" % item.origin
        start = min(item.origin, count)
        count = min(item.count, count - start)
    if not count:
        return name + b' ""'
    spilled = isinstance(value, _Spilled)
    # A spilled part says whether it holds a NUL anywhere: a literal8 is allowed
    # where none is needed (RFC 3516 4.2's grammar), not the other way round.
    literal8 = value.nul if spilled else value.find(b"\0", start, start + count) >= 0
    head = name + (b" ~{%d}\r\n" if literal8 else b" {%d}\r\n") % count
    if spill is not None and count >= files_from:
        return head, spill.range(item.path, None if spilled else value, start, count)
    if spilled:
        return head, spill.read(item.path, start, count)
    return head, value[start:start + count]


class _Spilled:
    """A part decoded into the message's Spill a piece at a time: how long it is and
    whether it holds a NUL, never its octets."""

    __slots__ = ("size", "nul")

    def __init__(self, size: int, nul: bool) -> None:
        self.size, self.nul = size, nul

    def __len__(self) -> int:
        return self.size


def _decode(item: Item, data: bytes, spill: Spill | None, files_from: int) -> bytes | _Spilled:
    """What BINARY[part] gives, decoded: bytes, or in a big message a long base64
    part written to the spill a piece at a time."""
    if not item.path:
        return data
    part = message.find(message.Part(data, 0, len(data), "text/plain", 0), item.path)
    if part is None:
        return b""
    long_part = spill is not None and (part.end - part.body) * 3 // 4 >= files_from
    pieces = binary.decoded_pieces(part) if long_part else None
    if pieces is None:
        return binary.decoded(part)
    return _Spilled(*spill.fill(item.path, pieces))
