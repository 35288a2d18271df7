"""access/pop3.py driven over StringTransport and a fake clock: no sockets, no reactor."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from pop3_dialogue import (
    BOX,
    MSG1,
    MSG2,
    PASSWORD,
    TLS_OPTIONS,
    SSLTransport,
    capa,
    logged_in,
    make_env,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from gateway.access.auth import UserDirectory, set_password


@pytest.fixture
def env(tmp_path: Path):
    return make_env(tmp_path)


def test_greeting_has_no_apop_banner(env):
    d = env()
    assert d.greeting == b"+OK mail.example.test POP3 server ready\r\n"


def test_capa_in_plaintext_offers_stls_but_no_login(env):
    d = env()
    assert capa(d) == [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                       b"STLS", b"IMPLEMENTATION mailgateway"]


def test_capa_after_stls_offers_login_and_no_stls(env):
    d = env()
    assert d("STLS") == b"+OK Begin TLS negotiation\r\n"
    assert d.transport.tls_started_with is TLS_OPTIONS
    assert capa(d) == [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                       b"USER", b"SASL PLAIN", b"IMPLEMENTATION mailgateway"]
    assert d("STLS", b"-ERR") == b"-ERR Already using TLS\r\n"


def test_capa_without_tls_options_has_no_stls(env):
    d = env(tls_options=None)
    assert b"STLS" not in capa(d)
    assert d("STLS", b"-ERR") == b"-ERR STLS not available\r\n"
    assert d("USER " + BOX, b"-ERR") == b"-ERR [AUTH] Login not allowed on this connection\r\n"


def test_login_refused_in_plaintext_from_a_remote_peer(env):
    d = env(plaintext_from_loopback=True)
    assert d("USER " + BOX, b"-ERR") == b"-ERR [AUTH] TLS required: use STLS\r\n"
    assert d("PASS " + PASSWORD, b"-ERR") == b"-ERR USER first\r\n"
    assert d("AUTH PLAIN", b"-ERR") == b"-ERR [AUTH] TLS required: use STLS\r\n"
    assert d.proto.factory.users.calls == []


@pytest.mark.parametrize("peer", ["127.0.0.1", "::1", "::ffff:127.0.0.1"])
def test_login_allowed_from_loopback_when_configured(env, peer):
    d = env(peer=peer, plaintext_from_loopback=True)
    assert b"USER" in capa(d)
    assert d.login() == b"+OK Logged in, 2 messages (%d octets)\r\n" % (len(MSG1) + len(MSG2))


def test_loopback_without_the_setting_is_refused(env):
    d = env(peer="127.0.0.1")
    assert d("USER " + BOX, b"-ERR") == b"-ERR [AUTH] TLS required: use STLS\r\n"


def test_implicit_tls_transport_allows_login(env):
    d = env(transport_class=SSLTransport)
    assert b"STLS" not in capa(d)
    d.login()


def test_user_pass_wrong_password_fails_after_a_delay(env):
    d = env()
    d("STLS")
    d("USER " + BOX)
    assert d("PASS wrong password", b"") == b""  # nothing before the delay
    assert d.proto.factory.users.calls == [(BOX, "wrong password")]
    # Commands pipelined behind the failed PASS wait for its answer.
    assert d.raw(b"NOOP\r\n") == b""
    d.clock.advance(1.0)
    assert d.take() == (b"-ERR [AUTH] Authentication failed\r\n"
                        b"-ERR Command not valid in this state\r\n")


def test_third_failure_closes_the_connection(env):
    d = env()
    d("STLS")
    for _ in range(3):
        d("USER " + BOX)
        d("PASS nope", b"")
        d.clock.advance(1.0)
        assert d.take() == b"-ERR [AUTH] Authentication failed\r\n"
    assert d.transport.disconnecting


def test_password_may_contain_spaces(env):
    d = env()
    d("STLS")
    assert d.login().startswith(b"+OK Logged in")
    assert d.proto.factory.users.calls == [(BOX, PASSWORD)]


def plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def test_auth_plain_with_initial_response(env):
    d = env()
    d("STLS")
    assert d(b"AUTH PLAIN " + plain("", BOX, PASSWORD)).startswith(b"+OK Logged in, 2 messages")


def test_auth_plain_with_continuation(env):
    d = env()
    d("STLS")
    assert d("AUTH PLAIN", b"+ ") == b"+ \r\n"
    assert d(plain(BOX, BOX, PASSWORD)).startswith(b"+OK Logged in")


def test_auth_plain_failures(env):
    d = env()
    d("STLS")
    assert d("AUTH") == b"+OK\r\nPLAIN\r\n.\r\n"
    assert d("AUTH CRAM-MD5", b"-ERR") == b"-ERR Unsupported SASL mechanism\r\n"
    d("AUTH PLAIN", b"+ ")
    assert d("*", b"-ERR") == b"-ERR Authentication cancelled\r\n"
    assert d("AUTH PLAIN !!!", b"-ERR") == b"-ERR Invalid base64 data\r\n"
    d(b"AUTH PLAIN " + plain("", BOX, "wrong"), b"")
    d.clock.advance(1.0)
    assert d.take() == b"-ERR [AUTH] Authentication failed\r\n"
    # Authorizing as another user is not offered, even with the right password.
    d(b"AUTH PLAIN " + plain("root@example.test", BOX, PASSWORD), b"")
    d.clock.advance(1.0)
    assert d.take() == b"-ERR [AUTH] Authentication failed\r\n"


def test_real_user_directory(env, tmp_path):
    users_file = tmp_path / "users"
    set_password(users_file, BOX, PASSWORD)

    class InlineReactor(MemoryReactorClock):
        """Runs the thread pool's work inline so scrypt finishes within the test."""

        def getThreadPool(self):
            return self

        def callInThreadWithCallback(self, on_result, f, *args, **kw):
            try:
                on_result(True, f(*args, **kw))
            except Exception as e:
                on_result(False, Failure(e))

        def callFromThread(self, f, *args, **kw):
            f(*args, **kw)

    d = env(users=UserDirectory(users_file, InlineReactor()))
    d("STLS")
    d("USER Alice@EXAMPLE.test")
    assert d("PASS " + PASSWORD).startswith(b"+OK Logged in, 2 messages")
    assert d.proto._address == BOX


