"""DATA streamed from the spool file: dot-stuffing across piece borders, back-pressure,
and the budget that bounds whole-message signing (issue 11)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import StringTransport

from gateway.budget import ByteBudget
from gateway.deliver.outbound import DotStuffer, dot_stuff
from gateway.deliver.streaming import SpoolStream, read_small
from gateway.durable import run_now


def stuffed_in_pieces(message: bytes, size: int) -> bytes:
    stuffer = DotStuffer()
    pieces = [message[i:i + size] for i in range(0, len(message), size)]
    return b"".join(stuffer.feed(p) for p in pieces) + stuffer.end()


def test_a_dot_at_a_piece_border_is_stuffed_once():
    message = b"Subject: x\r\n\r\n.one\r\nab\r\n.two\r\n..three\r\nend"
    whole = dot_stuff(message)
    assert whole == b"Subject: x\r\n\r\n..one\r\nab\r\n..two\r\n...three\r\nend\r\n"
    for size in range(1, len(message) + 1):  # every border, "\n" | "." among them
        assert stuffed_in_pieces(message, size) == whole, size


def test_the_end_adds_crlf_only_when_missing_across_borders():
    assert stuffed_in_pieces(b"a\r\nb\r\n", 5) == b"a\r\nb\r\n"  # "\r" | "\n" border
    assert stuffed_in_pieces(b"a\r\nb", 3) == b"a\r\nb\r\n"
    assert stuffed_in_pieces(b"", 3) == b"\r\n"


def test_the_stream_sends_prefix_and_file_stuffed(tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(b"Subject: x\r\n\r\n.dot\r\n" * 100)
    wire = StringTransport()
    done = SpoolStream(str(path), b"X-Sig: 1\r\n", run_now, piece=13)(wire)
    assert done.called
    assert wire.value() == dot_stuff(b"X-Sig: 1\r\n" + path.read_bytes())
    assert wire.producer is None  # unregistered when done


def test_a_small_message_read_with_its_size_is_sent_without_a_thread_hop(tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(b"Subject: x\r\n\r\n.dot\r\nend")
    size, content = read_small(str(path))
    assert (size, content) == (len(path.read_bytes()), path.read_bytes())
    assert read_small(str(path), limit=10) == (size, None)  # too big: streamed

    def no_hops(f, *args):
        raise AssertionError("a small message must not hop to a thread")

    wire = StringTransport()
    done = SpoolStream(str(path), b"X-Sig: 1\r\n", no_hops, content=content)(wire)
    assert done.called
    assert wire.value() == dot_stuff(b"X-Sig: 1\r\n" + path.read_bytes())
    assert wire.producer is None


class Reads:
    """run_blocking that holds each read until the test lets it go."""

    def __init__(self):
        self.pending: list[tuple[defer.Deferred, object, tuple]] = []

    def __call__(self, f, *args):
        d = defer.Deferred()
        self.pending.append((d, f, args))
        return d

    def step(self) -> None:
        d, f, args = self.pending.pop(0)
        d.callback(f(*args))


def test_a_paused_stream_reads_nothing_until_resumed(tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(b"x" * 100)
    reads = Reads()
    wire = StringTransport()
    done = SpoolStream(str(path), b"", reads, piece=10)(wire)
    reads.step()  # open
    producer = wire.producer
    assert producer is not None and wire.streaming
    reads.step()  # the first piece
    producer.pauseProducing()  # the transport's buffer is full
    reads.step()  # the read already asked for
    assert reads.pending == []  # and no further one while paused
    assert len(wire.value()) == 20
    producer.resumeProducing()
    while reads.pending:
        reads.step()
    assert done.called and wire.value() == b"x" * 100 + b"\r\n"


def test_a_lost_connection_stops_the_stream(tmp_path):
    path = tmp_path / "msg"
    path.write_bytes(b"x" * 100)
    reads = Reads()
    wire = StringTransport()
    stream = SpoolStream(str(path), b"", reads, piece=10)
    done = stream(wire)
    reads.step()
    reads.step()
    wire.producer.stopProducing()
    reads.step()
    failures = []
    done.addErrback(failures.append)
    assert failures and reads.pending == [] and len(wire.value()) == 10
    # The next attempt (another connection) sends it afresh, whole.
    again = StringTransport()
    done = stream(again)
    while reads.pending:
        reads.step()
    assert done.called and again.value() == b"x" * 100 + b"\r\n"


def test_the_budget_lets_work_wait_its_turn():
    budget = ByteBudget(100)
    gates = [defer.Deferred() for _ in range(4)]
    started = []

    def job(i):
        started.append(i)
        return gates[i]

    for i, size in enumerate((60, 40, 30, 500)):
        budget.run(size, job, i)
    assert started == [0, 1] and budget.in_use == 100
    gates[0].callback(None)
    assert started == [0, 1, 2]  # 40 + 30
    gates[1].callback(None)
    gates[2].callback(None)
    assert started == [0, 1, 2, 3] and budget.in_use == 100  # larger than all: alone
    gates[3].callback(None)
    assert budget.in_use == 0 and budget.peak == 100
