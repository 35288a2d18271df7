"""The header fields SEARCH FROM/TO/CC/BCC/SUBJECT and SENT* look at, made fast.

Part of access/imap, beside summary.py. RFC 3501 6.4.4 matches these keys
as case-insensitive substrings of a field; what a field "is" for SEARCH is
defined once, by of_part(): the addresses without comments or routes, RFC
2047 decoded, case-folded (message.address_text), the decoded Subject, and
the Date's day. The folder's index keeps the result in columns
(store/index.py, table fields), so a SEARCH FROM over 100,000 messages is
one SQL scan once they are filled.

Filling them reads the head of every message once (Dovecot does the same
on its first search). of_part() would cost about 130 us a message (a MIME
Part, the address parser, email.utils), so of_head() takes a fast path for
the shapes nearly all mail has (ASCII header fields at line starts, one
plain address or a list of them, an RFC 5322 date) and falls back to
of_part() for anything else; tests check that both agree.
"""

from __future__ import annotations

import datetime
import re

from gateway import memtrim
from gateway.access.imap import addresses, fieldsworker, message
from gateway.store import fieldpack

# (from, to, cc, bcc, subject, sent day ordinal or -1): the columns of the index.
Fields = tuple[bytes, bytes, bytes, bytes, bytes, int]
NAMES = ("from", "to", "cc", "bcc", "subject")  # the text columns, in order

_WORD = rb'[^\s"()<>@,;:\\\[\]]+'
# "Display Name" <local@host>, Display Name <local@host>, <local@host>, local@host
_ANGLE = re.compile(rb'\s*(?:"([^"\\\r\n]*)"|((?:' + _WORD + rb'\s*)*))\s*<(' + _WORD
                    + rb')@(' + _WORD + rb')>\s*')
_BARE = re.compile(rb'\s*(' + _WORD + rb')@(' + _WORD + rb')\s*')
# (The blanks around it are part of the match: a value needs no strip() first.)
_DATE = re.compile(rb"\s*(?:[A-Za-z]{3},\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+"
                   rb"\d{1,2}:\d\d(?::\d\d)?\s+(?:[+-]\d{4}|[A-Za-z]{1,5})\s*")
_MONTHS = {m: i for i, m in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
     b"dec"), 1)}
_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")
# A field of SEARCH's at a line start (after a "\n" put in front of the block), its
# value running on over folded lines. Blanks between the name and its colon are
# allowed as Part allows them (header_fields strips the name: "FROM :" is "from"), so
# such a field needs no look for " :" first (two scans of every header block).
_FIELD = re.compile(rb"\n(from|to|cc|bcc|subject|date)[ \t\x0b\x0c]*:"
                    rb"([^\n]*(?:\n[ \t][^\n]*)*)")


def of_part(root: message.Part | message.Head,
            lists: dict[bytes, list[addresses.Address]] | None = None) -> Fields:
    """The fields of a parsed header: the definition the fast path must agree with."""
    f = root.field
    found = lists if lists is not None else message.address_lists(root)
    return (*(message.address_text(found[n], f(n)).encode("utf-8", "surrogatepass")
              for n in (b"from", b"to", b"cc", b"bcc")),
            message.decoded(f(b"subject")).encode("utf-8", "surrogatepass"),
            message.sent_day(root))


def header_block(data: bytes) -> bytes:
    """The header block at the start of data (blank line included), as Part splits it."""
    if data.startswith((b"\r\n", b"\n")):
        return b""
    lf = data.find(b"\n\n")  # the first blank line, LF or CRLF (searched only before it)
    end = len(data) if lf < 0 else lf
    # A CRLF blank line needs a CR: one memchr rules it out for LF-only mail.
    crlf = data.find(b"\n\r\n", 0, end) if data.find(b"\r", 0, end) >= 0 else -1
    if crlf >= 0:
        return data[:crlf + 3]
    return data if lf < 0 else data[:lf + 2]


