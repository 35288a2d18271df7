"""gateway/flow.write_now: a reply goes out at once when nothing waits before it,
and through the transport's buffer otherwise (order, back-pressure, errors kept)."""

from __future__ import annotations

import errno
import os

from fake_socket import FakeSocket, tcp_transport
from twisted.internet.testing import StringTransport

from gateway import filesend, flow


def test_sent_at_once_without_asking_the_reactor():
    sock = FakeSocket()
    transport, reactor = tcp_transport(sock)
    flow.write_now(transport, b"250 2.0.0 Ok\r\n")
    assert sock.sent == [b"250 2.0.0 Ok\r\n"]
    assert transport._tempDataBuffer == [] and transport.dataBuffer == b""
    assert transport not in reactor.getWriters()  # no epoll round trip


def test_what_the_socket_does_not_take_waits_in_the_buffer():
    sock = FakeSocket(room=4)
    transport, reactor = tcp_transport(sock)
    flow.write_now(transport, b"250 2.0.0 Ok\r\n")
    assert sock.sent == [b"250 "]
    assert b"".join(transport._tempDataBuffer) == b"2.0.0 Ok\r\n"
    assert transport in reactor.getWriters()
    # A later reply must not overtake it: it queues behind, whatever the socket says.
    sock.room = 100
    flow.write_now(transport, b"221 2.0.0 Bye\r\n")
    assert sock.sent == [b"250 "]
    transport.doWrite()
    assert b"".join(sock.sent) == b"250 2.0.0 Ok\r\n221 2.0.0 Bye\r\n"


def test_a_full_socket_leaves_it_all_to_the_transport():
    sock = FakeSocket(room=0)
    transport, reactor = tcp_transport(sock)
    flow.write_now(transport, b"354 go ahead\r\n")
    assert b"".join(transport._tempDataBuffer) == b"354 go ahead\r\n"
    assert transport in reactor.getWriters()


def test_a_broken_connection_is_found_by_twisteds_own_write():
    sock = FakeSocket(error=errno.EPIPE)
    transport, _ = tcp_transport(sock)
    flow.write_now(transport, b"250 ok\r\n")
    assert b"".join(transport._tempDataBuffer) == b"250 ok\r\n"


def test_closing_and_tls_transports_keep_twisteds_path():
    sock = FakeSocket()
    transport, _ = tcp_transport(sock)
    transport.disconnecting = True
    flow.write_now(transport, b"221 bye\r\n")
    assert sock.sent == [] and transport._tempDataBuffer == [b"221 bye\r\n"]

    sock = FakeSocket()
    transport, _ = tcp_transport(sock)
    transport.abortConnection()  # Twisted drops what is written after an abort
    flow.write_now(transport, b"421 too much\r\n")
    assert sock.sent == []

    sock = FakeSocket()
    transport, _ = tcp_transport(sock)
    transport.TLS = True  # after STARTTLS the bytes must go through the TLS layer

    class Layer:
        written: list[bytes] = []

        def write(self, data):
            self.written.append(data)

    transport.protocol = Layer()
    flow.write_now(transport, b"250 ok\r\n")
    assert sock.sent == [] and Layer.written == [b"250 ok\r\n"]


def test_other_transports_are_written_as_before():
    transport = StringTransport()
    flow.write_now(transport, b"250 ok\r\n")
    assert transport.value() == b"250 ok\r\n"


def test_a_twisted_without_these_buffer_names_writes_the_usual_way():
    # write_now reads tcp.Server's private buffer attributes; a Twisted release that
    # renamed them must get transport.write, never a send that could overtake it.
    sock = FakeSocket()
    transport, reactor = tcp_transport(sock)
    del transport._tempDataBuffer  # an instance attribute made by FileDescriptor
    written = []
    transport.write = written.append
    flow.write_now(transport, b"250 2.0.0 Ok\r\n")
    assert written == [b"250 2.0.0 Ok\r\n"] and sock.sent == []


def test_a_connection_that_sent_a_file_is_written_at_once_again(tmp_path):
    # filesend.send() turns the connection into a SendfileServer for good: once its
    # files are out, a reply must still go at once; while one waits, behind it.
    sock = FakeSocket()
    transport, reactor = tcp_transport(sock)
    transport.__class__ = filesend.SendfileServer
    flow.write_now(transport, b"a OK FETCH completed\r\n")
    assert sock.sent == [b"a OK FETCH completed\r\n"]
    assert transport not in reactor.getWriters()

    path = tmp_path / "message"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    transport.write_file(filesend.FileRange(fd, 0, 100))
    flow.write_now(transport, b"b OK FETCH completed\r\n")
    assert sock.sent == [b"a OK FETCH completed\r\n"]  # not ahead of the file
    assert list(transport._queue)[-1] == b"b OK FETCH completed\r\n"
    transport._queue[0].close()
