"""LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819): what an extended LIST asks.

Part of access/imap: commands.py reads the arguments with parse(), account.py
(list_extended) finds the names, commands.py writes the answer.

  LIST [(selection options)] reference pattern|(patterns) [RETURN (return options)]

Selection options: SUBSCRIBED, REMOTE (this server has no remote mailboxes, so
it changes nothing), RECURSIVEMATCH (only with SUBSCRIBED, RFC 5258 3.1).
Return options: SUBSCRIBED, CHILDREN (always sent here, as RFC 3348 lets a
server), STATUS (items) (RFC 5819: a STATUS response after each selectable
mailbox's LIST line). Anything else is BAD (RFC 5258 3: unknown options).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.access.imap import wire
from gateway.access.imap.wire import Atom, Bad

SELECTION = (b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH")
RETURNS = (b"SUBSCRIBED", b"CHILDREN", b"STATUS")


@dataclass
class Request:
    reference: bytes
    patterns: list[bytes]
    extended: bool = False  # any LIST-EXTENDED syntax: otherwise a plain RFC 3501 LIST
    subscribed: bool = False  # selection SUBSCRIBED
    recursive: bool = False  # selection RECURSIVEMATCH
    return_subscribed: bool = False
    status: list[str] = field(default_factory=list)  # RETURN (STATUS (...)) items


def _options(token: Any, allowed: tuple[bytes, ...], what: str) -> list:
    if not isinstance(token, list):
        raise Bad(f"{what} options must be a parenthesised list")
    out = []
    i = 0
    while i < len(token):
        name = bytes(token[i]).upper() if isinstance(token[i], Atom) else b""
        if name not in allowed:
            raise Bad(f"unknown LIST {what} option")
        if name == b"STATUS":
            if i + 1 >= len(token) or not isinstance(token[i + 1], list) or not token[i + 1]:
                raise Bad("STATUS return option needs a list of items")
            out.append((name, token[i + 1]))
            i += 2
            continue
        out.append(name)
        i += 1
    return out


def parse(args: list, status_items: tuple[str, ...]) -> Request:
    """LIST's arguments after the command name."""
    extended = False
    selection: list = []
    if args and isinstance(args[0], list):
        selection, args, extended = _options(args[0], SELECTION, "selection"), args[1:], True
    returns: list = []
    if len(args) == 4 and isinstance(args[2], Atom) and args[2].upper() == b"RETURN":
        returns, args, extended = _options(args[3], RETURNS, "return"), args[:2], True
    wire.arity(args, 2)
    reference = wire.astring(args[0], "reference")
    if isinstance(args[1], list):
        if not args[1]:
            raise Bad("LIST needs at least one pattern")
        patterns = [wire.astring(p, "mailbox pattern") for p in args[1]]
        extended = True
    else:
        patterns = [wire.astring(args[1], "mailbox pattern")]
    req = Request(reference, patterns, extended)
    req.subscribed = b"SUBSCRIBED" in selection
    req.recursive = b"RECURSIVEMATCH" in selection
    if req.recursive and not req.subscribed:  # RFC 5258 3.1
        raise Bad("RECURSIVEMATCH needs another selection option (SUBSCRIBED)")
    for option in returns:
        if option == b"SUBSCRIBED":
            req.return_subscribed = True
        elif isinstance(option, tuple):
            items = [wire.atom(t, "status item").decode().upper() for t in option[1]]
            if any(i not in status_items for i in items):
                raise Bad("unknown STATUS item")
            req.status = items
    return req


def list_line(name: str, attrs: list[str], childinfo: bool, delimiter: str,
              utf8: bool = False) -> bytes:
    """One LIST response; CHILDINFO as RFC 5258 3.5's extended data; the name in
    UTF-8 when utf8 (an IMAP4rev2 session, RFC 9051 5.1)."""
    tail = b' ("CHILDINFO" ("SUBSCRIBED"))' if childinfo else b""
    return b'* LIST (%s) "%s" %s%s\r\n' % (" ".join(attrs).encode(), delimiter.encode(),
                                         wire.mailbox_name(name, utf8), tail)