def of_head(head: bytes) -> Fields:
    """The fields of a message whose header block is head (from Folder.read_head)."""
    head = header_block(head)
    # The fast path reads field names at line starts: a first line that is a
    # continuation, 8-bit bytes or a bare CR (a line end to Part) go to the exact path.
    if not head.isascii() or head[:1] in (b" ", b"\t") \
            or (b"\r" in head and head.count(b"\r") != head.count(b"\r\n")):
        return _exact(head)
    low = head.lower()
    if b"=?" not in low:  # all is case-folded in the end: read the lower-case copy
        found = _FIELD.findall(b"\n" + low)
    else:  # encoded words (base64 is case-sensitive): the values as written
        found = [(m.group(1), head[m.start(2) - 1:m.end(2) - 1])
                 for m in _FIELD.finditer(b"\n" + low)]
    values = dict(reversed(found))  # the first field of each name counts (raw values)
    get = values.get
    sfrom, sto, scc, sbcc = (_address_text(get(b"from")), _address_text(get(b"to")),
                             _address_text(get(b"cc")), _address_text(get(b"bcc")))
    day = _sent_day(get(b"date"))
    if sfrom is None or sto is None or scc is None or sbcc is None or day is None:
        return _exact(head)
    subject = get(b"subject")
    if subject is None:
        subject = b""
    else:
        subject = _clean(subject)
        subject = subject.lower() if b"=?" not in subject \
            else message.decoded(subject).encode("utf-8", "surrogatepass")
    return sfrom, sto, scc, sbcc, subject, day  # ASCII: lower() above is casefold()


def _clean(value: bytes) -> bytes:
    """A field's raw value unfolded (RFC 5322 2.2.3) and stripped."""
    return (_UNFOLD.sub(b"", value) if b"\n" in value else value).strip()


def _exact(head: bytes) -> Fields:
    return of_part(message.Part(head, 0, len(head), "text/plain", message.MAX_DEPTH))


_texts: dict[bytes, bytes | None] = {}  # field value -> _address_text; cleared when full
_TEXTS_MAX = 50_000


def _address_text(value: bytes | None) -> bytes | None:
    """message.address_text of a field of plain addresses; None when it is not plain.
    The same values come again and again (To: the mailbox's owner, a few hundred
    correspondents): each raw value is worked out once."""
    if value is None:
        return b""
    text = _texts.get(value, _texts)
    if text is not _texts:
        return text  # type: ignore[return-value]
    if len(_texts) >= _TEXTS_MAX:
        _texts.clear()
    clean = _clean(value)
    text = _texts[value] = _parse_addresses(clean) if clean else b""
    return text


def _parse_addresses(value: bytes) -> bytes | None:
    if b"," not in value:  # one address, the common case
        m = _ANGLE.fullmatch(value)
        if m is not None and m.group(1) is not None and b"=?" not in value:
            return (m.group(1) + b" <" + m.group(3) + b"@" + m.group(4) + b">").lower() \
                if m.group(1) else (m.group(3) + b"@" + m.group(4)).lower()
    parts = []
    for piece in value.split(b","):
        m = _ANGLE.fullmatch(piece)
        if m is not None:
            quoted, words, local, host = m.groups()
            name = quoted if quoted is not None else b" ".join(words.split())
            spec = local + b"@" + host
            parts.append(name + b" <" + spec + b">" if name else spec)
            continue
        m = _BARE.fullmatch(piece)
        if m is None:
            return None  # comments, groups, routes, quoting: the exact parser
        parts.append(m.group(1) + b"@" + m.group(2))
    text = b", ".join(parts)
    if b"=?" not in text:
        return text.lower()  # ASCII (of_head checked): lower() is casefold()
    return message.decoded(text).encode("utf-8", "surrogatepass")


_days: dict[tuple[bytes, bytes, bytes], int] = {}


def _sent_day(value: bytes | None) -> int | None:
    """message.sent_day of a Date value in the common form; None for any other form."""
    if value is None:
        return -1
    m = _DATE.fullmatch(value if b"\n" not in value else _clean(value))
    if m is None:
        return None
    key = m.group(1, 2, 3)  # (day, month, year) as written: one look-up, no int()
    day = _days.get(key)
    if day is None:
        month = _MONTHS.get(key[1].lower())
        if month is None:
            return None
        try:
            day = datetime.date(int(key[2]), month, int(key[0])).toordinal()
        except ValueError:
            return None
        if len(_days) < 100_000:
            _days[key] = day
    return day


