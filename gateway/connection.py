"""What every listener knows of a connection: the real client, TLS, and per-client counts.

Shared by accept/smtp.py, access/pop3.py and access/imap/: behind the TLS
front (gateway/proxyproto.py reads the PROXY header before the protocol
starts) getPeer() already names the real client and the transport carries the
TLS facts, so these answers hold on every kind of listener.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from typing import Any

from twisted.internet.interfaces import ISSLTransport

from gateway import proxyproto


def client_host(transport: Any) -> str:
    peer = transport.getPeer()
    return getattr(peer, "host", str(peer))


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ::ffff:127.x; a UNIX socket is not loopback."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def transport_is_tls(transport: Any) -> bool:
    """The transport itself is TLS, or the client spoke TLS to tlsfront (PROXY v2 TLV)."""
    return (ISSLTransport.providedBy(transport)
            or proxyproto.proxied_tls(transport) is not None)


def quick_ack(transport: Any) -> None:
    """Have Linux acknowledge what the client sent at once (TCP_QUICKACK).

    For a client that sends a literal and then its final CRLF as two writes
    (imaplib's APPEND), Nagle holds the CRLF until the literal is acknowledged,
    and the delayed ACK makes that 40 ms per command. Setting the flag sends a
    pending ACK now; the kernel clears it again by itself, so it is set each
    time it is needed. Without a TCP socket (UNIX, tests) it does nothing.
    """
    sock = getattr(transport, "socket", None)
    option = getattr(socket, "TCP_QUICKACK", None)
    if sock is None or option is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)
    except OSError:
        pass


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off for a session (TCP_NODELAY, as Dovecot does).

    The sessions write each answer once (Twisted gathers a reactor turn's writes,
    flow.write_now sends one reply), but two answers in a row with no input
    between them (POP3's USER and PASS pipelined, the second after a password
    check) met Nagle: the second waited for the client's delayed ACK, 40 ms
    (bench/abuse.py's good POP3 client, 2026-11-27). Without a TCP socket (UNIX,
    tests) it does nothing.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None or getattr(transport, "socket", None) is None:
        return
    try:
        set_no_delay(True)
    except OSError:
        pass


class ConnectionCounter(Counter):
    """Open connections per client address, against one listener's limit."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def opened(self, client: str) -> bool:
        """Count a new connection; False when the client is now over the limit."""
        self[client] += 1
        return self[client] <= self.limit

    def closed(self, client: str) -> None:
        self[client] -= 1
        if self[client] <= 0:
            del self[client]
