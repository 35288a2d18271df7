"""SMTP and POP3 behind a proxied listener: the real client address and the front's TLS.

The header is what tlsfront writes (proxyheader.py); the listener is gateway/proxyproto.py
around the servers' own factories, as service.py wires them.
"""

from __future__ import annotations

import base64
import ipaddress

from pop3_dialogue import BOX, PASSWORD, make_env
from smtp_dialogue import FakeListener, FakeSpool, FakeUsers
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from gateway.accept.policy import RelayPolicy
from gateway.accept.smtp import SMTPFactory
from gateway.config import parse
from gateway.proxyproto import ProxiedFactory
from gateway.resolve.router import Router
from gateway.tlsfront.proxyheader import TLSDetails, v1_header, v2_header

FRONT_SIDE = IPv4Address("TCP", "127.0.0.1", 45000)  # the front's socket, as the listener sees it
FRONT = IPv4Address("TCP", "127.0.0.1", 2465)
TLS = TLSDetails(version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", sni="mail.example.test")
LOOPBACK = [ipaddress.ip_network("127.0.0.1/32")]


class Session:
    def __init__(self, factory, clock, header: bytes):
        wrapper = ProxiedFactory(factory, LOOPBACK, 10.0, clock)
        self.proto = wrapper.buildProtocol(FRONT_SIDE)
        self.transport = StringTransport(peerAddress=FRONT_SIDE, hostAddress=FRONT_SIDE)
        self.proto.makeConnection(self.transport)
        self.proto.dataReceived(header)

    def read(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    def send(self, line: bytes) -> bytes:
        self.proto.dataReceived(line + b"\r\n")
        return self.read()


def smtp_factory(**smtp):
    settings = parse({"server": {"domains": ["example.test"]}, "smtp": smtp})
    users = FakeUsers({"alice@example.test": "secret"})
    spool = FakeSpool()
    clock = MemoryReactorClock()
    factory = SMTPFactory(
        hostname="mx.example.test", domains=settings.domains, settings=settings.smtp,
        policy=RelayPolicy(Router(settings.domains, users), (), submission=True),
        spool=spool, listener=FakeListener(), users=users, tls_options=object(),
        plaintext_from_loopback=False, reactor=clock)
    return factory, spool, clock


def test_smtp_behind_the_front_sees_the_client_and_its_tls():
    factory, spool, clock = smtp_factory()
    client = IPv4Address("TCP", "192.0.2.10", 51000)
    s = Session(factory, clock, v2_header(client, FRONT, TLS))
    assert s.read().startswith(b"220 mx.example.test")
    ehlo = s.send(b"EHLO client.test")
    assert b"[192.0.2.10]" in ehlo and b"AUTH PLAIN LOGIN" in ehlo and b"STARTTLS" not in ehlo
    assert s.send(b"STARTTLS").startswith(b"503")
    plain = base64.b64encode(b"\0alice@example.test\0secret")
    assert s.send(b"AUTH PLAIN " + plain).startswith(b"235")
    assert s.send(b"MAIL FROM:<alice@example.test>").startswith(b"250")
    assert s.send(b"RCPT TO:<carol@remote.test>").startswith(b"250")  # relay after AUTH
    assert s.send(b"DATA").startswith(b"354")
    assert s.send(b"Subject: hi\r\n\r\nbody\r\n.").startswith(b"250")
    [(envelope, message)] = spool.stored
    assert envelope.client_address == "192.0.2.10"
    assert message.startswith(
        b"Received: from client.test ([192.0.2.10])\r\n\tby mx.example.test (mailgateway) "
        b"with ESMTPSA id ")
    assert b"(TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)" in message.split(b"\r\n")[1]


def test_smtp_behind_a_v1_header_is_plaintext_no_auth():
    factory, _, clock = smtp_factory()
    s = Session(factory, clock, v1_header(IPv4Address("TCP", "192.0.2.10", 1), FRONT))
    s.read()
    ehlo = s.send(b"EHLO client.test")
    assert b"[192.0.2.10]" in ehlo and b"AUTH" not in ehlo
    assert s.send(b"AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=").startswith(b"538")


def test_smtp_connection_limit_counts_real_clients_not_the_front():
    factory, _, clock = smtp_factory(max_connections_per_client=1)
    one = IPv4Address("TCP", "192.0.2.10", 1)
    assert Session(factory, clock, v2_header(one, FRONT, TLS)).read().startswith(b"220")
    other = IPv4Address("TCP", "192.0.2.11", 1)
    assert Session(factory, clock, v2_header(other, FRONT, TLS)).read().startswith(b"220")
    again = Session(factory, clock, v2_header(one, FRONT, TLS)).read()
    assert again.startswith(b"421 4.7.0")


def test_pop3_behind_the_front_is_tls_so_login_is_allowed(tmp_path):
    env = make_env(tmp_path)
    factory = env.factory()
    s = Session(factory, env.clock, v2_header(IPv4Address("TCP", "192.0.2.10", 1), FRONT, TLS))
    assert s.read().startswith(b"+OK")
    capa = s.send(b"CAPA")
    assert b"USER\r\n" in capa and b"SASL PLAIN" in capa and b"STLS" not in capa
    assert s.send(b"USER " + BOX.encode()).startswith(b"+OK")
    assert s.send(b"PASS " + PASSWORD.encode()).startswith(b"+OK Logged in")


def test_pop3_behind_a_v1_header_is_plaintext(tmp_path):
    env = make_env(tmp_path)
    s = Session(env.factory(), env.clock, v1_header(IPv4Address("TCP", "192.0.2.10", 1), FRONT))
    s.read()
    assert s.send(b"USER " + BOX.encode()).startswith(b"-ERR [AUTH]")
