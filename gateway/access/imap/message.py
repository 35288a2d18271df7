"""A message's MIME structure by byte offsets: sections, ENVELOPE and BODYSTRUCTURE.

Part of access/imap: fetch.py and search.py use it on the bytes the store
hands back. Twisted's getBodyStructure/getEnvelope re-title and re-join
headers and default the wrong types, so FETCH BODY[...] could not be
byte-exact through them; here every section is a slice of the stored file.
RFC 3501 6.4.5 (section numbers), 7.4.2 (ENVELOPE, BODY, BODYSTRUCTURE),
RFC 2045/2046 (Content-Type, multipart boundaries), RFC 2183 (disposition).
"""

from __future__ import annotations

import email.message
import email.utils
import re
from email.header import decode_header, make_header

from gateway.access.imap import addresses
from gateway.access.imap.wire import Raw, encode, quoted

MAX_DEPTH = 20
_BLANK = re.compile(rb"\r?\n\r?\n")


class Part:
    """One MIME entity: data[start:body] is its header block (blank line included)."""

    __slots__ = ("data", "start", "body", "end", "fields", "maintype", "subtype", "params",
                 "children", "message")

    def __init__(self, data: bytes, start: int, end: int, default: str, depth: int) -> None:
        self.data, self.start, self.end = data, start, end
        self.body = _header_end(data, start, end)
        self.fields = header_fields(data[start:self.body])
        ctype = self.field(b"content-type")
        msg = email.message.Message()
        msg.set_default_type(default)
        if ctype is not None:
            msg["Content-Type"] = _text(ctype)
        self.maintype, self.subtype = msg.get_content_maintype(), msg.get_content_subtype()
        self.params = [(k, email.utils.collapse_rfc2231_value(v))
                       for k, v in (msg.get_params() or [])[1:]]
        self.children: list[Part] = []
        self.message: Part | None = None
        if depth >= MAX_DEPTH:
            return
        if self.maintype == "multipart":
            boundary = dict(self.params).get("boundary")
            if boundary:
                child_default = "message/rfc822" if self.subtype == "digest" else "text/plain"
                self.children = [Part(data, s, e, child_default, depth + 1)
                                 for s, e in split_multipart(data, self.body, end,
                                                             boundary.encode("latin-1", "replace"))]
        elif (self.maintype, self.subtype) == ("message", "rfc822"):
            self.message = Part(data, self.body, end, "text/plain", depth + 1)

    def field(self, name: bytes) -> bytes | None:
        """The unfolded value of the first field called name (lower case)."""
        for n, raw in self.fields:
            if n == name:
                return unfold(raw)
        return None

    def header(self) -> bytes:
        return self.data[self.start:self.body]

    def text(self) -> bytes:
        return self.data[self.body:self.end]


class Head:
    """A message's header block alone, as ENVELOPE and SEARCH's fields need it: the
    fields of a Part without its MIME work (Content-Type through the email package
    cost a first FETCH ENVELOPE of 10,000 messages a fifth of its time)."""

    __slots__ = ("data", "fields", "_first")

    def __init__(self, data: bytes) -> None:
        self.data = data[:_header_end(data, 0, len(data))]
        self.fields = header_fields(self.data)
        self._first: dict[bytes, bytes] = {}
        for name, raw in reversed(self.fields):
            self._first[name] = raw

    def field(self, name: bytes) -> bytes | None:
        """As Part.field: the unfolded value of the first field called name."""
        raw = self._first.get(name)
        return None if raw is None else unfold(raw)

    def header(self) -> bytes:
        return self.data


def _header_end(data: bytes, start: int, end: int) -> int:
    """Where the body of the entity at data[start:end] starts: after the blank line."""
    if data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        return start + (2 if data[start:start + 1] == b"\r" else 1)
    m = _BLANK.search(data, start, end)
    return m.end() if m else end