def test_stat_list_uidl(env):
    d = logged_in(env)
    assert d("STAT") == b"+OK 2 %d\r\n" % (len(MSG1) + len(MSG2))
    assert d("LIST") == b"+OK 2 messages\r\n1 %d\r\n2 %d\r\n.\r\n" % (len(MSG1), len(MSG2))
    assert d("LIST 2") == b"+OK 2 %d\r\n" % len(MSG2)
    assert d("LIST 3", b"-ERR") == b"-ERR No such message\r\n"
    assert d("LIST 0", b"-ERR") == b"-ERR No such message\r\n"
    assert d("LIST abc", b"-ERR") == b"-ERR No such message\r\n"
    assert d("DELE +1", b"-ERR") == b"-ERR No such message\r\n"
    assert d("UIDL") == b"+OK\r\n1 UNIQUE1\r\n2 UNIQUE2\r\n.\r\n"
    assert d("UIDL 1") == b"+OK 1 UNIQUE1\r\n"


def test_retr_is_byte_exact_and_dot_stuffed(env):
    d = logged_in(env)
    assert d("RETR 1") == (
        b"+OK %d octets\r\n" % len(MSG1)
        + b"From: bob@example.test\r\nSubject: one\r\n\r\n"
        b"..hidden dot line\r\n\xe9t\xe9 \xff 8-bit\r\n..\r\nlast line without CRLF"
        b"\r\n.\r\n")
    assert d("RETR 2") == b"+OK %d octets\r\n" % len(MSG2) + MSG2 + b".\r\n"


