"""Address fields (From, To, Cc ...) parsed as RFC 5322 3.4 says, for ENVELOPE and SEARCH.

Part of access/imap: message.py builds ENVELOPE's address lists from
parse(), summary.py the text that SEARCH FROM/TO/CC/BCC look in from text().
email.utils.getaddresses cannot serve: it flattens groups, drops source
routes and keeps a comment inside an address as part of it. RFC 3501 7.4.2
wants each address as (name adl mailbox host), a group as a start marker
(NIL NIL "group" NIL) before its members and an end marker (NIL NIL NIL
NIL) after them, and an obsolete route ("<@relay:user@host>") as adl.

Lenient, as mail readers are: what does not parse is kept as best it can be,
never an error. Values stay raw bytes (RFC 2047 words encoded), as ENVELOPE
sends them.
"""

from __future__ import annotations

import re

Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]  # name adl mailbox host
GROUP_END: Address = (None, None, None, None)

_TOKEN = re.compile(rb'\s*(?:(?P<q>"(?:\\.|[^"\\])*"?)|(?P<c>\((?:\\.|[^()\\])*\))|(?P<o>\()'
                    rb'|(?P<s>[<>@,;:)])|(?P<w>\[(?:\\.|[^\]\\])*\]?|[^\s"()<>@,;:\[]+))', re.S)
_MAX_ADDRESSES = 10_000  # a header is at most the message's size; this bounds the work
_WORD = rb'[^\s"()<>@,;:\\\[\]]+'
# One mailbox in a plain form: "Quoted Name" <local@host>, Some Words <local@host>,
# <local@host> or local@host; anything else (lists, comments, groups, routes,
# escapes) is left to the tokenizer.
_ONE = re.compile(rb'\s*(?:(?:"([^"\\\r\n]*)"|((?:' + _WORD + rb'\s+)*' + _WORD + rb')?)\s*<('
                  + _WORD + rb')@(' + _WORD + rb')>|(' + _WORD + rb')@(' + _WORD + rb'))\s*')


def _tokens(value: bytes) -> list[tuple[str, bytes]]:
    """(kind, text): "w" word (dots in it), "q" quoted string (unquoted), "c" comment,
    or a special."""
    out: list[tuple[str, bytes]] = []
    i, n, match = 0, len(value), _TOKEN.match
    while i < n:
        m = match(value, i)
        if m is None:
            break  # only blanks were left
        kind, text, i = m.lastgroup, m.group(m.lastgroup), m.end()
        if kind == "w":
            out.append(("w", text))
        elif kind == "s":
            out.append((text.decode(), text))
        elif kind == "q":
            body = text[1:-1] if len(text) > 1 and text.endswith(b'"') else text[1:]
            if b"\\" in body:
                body = re.sub(rb"\\(.)", rb"\1", body, flags=re.S)
            out.append(("q", body))
        elif kind == "c":
            out.append(("c", text[1:-1].strip()))
        else:  # a comment holding comments (RFC 5322 3.2.2), or one never closed
            depth, j = 0, m.start(kind)
            start = j
            while j < n:
                c = value[j]
                if c == 0x5C:
                    j += 1
                elif c == 0x28:
                    depth += 1
                elif c == 0x29:
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            out.append(("c", value[start + 1:j].strip()))
            i = j + 1
    return out


class _Mailbox:
    """The tokens of one mailbox while it is read."""

    def __init__(self) -> None:
        self.phrase: list[tuple[str, bytes]] = []  # before "<", or the whole addr-spec
        self.comments: list[bytes] = []
        self.route: list[bytes] = []
        self.spec: list[tuple[str, bytes]] | None = None  # inside <...>
        self.in_angle = False

    def add(self, kind: str, text: bytes) -> None:
        if kind == "c":
            if text:
                self.comments.append(text)
        elif self.in_angle:
            assert self.spec is not None
            self.spec.append((kind, text))
        else:
            self.phrase.append((kind, text))

    def empty(self) -> bool:
        return not self.phrase and self.spec is None

    def address(self) -> Address:
        if self.spec is None:  # a bare addr-spec: a comment may name it (RFC 5322 3.4)
            name = b" ".join(self.comments) or None
            local, host = _split(self.phrase)
            return name, None, local, host
        name = _phrase(self.phrase) or None
        spec = self.spec
        # An obsolete route: "@a,@b:" before the addr-spec (RFC 5322 4.4).
        if spec and spec[0][0] == "@" and any(k == ":" for k, _ in spec):
            colon = next(i for i, (k, _) in enumerate(spec) if k == ":")
            self.route = [t for _, t in spec[:colon]]
            spec = spec[colon + 1:]
        local, host = _split(spec)
        return name, b"".join(self.route) or None, local, host


