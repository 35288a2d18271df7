"""connection.no_delay: every session's TCP socket has Nagle's algorithm off, so an
answer written after another (POP3's PASS after USER, pipelined) is not held for the
client's delayed ACK; a transport without a TCP socket is left alone."""

from __future__ import annotations

from twisted.internet import protocol
from twisted.internet.testing import StringTransport

from gateway import connection
from gateway.accept.smtp import SMTPServer
from gateway.access.imap.server import IMAPServer
from gateway.access.pop3 import POP3Server


class TCPLike(StringTransport):
    socket = object()

    def __init__(self):
        super().__init__()
        self.no_delay = []

    def setTcpNoDelay(self, enabled):
        self.no_delay.append(enabled)


def test_a_tcp_transport_gets_no_delay_and_others_are_left_alone():
    tcp = TCPLike()
    connection.no_delay(tcp)
    assert tcp.no_delay == [True]
    connection.no_delay(StringTransport())  # no socket, no setTcpNoDelay: nothing to do


def test_every_session_kind_asks_for_it_first(monkeypatch):
    asked = []
    monkeypatch.setattr(connection, "no_delay", asked.append)

    for kind in (SMTPServer, POP3Server, IMAPServer):
        session = kind.__new__(kind)
        session.transport = object()
        session.factory = protocol.Factory()
        # Only its first step matters here: the rest needs a whole factory.
        try:
            kind.connectionMade(session)
        except Exception:  # noqa: BLE001 (the half-built session fails after the call)
            pass
        assert asked and asked[-1] is session.transport, kind.__name__
        asked.clear()
