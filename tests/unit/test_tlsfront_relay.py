"""tlsfront's relay: the PROXY header, bytes both ways, flow control, closing, timeouts,
limits, a backend that is down, and the one log line per connection (task.Clock time)."""

from __future__ import annotations

import pytest
import trustme
from tlsfront_harness import Client, Harness, front_settings, write_cert
from twisted.internet import error
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from gateway.proxyproto import parse_header
from gateway.tlsfront.relay import unavailable_greeting


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def make(ca, tmp_path):
    cert = write_cert(ca, tmp_path, "main", "mail.example.test")

    def make(**overrides) -> Harness:
        return Harness(front_settings([cert], **overrides))

    return make


def connected(harness: Harness, ca, port: int = 40000, peer: str = "127.0.0.2"):
    """A client through the handshake, and the backend connection it caused."""
    conn = harness.connect(Client(ca, "mail.example.test"), peer=peer, port=port)
    conn.pump()
    assert conn.client.done, conn.client.error
    backend_proto, backend = harness.backend.accept()
    return conn, backend_proto, backend


def lines(logs) -> list[str]:
    return [formatEvent(e) for e in logs if "tlsfront" in formatEvent(e)]


def test_v2_header_comes_first_and_tells_address_and_tls(make, ca):
    harness = make()
    conn = harness.connect(Client(ca, "mail.example.test"), peer="127.0.0.2", port=41234)
    conn.pump()
    conn.send(b"EHLO client.example\r\n")  # before the backend answers: held, then sent
    _, backend = harness.backend.accept()
    header, used = parse_header(backend.value())
    assert (header.source.host, header.source.port) == ("127.0.0.2", 41234)
    assert (header.destination.host, header.destination.port) == ("127.0.0.1", 2465)
    assert header.tls.version == conn.client.obj.version()
    assert header.tls.cipher == conn.client.obj.cipher()[0]
    assert header.tls.sni == "mail.example.test"
    assert backend.value()[used:] == b"EHLO client.example\r\n"