_BATCH = 5000  # messages per pack, one index transaction (the folder's lock held)
_STEP = 1000  # messages the search thread parses between two looks at its child's


def fill(folder, uids: list[int], process_min: int = 0) -> None:
    """Fill the index's search fields of uids (ascending) where they are missing.
    Blocking: the search thread. A message gone meanwhile is left out. The heads
    are read ahead (Folder.heads): the disk works while this thread parses.

    When process_min ([imap] search_process_min, 0: never) or more are missing, a
    child process parses them from the last one back (fieldsworker.py) while this
    thread parses from the first one on, _STEP at a time, storing the child's packs
    as they come; where the two meet, the child is ended. What it could not do is
    read here as before.

    The fields are written by this thread, a pack (store/fieldpack.py) of _BATCH
    messages at a time: seven rows, not one per message (100,000 rows had been a
    quarter of this thread's time)."""
    todo = folder.without_fields(uids)
    child, theirs = None, []
    if process_min and len(todo) >= process_min:
        # Imported here: the child imports this module, and store/folder.py's
        # imports (twisted) would cost its start 0.3 s.
        from gateway.store.folder import HEAD_READ

        theirs = todo[::-1]
        # A message expunged meanwhile gets a path that opens nothing: it comes back
        # as one to do here, where heads() leaves it out.
        child = fieldsworker.start(folder.file_names(theirs), HEAD_READ)
    try:
        with memtrim.paused_gc():  # rows of bytes and ints: no cycles
            if child is None:
                _parse_and_put(folder, todo)
            else:
                _share(folder, todo, theirs, child)
    finally:
        if child is not None:
            child.stop()  # still running if this thread got to its part first


def _share(folder, todo: list[int], theirs: list[int], child: fieldsworker.Child) -> None:
    """Parse todo from its start here, _STEP at a time, and store the child's packs
    (of theirs: todo backwards) as they come, until the two meet; then parse what
    the child could not. Never waits for the child: if it is slow or fails, this
    thread goes on into its part. (The child's last record may cover messages
    this thread did meanwhile: their fields are then stored twice, which the
    index allows; at most one record's worth.)"""
    mine = done = 0  # todo[:mine] parsed here; theirs[:done] answered by the child
    skipped: list[int] = []
    rows: list[tuple] = []
    while True:
        for n, given, *texts, days in child.ready():
            got = _believe(theirs[done:done + n] if isinstance(n, int) else [],
                           n, given, texts, days)
            if got is None:
                child.over = True  # nothing more from it is trusted
                break
            pack, back = got
            done += n
            skipped += back
            folder.put_pack(pack)
        end = min(mine + _STEP, len(todo) - done)
        if end <= mine:
            break
        rows += [(uid, *of_head(head)) for uid, head in folder.heads(todo[mine:end])]
        mine = end
        if len(rows) >= _BATCH:
            folder.put_fields(rows)
            rows = []
    folder.put_fields(rows)
    _parse_and_put(folder, skipped)


def _believe(uids: list[int], n, given, texts: list, days):
    """(the pack, the UIDs left to this thread) of a child's record for uids; None
    when it does not fit them (a child gone wrong)."""
    back = set(given) if isinstance(given, list) else {-1}
    if not isinstance(n, int) or len(uids) != n or not back <= set(range(n)) \
            or not all(isinstance(t, bytes) for t in (*texts, days)):
        return None
    packed = [u for i, u in enumerate(uids) if i not in back]
    pack = (fieldpack.ints(packed, "I"), *texts, days)
    if fieldpack.count(pack) != len(packed):  # type: ignore[arg-type]
        return None
    return pack, [uids[i] for i in sorted(back)]


def _parse_and_put(folder, uids: list[int]) -> None:
    rows: list[tuple] = []
    for uid, head in folder.heads(uids):
        rows.append((uid, *of_head(head)))
        if len(rows) >= _BATCH:
            folder.put_fields(rows)
            rows = []
    if rows:
        folder.put_fields(rows)
