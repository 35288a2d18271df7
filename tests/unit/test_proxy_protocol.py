"""PROXY protocol: tlsfront's writer against haproxy's spec bytes and against the gateway's
reader (gateway/proxyproto.py), and the listener wrapper that requires a header."""

from __future__ import annotations

import struct

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gateway import proxyproto
from gateway.proxyproto import HeaderError, ProxiedFactory, parse_header, proxied_tls
from gateway.tlsfront.proxyheader import TLSDetails, v1_header, v2_header

CLIENT4 = IPv4Address("TCP", "192.0.2.10", 51000)
FRONT4 = IPv4Address("TCP", "198.51.100.1", 465)
TLS = TLSDetails(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", sni="mail.example.test",
                 client_subject="CN=Alice,O=Example", client_cn="Alice")


def test_v2_header_bytes_follow_the_spec():
    data = v2_header(CLIENT4, FRONT4, TLSDetails("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"))
    assert data[:12] == b"\r\n\r\n\x00\r\nQUIT\n"  # proxy-protocol.txt 2.2
    assert data[12] == 0x21 and data[13] == 0x11  # v2 PROXY, TCP over IPv4
    assert struct.unpack("!H", data[14:16])[0] == len(data) - 16
    assert data[16:28] == bytes([192, 0, 2, 10, 198, 51, 100, 1]) + struct.pack("!HH", 51000, 465)
    ssl = (b"\x01" + b"\x00\x00\x00\x00"  # PP2_CLIENT_SSL, verify 0
           + b"\x21\x00\x07TLSv1.2" + b"\x23\x00\x1bECDHE-RSA-AES128-GCM-SHA256")
    assert data[28:] == b"\x20" + struct.pack("!H", len(ssl)) + ssl


@pytest.mark.parametrize("source, destination", [
    (CLIENT4, FRONT4),
    (IPv6Address("TCP", "2001:db8::7", 40000), IPv6Address("TCP", "2001:db8::1", 993)),
])
def test_v2_round_trip_with_tls(source, destination):
    header, used = parse_header(v2_header(source, destination, TLS) + b"EHLO x\r\n")
    assert header.source == source and header.destination == destination
    assert header.tls == proxyproto.TLSInfo(
        version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", sni="mail.example.test",
        client_cn="Alice", client_subject="CN=Alice,O=Example", client_verified=True)
    assert header.tls.description() == "TLSv1.3 with cipher TLS_AES_128_GCM_SHA256"
    assert used == len(v2_header(source, destination, TLS))


def test_v2_ipv4_mapped_client_is_sent_as_ipv4():
    mapped = IPv6Address("TCP", "::ffff:192.0.2.10", 51000)
    header, _ = parse_header(v2_header(mapped, IPv6Address("TCP", "::ffff:198.51.100.1", 465)))
    assert header.source == CLIENT4


def test_v2_without_tls_and_unknown_source():
    header, _ = parse_header(v2_header(CLIENT4, FRONT4))
    assert header.tls is None and header.source == CLIENT4
    header, _ = parse_header(v2_header(UNIXAddress(b"/x"), FRONT4))
    assert header.source is None


def test_v1_round_trip():
    line = v1_header(CLIENT4, FRONT4)
    assert line == b"PROXY TCP4 192.0.2.10 198.51.100.1 51000 465\r\n"
    header, used = parse_header(line + b"rest")
    assert header.source == CLIENT4 and header.tls is None and used == len(line)
    six = v1_header(IPv6Address("TCP", "::1", 5), IPv6Address("TCP", "::1", 6))
    assert parse_header(six)[0].source == IPv6Address("TCP", "::1", 5)
    assert parse_header(b"PROXY UNKNOWN\r\n")[0].source is None


def test_a_header_in_pieces_needs_more_bytes_until_complete():
    for data in (v2_header(CLIENT4, FRONT4, TLS), v1_header(CLIENT4, FRONT4)):
        for cut in range(1, len(data)):
            assert parse_header(data[:cut]) is None, cut
        assert parse_header(data) is not None