def header_fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, raw field with its folding and line end) for each field."""
    fields: list[tuple[bytes, bytes]] = []
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
        else:
            name = line.split(b":", 1)[0].strip().lower() if b":" in line else b""
            fields.append((name, line))
    return fields


_FOLD = re.compile(rb"\r?\n(?=[ \t])")


def unfold(raw: bytes) -> bytes:
    value = raw.split(b":", 1)[1] if b":" in raw else b""
    if b"\n " in value or b"\n\t" in value:
        value = _FOLD.sub(b"", value)
    return value.strip()


def split_multipart(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of each body part (RFC 2046 5.1.1); the CRLF before a delimiter is its own."""
    delim = b"--" + boundary
    parts: list[tuple[int, int]] = []
    opened: int | None = None
    i = start
    while True:
        j = data.find(delim, i, end)
        if j < 0:
            break
        after = j + len(delim)
        at_line_start = j == start or data[j - 1:j] == b"\n"
        close = data[after:after + 2] == b"--"
        tail = data[after + (2 if close else 0):after + 3]
        if not at_line_start or (tail[:1] not in (b"", b"\r", b"\n", b" ", b"\t")):
            i = after
            continue
        content_end = j
        if j > start:
            content_end = j - (2 if data[j - 2:j] == b"\r\n" else 1)
        if opened is not None:
            parts.append((opened, max(opened, content_end)))
        eol = data.find(b"\n", after, end)
        i = end if eol < 0 else eol + 1
        if close:
            return parts
        opened = i
    if opened is not None:
        parts.append((opened, end))  # no close delimiter: the last part runs to the end
    return parts


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def find(root: Part, path: tuple[int, ...]) -> Part | None:
    """The part named by section numbers (1-based), None if there is none.

    RFC 3501 6.4.5: the parts of a multipart are numbered from 1; a message
    that is not multipart has one part, 1, its body; the parts of a
    MESSAGE/RFC822 part are those of the message it encapsulates. So when the
    top-level message is itself MESSAGE/RFC822, BODY[1] is its body (the whole
    encapsulated message), 1.HEADER that message's header and 1.1 its part 1.
    """
    cur, whole = root, True  # whole: cur is a message, not yet a numbered part of one
    for n in path:
        if cur.message is not None and not cur.children and not whole:
            cur, whole = cur.message, True  # n numbers the encapsulated message's parts
        if cur.children:
            if not 1 <= n <= len(cur.children):
                return None
            cur = cur.children[n - 1]
        elif n != 1:
            return None
        whole = False  # a message that is not multipart: part 1 is the message's body
    return cur


