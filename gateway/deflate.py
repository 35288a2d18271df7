"""A DEFLATE layer under a session (RFC 4978 COMPRESS=DEFLATE, RFC 1951 raw deflate).

Used by access/imap/server.py once COMPRESS DEFLATE is answered OK: the
session's transport is replaced by a DeflateTransport wrapping the one below
(TCP, TCP with TLS started, or the plaintext from tlsfront), so every reply
written anywhere in the session is compressed, inside TLS when there is TLS,
and the session's dataReceived hands what arrives to an Inflater.

Output: each write is compressed and flushed with Z_SYNC_FLUSH (RFC 4978 4:
the client must be able to decode each response as soon as it arrives).
A big write (a FETCH batch, one message of any size) is compressed in the
thread pool, never on the reactor thread: 34 MiB of a base64 attachment take
zlib over a second even at level 1, and every other session would wait for
it. Writes that come meanwhile queue behind it, so the stream keeps their
order; the FETCH loop waits for drained() before it reads more.
A big message's octets (write_octets: FETCH's pieces of a big section) are
Huffman-coded only (zlib's Z_HUFFMAN_ONLY, a block type RFC 1951 3.2.7
allows): such messages are attachments, where LZ77 finds next to nothing (a
base64 one shrinks to 76% either way) at three times the CPU. A FETCH batch
of smaller messages (write_batch) is coded by the main compressor, LZ77 and
all. Either goes in stored blocks (RFC 1951 3.2.4), uncompressed, while the
client takes it faster than zlib would code it (LinkGauge: a LAN, loopback),
where coding would only delay it: mbsync, which always asks for COMPRESS,
pulled 2,000 messages of 20 KB over loopback in 1.56 s coded at level 1 and
in 0.56 s uncompressed. Before Huffman-coded or stored octets the main
compressor is fully flushed (Z_FULL_FLUSH), so what it writes after them
refers to nothing before them: the client's inflater, whose window holds
them, reads the one stream right.
Input: decompressed in pieces of at most `piece` octets, handed on only
while the session reads (not paused), so a small compressed input cannot
expand in memory without bound (a "zip bomb" of a command line meets the
session's line and literal limits a piece at a time, as plaintext would).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from gateway import flow

PIECE = 16384  # octets decompressed at a time (a bound on memory, not a setting of use)
# Writes up to this many octets are compressed on the spot: at most a millisecond or
# so of zlib, less than a trip to the pool and back costs them.
INLINE_MAX = 65536
# A FETCH batch this big or bigger is coded or stored as the gauge says (write_batch);
# a smaller one (flags, a header) is coded: storing it would save next to nothing.
BATCH_GAUGED = 4096
# The coders of octets the gauge decides on (None: stored).
HUFFMAN = "huffman"  # Z_HUFFMAN_ONLY: a big message's octets
LZ77 = "lz77"  # the main compressor, at the session's level: a batch of messages
_log = Logger()


class DeflateTransport:
    """A transport that compresses what is written and passes the rest to the one below."""

    def __init__(self, lower: Any, level: int = 6,
                 run_blocking: Callable[..., defer.Deferred] | None = None,
                 clock: Any = None) -> None:
        self._lower = lower
        # wbits -15: raw deflate without zlib header or checksum (RFC 4978 3).
        self._z = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._huffman = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_HUFFMAN_ONLY)
        self._stored = zlib.compressobj(0, zlib.DEFLATED, -15)
        self.gauge = LinkGauge()
        self._clock = clock  # None: no gauge, octets always coded
        self._octets: _Octets | None = None  # the last written, until the client read it
        self.bytes_in = self.bytes_out = 0  # before compression, after compression
        self._run = run_blocking  # None: everything on the spot (tests, tools)
        # Used by one thread at a time: the reactor's while nothing is queued, else
        # the pool's, in the one job that runs until the queue is empty.
        self._queue: list[bytes | _Octets] = []
        self._busy = False
        self._drained: list[defer.Deferred] = []
        self.closing_later = False  # loseConnection() asked while busy: done once drained
        directlyProvides(self, providedBy(lower))  # ISSLTransport etc. as below

    @property
    def lower(self) -> Any:
        return self._lower

    def write(self, data: bytes) -> None:
        self.writeSequence([data])

    def write_octets(self, data: bytes, coder: str = HUFFMAN) -> None:
        """Message octets: coded by coder, or stored on a fast link (above)."""
        octets = _Octets(data, coder if self._clock is None or self.gauge.worth(coder)
                         else None)
        if self._clock is not None:
            octets.at = self._clock.seconds()
            self._octets = octets
        self.writeSequence([octets])

    def client_read(self) -> None:
        """The client has read all that was written (the session's flow control says
        so): the last octets' time on the link is known."""
        octets, self._octets = self._octets, None
        if octets is not None and self._clock is not None and octets.cost is not None:
            self.gauge.sent(len(octets), self._clock.seconds() - octets.at, octets.coder,
                            octets.cost, octets.left)

    def writeSequence(self, seq: list[bytes | _Octets]) -> None:
        if not self._busy and (self._run is None or sum(map(len, seq)) <= INLINE_MAX):
            flow.write_now(self._lower, self._compress(seq))
            return
        self._queue.extend(seq)
        if not self._busy:
            self._next()

    def _compress(self, seq: list[bytes | _Octets]) -> bytes:
        z = self._z
        out = []
        for d in seq:
            if isinstance(d, _Octets):
                if d.coder == LZ77:  # the main compressor, its window kept
                    coder = z
                else:
                    out.append(z.flush(zlib.Z_FULL_FLUSH))
                    coder = self._huffman if d.coder == HUFFMAN else self._stored
                started = time.perf_counter()
                coded = [coder.compress(d.data), coder.flush(zlib.Z_SYNC_FLUSH)]
                d.cost = (time.perf_counter() - started) / max(len(d.data), 1)
                d.left = sum(map(len, coded)) / max(len(d.data), 1)
                out.extend(coded)
            else:
                out.append(z.compress(d))
        out.append(z.flush(zlib.Z_SYNC_FLUSH))
        self.bytes_in += sum(len(d) for d in seq)
        data = b"".join(out)
        self.bytes_out += len(data)
        return data

    def _next(self) -> None:
        seq, self._queue = self._queue, []
        self._busy = True
        assert self._run is not None
        self._run(self._compress, seq).addBoth(self._compressed)

    def _compressed(self, result: bytes | Failure) -> None:
        if isinstance(result, Failure):  # the stream is broken from here on
            _log.failure("imap compression failed", result)
            self._queue = []
            self._lower.abortConnection()
        else:
            flow.write_now(self._lower, result)
            if self._queue:
                self._next()
                return
        self._busy = False
        if self.closing_later:
            self.closing_later = False
            flow.lose(self._lower)
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    def drained(self) -> defer.Deferred | None:
        """None when every write so far has gone, compressed, to the transport below;
        else a Deferred that fires then."""
        if not self._busy:
            return None
        d: defer.Deferred = defer.Deferred()
        self._drained.append(d)
        return d

    def loseConnection(self) -> None:
        if self._busy:
            self.closing_later = True
        else:
            self._lower.loseConnection()

    def __getattr__(self, name: str) -> Any:
        # Everything else (pause/resume, abortConnection, getPeer, disconnecting,
        # producer, protocol, getHandle ...) is the lower transport's.
        return getattr(self._lower, name)