@pytest.mark.parametrize("data, why", [
    (b"EHLO client\r\n", "no PROXY header"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x00", "unknown version"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x00", "unknown command"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x31\x00\x00", "unsupported address family"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0f" + bytes(12) + b"\x20\x00\x09", "truncated TLV"),
    (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x20\x00", "too long"),
    (b"PROXY TCP4 192.0.2.10 198.51.100.1 051000 465\r\n", "bad address or port"),
    (b"PROXY TCP4 2001:db8::1 198.51.100.1 1 465\r\n", "bad address or port"),
    (b"PROXY TCP4 192.0.2.10 198.51.100.1 70000 465\r\n", "bad address or port"),
    (b"PROXY TCP5 a b 1 2\r\n", "malformed"),
    (b"PROXY " + b"1" * 120, "too long"),
])
def test_malformed_headers_are_errors(data, why):
    with pytest.raises(HeaderError, match=why):
        parse_header(data)


def test_v2_local_command_claims_nothing():
    header, _ = parse_header(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00")
    assert header.source is None and header.tls is None


# --- the listener wrapper --------------------------------------------------------


class Recorder(Protocol):
    """Records what the wrapped protocol saw, including its peer at connectionMade."""

    def __init__(self):
        self.peer = None
        self.tls = None
        self.data = b""
        self.lost = False

    def connectionMade(self):
        self.peer = self.transport.getPeer()
        self.tls = proxied_tls(self.transport)
        self.transport.write(b"220 greeting\r\n")

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = True


class RecorderFactory(Factory):
    def __init__(self):
        self.built: list[Recorder] = []

    def buildProtocol(self, addr):
        proto = Recorder()
        self.built.append(proto)
        return proto


def listener(peer, trusted=("127.0.0.1/32",)):
    import ipaddress

    reactor = MemoryReactorClock()
    inner = RecorderFactory()
    factory = ProxiedFactory(inner, [ipaddress.ip_network(n) for n in trusted], 10.0, reactor)
    proto = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 1))
    if proto is not None:
        proto.makeConnection(transport)
    return reactor, inner, proto, transport


FRONT = IPv4Address("TCP", "127.0.0.1", 40000)


def test_nothing_reaches_the_wrapped_protocol_before_the_header():
    _, inner, proto, transport = listener(FRONT)
    data = v2_header(CLIENT4, FRONT4, TLS)
    proto.dataReceived(data[:20])
    assert inner.built == [] and transport.value() == b""  # no early greeting
    proto.dataReceived(data[20:] + b"EHLO client\r\n")
    [session] = inner.built
    assert session.peer == CLIENT4  # already at connectionMade
    assert session.tls.version == "TLSv1.3"
    assert session.data == b"EHLO client\r\n"
    assert transport.value() == b"220 greeting\r\n"


def test_a_connection_without_a_header_is_refused_before_a_byte_is_sent():
    _, inner, proto, transport = listener(FRONT)
    proto.dataReceived(b"EHLO client\r\n")
    assert transport.disconnected and transport.value() == b"" and inner.built == []
    proto.connectionLost(None)  # and nothing to tell the wrapped protocol


def test_a_header_that_never_comes_times_out():
    reactor, inner, proto, transport = listener(FRONT)
    proto.dataReceived(b"PROXY TCP4 ")
    reactor.advance(9.9)
    assert not transport.disconnecting
    reactor.advance(0.1)
    assert transport.disconnected and inner.built == []


def test_untrusted_tcp_sources_are_refused_and_unix_peers_allowed():
    assert listener(IPv4Address("TCP", "127.0.0.2", 40000))[2] is None
    assert listener(IPv6Address("TCP", "::1", 40000))[2] is None
    assert listener(IPv6Address("TCP", "::ffff:127.0.0.1", 40000))[2] is not None
    assert listener(UNIXAddress(None))[2] is not None


def test_the_wrapped_protocol_hears_of_the_close():
    _, inner, proto, _ = listener(FRONT)
    proto.dataReceived(v1_header(CLIENT4, FRONT4))
    proto.connectionLost(None)
    assert inner.built[0].lost and inner.built[0].tls is None
