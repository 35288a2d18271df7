"""The ESMTP server's replies, driven over StringTransport (RFC 5321, 2920, 3207, 4954)."""

import base64

from smtp_dialogue import Dialogue

from gateway.errors import SpoolError


def test_greeting_and_ehlo_advertise_extensions():
    d = Dialogue()
    assert d.greeting.startswith(b"220 mx.example.test ESMTP")
    reply = d.ehlo()
    for ext in (b"PIPELINING", b"SIZE 36700160", b"8BITMIME", b"ENHANCEDSTATUSCODES",
                b"STARTTLS"):
        assert b"250-" + ext in reply or b"250 " + ext in reply
    assert b"AUTH" not in reply  # not before TLS


def test_auth_offered_on_loopback_only_when_configured():
    assert b"AUTH PLAIN LOGIN" in Dialogue(plaintext_from_loopback=True).ehlo()
    d = Dialogue(peer="192.0.2.7", plaintext_from_loopback=True)
    assert b"AUTH" not in d.ehlo()
    d.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice@example.test\0secret").decode(),
          expect=b"538 5.7.11")


def test_local_delivery_transaction_spools_message_with_received_header():
    d = Dialogue()
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")
    reply = d.data(b"Subject: hi\r\n\r\n..dot\r\nbody \xc3\xa9\r\n")
    envelope, message = d.spool.stored[0]
    assert reply == f"250 2.0.0 Ok: queued as {envelope.queue_id}\r\n".encode()
    assert message.startswith(b"Received: from client.test ([127.0.0.1])\r\n")
    assert message.endswith(b"Subject: hi\r\n\r\n.dot\r\nbody \xc3\xa9\r\n")
    assert envelope.sender == "bob@remote.test"
    assert [r.address for r in envelope.recipients] == ["alice@example.test"]
    assert d.listener.queued == [envelope.queue_id]
    assert d.listener.envelopes == [envelope]  # handed over: no read-back needed
    assert envelope.hops == 1  # our own Received header


def test_unknown_local_user_550_and_relay_denied_554():
    d = Dialogue()
    d.ehlo()
    d.mail()
    d.rcpt("nobody@example.test", expect=b"550 5.1.1")
    d.rcpt("carol@remote.test", expect=b"554 5.7.1")
    d.cmd("DATA", expect=b"554 5.5.1")


def test_trusted_network_may_relay():
    d = Dialogue(peer="192.0.2.7", trusted=("192.0.2.0/24",))
    d.ehlo()
    d.mail()
    d.rcpt("carol@remote.test")


def test_loopback_is_not_trusted_by_default():
    d = Dialogue(peer="127.0.0.1")
    d.ehlo()
    d.mail()
    d.rcpt("carol@remote.test", expect=b"554 5.7.1")


def test_pipelined_commands_answered_in_order():
    d = Dialogue()
    reply = d.send(b"EHLO c\r\nMAIL FROM:<b@r.test>\r\nRCPT TO:<alice@example.test>\r\n"
                   b"RCPT TO:<x@example.test>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n")
    codes = [line[:3] for line in reply.split(b"\r\n") if line[:3].isdigit()
             and line[3:4] == b" "]
    assert codes == [b"250", b"250", b"250", b"550", b"354", b"250", b"221"]


def test_pipelining_waits_for_a_slow_spool():
    d = Dialogue()
    d.spool.hold = True
    d.ehlo()
    reply = d.send(b"MAIL FROM:<b@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
                   b"x\r\n.\r\nNOOP\r\n")
    assert b"354" in reply and b"250 2.0.0 Ok" not in reply  # NOOP waits for the 250
    d.spool.pending.callback(None)
    assert d.read().startswith(b"250 2.0.0 Ok: queued as")


def test_submission_requires_auth():
    d = Dialogue(submission=True)
    d.ehlo()
    d.mail(expect=b"530 5.7.0")


def test_auth_plain_after_starttls_allows_relay():
    d = Dialogue()
    d.ehlo()
    d.cmd("STARTTLS", expect=b"220 2.0.0")
    assert d.transport.started_tls == "ctx"
    d.cmd("MAIL FROM:<a@example.test>", expect=b"503 5.5.1")  # EHLO again first
    assert b"AUTH PLAIN LOGIN" in d.ehlo()
    assert b"STARTTLS" not in d.ehlo()
    token = base64.b64encode(b"\0alice@example.test\0wrong").decode()
    d.cmd("AUTH PLAIN " + token, expect=b"535 5.7.8")
    token = base64.b64encode(b"\0alice@example.test\0secret").decode()
    d.cmd("AUTH PLAIN " + token, expect=b"235 2.7.0")
    d.mail("alice@example.test")
    d.rcpt("carol@remote.test")


def test_auth_login_two_steps():
    d = Dialogue()
    d.ehlo()
    d.cmd("STARTTLS", expect=b"220")
    d.ehlo()
    d.cmd("AUTH LOGIN", expect=b"334 " + base64.b64encode(b"Username:"))
    d.cmd(base64.b64encode(b"alice@example.test"), expect=b"334")
    d.cmd(base64.b64encode(b"secret"), expect=b"235")


def test_starttls_discards_pipelined_plaintext_commands():
    d = Dialogue()
    d.ehlo()
    reply = d.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
    assert reply == b"220 2.0.0 Ready to start TLS\r\n"
    d.ehlo()
    d.mail()  # would be 503 "Nested MAIL" had the injected MAIL been run


