"""The receiving side of the PROXY protocol, for the gateway's listeners behind a front.

Where it sits: service.py wraps the SMTP/POP3/IMAP factory of a listener
named in [proxied] (by default the unix sockets tlsfront connects to) in a
ProxiedFactory. Not a stage: like sasl.py and tls.py it is shared by
accept/ and access/, which ask proxied_tls() whether the client spoke TLS to
the front; the real client address needs nothing from them, since getPeer()
already says it.

Follows haproxy's proxy-protocol.txt (v1 text and v2 binary with TLVs; the
writer is gateway/tlsfront/proxyheader.py). Unlike twisted.protocols.haproxy,
the wrapped protocol is built and connected only once the header is read, so
its greeting, connection limits and logs see the real client. Only
configured sources may send a header: any peer on a unix socket (its file
mode is the guard) or a TCP peer in trusted_sources; anyone else, and a
missing, malformed or late header, are refused by closing the connection
before a byte is sent. A v2 LOCAL or v1 UNKNOWN header (the proxy's own
health check) leaves the session with the socket's own peer and no TLS.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

log = Logger()

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX = 107  # the longest v1 line, CRLF included
_V2_MAX = 4096  # far more than a front sends; more is refused
PP2_TYPE_AUTHORITY, PP2_TYPE_SSL, PP2_TYPE_CLIENT_SUBJECT = 0x02, 0x20, 0xE0
PP2_SUBTYPE_SSL_VERSION, PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_CIPHER = 0x21, 0x22, 0x23
PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS = 0x01, 0x02, 0x04


class HeaderError(ValueError):
    """Not a valid PROXY header; the message says why."""


@dataclass(frozen=True)
class TLSInfo:
    """The TLS the client spoke to the front (PP2_TYPE_SSL and friends)."""

    version: str
    cipher: str
    sni: str = ""
    client_cn: str = ""
    client_subject: str = ""
    client_verified: bool = False

    def description(self) -> str:
        """"TLSv1.3 with cipher X", as accept/smtp.py writes it in the Received header."""
        return f"{self.version} with cipher {self.cipher}" if self.cipher else self.version


@dataclass(frozen=True)
class ProxyHeader:
    source: IPv4Address | IPv6Address | None  # None: UNKNOWN/UNSPEC, use the socket's peer
    destination: IPv4Address | IPv6Address | None
    tls: TLSInfo | None = None
    version: int = 2


def _address(family: str, host: str, port: int) -> IPv4Address | IPv6Address:
    return (IPv4Address if family == "4" else IPv6Address)("TCP", host, port)


def _parse_v1(line: bytes) -> ProxyHeader:
    parts = line.decode("ascii", "replace").split(" ")
    if parts[:2] == ["PROXY", "UNKNOWN"]:
        return ProxyHeader(None, None, version=1)
    if len(parts) != 6 or parts[0] != "PROXY" or parts[1] not in ("TCP4", "TCP6"):
        raise HeaderError("malformed v1 header")
    family = parts[1][-1]
    try:
        src, dst = ipaddress.ip_address(parts[2]), ipaddress.ip_address(parts[3])
        ports = [int(p) for p in parts[4:]]
    except ValueError:
        raise HeaderError("bad address or port in v1 header") from None
    if src.version != int(family) or dst.version != int(family) or any(
            not 0 <= p <= 65535 or str(p) != s for p, s in zip(ports, parts[4:], strict=True)):
        raise HeaderError("bad address or port in v1 header")
    return ProxyHeader(_address(family, str(src), ports[0]), _address(family, str(dst), ports[1]),
                       version=1)


def _tlvs(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(data):
        if i + 3 > len(data):
            raise HeaderError("truncated TLV")
        kind, length = struct.unpack_from("!BH", data, i)
        if i + 3 + length > len(data):
            raise HeaderError("truncated TLV")
        out.append((kind, data[i + 3:i + 3 + length]))
        i += 3 + length
    return out


def _tls(tlvs: list[tuple[int, bytes]]) -> TLSInfo | None:
    values = dict(tlvs)
    ssl = values.get(PP2_TYPE_SSL)
    if ssl is None:
        return None
    if len(ssl) < 5:
        raise HeaderError("truncated PP2_TYPE_SSL")
    client, verify = struct.unpack_from("!BI", ssl)
    if not client & PP2_CLIENT_SSL:
        return None
    sub = dict(_tlvs(ssl[5:]))

    def text(v: bytes | None) -> str:
        return v.decode("utf-8", "replace") if v else ""

    verified = bool(client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS)) and verify == 0
    return TLSInfo(version=text(sub.get(PP2_SUBTYPE_SSL_VERSION)),
                   cipher=text(sub.get(PP2_SUBTYPE_SSL_CIPHER)),
                   sni=text(values.get(PP2_TYPE_AUTHORITY)),
                   client_cn=text(sub.get(PP2_SUBTYPE_SSL_CN)) if verified else "",
                   client_subject=text(values.get(PP2_TYPE_CLIENT_SUBJECT)) if verified else "",
                   client_verified=verified)


def _parse_v2(data: bytes, length: int) -> ProxyHeader:
    ver_cmd, family = data[12], data[13]
    if ver_cmd >> 4 != 2:
        raise HeaderError(f"unknown version {ver_cmd >> 4}")
    if ver_cmd & 0xF > 1:
        raise HeaderError(f"unknown command {ver_cmd & 0xF}")
    body = data[16:16 + length]
    if ver_cmd & 0xF == 0:
        # LOCAL: the proxy's own connection (a health check); the spec says use the
        # socket's endpoints and ignore the rest, so no address and no TLS are claimed.
        return ProxyHeader(None, None, version=2)
    if family == 0x11 and length >= 12:
        src, dst = ipaddress.IPv4Address(body[:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack_from("!HH", body, 8)
        source, destination = _address("4", str(src), sport), _address("4", str(dst), dport)
        rest = body[12:]
    elif family == 0x21 and length >= 36:
        src, dst = ipaddress.IPv6Address(body[:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack_from("!HH", body, 32)
        source, destination = _address("6", str(src), sport), _address("6", str(dst), dport)
        rest = body[36:]
    elif family == 0x00:
        source = destination = None
        rest = body
    else:
        raise HeaderError(f"unsupported address family 0x{family:02x}")
    return ProxyHeader(source, destination, tls=_tls(_tlvs(rest)), version=2)


def parse_header(data: bytes) -> tuple[ProxyHeader, int] | None:
    """(header, bytes used) from the start of data; None while incomplete; HeaderError if bad."""
    if data[:12] == SIGNATURE[:len(data[:12])] and data[:1] == b"\r":
        if len(data) < 16:
            return None
        length = struct.unpack_from("!H", data, 14)[0]
        if 16 + length > _V2_MAX:
            raise HeaderError("v2 header too long")
        if len(data) < 16 + length:
            return None
        return _parse_v2(data, length), 16 + length
    if data[:6] != b"PROXY "[:len(data[:6])]:
        raise HeaderError("no PROXY header")
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise HeaderError("v1 header too long")
        return None
    return _parse_v1(data[:end]), end + 2


def proxied_tls(transport: Any) -> TLSInfo | None:
    """The TLS the client spoke to the front, when transport is a proxied connection."""
    found = getattr(transport, "proxy_header", None)
    return found.tls if isinstance(found, ProxyHeader) else None


class ProxiedProtocol(ProtocolWrapper):
    """Reads the header, then builds and connects the wrapped protocol, as its transport."""

    factory: ProxiedFactory

    def __init__(self, factory: ProxiedFactory):
        super().__init__(factory, Protocol())  # a placeholder until the header is read
        self.proxy_header: ProxyHeader | None = None
        self._buffer = b""
        self._timer: Any = None
        self._started = False

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self._timer = self.factory.reactor.callLater(self.factory.header_timeout, self._late)

    def _refuse(self, why: str) -> None:
        log.info("proxied listener: {peer} refused: {why}", peer=self._peer_text(), why=why)
        self._buffer = b""
        self.transport.abortConnection()

    def _peer_text(self) -> str:
        peer = self.transport.getPeer()
        return f"{peer.host}:{peer.port}" if hasattr(peer, "host") else "unix socket peer"

    def _late(self) -> None:
        self._timer = None
        self._refuse("no PROXY header in time")

    def dataReceived(self, data: bytes) -> None:
        if self._started:
            self.wrappedProtocol.dataReceived(data)
            return
        self._buffer += data
        try:
            parsed = parse_header(self._buffer)
        except HeaderError as e:
            return self._refuse(str(e))
        if parsed is None:
            return
        self.proxy_header, used = parsed
        rest, self._buffer = self._buffer[used:], b""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        wrapped = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if wrapped is None:
            self.transport.loseConnection()
            return
        self.wrappedProtocol = wrapped
        self._started = True
        self.factory.registerProtocol(self)
        wrapped.makeConnection(self)
        if rest and self.connected and not self.disconnecting:
            wrapped.dataReceived(rest)

    def getPeer(self) -> Any:
        if self.proxy_header is not None and self.proxy_header.source is not None:
            return self.proxy_header.source
        return self.transport.getPeer()

    def getHost(self) -> Any:
        if self.proxy_header is not None and self.proxy_header.destination is not None:
            return self.proxy_header.destination
        return self.transport.getHost()

    def logPrefix(self) -> str:
        return "ProxiedProtocol"

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self._started:
            super().connectionLost(reason)


class ProxiedFactory(WrappingFactory):
    """A listener that requires a PROXY header from a trusted source before anything else."""

    def __init__(self, wrapped: Any, trusted_sources: Any, header_timeout: float, reactor: Any):
        super().__init__(wrapped)
        self.trusted = tuple(trusted_sources)
        self.header_timeout = header_timeout
        self.reactor = reactor

    def trusted_source(self, addr: Any) -> bool:
        if not isinstance(addr, IPv4Address | IPv6Address):
            return True  # a unix socket: its file mode decides who may connect
        try:
            ip = ipaddress.ip_address(addr.host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted)

    def buildProtocol(self, addr: Any) -> ProxiedProtocol | None:
        if not self.trusted_source(addr):
            log.info("proxied listener: {host} refused: not in [proxied] trusted_sources",
                     host=getattr(addr, "host", addr))
            return None
        return ProxiedProtocol(self)
