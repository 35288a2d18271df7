"""gateway/filesend: a client on this host gets file ranges copied through a buffer
(pread, send) instead of by sendfile; same_host says which clients those are."""

from __future__ import annotations

import os

import pytest
from fake_socket import FakeSocket, tcp_transport
from twisted.internet import main
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.testing import StringTransport

from gateway import filesend


class CountingSocket(FakeSocket):
    """A FakeSocket that counts every send asked of it, refused ones too; it has no
    fileno(), so a sendfile(2) on it fails the test."""

    calls = 0

    def send(self, data) -> int:
        self.calls += 1
        return super().send(data)


def open_range(tmp_path, data: bytes, count: int | None = None) -> filesend.FileRange:
    path = tmp_path / "message"
    path.write_bytes(data)
    return filesend.FileRange(os.open(path, os.O_RDONLY), 0,
                              len(data) if count is None else count)


def drain(transport) -> None:
    """doWrite as the reactor calls it, until everything queued is out."""
    for _ in range(100):
        if transport._queue is None:
            return
        assert transport.doWrite() is None
    raise AssertionError("still queued after 100 doWrites")


def test_a_range_is_copied_in_order_with_the_bytes_around_it(tmp_path):
    data = os.urandom(3 * filesend.COPY_CHUNK + 1234)
    sock = CountingSocket(room=1 << 30)
    transport, _ = tcp_transport(sock)
    filesend.send(transport, [b"* 1 FETCH (BODY[] {%d}\r\n" % len(data),
                              open_range(tmp_path, data), b")\r\n"], copy=True)
    drain(transport)
    assert b"".join(sock.sent) == b"* 1 FETCH (BODY[] {%d}\r\n" % len(data) + data + b")\r\n"
    assert max(len(chunk) for chunk in sock.sent) == filesend.COPY_CHUNK


def test_a_full_socket_ends_the_write_and_the_rest_follows(tmp_path):
    data = os.urandom(2 * filesend.COPY_CHUNK)
    sock = CountingSocket(room=filesend.COPY_CHUNK + 1000)
    transport, reactor = tcp_transport(sock)
    filesend.send(transport, [open_range(tmp_path, data)], copy=True)
    assert transport.doWrite() is None
    # The socket took less than was read: no second read and send for nothing.
    assert sock.calls == 2 and b"".join(sock.sent) == data[:filesend.COPY_CHUNK + 1000]
    assert transport in reactor.getWriters()
    sock.room = 1 << 30  # the client read: the socket is writable again
    drain(transport)
    assert b"".join(sock.sent) == data


def test_a_file_shorter_than_announced_breaks_the_connection(tmp_path):
    sock = CountingSocket(room=1 << 30)
    transport, _ = tcp_transport(sock)
    filesend.send(transport, [open_range(tmp_path, b"x" * 100, count=500)], copy=True)
    assert transport.doWrite() is main.CONNECTION_LOST


def test_without_copy_the_range_goes_by_sendfile(tmp_path):
    sock = CountingSocket(room=1 << 30)
    transport, _ = tcp_transport(sock)
    filesend.send(transport, [open_range(tmp_path, b"x" * 100)])
    with pytest.raises(AttributeError, match="fileno"):  # sendfile(2) asked for the socket
        transport.doWrite()
    assert sock.calls == 0


@pytest.mark.parametrize("peer, host, same", [
    (IPv4Address("TCP", "127.0.0.1", 50000), IPv4Address("TCP", "127.0.0.1", 143), True),
    (IPv4Address("TCP", "127.0.0.2", 50000), IPv4Address("TCP", "127.0.0.1", 143), True),
    (IPv6Address("TCP", "::1", 50000), IPv6Address("TCP", "::1", 143), True),
    (IPv6Address("TCP", "::ffff:127.0.0.1", 50000), IPv6Address("TCP", "::", 143), True),
    # The host's own public address, from the host itself.
    (IPv4Address("TCP", "192.0.2.5", 50000), IPv4Address("TCP", "192.0.2.5", 143), True),
    (IPv6Address("TCP", "::ffff:192.0.2.5", 50000), IPv4Address("TCP", "192.0.2.5", 143),
     True),
    (IPv4Address("TCP", "192.0.2.9", 50000), IPv4Address("TCP", "192.0.2.5", 143), False),
    (IPv6Address("TCP", "2001:db8::9", 50000), IPv6Address("TCP", "2001:db8::5", 143), False),
    (UNIXAddress(None), UNIXAddress("/run/imap.sock"), False),
])
def test_same_host(peer, host, same):
    transport = StringTransport(hostAddress=host, peerAddress=peer)
    assert filesend.same_host(transport) is same
