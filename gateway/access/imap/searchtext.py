"""The text SEARCH BODY and TEXT look in: a message's parts decoded, in their charsets.

Part of access/imap, under search.py (which runs it in the search thread
pool, inside its byte budget: nothing is decoded that was not paid for when
the file was read). RFC 3501 6.4.4 matches BODY and TEXT against the text of
the message, and a client searching "Grüße" must find it in a base64 or
quoted-printable part written in ISO-8859-1 (Dovecot does). So each text/*
leaf part (and a part without Content-Type, text/plain by RFC 2045) is
decoded from its Content-Transfer-Encoding (RFC 2045 6.7, 6.8) and then from
its charset (RFC 2046 4.1.2); parts of other types (images, PDFs) are not
text and are skipped. An encapsulated message (message/rfc822) adds its
header fields, decoded like SEARCH HEADER's (RFC 2047), and its own parts.

Cost: linear in the message (one pass to split parts, one to decode each);
a charset Python does not know, or bytes that do not decode, are taken as
UTF-8 with replacement, never an error.
"""

from __future__ import annotations

import binascii
import codecs

from gateway.access.imap import message

# SEARCH CHARSET takes any charset Python has a text codec for (ISO-8859-x,
# windows-125x, KOI8-R ...); a BADCHARSET answer lists the two every client knows.
ADVERTISED = "UTF-8 US-ASCII"  # named in NO [BADCHARSET (...)]
# Python text codecs that are no MIME charset (they interpret escapes or labels).
_NOT_CHARSETS = {"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined"}


def charset_codec(name: str) -> str | None:
    """The Python codec of a MIME charset name, None when there is no text codec."""
    try:
        info = codecs.lookup(name.strip().strip('"'))
    except (LookupError, ValueError):
        return None
    if info.name in _NOT_CHARSETS:
        return None
    try:
        b"a".decode(info.name, "replace")  # LookupError: not a text encoding (rot13, zlib)
    except LookupError:
        return None
    return info.name


def decode_bytes(data: bytes, charset: str | None) -> str:
    codec = charset_codec(charset) if charset else None
    try:
        return data.decode(codec or "utf-8", "replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", "replace")


def _content(part: message.Part) -> bytes:
    """The part's body with its transfer encoding undone."""
    body = part.text()
    cte = (part.field(b"content-transfer-encoding") or b"").strip().lower()
    try:
        if cte == b"base64":
            return binascii.a2b_base64(body)  # ignores line ends and stray characters
        if cte == b"quoted-printable":
            return binascii.a2b_qp(body)
    except (binascii.Error, ValueError):
        pass  # damaged: search the text as it is written
    return body


def header_text(part: message.Part) -> str:
    """Header fields as "name: value" lines with RFC 2047 words decoded, case-folded."""
    return "\n".join(f"{name.decode('latin-1')}: {message.decoded(message.unfold(raw))}"
                     for name, raw in part.fields)


def body_text(part: message.Part) -> str:
    """The decoded text of part's body (every text part below it), case-folded."""
    out: list[str] = []
    stack = [part]
    while stack:  # iterative: depth is bounded by message.MAX_DEPTH all the same
        p = stack.pop()
        if p.children:
            stack.extend(reversed(p.children))
        elif p.message is not None:
            out.append(header_text(p.message))
            stack.append(p.message)
        elif p.maintype == "text":
            out.append(decode_bytes(_content(p), dict(p.params).get("charset")).casefold())
    return "\n".join(out)


def parse(data: bytes) -> message.Part:
    return message.Part(data, 0, len(data), "text/plain", 0)