def line_count(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


# -- ENVELOPE ---------------------------------------------------------------------

def address_lists(part: Part | Head) -> dict[bytes, list[addresses.Address]]:
    """The parsed address fields of a header, each parsed once for ENVELOPE and SEARCH."""
    return {name: addresses.parse(part.field(name))
            for name in (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc")}


def address_text(found: list[addresses.Address], value: bytes | None) -> str:
    """An address field as SEARCH FROM/TO/CC/BCC see it (RFC 3501 6.4.4): its
    addresses and names without comments or routes (the raw value if none parse),
    RFC 2047 decoded, case-folded."""
    return decoded(addresses.text(found) if found else value)


def envelope(part: Part | Head, lists: dict[bytes, list[addresses.Address]] | None = None) -> bytes:
    """RFC 3501 7.4.2 ENVELOPE, encoded; header values raw (RFC 2047 words stay encoded).
    An empty or missing Sender or Reply-To is the From list."""
    found = lists if lists is not None else address_lists(part)
    # Written here rather than through wire.encode of nested lists: the same bytes
    # (tests compare them) for a fifth less of summary.summarize_header's time;
    # From is encoded once for all three places it may stand.
    f = part.field
    frm = _address_list(found[b"from"])
    return b"(" + b" ".join([
        _nstring(f(b"date")), _nstring(f(b"subject")), frm,
        _address_list(found[b"sender"]) if found[b"sender"] else frm,
        _address_list(found[b"reply-to"]) if found[b"reply-to"] else frm,
        _address_list(found[b"to"]), _address_list(found[b"cc"]),
        _address_list(found[b"bcc"]), _nstring(f(b"in-reply-to")),
        _nstring(f(b"message-id"))]) + b")"


def _nstring(value: bytes | None) -> bytes:
    return b"NIL" if value is None else quoted(value)


def _address_list(found: list[addresses.Address]) -> bytes:
    """An ENVELOPE address list (RFC 3501 7.4.2), NIL when empty."""
    if not found:
        return b"NIL"
    return b"(" + b" ".join([b"(" + b" ".join([b"NIL" if v is None else quoted(v) for v in a])
                             + b")" for a in found]) + b")"


# -- BODY and BODYSTRUCTURE ---------------------------------------------------------

def _param_list(params: list[tuple[str, str]]) -> list | None:
    flat: list = []
    for k, v in params:
        flat += [_bytes(k.upper()), _bytes(v)]
    return flat or None


def _disposition(part: Part) -> list | None:
    value = part.field(b"content-disposition")
    if value is None:
        return None
    msg = email.message.Message()
    msg["Content-Disposition"] = _text(value)
    params = msg.get_params(header="content-disposition") or [("", "")]
    kind = params[0][0]
    rest = [(k, email.utils.collapse_rfc2231_value(v)) for k, v in params[1:]]
    return [_bytes(kind.upper()), _param_list(rest)] if kind else None


def _language(part: Part) -> bytes | list | None:
    value = part.field(b"content-language")
    if value is None:
        return None
    tags = [t.strip() for t in value.split(b",") if t.strip()]
    return tags[0] if len(tags) == 1 else (tags or None)


def structure(part: Part, extended: bool) -> list:
    """The BODY (extended False) or BODYSTRUCTURE of part, as a nested list."""
    if part.children:
        out: list = [Raw(b"".join(encode(structure(c, extended)) for c in part.children)),
                     _bytes(part.subtype.upper())]
        if extended:
            out += [_param_list(part.params), _disposition(part), _language(part),
                    part.field(b"content-location")]
        return out
    body = part.text()
    out = [_bytes(part.maintype.upper()), _bytes(part.subtype.upper()),
           _param_list(part.params), part.field(b"content-id"),
           part.field(b"content-description"),
           (part.field(b"content-transfer-encoding") or b"7BIT").upper(), len(body)]
    if part.message is not None:
        out += [Raw(envelope(part.message)), structure(part.message, extended),
                line_count(body)]
    elif part.maintype == "text":
        out.append(line_count(body))
    if extended:
        out += [part.field(b"content-md5"), _disposition(part), _language(part),
                part.field(b"content-location")]
    return out


def bodystructure(part: Part, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (extended) or BODY, encoded. A multipart's parts come without
    spaces between them (body-type-mpart = 1*body SP media-subtype)."""
    return encode(structure(part, extended))


# -- search fields --------------------------------------------------------------------

def decoded(value: bytes | None) -> str:
    """A header value with RFC 2047 words decoded, case-folded for SEARCH.

    Raw 8-bit bytes are UTF-8 (RFC 6532) when they decode as such; otherwise
    they are taken as Latin-1 (what unlabelled 8-bit headers mostly are), so
    any bytes a sender delivered give a searchable string, never an error.
    """
    if value is None:
        return ""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    if "=?" in text:  # only then can there be encoded words (and the slow decoder)
        try:
            text = str(make_header(decode_header(text)))
        except (ValueError, LookupError, UnicodeError):
            pass
    return text.casefold()


def sent_day(part: Part | Head) -> int:
    """The Date field's day (its own time zone, RFC 3501 SENTON) as an ordinal; -1 if none."""
    import datetime

    value = part.field(b"date")
    parsed = email.utils.parsedate_tz(_text(value)) if value else None
    if not parsed:
        return -1
    try:
        return datetime.date(*parsed[:3]).toordinal()
    except ValueError:
        return -1
