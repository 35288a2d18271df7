"""SORT (RFC 5256 3): the base sort keys, and what SORT and THREAD need of each message.

Part of access/imap, used by selected.py (SORT, THREAD) and thread.py. The
messages are those search.py finds for the search keys; their sort values
come from the header block (cached in the "h" summary, summary.py) and the
index (size, INTERNALDATE), so SORT reads no message body. Like SEARCH it
runs in the search thread pool ([threads] search) under the same Budget:
one SORT cannot occupy the pool threads other sessions' commands wait for
beyond what one SEARCH may, and it never runs on the reactor thread.

Sort keys (RFC 5256 3): ARRIVAL (INTERNALDATE), CC, FROM, TO (the first
address's mailbox part), DATE (the Date field in UTC, INTERNALDATE when it has
none or one that does not parse), SIZE, SUBJECT (the base subject, 2.1);
REVERSE turns the next key round. Strings compare as i;ascii-casemap (RFC 5256
3: the default collation), and messages equal in every key keep their
mailbox order, whatever REVERSE says (RFC 5256 3).
"""

from __future__ import annotations

import email.header
import email.utils
import re
from dataclasses import dataclass

from gateway.access.imap import message
from gateway.access.imap.mailbox import View
from gateway.access.imap.summary import HeaderSummary, summaries
from gateway.access.imap.wire import Atom, Bad

KEYS = (b"ARRIVAL", b"CC", b"DATE", b"FROM", b"SIZE", b"SUBJECT", b"TO")

_WSP = re.compile(r"[ \t\r\n]+")
_TRAILER = re.compile(r"(?:\s|\(fwd\))+$", re.I)  # subj-trailer (RFC 5256 5)
_BLOB = r"\[[^\[\]]*\]\s*"  # subj-blob
_REFWD = re.compile(r"^(?:" + _BLOB + r")*(?:re|fwd?)\s*(?:" + _BLOB + r")?:\s*", re.I)
_LEADING_BLOB = re.compile(r"^" + _BLOB)
_FWD_HEADER = re.compile(r"^\[fwd:(.*)\]$", re.I | re.S)


def base_subject(subject: str) -> tuple[str, bool]:
    """The base subject (RFC 5256 2.1) of a decoded subject, and whether anything
    marking a reply or forward was taken off (THREAD=REFERENCES uses it)."""
    reply = False
    text = _WSP.sub(" ", subject)  # step 1: runs of blanks are one space
    while True:
        # step 2: trailing "(fwd)" and blanks
        stripped = _TRAILER.sub("", text)
        reply |= "(fwd)" in text[len(stripped):].lower()
        text = stripped
        while True:  # steps 3 and 4, till neither changes anything
            before = text
            text = text.lstrip(" ")
            m = _REFWD.match(text)
            if m:
                text, reply = text[m.end():], True
            m = _LEADING_BLOB.match(text)
            if m and text[m.end():]:  # only if something is left after it
                text = text[m.end():]
            if text == before:
                break
        m = _FWD_HEADER.match(text)  # step 5: "[fwd: ...]"
        if not m:
            return text, reply
        text, reply = m.group(1), True


def parse_criteria(token) -> list[tuple[bytes, bool]]:
    """SORT's (criteria) -> [(key, reversed)] (RFC 5256 3)."""
    if not isinstance(token, list) or not token:
        raise Bad("SORT needs a parenthesised list of sort criteria")
    out, reverse = [], False
    for t in token:
        name = bytes(t).upper() if isinstance(t, Atom) else b""
        if name == b"REVERSE" and not reverse:
            reverse = True
        elif name in KEYS:
            out.append((name, reverse))
            reverse = False
        else:
            raise Bad("sort keys are ARRIVAL CC DATE FROM SIZE SUBJECT TO, each maybe REVERSE")
    if reverse:
        raise Bad("REVERSE must be followed by a sort key")
    return out


@dataclass
class Facts:
    """What SORT and THREAD know of one message."""

    seq: int
    uid: int
    arrival: int
    size: int
    date: int  # Unix seconds in UTC: the Date field, else INTERNALDATE
    subject: str  # decoded, base subject not yet taken
    first: dict[bytes, str]  # b"from", b"to", b"cc" -> first address's mailbox, upper-cased
    message_id: str
    references: list[str]  # References, else In-Reply-To's first id
    header_date: bool  # whether the Date field gave date


_MSGID = re.compile(r"<([^<>]*)>")


def facts(view: View, found: list[tuple[int, int]], budget=None) -> list[Facts]:
    """Facts of the (seq, uid) messages found. Blocking: runs in the search pool.
    A header block too long for the cache is read again, counted against budget
    (search.Budget) like the message bytes a SEARCH reads."""
    folder = view.folder
    sums = summaries(folder, [u for _, u in found], HeaderSummary)
    out = []
    for seq, uid in found:
        m, s = folder.by_uid.get(uid), sums.get(uid)
        if m is None or s is None:
            continue  # expunged meanwhile
        if s.header_complete == b"1":
            head = s.header
        else:
            head = folder.read_head(uid) or b""
            if budget is not None:
                budget.read(len(head))
        root = message.Part(head, 0, len(head), "text/plain", message.MAX_DEPTH)
        lists = message.address_lists(root)
        first = {}
        for name in (b"from", b"to", b"cc"):
            # The first address's mailbox, a group's name included (as Dovecot).
            box = lists[name][0][2] or b"" if lists[name] else b""
            first[name] = box.decode("utf-8", "replace").upper()
        value = root.field(b"date")
        parsed = email.utils.parsedate_tz(message.decoded(value)) if value else None
        try:
            date = int(email.utils.mktime_tz(parsed)) if parsed else None
        except (OverflowError, ValueError):
            date = None
        ids = _MSGID.findall(message.decoded(root.field(b"references")))
        if not ids:
            ids = _MSGID.findall(message.decoded(root.field(b"in-reply-to")))[:1]
        own = _MSGID.findall(message.decoded(root.field(b"message-id")))
        raw_subject = root.field(b"subject")
        out.append(Facts(seq, uid, int(m.idate), m.size, date if date is not None else int(m.idate),
                         _subject(raw_subject), first, own[0] if own else "",
                         [i for i in ids if i], date is not None))
    return out


def _subject(value: bytes | None) -> str:
    """The Subject RFC 2047-decoded, case kept (message.decoded case-folds: SEARCH's)."""
    if value is None:
        return ""
    text = value.decode("utf-8", "replace")
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text


def sort_key(key: bytes, f: Facts):
    if key == b"ARRIVAL":
        return f.arrival
    if key == b"DATE":
        return f.date
    if key == b"SIZE":
        return f.size
    if key == b"SUBJECT":
        return base_subject(f.subject)[0].upper()
    return f.first[key.lower()]


def ordered(items: list[Facts], criteria: list[tuple[bytes, bool]]) -> list[Facts]:
    """items sorted by the criteria; equal ones in mailbox order, REVERSE or not."""
    out = sorted(items, key=lambda f: f.seq)
    for key, reverse in reversed(criteria):  # stable sorts, the last key first
        values = {f.seq: sort_key(key, f) for f in out}
        out.sort(key=lambda f: values[f.seq], reverse=reverse)
    return out
