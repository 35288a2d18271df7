"""The Received header the gateway prepends to each accepted message (RFC 5321 4.4).

The with-protocol keyword follows RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA),
and the TLS version is named in a comment, as Postfix does.
"""

from __future__ import annotations

from email.utils import formatdate


def protocol_keyword(esmtp: bool, tls: bool, authenticated: bool) -> str:
    if not esmtp:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


def received_header(*, helo: str, client_address: str, hostname: str, protocol: str,
                    queue_id: str, tls: str = "", recipient: str = "",
                    now: float | None = None) -> bytes:
    """One folded Received header, CRLF-terminated, ASCII."""
    helo = "".join(c for c in helo if 0x21 <= ord(c) < 0x7F)[:255] or "unknown"
    parts = [f"Received: from {helo} ([{client_address}])",
             f"\tby {hostname} (mailgateway) with {protocol} id {queue_id}"]
    if tls:
        parts[-1] += f" ({tls})"
    tail = f"; {formatdate(now, localtime=False, usegmt=True)}"
    if recipient:
        parts.append(f"\tfor <{recipient}>{tail}")
    else:
        parts[-1] += tail
    return ("\r\n".join(parts) + "\r\n").encode("ascii", "replace")
