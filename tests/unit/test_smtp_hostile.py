"""Hostile SMTP clients (issue 11): input is read only as fast as it is served.

Over StringTransport (tests/unit/smtp_dialogue.py): the transport's
producerState tells whether the server still reads the client, and calling
the registered producer's pauseProducing is what a full socket buffer does.
"""

from __future__ import annotations

from smtp_dialogue import Dialogue

NOOPS = b"NOOP\r\n" * 1000


def message_dialogue(**kw) -> Dialogue:
    d = Dialogue(**kw)
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")
    d.cmd("DATA", expect=b"354")
    return d


def test_client_is_not_read_while_the_spool_write_is_pending():
    d = message_dialogue()
    d.spool.hold = True
    assert d.send(b"Hello\r\n.\r\nNOOP\r\n") == b""
    # The NOOP came in the same read: held, and the transport reads on (a lazy hold,
    # flow.ReadGate) until more input comes while the write is pending.
    assert d.transport.producerState == "producing"
    assert d.send(b"NOOP\r\n") == b""
    assert d.transport.producerState == "paused"  # later input waits in the socket
    d.spool.pending.callback(None)
    assert d.read().splitlines() == [b"250 2.0.0 Ok: queued as " + d.listener.queued[0].encode(),
                                     b"250 2.0.0 Ok", b"250 2.0.0 Ok"]
    assert d.transport.producerState == "producing"


def test_pending_input_over_the_setting_drops_the_client():
    d = message_dialogue(overrides={"max_pending_input": 4096})
    d.spool.hold = True
    d.send(b"Hello\r\n.\r\n" + NOOPS[:4000])  # held: within the limit
    assert not d.transport.disconnecting
    assert d.send(NOOPS[:200]) == b"421 4.7.0 mx.example.test Too much pipelined input\r\n"
    assert d.transport.disconnected  # aborted, not closed: the client may not be reading


def test_client_that_does_not_read_replies_stops_being_read():
    d = Dialogue()
    d.transport.producer.pauseProducing()  # the socket's send buffer is full
    assert d.transport.producerState == "paused"
    assert d.send(NOOPS) == b""  # nothing answered, nothing more read
    d.transport.producer.resumeProducing()  # the client read its replies
    assert d.read() == b"250 2.0.0 Ok\r\n" * 1000
    assert d.transport.producerState == "producing"


def test_pipelined_commands_are_answered_in_order_across_many_reads():
    d = Dialogue()
    lines = [b"NOOP", b"RSET", b"HELP", b"NOOP"] * 50
    data = b"".join(line + b"\r\n" for line in lines)
    out = b"".join(d.send(data[i:i + 7]) for i in range(0, len(data), 7))
    assert out.count(b"250 2.0.0 Ok\r\n") == 150 and out.count(b"214 2.0.0 See RFC") == 50


def test_overlong_line_is_refused_and_the_next_line_still_runs():
    d = Dialogue(overrides={"max_command_length": 100})
    out = d.send(b"NOOP " + b"x" * 300 + b"\r\nNOOP\r\n")
    assert out == b"500 5.5.6 Line too long (limit 100 octets)\r\n250 2.0.0 Ok\r\n"
    out = d.send(b"NOOP " + b"x" * 94 + b"\r\n")  # 99 + CR: at the limit
    assert out == b"250 2.0.0 Ok\r\n"


def test_data_trickling_in_meets_the_data_timeout():
    d = message_dialogue(overrides={"data_timeout": 60, "idle_timeout": 10})
    for _ in range(29):
        d.clock.advance(2)
        d.send(b"x")  # a byte every 2 s: the idle timeout never fires
    assert not d.transport.disconnecting
    d.clock.advance(2)
    assert d.read() == (b"421 4.4.2 mx.example.test Message not received within 60 seconds, "
                        b"closing connection\r\n")
    assert d.transport.disconnecting and d.spool.stored == []


def test_data_timeout_stops_at_the_final_dot():
    d = message_dialogue(overrides={"data_timeout": 60})
    assert d.send(b"Hi\r\n.\r\n").startswith(b"250 2.0.0 Ok: queued as")
    d.clock.advance(59)
    d.cmd("NOOP", expect=b"250")
    d.clock.advance(10)
    assert d.read() == b"" and not d.transport.disconnecting


def test_a_pipelined_flood_is_served_in_slices_between_other_clients():
    d = Dialogue()
    d.proto.dataReceived(NOOPS)  # 1000 commands in one read
    assert d.transport.value().count(b"250 2.0.0 Ok\r\n") == 64  # one slice, then the others
    assert d.transport.producerState == "paused"
    assert d.read().count(b"250 2.0.0 Ok\r\n") == 1000  # the next turns serve the rest
    assert d.transport.producerState == "producing"
