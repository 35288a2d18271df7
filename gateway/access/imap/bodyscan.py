"""SEARCH BODY's cheap first look: the raw file, when that cannot miss a match.

Part of access/imap, under search.py. The text SEARCH BODY matches is the
message's text parts decoded (searchtext.body_text: transfer encoding,
charset, case folding). Splitting a message into MIME parts and decoding it
costs ten times more than reading it, and nearly every message of a search
holds no match, so each message is first looked at raw: when its decoded
body can only be a case-folded copy of some of its own bytes, a string
missing from the case-folded bytes is missing from the body too, and the
message is passed over undecoded. That holds when the raw message:
- has no base64 or quoted-printable text part (the text is written as it
  is; an encoded attachment, a part whose Content-Type is not text/*, is
  not searched, so its encoding does not matter),
- has no encapsulated message (its header fields would be unfolded and
  RFC 2047 decoded) and no digest (whose parts are messages by default),
- names only charsets that read its bytes as they are: any ASCII-compatible
  one for an all-ASCII file (bytes.lower() is then the case folding); for a
  file with 8-bit bytes, UTF-8 only (or none, which is read as UTF-8), so
  decoding the whole file is decoding each part.
A string with a line end in it may span two parts and is never passed over.
Any other message is decoded as before: the look never changes a result.
"""

from __future__ import annotations

import re

_ENCODED = re.compile(rb"content-transfer-encoding\s*:\s*(?:base64|quoted-printable)")
_TYPE_LINE = re.compile(rb"(?:^|\n)content-type[ \t]*:")
# type/subtype then ";" or the line's end: anything else (no "/", two of them,
# folding) might read as text/plain (RFC 2045 5.2) and is not passed over.
_TYPE_VALUE = re.compile(rb"[ \t]*([a-z0-9!#$&.+^_-]+)/[a-z0-9!#$&.+^_-]+[ \t]*(?:;|\r?\n)")
_CHARSET = re.compile(rb'charset\s*=\s*"?([a-z0-9_.:-]+)')
_ASCII_SAFE = re.compile(rb"(?:us-)?ascii|utf-?8|iso[-_]?8859-\d{1,2}|latin-?1|"
                         rb"(?:windows|cp)-?125\d")
_UTF8_SAFE = {b"utf-8", b"utf8"}


class Scan:
    """One message's raw bytes, case-folded once for every BODY key of a SEARCH."""

    __slots__ = ("folded", "ascii")

    def __init__(self, data: bytes) -> None:
        self.folded: bytes | str | None = None  # None: the look cannot decide
        self.ascii = data.isascii()
        low = data.lower()  # ASCII letters only: enough to find the markers
        if b"rfc822" in low or b"digest" in low or not _encoded_parts_not_text(low):
            return
        names = _CHARSET.findall(low)
        if len(names) != low.count(b"charset"):
            return  # a charset written some other way (RFC 2231 charset*=)
        if self.ascii:
            if all(_ASCII_SAFE.fullmatch(n) for n in names):
                self.folded = low
        elif all(n in _UTF8_SAFE for n in names):
            self.folded = data.decode("utf-8", "replace").casefold()

    def may_hold(self, s: str) -> bool:
        """False when the decoded body cannot contain s (case-folded already)."""
        folded = self.folded
        if folded is None or "\n" in s or "\r" in s:
            return True
        if isinstance(folded, bytes):
            if not s.isascii():
                return False  # ASCII text, ASCII-compatible charsets: no such characters
            return s.encode("ascii") in folded
        return s in folded


def _encoded_parts_not_text(low: bytes) -> bool:
    """True when every base64 or quoted-printable part names a type other than text
    (an attachment). A part's header runs from its boundary line (the last line
    starting with "--" before its Content-Transfer-Encoding; the message's start
    for the top level) to its blank line; no Content-Type there means text/plain."""
    if b"base64" not in low and b"quoted-printable" not in low:
        return True
    for m in _ENCODED.finditer(low):
        start = low.rfind(b"\n--", 0, m.start()) + 1  # 0 when there is none
        ends = [e for e in (low.find(b"\n\n", m.end()), low.find(b"\n\r\n", m.end()))
                if e >= 0]
        end = min(ends) if ends else len(low)
        line = _TYPE_LINE.search(low, start, end)
        kind = _TYPE_VALUE.match(low, line.end()) if line is not None else None
        if kind is None or kind.group(1) in (b"text", b"multipart", b"message"):
            return False
    return True
