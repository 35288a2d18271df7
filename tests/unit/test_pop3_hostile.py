"""Hostile POP3 clients (issue 11): a client that does not read is not read.

Over StringTransport (tests/unit/pop3_dialogue.py); calling the registered
producer's pauseProducing is what a full socket send buffer does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pop3_dialogue import logged_in, make_env


@pytest.fixture
def env(tmp_path: Path):
    return make_env(tmp_path)


def test_client_that_does_not_read_replies_stops_being_read(env):
    d = env()
    d.transport.producer.pauseProducing()  # the socket's send buffer is full
    assert d.transport.producerState == "paused"
    assert d.raw(b"CAPA\r\n" * 300) == b""  # nothing answered, nothing more read
    d.transport.producer.resumeProducing()  # the client read its replies
    assert d.take().count(b"IMPLEMENTATION mailgateway\r\n.\r\n") == 300
    assert d.transport.producerState == "producing"


def test_after_a_message_is_sent_an_unread_client_still_stops_being_read(env):
    d = logged_in(env)
    assert d("RETR 1").endswith(b"last line without CRLF\r\n.\r\n")
    assert d.transport.streaming  # the gate is the producer again, not the message sender
    d.transport.producer.pauseProducing()
    assert d.raw(b"NOOP\r\n" * 10) == b""
    d.transport.producer.resumeProducing()
    assert d.take() == b"+OK\r\n" * 10


def test_client_is_not_read_while_a_login_is_checked(env):
    d = env(pop3={"auth_failure_delay": 5})
    d("STLS")
    d("USER nobody@example.test")
    assert d.raw(b"PASS wrong\r\n") == b""  # the failure is answered after the delay
    assert d.transport.producerState == "producing"  # a lazy hold (flow.ReadGate) ...
    assert d.raw(b"CAPA\r\n") == b""
    assert d.transport.producerState == "paused"  # ... until input comes meanwhile
    d.clock.advance(5)
    out = d.take()
    assert out.startswith(b"-ERR") and b"+OK" in out and out.endswith(b".\r\n"), out
    assert d.transport.producerState == "producing"


def test_login_timeout_is_total_not_restarted_by_commands(env):
    d = env(pop3={"login_timeout": 60})
    for _ in range(29):
        d.clock.advance(2)
        d("CAPA")
    d.clock.advance(2)
    assert d.take() == b"-ERR No login within 60 seconds, closing connection\r\n"
    assert d.transport.disconnecting


def test_login_timeout_stops_at_login(env):
    d = logged_in(env, pop3={"login_timeout": 60})
    d.clock.advance(120)
    assert d.take() == b"" and not d.transport.disconnecting


def test_a_pipelined_flood_is_served_in_slices_between_other_clients(env):
    d = env()
    d.proto.dataReceived(b"CAPA\r\n" * 300)
    assert d.transport.value().count(b"IMPLEMENTATION mailgateway\r\n.\r\n") == 64
    assert d.take().count(b"IMPLEMENTATION mailgateway\r\n.\r\n") == 300
