"""BINARY (RFC 3516): a part's content with its Content-Transfer-Encoding undone, and
APPEND of binary content.

Part of access/imap: fetch.py answers BINARY[section], BINARY.PEEK and
BINARY.SIZE with decoded(); commands.py (APPEND with a literal8, ~{n}) runs
to_base64() on the spooled message in the thread pool first. The store keeps
messages as sent; a part sent with "Content-Transfer-Encoding: binary" is
stored base64-encoded instead (as Dovecot does), so BODY[...] never has to
carry NUL octets (RFC 3516 4.3, RFC 3501 4.3) while BINARY[...] still gives
the client the octets it appended.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from pathlib import Path

from gateway.access.imap import message
from gateway.access.imap.wire import No, Upload

IDENTITY = {b"7bit", b"8bit", b"binary"}
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_ALPHABET = bytes(c for c in range(256) if c not in _ALPHABET)  # for bytes.translate
# Octets of base64 text decoded_pieces() decodes at a time.
PIECE = 1 << 20
_LINES = re.compile(rb"(\r?\n)")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def encoding(part: message.Part) -> bytes:
    """The part's Content-Transfer-Encoding, lower case; 7bit if none (RFC 2045 6.1)."""
    value = part.field(b"content-transfer-encoding")
    return value.strip().lower() if value else b"7bit"


def decoded(part: message.Part) -> bytes:
    """What BINARY[part] gives: a leaf part's body decoded; a multipart or message/rfc822
    part as it is (it has no encoding of its own to undo). No [UNKNOWN-CTE] for an
    encoding not known here (RFC 3516 4.3)."""
    if part.children or part.message is not None:
        return part.text()
    cte = encoding(part)
    if cte in IDENTITY:
        return part.text()
    if cte == b"base64":
        return _base64_part(part.data, part.body, part.end)
    if cte == b"quoted-printable":
        return quoted_printable(part.text())
    raise No("[UNKNOWN-CTE] Unknown Content-Transfer-Encoding "
             + cte[:40].decode("ascii", "replace"))


def decoded_pieces(part: message.Part) -> Iterator[bytes] | None:
    """decoded() a piece at a time, for a base64 leaf part (an attachment), so that a
    caller writing it to a file never holds it whole; None for any other part. The same
    octets as decoded() (RFC 2045 6.8, as _base64)."""
    if part.children or part.message is not None or encoding(part) != b"base64":
        return None
    return _base64_pieces(part.data, part.body, part.end)


def _base64_pieces(data: bytes, start: int, end: int, piece: int = PIECE) -> Iterator[bytes]:
    """_base64(data[start:end]), decoded PIECE octets of text at a time: the text up to
    its first "=", outside the alphabet dropped, each piece's quanta decoded and the
    rest carried to the next; a last quantum of one character is no octet."""
    stop = data.find(b"=", start, end)
    stop = end if stop < 0 else stop
    carry = b""
    for pos in range(start, stop, piece):
        text = carry + data[pos:min(pos + piece, stop)].translate(None, _NOT_ALPHABET)
        if pos + piece < stop:
            whole = len(text) - len(text) % 4
            text, carry = text[:whole], text[whole:]
        else:
            text = text[:len(text) - 1] if len(text) % 4 == 1 else text
            text += b"=" * (-len(text) % 4)
        if text:
            yield binascii.a2b_base64(text)


def _base64_part(data: bytes, start: int, end: int) -> bytes:
    """data[start:end] decoded as base64. A body whose "=" are only its padding at the
    end is decoded in place by binascii (which skips line ends), without the copies
    _base64 makes: a 16 MB attachment would cost four of them."""
    pad = data.find(b"=", start, end)
    if pad < 0 or not data[pad:end].strip(b"= \t\r\n"):
        try:
            return binascii.a2b_base64(memoryview(data)[start:end])
        except binascii.Error:
            pass  # a length the padding does not mend: the careful way below
    return _base64(data[start:end])


def _base64(body: bytes) -> bytes:
    """RFC 2045 6.8: characters outside the alphabet are ignored; what is left is
    decoded as far as it goes (a lost pad or a stray octet do not lose the part)."""
    text = _NOT_BASE64.sub(b"", body.split(b"=", 1)[0])
    text = text[:len(text) - len(text) % 4 if len(text) % 4 == 1 else len(text)]
    try:
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    except binascii.Error:
        return b""


def quoted_printable(body: bytes) -> bytes:
    """RFC 2045 6.7: whitespace at a line's end is dropped, "=" at its end joins it to
    the next (a soft break), =XX is the octet XX; a malformed "=" stays as it is."""
    out = []
    pieces = _LINES.split(body)  # text, eol, text, eol, ..., text
    for k in range(0, len(pieces), 2):
        line = pieces[k].rstrip(b" \t")
        eol = pieces[k + 1] if k + 1 < len(pieces) else b""
        if line.endswith(b"="):
            line, eol = line[:-1], b""
        out.append(_QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), line))
        out.append(eol)
    return b"".join(out)


def to_base64(upload: Upload) -> None:
    """Rewrite the message at path so that every part sent as "binary" is base64
    (RFC 3516 4.4 lets the server store binary content in another encoding; BINARY
    gives the same octets back). Blocking: runs in the thread pool."""
    path = Path(upload.path)
    data = path.read_bytes()
    root = message.Part(data, 0, len(data), "text/plain", 0)
    leaves: list[message.Part] = []
    _binary_leaves(root, leaves)
    if not leaves:
        return
    out = bytearray(data)
    for part in sorted(leaves, key=lambda p: p.start, reverse=True):
        encoded = base64.encodebytes(part.text()).replace(b"\n", b"\r\n")
        if part.end < len(data):  # the CRLF before the next delimiter is the delimiter's
            encoded = encoded[:-2]
        out[part.body:part.end] = encoded
        header = bytes(out[part.start:part.body])
        raw = next(r for n, r in part.fields if n == b"content-transfer-encoding")
        at = part.start + header.index(raw)
        eol = b"\r\n" if raw.endswith(b"\r\n") else b"\n"
        out[at:at + len(raw)] = b"Content-Transfer-Encoding: base64" + eol
    path.write_bytes(bytes(out))
    upload.size = len(out)


def _binary_leaves(part: message.Part, found: list[message.Part]) -> None:
    for child in part.children:
        _binary_leaves(child, found)
    if part.message is not None:
        _binary_leaves(part.message, found)
    if not part.children and part.message is None and encoding(part) == b"binary" \
            and part.field(b"content-transfer-encoding") is not None:
        found.append(part)
