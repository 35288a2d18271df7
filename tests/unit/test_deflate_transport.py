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


def test_message_octets_are_huffman_coded_between_writes_that_refer_back():
    """The main compressor's later output must not point back across the octets it did
    not write: the client's window holds them between."""
    import base64
    import os

    lower = StringTransport()
    t = DeflateTransport(lower, 1, Held())
    line = b"* 1 FETCH (FLAGS (\\Seen) UID 1)\r\n"
    attachment = base64.encodebytes(os.urandom(300_000))
    t.write(line * 50)
    t.write_octets(attachment + line * 50)  # repeats of the line: not coded as such
    octets_end = len(lower.value())
    t.write(line * 50)  # LZ77 would find the line 1 or 2 writes back
    assert inflate(lower.value()) == line * 50 + attachment + line * 50 + line * 50
    # Huffman-coded: smaller than base64 itself, as zlib's levels make it (76-78%).
    assert octets_end < 0.8 * len(attachment)
    # Through the pool too (a big write), in order with what came before and after.
    lower, pool = StringTransport(), Held(holding=True)
    t = DeflateTransport(lower, 1, pool)
    t.write(line)
    deflate.write_octets(t, attachment)
    t.write(line)
    pool.run_all()
    assert inflate(lower.value()) == line + attachment + line


def test_write_octets_on_another_transport_is_a_write():
    lower = StringTransport()
    deflate.write_octets(lower, b"octets")
    assert lower.value() == b"octets"


def test_the_gauge_codes_for_a_slow_link_and_stores_for_a_fast_one():
    mib, huffman = 1 << 20, deflate.HUFFMAN
    fast = deflate.LinkGauge()
    assert fast.worth(huffman)  # the first piece is coded: it measures zlib
    # 10 ms to code a MiB, 76% left, and the client had read it 2 ms after that.
    fast.sent(mib, 0.012, huffman, 0.010 / mib, 0.76)
    assert not fast.worth(huffman)  # coding would only delay the octets
    fast.sent(mib, 0.002, None, 0.001 / mib, 1.0)
    assert not fast.worth(huffman)
    slow = deflate.LinkGauge()
    # A phone: 160 ms on the link for the 76% coding left of a MiB.
    slow.sent(mib, 0.170, huffman, 0.010 / mib, 0.76)
    assert slow.worth(huffman)
    later = deflate.LinkGauge()  # fast at first (the socket's buffers), then slow
    later.sent(mib, 0.012, huffman, 0.010 / mib, 0.76)
    assert not later.worth(huffman)
    for _ in range(3):
        later.sent(mib, 0.200, None, 0.001 / mib, 1.0)
    assert later.worth(huffman)
    # Octets zlib cannot shrink are stored whatever the link.
    random_octets = deflate.LinkGauge()
    random_octets.sent(mib, 0.500, huffman, 0.010 / mib, 1.0)
    assert not random_octets.worth(huffman)


def test_each_coder_is_weighed_by_what_it_costs_and_leaves():
    mib = 1 << 20
    gauge = deflate.LinkGauge()
    # Huffman-only: 8 ms a MiB, 76% left, on a link of 20 ms a MiB: 8 ms of zlib
    # would save 4.8 ms of link.
    gauge.sent(mib, 0.008 + 0.76 * 0.020, deflate.HUFFMAN, 0.008 / mib, 0.76)
    assert not gauge.worth(deflate.HUFFMAN)
    assert gauge.worth(deflate.LZ77)  # not measured yet: tried
    # LZ77 on text: 10 ms a MiB, 10% left: saves 18 ms of the link's 20.
    gauge.sent(mib, 0.010 + 0.1 * 0.020, deflate.LZ77, 0.010 / mib, 0.10)
    assert gauge.worth(deflate.LZ77) and not gauge.worth(deflate.HUFFMAN)
    for _ in range(3):  # loopback: a MiB read in a millisecond
        gauge.sent(mib, 0.001, None, 0.0, 1.0)
    assert not gauge.worth(deflate.LZ77)


def test_octets_go_stored_once_the_client_reads_faster_than_zlib_codes():
    import base64
    import os

    from twisted.internet.task import Clock

    clock, lower = Clock(), StringTransport()
    t = DeflateTransport(lower, 1, Held(), clock)
    attachment = base64.encodebytes(os.urandom(300_000))
    t.write_octets(attachment)
    coded = len(lower.value())
    assert coded < 0.8 * len(attachment)
    t.client_read()  # at once: the link is faster than zlib was
    t.write_octets(attachment)
    stored = len(lower.value()) - coded
    assert len(attachment) < stored < len(attachment) * 1.01  # stored blocks' headers
    clock.advance(10)  # the client took its time over that one
    t.client_read()
    t.write(b"a OK\r\n")
    t.write_octets(attachment)
    assert len(lower.value()) - coded - stored < 0.8 * len(attachment) + 100
    assert inflate(lower.value()) == attachment * 2 + b"a OK\r\n" + attachment


def test_a_fetch_batch_is_coded_with_lz77_or_stored_as_the_link_says():
    from twisted.internet.task import Clock

    clock, lower = Clock(), StringTransport()
    t = DeflateTransport(lower, 1, Held(), clock)
    text = b"".join(b"* %d FETCH (BODY[] {40}\r\nSubject: the same words again\r\n\r\n)\r\n" % n
                    for n in range(600))  # 40 KB that LZ77 shrinks to a few percent
    deflate.write_batch(t, [text])
    coded = len(lower.value())
    assert coded < 0.1 * len(text)  # LZ77, not Huffman-only (over 50% of this text)
    t.client_read()  # at once: loopback
    deflate.write_batch(t, [text[:20000], text[20000:]])
    stored = len(lower.value()) - coded
    assert len(text) < stored < len(text) * 1.01
    deflate.write_batch(t, [b"* 1 FETCH (FLAGS (\\Seen))\r\n"])  # small: coded as ever
    small = len(lower.value()) - coded - stored
    clock.advance(10)  # a slow client after all
    t.client_read()
    deflate.write_batch(t, [text])
    assert len(lower.value()) - coded - stored - small < 0.1 * len(text)
    assert inflate(lower.value()) == text * 2 + b"* 1 FETCH (FLAGS (\\Seen))\r\n" + text


def test_write_batch_on_another_transport_is_a_write():
    lower = StringTransport()
    deflate.write_batch(lower, [b"a", b"b" * 5000])
    assert lower.value() == b"a" + b"b" * 5000