class _Octets:
    """A queued write_octets() (its own type: the queue keeps writes in order), its
    coder (None: stored), and what the gauge learns of it: when it was written, what
    coding it cost a byte, and the share of it left."""

    __slots__ = ("data", "coder", "at", "cost", "left")

    def __init__(self, data: bytes, coder: str | None) -> None:
        self.data, self.coder = data, coder
        self.at = 0.0
        self.cost: float | None = None  # set once coded, in the pool's thread
        self.left = 1.0

    def __len__(self) -> int:
        return len(self.data)


class LinkGauge:
    """Whether message octets are worth coding on this connection, by each coder.

    Coded, each octet costs the server zlib's time and saves the link's time for
    the share coding removes; stored, it costs nothing and takes the link's whole
    time. Worth it while zlib's time an octet is less than the link's time for what
    it removes: a phone on a mobile network, not a LAN or loopback, where coding
    would only delay the octets (zstd's --adapt follows the same idea). Each write
    measures them: the time from it until the client has read it, less its coding,
    is the link's for the share of it coding left. What a coder costs and leaves is
    its own (Huffman-only on attachments, LZ77 on text); the link is one."""

    def __init__(self) -> None:
        self.link = 0.0  # seconds the client takes for an octet sent as it is
        self.cost: dict[str, float] = {}  # seconds a coder takes to code an octet
        self.left: dict[str, float] = {}  # the share of the octets a coder leaves

    def worth(self, coder: str) -> bool:
        """Whether to code with coder; a coder not measured yet is: its first write
        measures it."""
        cost = self.cost.get(coder)
        return cost is None or cost < (1 - self.left[coder]) * self.link

    def sent(self, octets: int, seconds: float, coder: str | None, cost: float,
             left: float) -> None:
        """A write of `octets` went in `seconds`, of which `cost` an octet coding it
        (coder None, stored: next to nothing), which left the share `left` of it."""
        if octets <= 0:
            return
        if coder is not None:  # what this coder costs and leaves
            if coder not in self.cost:
                self.cost[coder], self.left[coder] = cost, left
            else:
                self.cost[coder] = (self.cost[coder] + cost) / 2
                self.left[coder] = (self.left[coder] + left) / 2
        link = max(seconds / octets - cost, 0.0) / max(left, 0.01)
        self.link = link if not self.link else (self.link + link) / 2