@pytest.mark.parametrize("proxy, first", [
    ("v1", b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 2465\r\n"), ("none", b"")])
def test_v1_and_no_header(make, ca, proxy, first):
    conn, _, backend = connected(make(proxy=proxy), ca)
    conn.send(b"hello")
    assert backend.value() == first + b"hello"


def test_bytes_flow_both_ways_and_are_counted_in_the_log_line(make, ca):
    harness = make()
    with capturedLogs() as logs:
        conn, backend_proto, backend = connected(harness, ca)
        header_size = len(backend.value())
        backend_proto.dataReceived(b"220 ready\r\n")
        conn.pump()
        conn.send(b"QUIT\r\n")
        backend_proto.dataReceived(b"221 bye\r\n")
        conn.pump()
        assert conn.client.received == b"220 ready\r\n221 bye\r\n"
        assert backend.value()[header_size:] == b"QUIT\r\n"
        conn.lose()
        assert backend.disconnecting and not backend.disconnected  # a FIN, not a reset
        backend_proto.connectionLost(Failure(error.ConnectionDone()))
    [line] = lines(logs)
    assert "client=127.0.0.2:40000 sni=mail.example.test tls=TLSv1.3" in line
    assert "in=6 out=20 " in line and "outcome=closed by client" in line
    assert harness.factory.total == 0 and not harness.factory.connections


def test_early_bytes_are_bounded_then_the_client_is_paused(make, ca):
    harness = make(buffer_size=1024)
    conn = harness.connect(Client(ca, "mail.example.test"))
    conn.pump()
    conn.send(b"x" * 4000)
    assert conn.tcp.producerState == "paused"
    _, backend = harness.backend.accept()
    _, used = parse_header(backend.value())
    assert backend.value()[used:] == b"x" * 4000
    assert conn.tcp.producerState == "producing"


def test_a_slow_reader_on_either_side_pauses_the_other(make, ca):
    conn, _, backend = connected(make(), ca)
    # The backend's send buffer is full: stop reading the client.
    backend.producer.pauseProducing()
    assert conn.tcp.producerState == "paused"
    backend.producer.resumeProducing()
    assert conn.tcp.producerState == "producing"
    # The client's is full: stop reading the backend.
    conn.tcp.producer.pauseProducing()
    assert backend.producerState == "paused"
    conn.tcp.producer.resumeProducing()
    assert backend.producerState == "producing"


def test_backend_half_close_ends_the_client_side_cleanly_while_it_may_still_send(make, ca):
    conn, backend_proto, backend = connected(make(), ca)
    backend_proto.dataReceived(b"last words\r\n")
    backend_proto.readConnectionLost()
    conn.pump()
    assert conn.client.received == b"last words\r\n" and conn.client.closed
    conn.send(b"still talking\r\n")
    assert backend.value().endswith(b"still talking\r\n")


def test_client_reset_aborts_the_backend(make, ca):
    conn, _, backend = connected(make(), ca)
    conn.lose(error.ConnectionLost("Connection reset by peer"))
    assert backend.disconnected


def test_bad_tls_from_the_client_after_the_handshake_aborts_both_sides(make, ca):
    harness = make()
    with capturedLogs() as logs:
        conn, backend_proto, backend = connected(harness, ca)
        conn.proto.dataReceived(b"\x17\x03\x03\x00\x08not tls!")  # an unreadable record
        assert conn.tcp.disconnected
        backend_proto.dataReceived(b"220 late\r\n")  # dropped, not an error
        conn.lose(error.ConnectionAborted())
        assert backend.disconnected
        backend_proto.connectionLost(Failure(error.ConnectionAborted()))
    assert "outcome=reset by client: " in lines(logs)[0]


def test_backend_reset_aborts_the_client(make, ca):
    harness = make()
    with capturedLogs() as logs:
        conn, backend_proto, _ = connected(harness, ca)
        backend_proto.connectionLost(Failure(error.ConnectionLost("reset")))
        assert conn.tcp.disconnected
        conn.lose(error.ConnectionAborted())
    assert "outcome=reset by backend" in lines(logs)[0]


@pytest.mark.parametrize("protocol, greeting", [
    ("smtp", b"421 4.3.2 mx.example.test Service not available, closing transmission "
             b"channel\r\n"),
    ("pop3", b"-ERR [SYS/TEMP] Service not available\r\n"),
    ("imap", b"* BYE [UNAVAILABLE] Service not available\r\n"),
    ("", b""),
])
def test_a_backend_that_is_down_gets_the_client_a_greeting_and_a_clean_close(
        make, ca, protocol, greeting):
    harness = make(protocol=protocol, hostname="mx.example.test")
    with capturedLogs() as logs:
        conn = harness.connect(Client(ca, "mail.example.test"))
        conn.pump()
        harness.backend.refuse()
        conn.pump()
        assert conn.client.received == greeting
        assert conn.client.closed  # TLS close_notify, then the TCP close
        conn.finish_close()
    assert "outcome=backend unavailable: Connection was refused" in lines(logs)[0]
    assert greeting == unavailable_greeting(protocol, "mx.example.test")


def test_connect_timeout(make, ca):
    harness = make(protocol="smtp", connect_timeout=10)
    with capturedLogs() as logs:
        conn = harness.connect(Client(ca, "mail.example.test"))
        conn.pump()
        harness.reactor.advance(9.9)
        assert conn.client.received == b""
        harness.reactor.advance(0.1)
        conn.pump()
        assert conn.client.received.startswith(b"421 4.3.2 ")
        conn.finish_close()
    assert "outcome=backend unavailable: connect timeout" in lines(logs)[0]


def test_handshake_timeout(make, ca):
    harness = make(handshake_timeout=30)
    with capturedLogs() as logs:
        conn = harness.connect(Client(ca, "mail.example.test"))  # and it says nothing
        harness.reactor.advance(29)
        assert not conn.tcp.disconnecting
        harness.reactor.advance(1)
        assert conn.tcp.disconnected  # aborted
        conn.lose(error.ConnectionAborted())
    assert "outcome=handshake timeout" in lines(logs)[0]
    assert harness.backend.attempts == []


def test_idle_timeout_counts_from_the_last_byte_either_way(make, ca):
    harness = make(idle_timeout=100)
    with capturedLogs() as logs:
        conn, backend_proto, backend = connected(harness, ca)
        harness.reactor.advance(60)
        backend_proto.dataReceived(b"* OK\r\n")
        harness.reactor.advance(60)
        conn.pump()
        assert not backend.disconnecting and not conn.client.closed
        harness.reactor.advance(40)
        conn.pump()
        assert backend.disconnecting and conn.client.closed
        conn.finish_close()
        backend_proto.connectionLost(Failure(error.ConnectionDone()))
    assert "outcome=idle timeout" in lines(logs)[0]


def test_close_timeout_aborts_a_client_that_never_finishes_closing(make, ca):
    harness = make(close_timeout=30)
    conn, backend_proto, _ = connected(harness, ca)
    backend_proto.readConnectionLost()
    conn.pump()
    assert conn.client.closed and not conn.tcp.disconnected
    harness.reactor.advance(30)
    assert conn.tcp.disconnected


def test_limit_per_client_address(make, ca):
    harness = make(max_connections_per_client=2, max_handshakes_per_second=100)
    first = harness.connect(Client(ca, "mail.example.test"), port=1)
    harness.connect(Client(ca, "mail.example.test"), port=2)
    with capturedLogs() as logs:
        third = harness.connect(Client(ca, "mail.example.test"), port=3)
    assert third.proto is None  # Twisted closes the socket at once
    assert "refused: max_connections_per_client (2) reached" in lines(logs)[0]
    assert harness.connect(Client(ca, "mail.example.test"), peer="127.0.0.3").proto is not None
    first.lose()
    assert harness.connect(Client(ca, "mail.example.test"), port=4).proto is not None


def test_limit_in_all(make, ca):
    harness = make(max_connections=2, max_handshakes_per_second=100)
    harness.connect(Client(ca, "a"), peer="127.0.0.2")
    harness.connect(Client(ca, "a"), peer="127.0.0.3")
    with capturedLogs() as logs:
        assert harness.connect(Client(ca, "a"), peer="127.0.0.4").proto is None
    assert "max_connections (2) reached" in lines(logs)[0]


def test_limit_of_new_handshakes_per_second_per_address(make, ca):
    harness = make(max_handshakes_per_second=3)
    for port in range(3):
        conn = harness.connect(Client(ca, "a"), port=port)
        assert conn.proto is not None
        conn.lose()
    assert harness.connect(Client(ca, "a"), port=10).proto is None
    assert harness.connect(Client(ca, "a"), peer="127.0.0.3").proto is not None
    harness.reactor.advance(1 / 3)
    assert harness.connect(Client(ca, "a"), port=11).proto is not None
    assert harness.connect(Client(ca, "a"), port=12).proto is None