def test_size_parameter_and_unknown_parameter():
    d = Dialogue(overrides={"max_message_size": 1000})
    d.ehlo()
    d.cmd("MAIL FROM:<b@r.test> SIZE=1001", expect=b"552 5.3.4")
    d.cmd("MAIL FROM:<b@r.test> FOO=1", expect=b"555 5.5.4")
    d.cmd("MAIL FROM:<b@r.test> SIZE=10 BODY=8BITMIME", expect=b"250")


def test_oversized_body_refused_after_data_and_session_goes_on():
    d = Dialogue(overrides={"max_message_size": 1000})
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")
    d.data(b"x" * 80 + b"\r\n" + (b"y" * 80 + b"\r\n") * 20, expect=b"552 5.3.4")
    assert d.spool.stored == []
    d.mail()


def test_overlong_data_line_never_turns_body_into_commands():
    d = Dialogue()
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")
    d.cmd("DATA", expect=b"354")
    reply = d.send(b"a" * 20000 + b"\r\nRSET\r\nMAIL FROM:<evil@x.test>\r\n.\r\n")
    assert reply == (b"500 5.5.2 Line too long (limit 1000 octets with CRLF, "
                     b"RFC 5321 4.5.3.1.6)\r\n")
    assert d.spool.stored == []
    d.mail()


def test_bare_lf_end_of_data_is_not_end_and_is_refused():
    d = Dialogue()
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")
    d.cmd("DATA", expect=b"354")
    # "\n.\n" must not end DATA (SMTP smuggling); the message is refused at the real end.
    assert d.send(b"hi\n.\nMAIL FROM:<evil@x.test>\r\n") == b""
    assert d.send(b".\r\n").startswith(b"554 5.6.0")
    assert d.spool.stored == []


def test_bare_lf_accepted_byte_exact_when_configured():
    d = Dialogue(overrides={"bare_linefeeds": "accept"})
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")
    d.data(b"a\nb\rc\r\n")
    assert d.spool.stored[0][1].endswith(b"a\nb\rc\r\n")


def test_too_many_recipients_452():
    d = Dialogue(overrides={"max_recipients": 2})
    d.users.users.update({"bob@example.test": "x", "carol@example.test": "x"})
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")
    d.rcpt("Alice@Example.test")  # the same mailbox: kept once, not counted twice
    d.rcpt("bob@example.test")
    d.rcpt("carol@example.test", expect=b"452 4.5.3")
    d.data(b"x\r\n")
    assert [r.address for r in d.spool.stored[0][0].recipients] == [
        "alice@example.test", "bob@example.test"]


def test_bad_commands_close_the_session():
    d = Dialogue(overrides={"max_bad_commands": 3})
    for _ in range(3):
        d.cmd("BOGUS", expect=b"502 5.5.2")
    d.cmd("BOGUS", expect=b"421 4.7.0")
    assert d.transport.disconnecting


def test_garbage_bytes_get_errors_not_crashes():
    d = Dialogue()
    reply = d.send(b"\x00\xff\xfe garbage\r\n\x80\x81\r\n")
    assert reply.count(b"502 5.5.2") == 2
    d.ehlo()


def test_overlong_command_line():
    d = Dialogue()
    d.cmd(b"NOOP " + b"x" * 5000, expect=b"500 5.5.6")
    d.cmd("NOOP", expect=b"250 2.0.0")


def test_idle_timeout_421():
    d = Dialogue(overrides={"idle_timeout": 30})
    d.clock.advance(29)
    assert d.read() == b""
    d.clock.advance(2)
    assert d.read().startswith(b"421 4.4.2")
    assert d.transport.disconnecting


def test_connections_per_client_limit():
    d = Dialogue(overrides={"max_connections_per_client": 1})
    second = d.factory.buildProtocol(None)
    from smtp_dialogue import TLSStringTransport
    from twisted.internet.address import IPv4Address

    t = TLSStringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    second.makeConnection(t)
    assert t.value().startswith(b"421 4.7.0")
    second.connectionLost(None)
    d.proto.connectionLost(None)
    assert d.factory.connections == {}


def test_spool_failure_answers_451_never_250():
    d = Dialogue()
    d.spool.fail = SpoolError("X: No space left on device")
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")
    d.data(b"hi\r\n", expect=b"452 4.3.1")
    d.spool.fail = SpoolError("X: I/O error")
    d.mail()
    d.rcpt("alice@example.test")
    d.data(b"hi\r\n", expect=b"451 4.3.0")


def test_vrfy_help_noop_rset_quit():
    d = Dialogue()
    d.cmd("VRFY alice", expect=b"252 2.5.2")
    d.cmd("HELP", expect=b"214")
    d.cmd("NOOP", expect=b"250 2.0.0")
    d.ehlo()
    d.mail()
    d.cmd("RSET", expect=b"250 2.0.0")
    d.mail()
    d.cmd("QUIT", expect=b"221 2.0.0")
    assert d.transport.disconnecting


def test_mail_before_helo_and_nested_mail():
    d = Dialogue()
    d.mail(expect=b"503 5.5.1")
    d.ehlo()
    d.mail()
    d.mail(expect=b"503 5.5.1")


def test_null_sender_and_postmaster_without_domain():
    d = Dialogue()
    d.users.users["postmaster@example.test"] = "x"
    d.ehlo()
    d.cmd("MAIL FROM:<>", expect=b"250")
    d.cmd("RCPT TO:<Postmaster>", expect=b"250")
    d.data(b"bounce\r\n")
    envelope, _ = d.spool.stored[0]
    assert envelope.sender == ""
    assert envelope.recipients[0].address == "postmaster@example.test"


def test_helo_with_control_bytes_is_refused_not_echoed():
    d = Dialogue()
    reply = d.cmd(b"HELO \x00\x01bad", expect=b"501 5.5.4")
    assert b"\x00" not in reply