def _phrase(tokens: list[tuple[str, bytes]]) -> bytes:
    """Display-name words joined by one space ("John Q. Public": dots belong to words)."""
    return b" ".join(t for k, t in tokens if k in ("w", "q"))


def _split(tokens: list[tuple[str, bytes]]) -> tuple[bytes | None, bytes | None]:
    """(local part, domain) of an addr-spec; domain "" when there is no "@"."""
    at = max((i for i, (k, _) in enumerate(tokens) if k == "@"), default=-1)
    local = b"".join(t for k, t in (tokens[:at] if at >= 0 else tokens) if k in ("w", "q"))
    host = b"".join(t for k, t in tokens[at + 1:] if k == "w") if at >= 0 else b""
    return local or None, host


_parsed: dict[bytes, tuple[Address, ...]] = {}  # value -> parse(value); cleared when full
_PARSED_MAX = 50_000


def parse(value: bytes | None) -> list[Address]:
    """An address-list as ENVELOPE lists it, group markers included; [] if none.
    A mailbox's headers repeat the same few hundred values (its owner in To, the
    usual correspondents): each is parsed once while it stays in a bounded memo."""
    if not value:
        return []
    known = _parsed.get(value)
    if known is not None:
        return list(known)
    m = _ONE.fullmatch(value)
    if m is not None:  # one plain mailbox, as most fields hold: what _parse would give
        quoted, words, local, host, bare_local, bare_host = m.groups()
        if local is None:
            out = [(None, None, bare_local, bare_host)]
        else:
            name = quoted if quoted is not None else b" ".join(words.split()) if words else b""
            out = [(name or None, None, local, host)]
    else:
        out = _parse(value)
    if len(_parsed) >= _PARSED_MAX:
        _parsed.clear()
    _parsed[value] = tuple(out)
    return out


def _parse(value: bytes) -> list[Address]:
    out: list[Address] = []
    box = _Mailbox()
    group = False

    def finish() -> None:
        nonlocal box
        if not box.empty() and len(out) < _MAX_ADDRESSES:
            address = box.address()
            if address[2] is not None or address[0] is not None:
                out.append(address)
        box = _Mailbox()

    for kind, text in _tokens(value):
        if box.in_angle:
            if kind == ">":
                box.in_angle = False
            else:
                box.add(kind, text)
        elif kind == "<":
            box.in_angle, box.spec = True, []
        elif kind == ":" and not group and box.spec is None:
            out.append((None, None, _phrase(box.phrase) or b"", None))  # group start
            box, group = _Mailbox(), True
        elif kind == ";" and group:
            finish()
            out.append(GROUP_END)
            group = False
        elif kind == ",":
            finish()
        elif kind not in (">", ";", ":"):
            box.add(kind, text)
    finish()
    if group:
        out.append(GROUP_END)  # an unterminated group is closed for the client
    return out


def text(addresses: list[Address]) -> bytes:
    """What SEARCH FROM/TO/CC/BCC look in: "Name <mailbox@host>, group: a@b;" and so on
    (comments, routes and quoting gone, so "user@domain" finds every spelling of it)."""
    parts: list[bytes] = []
    for name, _adl, mailbox, host in addresses:
        if mailbox is None:
            parts.append(name or b";")  # a group's end, or a name without an address
        elif host is None:
            parts.append(mailbox + b":")
        else:
            spec = mailbox + (b"@" + host if host else b"")
            parts.append(name + b" <" + spec + b">" if name else spec)
    return b", ".join(p for p in parts if p)