def test_retr_converts_bare_lf_and_stuffs_across_chunks(env):
    root = env.root
    body = b"Subject: big\n\n" + b"x" * (64 * 1024 - 15) + b"\n.dot at a chunk start\nend\n"
    assert body[64 * 1024:64 * 1024 + 1] == b"."  # the second chunk starts a line with "."
    (root / "cur" / "LF:2,").write_bytes(body)
    os.utime(root / "cur" / "LF:2,", ns=(3 * 10**18, 3 * 10**18))
    d = logged_in(env)
    out = d("RETR 3")
    want = body.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
    assert out == b"+OK %d octets\r\n" % len(body) + want + b".\r\n"


def test_retr_keeps_crlf_split_across_chunks(env):
    head = b"Subject: split\r\n\r\n"
    body = head + b"y" * (64 * 1024 - len(head) - 1) + b"\r\n.next\r\n"
    assert body[64 * 1024 - 1:64 * 1024 + 1] == b"\r\n"  # the CR ends the first chunk
    (env.root / "cur" / "SPLIT:2,").write_bytes(body)
    os.utime(env.root / "cur" / "SPLIT:2,", ns=(3 * 10**18, 3 * 10**18))
    d = logged_in(env)
    want = body.replace(b"\r\n.", b"\r\n..")
    assert d("RETR 3") == b"+OK %d octets\r\n" % len(body) + want + b".\r\n"


def test_top(env):
    d = logged_in(env)
    assert d("TOP 2 0") == b"+OK Top of message follows\r\nSubject: two\r\n\r\n.\r\n"
    assert d("TOP 2 2") == (b"+OK Top of message follows\r\n"
                            b"Subject: two\r\n\r\nline 1\r\nline 2\r\n.\r\n")
    assert d("TOP 1 1").endswith(b"\r\n\r\n..hidden dot line\r\n.\r\n")
    assert d("TOP 1 x", b"-ERR") == b"-ERR Bad line count\r\n"
    assert d("TOP 1", b"-ERR") == b"-ERR Syntax error\r\n"


def test_dele_then_rset_keeps_messages(env):
    d = logged_in(env)
    assert d("DELE 1") == b"+OK Message 1 deleted\r\n"
    assert d("DELE 1", b"-ERR") == b"-ERR Message 1 already deleted\r\n"
    assert d("RETR 1", b"-ERR") == b"-ERR Message 1 already deleted\r\n"
    assert d("STAT") == b"+OK 1 %d\r\n" % len(MSG2)
    assert d("LIST") == b"+OK 1 messages\r\n2 %d\r\n.\r\n" % len(MSG2)
    assert d("UIDL") == b"+OK\r\n2 UNIQUE2\r\n.\r\n"
    assert d("RSET") == b"+OK\r\n"
    assert d("STAT") == b"+OK 2 %d\r\n" % (len(MSG1) + len(MSG2))
    assert d("QUIT") == b"+OK Bye\r\n"
    assert sorted(os.listdir(env.root / "new")) == ["UNIQUE1", "UNIQUE2"]


def test_dele_then_quit_removes_and_retr_marks_seen(env):
    d = logged_in(env)
    d("RETR 2")
    d("DELE 1")
    assert d("QUIT") == b"+OK Bye\r\n"
    assert d.transport.disconnecting
    assert os.listdir(env.root / "new") == []
    assert os.listdir(env.root / "cur") == ["UNIQUE2:2,S"]


def test_dropped_connection_deletes_nothing(env):
    d = logged_in(env)
    d("DELE 1")
    d.drop()
    assert sorted(os.listdir(env.root / "new")) == ["UNIQUE1", "UNIQUE2"]
    logged_in(env)("QUIT")  # and the lock was released


def test_uidl_stable_across_sessions_and_flag_rename(env):
    d = logged_in(env)
    first = d("UIDL")
    d("QUIT")
    os.rename(env.root / "new" / "UNIQUE1", env.root / "cur" / "UNIQUE1:2,S")
    d = logged_in(env)
    assert d("UIDL") == first == b"+OK\r\n1 UNIQUE1\r\n2 UNIQUE2\r\n.\r\n"


def test_second_session_is_in_use(env):
    first = logged_in(env)
    second = env()
    second("STLS")
    second("USER " + BOX)
    assert second("PASS " + PASSWORD, b"-ERR") == (
        b"-ERR [IN-USE] Mailbox is in use by another session\r\n")
    first("QUIT")
    second.login()


