"""access/imap and gateway/deflate.py: COMPRESS=DEFLATE (RFC 4978), issue 12.

Both directions raw DEFLATE after the tagged OK, each response flushed so
the client can read it at once, NO [COMPRESSIONACTIVE] on a second COMPRESS,
not before login, and the input bounds of plaintext kept (issue 11): a
command line that decompresses without end meets max_command_length and is
decompressed a piece at a time, never whole.
"""

from __future__ import annotations

import zlib

import pytest
from held_pool import Held
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway import deflate


class Client:
    """The client's side of the compressed session."""

    def __init__(self, s: Session) -> None:
        self.s = s
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inp = zlib.decompressobj(-15)

    def send(self, data: bytes) -> bytes:
        wire = self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH)
        return self.inp.decompress(self.s.raw(wire))

    def __call__(self, tag: bytes, command: bytes) -> bytes:
        return self.send(tag + b" " + command + b"\r\n")


@pytest.fixture
def session(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, b"Subject: hello\r\n\r\n" + b"body line\r\n" * 200, "1001.U1.host")
    s = Session(make_factory(store, MemoryReactorClock(), {"max_command_length": 2000}))
    s.login()
    return s


def compress(s: Session) -> Client:
    out = s("COMPRESS DEFLATE")
    assert out.endswith(b" OK DEFLATE active\r\n"), out  # the OK itself is plaintext
    return Client(s)


def test_capability_and_not_before_login(tmp_path):
    s = Session(make_factory(fresh_store(tmp_path), MemoryReactorClock()))
    assert b"COMPRESS=DEFLATE" in s("CAPABILITY")
    s("COMPRESS DEFLATE", expect=b"BAD")  # RFC 4978 3: after authentication
    s("NOOP")  # still plaintext


def test_both_directions_compressed(session):
    c = compress(session)
    assert c(b"b1", b"NOOP") == b"b1 OK NOOP completed\r\n"
    out = c(b"b2", b"SELECT INBOX")
    assert b"* 1 EXISTS" in out and out.endswith(b"b2 OK [READ-WRITE] SELECT completed\r\n")
    out = c(b"b3", b"FETCH 1 BODY.PEEK[]")
    assert b"body line\r\n" * 200 in out and out.endswith(b"b3 OK FETCH completed\r\n")
    # What went over the wire is raw deflate, smaller than the text.
    assert session.proto.transport.bytes_out < session.proto.transport.bytes_in


def test_each_response_flushed_on_its_own(session):
    c = compress(session)
    c.s.proto.dataReceived(c.out.compress(b"b1 NOOP\r\n") + c.out.flush(zlib.Z_SYNC_FLUSH))
    wire = c.s.take()
    # Z_SYNC_FLUSH ends the output on an empty stored block, 00 00 ff ff.
    assert wire.endswith(b"\x00\x00\xff\xff")
    assert zlib.decompressobj(-15).decompress(wire) == b"b1 OK NOOP completed\r\n"


def test_literals_inside_the_compressed_stream(session):
    session("SELECT INBOX")
    c = compress(session)
    message = b"Subject: appended\r\n\r\n" + b"x" * 3000 + b"\r\n"
    # A synchronising literal: the continuation comes compressed, then the literal
    # with the rest of the line and the next command in one piece.
    assert c(b"b1", b"APPEND INBOX {%d}" % len(message)).startswith(b"+ ")
    out = c.send(message + b"\r\nb2 SEARCH SUBJECT {8+}\r\nappended\r\nb3 NOOP\r\n")
    assert b"b1 OK [APPENDUID" in out
    assert b"* SEARCH 2\r\nb2 OK" in out and out.endswith(b"b3 OK NOOP completed\r\n"), out


def test_idle_and_done_inside_the_compressed_stream(session):
    session("SELECT INBOX")
    c = compress(session)
    assert c(b"b1", b"IDLE").startswith(b"+ ")
    assert c.send(b"DONE\r\n") == b"b1 OK IDLE terminated\r\n"


def test_second_compress_refused(session):
    c = compress(session)
    assert c(b"b1", b"COMPRESS DEFLATE") == \
        b"b1 NO [COMPRESSIONACTIVE] DEFLATE is active already\r\n"
    assert c(b"b2", b"NOOP") == b"b2 OK NOOP completed\r\n"