class Inflater:
    """Decompresses input a piece at a time while ready() says the reader wants more."""

    def __init__(self, deliver: Callable[[bytes], Any], ready: Callable[[], bool],
                 piece: int = PIECE) -> None:
        self._z = zlib.decompressobj(-15)
        self._deliver = deliver
        self._ready = ready
        self._piece = piece
        self._pending = b""  # compressed input not yet decompressed
        self._running = self._full = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def feed_later(self, data: bytes) -> None:
        """Hold input to be decompressed at the next feed()."""
        self._pending += data

    def feed(self, data: bytes) -> None:
        """Take compressed input; deliver as much as the reader is ready for.
        zlib.error (corrupt input) goes to the caller."""
        if data:
            self._pending += data
        if self._running:  # called again from deliver(): the loop below goes on
            return
        self._running = True
        try:
            # _full: the last piece filled up, so zlib may hold more output already.
            while (self._pending or self._full) and self._ready():
                out = self._z.decompress(self._pending, self._piece)
                self._pending = self._z.unconsumed_tail
                self._full = len(out) == self._piece
                if self._z.eof and (self._z.unused_data or self._pending):
                    raise zlib.error("data after the end of the compressed stream")
                if out:
                    self._deliver(out)
        finally:
            self._running = False


def write_octets(transport: Any, data: bytes) -> None:
    """A big message's octets: DeflateTransport.write_octets, or the plain write."""
    if isinstance(transport, DeflateTransport):
        transport.write_octets(data)
    else:
        transport.write(data)


def write_batch(transport: Any, seq: list[bytes]) -> None:
    """A FETCH batch: under COMPRESS, one of BATCH_GAUGED octets or more is coded by
    the main compressor or stored, as the gauge says; else a writeSequence."""
    if isinstance(transport, DeflateTransport) and sum(map(len, seq)) >= BATCH_GAUGED:
        transport.write_octets(seq[0] if len(seq) == 1 else b"".join(seq), LZ77)
    else:
        transport.writeSequence(seq)


def client_read(transport: Any) -> None:
    """DeflateTransport.client_read() for a compressing transport; nothing otherwise."""
    if isinstance(transport, DeflateTransport):
        transport.client_read()


def drained(transport: Any) -> defer.Deferred | None:
    """DeflateTransport.drained() for a compressing transport; None for any other (no
    Deferred made: the IMAP session asks after every command)."""
    if isinstance(transport, DeflateTransport):
        return transport.drained()
    return None
