"""The Authentication-Results header (RFC 8601) and the header block it goes into.

One field with the gateway's authserv-id (its hostname) for SPF, every DKIM
signature and DMARC. Fields that arrive claiming that authserv-id are forged
or stale: removed before ours is added (RFC 8601 5), so a reader that trusts
our id trusts only what we wrote.
"""

from __future__ import annotations

import re

from gateway.verify.dkimcheck import DkimResult
from gateway.verify.dmarc import DmarcResult
from gateway.verify.spf import SpfResult

_COMMENT = re.compile(rb"\([^()]*\)")
_UNSAFE = re.compile(r"[^\x21-\x7e]|[;()\"\\]")


def _value(text: str) -> str:
    """A property value as a token, or a quoted string when it needs one (RFC 8601 2.2)."""
    if text and not _UNSAFE.search(text):
        return text
    return '"' + re.sub(r'["\\]', lambda m: "\\" + m.group(), re.sub(r"[\r\n]", " ", text)) + '"'


def _comment(text: str) -> str:
    text = re.sub(r"[()\\\r\n]", " ", text).strip()
    return f" ({text})" if text else ""


def authentication_results(authserv_id: str, spf: SpfResult | None, dkims: list[DkimResult],
                           dmarc: DmarcResult | None) -> bytes:
    parts = []
    if spf is not None:
        prop = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
        parts.append(f"spf={spf.result} {prop}={_value(spf.domain)}")
    if not dkims:
        parts.append("dkim=none")
    for d in dkims:
        text = f"dkim={d.result}{_comment(d.reason)}"
        if d.domain:
            text += f" header.d={_value(d.domain)} header.s={_value(d.selector)}"
            text += f" header.a={_value(d.algorithm)} header.b={_value(d.b)}"
        parts.append(text)
    if dmarc is not None:
        comment = f" (p={dmarc.published} dis={dmarc.policy})" if dmarc.published else ""
        parts.append(f"dmarc={dmarc.result}{comment} header.from={_value(dmarc.domain)}")
    body = ";\r\n\t".join([authserv_id, *parts])
    return f"Authentication-Results: {body}\r\n".encode("utf-8", "replace")


def received_spf(value: str) -> bytes:
    """RFC 7208 9.1, folded at the "; " pyspf puts between its key-value pairs."""
    return ("Received-SPF: " + value.replace("; ", ";\r\n\t") + "\r\n").encode("utf-8", "replace")


def split_header(message: bytes) -> tuple[bytes, bytes]:
    """(header block with its final empty line, body); a message without an empty
    line is all header (RFC 5322 2.1). Bare LF endings (bare_linefeeds = "accept")
    end the header too."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := message.find(sep)) >= 0]
    if not ends:
        return message, b""
    end = min(ends)
    return message[:end], message[end:]


def fields(header: bytes) -> list[bytes]:
    """The header block's lines grouped into fields (a field with its continuation
    lines), every byte kept: joined again they give header back. Empty lines stand alone."""
    out: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out and out[-1].strip():
            out[-1] += line
        else:
            out.append(line)
    return out


def claims(field: bytes, authserv_id: str) -> bool:
    """True for an Authentication-Results field whose authserv-id is ours (case-insensitive,
    comments and folding ignored)."""
    name, sep, value = field.partition(b":")
    if not sep or name.strip().lower() != b"authentication-results":
        return False
    value = _COMMENT.sub(b" ", re.sub(rb"[\r\n]+", b" ", value))
    first = value.split(b";", 1)[0].split()
    return bool(first) and first[0].decode("utf-8", "replace").lower() == authserv_id.lower()


def strip_claims(header: bytes, authserv_id: str) -> tuple[bytes, int]:
    """header without the Authentication-Results fields claiming authserv_id; how many."""
    if b"authentication-results" not in header.lower():
        return header, 0  # the common case: nothing to look at
    kept = [f for f in fields(header) if not claims(f, authserv_id)]
    dropped = len(fields(header)) - len(kept)
    return (b"".join(kept), dropped) if dropped else (header, 0)
