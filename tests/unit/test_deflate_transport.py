"""gateway/deflate.py DeflateTransport: a big write is compressed in the pool, never on
the reactor thread, and the compressed stream keeps the order of the writes."""

from __future__ import annotations

import zlib

from held_pool import Held
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from gateway import deflate
from gateway.deflate import INLINE_MAX, DeflateTransport


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data)


def test_small_writes_are_compressed_at_once():
    lower, pool = StringTransport(), Held(holding=True)
    t = DeflateTransport(lower, 1, pool)
    t.write(b"* OK small\r\n")
    assert pool.calls == []
    assert inflate(lower.value()) == b"* OK small\r\n"
    assert deflate.drained(t) is None


def test_a_big_write_goes_to_the_pool_and_later_writes_keep_their_order():
    lower, pool = StringTransport(), Held(holding=True)
    t = DeflateTransport(lower, 1, pool)
    big = b"x" * (INLINE_MAX + 1)
    t.writeSequence([b"* 1 FETCH (BODY[] {%d}\r\n" % len(big), big, b")\r\n"])
    t.write(b"a OK FETCH completed\r\n")  # small, but behind the big one
    drained = deflate.drained(t)
    assert lower.value() == b"" and len(pool.calls) == 1 and not drained.called
    pool.run_all()
    assert inflate(lower.value()) == (b"* 1 FETCH (BODY[] {%d}\r\n" % len(big) + big
                                      + b")\r\na OK FETCH completed\r\n")
    assert drained.called
    t.write(b"* OK after\r\n")  # nothing queued: at once again
    assert inflate(lower.value()).endswith(b"* OK after\r\n") and pool.calls == []


def test_close_waits_for_the_compressed_output():
    lower, pool = StringTransport(), Held(holding=True)
    t = DeflateTransport(lower, 1, pool)
    t.write(b"y" * (INLINE_MAX * 2))
    t.write(b"* BYE\r\n")
    t.loseConnection()
    assert not lower.disconnecting  # the BYE is not out yet
    pool.run_all()
    assert inflate(lower.value()).endswith(b"* BYE\r\n")
    assert lower.disconnecting


def test_a_failed_compression_aborts_the_connection():
    lower = StringTransport()
    t = DeflateTransport(lower, 1, lambda f, *a: defer.fail(MemoryError()))
    t.write(b"z" * (INLINE_MAX + 1))
    assert lower.disconnecting or getattr(lower, "aborting", False)
    assert deflate.drained(t) is None