def test_in_use_released_when_connection_drops(env):
    logged_in(env).drop()
    logged_in(env)


def test_stls_discards_pipelined_input(env):
    d = env()
    out = d.raw(b"STLS\r\nUSER " + BOX.encode() + b"\r\nPASS " + PASSWORD.encode() + b"\r\nNO")
    assert out == b"+OK Begin TLS negotiation\r\n"
    assert d.transport.tls_started_with is TLS_OPTIONS
    assert d.proto.factory.users.calls == []
    # The first line inside TLS is not glued to the discarded "NO".
    assert d("CAPA").startswith(b"+OK")


def test_stls_not_after_login(env):
    d = env(peer="127.0.0.1", plaintext_from_loopback=True)
    d.login()
    assert d("STLS", b"-ERR") == b"-ERR Command not valid in this state\r\n"
    assert d.transport.tls_started_with is None


def test_pipelined_commands_answered_in_order(env):
    d = env()
    d("STLS")
    out = d.raw(f"USER {BOX}\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 2\r\nNOOP\r\n".encode())
    total = len(MSG1) + len(MSG2)
    assert out == (b"+OK Send PASS\r\n+OK Logged in, 2 messages (%d octets)\r\n" % total
                   + b"+OK 2 %d\r\n" % total
                   + b"+OK %d octets\r\n" % len(MSG2) + MSG2 + b".\r\n+OK\r\n")


def test_commands_and_states(env):
    d = env()
    assert d("STAT", b"-ERR") == b"-ERR Command not valid in this state\r\n"
    assert d("APOP x y", b"-ERR") == b"-ERR Unknown command\r\n"
    assert d("LIST", b"-ERR") == b"-ERR Command not valid in this state\r\n"
    d("STLS")
    d.login()
    assert d("USER x", b"-ERR") == b"-ERR Command not valid in this state\r\n"
    assert d("noop") == b"+OK\r\n"
    assert d("RETR", b"-ERR") == b"-ERR Syntax error\r\n"


def test_too_long_line_closes(env):
    d = env()
    assert d.raw(b"X" * 5000) == b"-ERR Line too long\r\n"
    assert d.transport.disconnecting


def test_idle_timeout_closes_without_update(env):
    d = logged_in(env)
    d("DELE 1")
    d.clock.advance(599)
    assert d.take() == b""
    d("NOOP")  # activity restarts the timer
    d.clock.advance(599)
    assert not d.transport.disconnecting
    d.clock.advance(1)
    assert d.take() == b"-ERR Idle timeout, closing connection\r\n"
    assert d.transport.disconnecting
    d.drop()
    assert sorted(os.listdir(env.root / "new")) == ["UNIQUE1", "UNIQUE2"]


def test_a_client_reading_slowly_is_not_idle(env):
    big = b"Subject: big\r\n\r\n" + b"z" * (3 * 64 * 1024) + b"\r\n"
    (env.root / "cur" / "BIG:2,").write_bytes(big)
    os.utime(env.root / "cur" / "BIG:2,", ns=(3 * 10**18, 3 * 10**18))
    d = logged_in(env)
    d.proto.dataReceived(b"RETR 3\r\n")
    for _ in range(5):  # 2500 s in all, never 600 s without reading a chunk
        d.clock.advance(500)
        assert not d.transport.disconnecting
        d.transport.producer.resumeProducing()
    assert d.take().endswith(b"z\r\n.\r\n")


def test_idle_timeout_while_client_stops_reading_a_message(env):
    d = logged_in(env)
    d.proto.dataReceived(b"RETR 1\r\n")
    assert d.transport.producer is not None  # the client reads nothing more
    d.clock.advance(600)
    assert d.transport.disconnected  # aborted: a polite -ERR would never be read
    assert not d.take().endswith(b"Idle timeout, closing connection\r\n")
    d.drop()  # what the reactor does next: the message file is closed, the lock freed
    logged_in(env)
