"""A spooled message sent as SMTP DATA in pieces, as fast as the connection takes them.

Used by deliver/relay.py for every outbound transaction (issue 11: memory per
message is a buffer, not the message). The body is what DATA carries: an
optional prefix (DKIM-Signature / ARC fields made for this message) and the
spool file, dot-stuffed on the fly (outbound.DotStuffer, RFC 5321 4.5.2).

Back-pressure is Twisted's producer/consumer: the stream registers with the
transport as a streaming producer (IPushProducer); the transport pauses it
when its write buffer is full and resumes it once drained, so at most one
piece is read ahead of what the kernel took. Reads run in a pool thread
(run_blocking): disk work never blocks the reactor.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet import defer, error
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from gateway.deliver.outbound import DotStuffer

# One read: large enough that a 35 MB message takes ~140 thread hops, small
# enough that eight concurrent relays hold 2 MB between them.
PIECE = 256 * 1024

# A message up to this size is read whole in the one thread hop that also
# measures it (read_small), and DATA writes it from memory: no hop to open
# the file, none to read it, none to find its end. Three hops were a third of
# the runner's work per relayed message (bench/RESULTS.md, 2026-11-27).
SMALL = 64 * 1024


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY)


def read_small(path: str, limit: int = SMALL) -> tuple[int, bytes | None]:
    """The file's size, and its bytes when it has at most limit of them (blocking)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            return size, None
        data = f.read(limit + 1)
    # A spool file never changes once committed; if it somehow did, stream it.
    return (size, data) if len(data) == size else (len(data), None)


class SpoolStream:
    """One DATA body: prefix + the file at path, dot-stuffed, written with back-pressure.
    Called once per attempt (a cached connection that failed, the next MX host): each
    call sends it afresh."""

    def __init__(self, path: str, prefix: bytes, run_blocking: Callable[..., defer.Deferred],
                 piece: int = PIECE, content: bytes | None = None):
        self.path = path
        self.prefix = prefix
        self.run_blocking = run_blocking
        self.piece = piece
        # The whole file, when the caller read it already (read_small): sent from memory.
        self.content = content
        self.last: _Sender | None = None  # the latest attempt's producer (for tests)

    def __call__(self, transport) -> defer.Deferred:
        """Write it all to transport; fires when written (ConnectionLost if stopped)."""
        if self.content is not None:
            # Small: one write, left to the transport's buffer (at most SMALL bytes).
            stuffer = DotStuffer()
            transport.write(stuffer.feed(self.prefix) + stuffer.feed(self.content)
                            + stuffer.end())
            return defer.succeed(None)
        self.last = _Sender(self, transport)
        return defer.ensureDeferred(self.last.send())


@implementer(IPushProducer)
class _Sender:
    """One attempt: the transport's producer while the body is being written."""

    def __init__(self, body: SpoolStream, transport):
        self.body = body
        self.transport = transport
        self._paused: defer.Deferred | None = None
        self._stopped = False

    async def send(self) -> None:
        body, transport = self.body, self.transport
        stuffer = DotStuffer()
        fd = await body.run_blocking(_open, body.path)
        transport.registerProducer(self, True)
        try:
            transport.write(stuffer.feed(body.prefix))
            offset = 0
            while True:
                if self._paused is not None:
                    await self._paused
                if self._stopped:
                    raise error.ConnectionLost("stopped while sending the message")
                data = await body.run_blocking(os.pread, fd, body.piece, offset)
                if self._stopped:
                    raise error.ConnectionLost("stopped while sending the message")
                if not data:
                    break
                offset += len(data)
                transport.write(stuffer.feed(data))
            transport.write(stuffer.end())
        finally:
            os.close(fd)
            if not self._stopped:
                transport.unregisterProducer()

    # --- IPushProducer ---------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = defer.Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()
