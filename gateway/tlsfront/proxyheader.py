"""PROXY protocol headers the front sends first to its backend (haproxy's proxy-protocol.txt).

Where it sits: tlsfront/relay.py writes one header on each backend connection
before any client byte, so the backend learns the client's real address and,
with v2, the TLS the client spoke to the front. The receiving side for the
gateway's own listeners is gateway/proxyproto.py (the front uses only the
kernel, so the few format constants are repeated there; the tests check that
each side reads what the other writes).

Version 2 (binary): signature, PROXY command, TCP over IPv4/IPv6, addresses,
then TLVs: PP2_TYPE_SSL (client flags, verify result, SSL_VERSION, SSL_CIPHER,
SSL_CN of a verified client certificate), PP2_TYPE_AUTHORITY (the SNI name)
and, in the custom range (0xE0-0xEF), the verified certificate's full subject
(RFC 4514). Version 1 (text) carries addresses only.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PROXY = 0x21  # version 2, command PROXY
V2_LOCAL = 0x20  # version 2, command LOCAL (the proxy's own connection)
FAMILY_TCP4, FAMILY_TCP6, FAMILY_UNSPEC = 0x11, 0x21, 0x00
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_TYPE_CLIENT_SUBJECT = 0xE0  # ours, in PP2_TYPE_MIN_CUSTOM..PP2_TYPE_MAX_CUSTOM
PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS = 0x01, 0x02, 0x04


@dataclass(frozen=True)
class TLSDetails:
    """What the client negotiated with the front."""

    version: str  # "TLSv1.3"
    cipher: str  # OpenSSL's name, "TLS_AES_256_GCM_SHA384"
    sni: str = ""
    client_subject: str = ""  # RFC 4514, only when the certificate was verified
    client_cn: str = ""


def _ip(address: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not isinstance(address, IPv4Address | IPv6Address):
        return None
    try:
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return None
    # A dual-stack listener shows IPv4 clients as ::ffff:a.b.c.d; say what they are.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def _text(value: str, limit: int = 255) -> bytes:
    return value.encode("utf-8", "replace")[:limit]


def v2_header(source: object, destination: object, tls: TLSDetails | None = None) -> bytes:
    """A v2 PROXY header for a client at source that reached the front at destination."""
    src, dst = _ip(source), _ip(destination)
    if src is None:
        family, addresses = FAMILY_UNSPEC, b""
    else:
        if dst is None or dst.version != src.version:
            dst = ipaddress.ip_address("0.0.0.0" if src.version == 4 else "::")
        family = FAMILY_TCP4 if src.version == 4 else FAMILY_TCP6
        addresses = src.packed + dst.packed + struct.pack(
            "!HH", getattr(source, "port", 0), getattr(destination, "port", 0))
    tlvs = b""
    if tls is not None:
        client = PP2_CLIENT_SSL
        sub = _tlv(PP2_SUBTYPE_SSL_VERSION, _text(tls.version))
        if tls.client_subject:
            client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
            if tls.client_cn:
                sub += _tlv(PP2_SUBTYPE_SSL_CN, _text(tls.client_cn))
        sub += _tlv(PP2_SUBTYPE_SSL_CIPHER, _text(tls.cipher))
        # verify: 0 means the client certificate (if any) was verified.
        tlvs += _tlv(PP2_TYPE_SSL, struct.pack("!BI", client, 0) + sub)
        if tls.sni:
            tlvs += _tlv(PP2_TYPE_AUTHORITY, _text(tls.sni))
        if tls.client_subject:
            tlvs += _tlv(PP2_TYPE_CLIENT_SUBJECT, _text(tls.client_subject, 4096))
    body = addresses + tlvs
    return SIGNATURE + struct.pack("!BBH", V2_PROXY, family, len(body)) + body


def v1_header(source: object, destination: object) -> bytes:
    """A v1 PROXY line: "PROXY TCP4 src dst sport dport\\r\\n", or UNKNOWN."""
    src, dst = _ip(source), _ip(destination)
    if src is None:
        return b"PROXY UNKNOWN\r\n"
    if dst is None or dst.version != src.version:
        dst = ipaddress.ip_address("0.0.0.0" if src.version == 4 else "::")
    kind = "TCP4" if src.version == 4 else "TCP6"
    return (f"PROXY {kind} {src} {dst} {getattr(source, 'port', 0)} "
            f"{getattr(destination, 'port', 0)}\r\n").encode("ascii")


def header(version: str, source: object, destination: object,
           tls: TLSDetails | None = None) -> bytes:
    """The header for a front's `proxy` setting: "v2", "v1" or "none" (no header)."""
    if version == "v2":
        return v2_header(source, destination, tls)
    if version == "v1":
        return v1_header(source, destination)
    return b""
