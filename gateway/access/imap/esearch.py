"""ESEARCH (RFC 4731): SEARCH RETURN (MIN MAX ALL COUNT) and its ESEARCH response;
SEARCHRES (RFC 5182): RETURN (SAVE), the result "$" names (mailbox.View.saved).

Part of access/imap, used by SEARCH (selected.py). The search
itself is search.py's; this module only reads the RETURN options before the
search keys and writes the answer: `* ESEARCH (TAG "a1") UID MIN 2 ALL 2:4,9`,
the set in its shortest form (RFC 4731 3.1: ALL is a sequence-set). An empty
RETURN () means ALL (RFC 4731 3.1). With a MODSEQ search key the answer ends with
MODSEQ n, the highest modseq of the messages it names: of MIN and MAX alone
when only those were asked, else of all found (RFC 4731 3.2, RFC 7162 3.1.5).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.access.imap.wire import Atom, Bad, compact

OPTIONS = (b"MIN", b"MAX", b"ALL", b"COUNT", b"SAVE")  # SAVE: RFC 5182 SEARCHRES


def parse_return(args: list) -> tuple[list[bytes] | None, list]:
    """(RETURN options or None when the command has no RETURN, the rest of args)."""
    if not args or not isinstance(args[0], Atom) or args[0].upper() != b"RETURN":
        return None, args
    if len(args) < 2 or not isinstance(args[1], list):
        raise Bad("RETURN takes a parenthesised list of options")
    options: list[bytes] = []
    for token in args[1]:
        name = bytes(token).upper() if isinstance(token, Atom) else b""
        if name not in OPTIONS:
            raise Bad("RETURN options are MIN, MAX, ALL, COUNT and SAVE")
        if name not in options:
            options.append(name)
    return options or [b"ALL"], args[2:]


def to_save(numbers: list[int], options: list[bytes]) -> list[int]:
    """What RETURN (SAVE ...) keeps (RFC 5182 2.4): with MIN and/or MAX but neither
    ALL nor COUNT, only those; otherwise every message found."""
    if not numbers or b"ALL" in options or b"COUNT" in options or not (
            b"MIN" in options or b"MAX" in options):
        return numbers
    return sorted({min(numbers) if b"MIN" in options else max(numbers),
                   max(numbers) if b"MAX" in options else min(numbers)})


def response(tag: bytes, uid: bool, numbers: list[int], options: list[bytes],
             modseq_of: Callable[[list[int]], int] | None = None) -> bytes:
    """The ESEARCH line (without CRLF) for the numbers (UIDs if uid) found; the
    options in RFC 4731's order, whatever order the client named them in. b"" for
    RETURN (SAVE) alone: then no ESEARCH response is sent (RFC 5182 2.1)."""
    if options == [b"SAVE"]:
        return b""
    out = [b'* ESEARCH (TAG "' + tag + b'")']
    if uid:
        out.append(b"UID")
    named: list[int] = []
    if numbers and b"MIN" in options:
        named.append(min(numbers))
        out.append(b"MIN %d" % named[-1])
    if numbers and b"MAX" in options:
        named.append(max(numbers))
        out.append(b"MAX %d" % named[-1])
    if numbers and b"ALL" in options:
        out.append(b"ALL " + compact(sorted(numbers)))
    if b"COUNT" in options:
        out.append(b"COUNT %d" % len(numbers))
    if modseq_of is not None and numbers:
        whole = b"ALL" in options or b"COUNT" in options
        top = modseq_of(numbers if whole else named)
        if top:
            out.append(b"MODSEQ %d" % top)
    return b" ".join(out)
