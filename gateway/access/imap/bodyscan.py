"""SEARCH BODY's cheap first look: the raw file, when that cannot miss a match.

Part of access/imap, under search.py. The text SEARCH BODY matches is the
message's text parts decoded (searchtext.body_text: transfer encoding,
charset, case folding). Splitting a message into MIME parts and decoding it
costs ten times more than reading it, and nearly every message of a search
holds no match, so each message is first looked at raw: when its decoded
body can only be a case-folded copy of some of its own bytes, a string
missing from the case-folded bytes is missing from the body too, and the
message is passed over undecoded. That holds when the raw message:
- has no base64 or quoted-printable part (the text is written as it is),
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

_UNSAFE = (b"base64", b"quoted-printable", b"rfc822", b"digest")
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
        if any(marker in low for marker in _UNSAFE):
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
