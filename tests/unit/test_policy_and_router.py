"""Relay rules and routes: never an open relay."""

import ipaddress

import pytest

from gateway.accept.policy import RelayPolicy, Session
from gateway.accept.received import received_header
from gateway.errors import MailError
from gateway.resolve.router import Router


class Users:
    def exists(self, address):
        return address == "alice@example.test"


@pytest.fixture
def router():
    return Router(["Example.Test"], Users())


def test_routes(router):
    assert router.route("Alice@EXAMPLE.test").kind == "local"
    assert router.route("Alice@EXAMPLE.test").mailbox == "alice@example.test"
    remote = router.route("bob@Remote.Test")
    assert (remote.kind, remote.domain) == ("remote", "remote.test")
    with pytest.raises(MailError) as e:
        router.route("nobody@example.test")
    assert (e.value.code, e.value.enhanced) == (550, "5.1.1")


@pytest.mark.parametrize("session,allowed", [
    (Session("127.0.0.1"), False),
    (Session("::1"), False),
    (Session("198.51.100.4"), False),
    (Session("198.51.100.4", authenticated="alice@example.test"), True),
    (Session("192.0.2.9"), True),
])
def test_relay_needs_auth_or_trusted_network(router, session, allowed):
    policy = RelayPolicy(router, [ipaddress.ip_network("192.0.2.0/24")])
    if allowed:
        assert policy.check_recipient(session, "x@remote.test").kind == "remote"
    else:
        with pytest.raises(MailError) as e:
            policy.check_recipient(session, "x@remote.test")
        assert (e.value.code, e.value.enhanced) == (554, "5.7.1")
    assert policy.check_recipient(session, "alice@example.test").kind == "local"


def test_received_header_shape():
    header = received_header(helo="c.test", client_address="192.0.2.1",
                             hostname="mx.example.test", protocol="ESMTPS",
                             queue_id="ABCDEFGHJKLMNPQR", tls="TLSv1.3 with cipher X",
                             recipient="alice@example.test", now=0)
    assert header == (b"Received: from c.test ([192.0.2.1])\r\n"
                      b"\tby mx.example.test (mailgateway) with ESMTPS id ABCDEFGHJKLMNPQR"
                      b" (TLSv1.3 with cipher X)\r\n"
                      b"\tfor <alice@example.test>; Thu, 01 Jan 1970 00:00:00 GMT\r\n")


def test_a_logged_in_user_sends_only_as_their_own_addresses():
    from gateway.resolve.aliases import parse

    table, _ = parse("team: alice, carol@remote.test\nothers: bob\n", "aliases",
                     read=lambda p: "", domains=["example.test"])
    policy = RelayPolicy(Router(["example.test"], Users(), aliases=table), [],
                         submission=True)
    alice = Session("198.51.100.4", authenticated="alice@example.test")
    for sender in ("alice@example.test", "Alice@Example.test", "alice+lists@example.test",
                   "team@example.test", ""):
        policy.check_sender(alice, sender)
    for sender in ("bob@example.test", "others@example.test", "alice@remote.test",
                   "nobody@example.test"):
        with pytest.raises(MailError) as e:
            policy.check_sender(alice, sender)
        assert (e.value.code, e.value.enhanced) == (553, "5.7.1")
    lax = RelayPolicy(Router(["example.test"], Users()), [], submission=True,
                      sender_login=False)
    lax.check_sender(alice, "bob@example.test")