def test_unknown_mechanism_is_bad(session):
    session("COMPRESS LZ4", expect=b"BAD")
    session("NOOP")


def test_literal_limit_holds_when_compressed(session):
    c = compress(session)
    out = c(b"b1", b"SEARCH BODY {99999999}")  # over max_literal_size: refused unread
    assert out.startswith(b"b1 BAD") or out.startswith(b"b1 NO [TOOBIG]"), out


def test_zip_bomb_line_meets_the_line_limit_a_piece_at_a_time(session):
    c = compress(session)
    seen = []
    inflater = session.proto._inflater
    inflated = inflater._deliver
    inflater._deliver = lambda data: (seen.append(len(data)), inflated(data))
    # 50 MB of one command line without its end, about 50 kB compressed.
    bomb = c.out.compress(b"b1 NOOP " + b"a" * 50_000_000) + c.out.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    wire = session.raw(bomb)
    assert b"* BYE Command line too long" in c.inp.decompress(wire)
    assert session.transport.disconnecting
    # Stopped at the line limit: pieces of at most PIECE, and a few of them only.
    assert max(seen) <= deflate.PIECE
    assert sum(seen) <= 2000 + 2 * deflate.PIECE


def test_paused_session_holds_compressed_input(session):
    c = compress(session)
    session.proto.pauseProducing()  # the client does not read its replies
    commands = b"".join(b"p%d NOOP\r\n" % n for n in range(5000))
    session.proto.dataReceived(c.out.compress(commands) + c.out.flush(zlib.Z_SYNC_FLUSH))
    # Nothing was decompressed beyond a piece: the rest waits compressed.
    assert session.proto._inflater.pending > 0
    assert len(session.proto._buffer) <= deflate.PIECE
    session.proto.resumeProducing()
    out = c.inp.decompress(session.take())
    assert out.count(b" OK NOOP completed") == 5000
    assert session.proto._inflater.pending == 0


def test_inflater_bounded_pieces():
    got: list[bytes] = []
    ready = [True]
    inf = deflate.Inflater(got.append, lambda: ready[0], piece=1000)
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    inf.feed(z.compress(b"x" * 10_000) + z.flush(zlib.Z_SYNC_FLUSH))
    assert [len(g) for g in got] == [1000] * 10
    ready[0] = False
    got.clear()
    inf.feed(z.compress(b"y" * 5000) + z.flush(zlib.Z_SYNC_FLUSH))
    assert got == [] and inf.pending > 0
    ready[0] = True
    inf.feed(b"")
    assert b"".join(got) == b"y" * 5000


def test_corrupt_input_closes(session):
    compress(session)
    session.raw(b"\xff\xff\xff\xff garbage")
    assert session.transport.disconnecting


def test_level_0_offers_no_compress(tmp_path):
    """[imap] compress_level = 0: not advertised, and refused (the session stays plain)."""
    s = Session(make_factory(fresh_store(tmp_path), MemoryReactorClock(),
                             {"compress_level": 0}))
    s.login()
    assert b"COMPRESS" not in s("CAPABILITY")
    assert b"BAD COMPRESS is not offered" in s("COMPRESS DEFLATE", expect=b"BAD")
    s("NOOP")  # still plaintext


def test_the_next_command_waits_while_a_big_answer_is_compressed(tmp_path, monkeypatch):
    """A big answer is compressed in the pool (deflate.py); the next pipelined command
    runs only once it is out, so a pipeline of big answers cannot pile up in memory."""
    monkeypatch.setattr(deflate, "INLINE_MAX", 100)  # CAPABILITY's answer is bigger
    held = Held()
    s = Session(make_factory(fresh_store(tmp_path), MemoryReactorClock(), run_blocking=held))
    s.login()
    c = compress(s)
    held.holding = True
    assert c.send(b"a CAPABILITY\r\nb CREATE Later\r\n") == b""  # in the pool
    assert held.names() == ["_compress"]  # CREATE not begun meanwhile
    held.run_next()  # the untagged line; the tagged OK had queued behind it
    assert held.names() == ["_compress"]
    held.run_next()
    out = c.inp.decompress(s.take())
    assert b"a OK" in out and b"b OK" not in out
    assert held.names() == ["create"]  # now it runs
    held.run_all()
    assert b"b OK CREATE completed" in c.inp.decompress(s.take())
