"""File ranges sent to a plaintext TCP client with sendfile(2), in order with other writes.

Used by access/imap (FETCH of a big message): the literal goes from the
Maildir file's page cache straight to the socket, never through Python
objects. Twisted's tcp transport has no sendfile; this adds it to one
connection by making it a SendfileServer (a tcp.Server that can also queue
a FileRange), only for a plain tcp.Server: over TLS (STARTTLS, the front's
own TLS) or COMPRESS the bytes must pass through Python anyway, and the
caller reads them a piece at a time (FileRange.take) and writes those
(can_send_files() says which). Spill puts octets made on the way (a decoded
BINARY part) in unnamed temporary files, so they go as ranges too.

Ordering: once a FileRange is queued, everything written after it (bytes
and further ranges) waits in the connection's own queue behind it, and
bytes Twisted held before go first. Twisted's buffer is used only while no
range is queued; it is empty the whole time one is.

A client on this host (same_host: loopback, or the host's own address: a
webmail, a local mbsync) gets the ranges copied instead ([imap]
sendfile_local = false, the default). sendfile's socket buffers point at the
page cache, and without a NIC to read them by DMA it is the reader's own copy
that fetches them from DRAM, on the reader's core: imaplib took 0.75-0.79 ms
of CPU a MiB so against 0.59-0.67 ms when the server copies through a buffer
that stays in its cache (pread, then send: COPY_CHUNK), and read 10-25%
faster (bench/RESULTS.md, 2026-11-27 19:17-19:25). The copy costs the gateway
about 0.2 ms a MiB, on the other core; Dovecot copies the same way.

Back-pressure: the queued bytes and the octets of files still to send count
as the transport's buffer (_isSendBufferFull), so the registered streaming
producer (the session's flow.ReadGate) is paused while they exceed
bufferSize and resumed once all is sent, as for bytes. What a session holds
for a client that does not read is then the open file descriptors of the
ranges it queued, not their bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import tempfile
from collections import deque
from collections.abc import Iterable
from typing import Any

from twisted.internet import main, tcp
from twisted.python.compat import lazyByteSlice

from gateway import flow

# Octets one doWrite may hand to sendfile(2) (or copy) before the reactor serves
# another connection: large, as the kernel copies page to socket without Python.
SENDFILE_CHUNK = 1 << 20
# Octets of a range copied through the buffer at a time for a client on this host:
# small enough to stay in the core's cache between pread and send.
COPY_CHUNK = 1 << 18
_copy_buffer: memoryview | None = None  # the reactor thread's, made on first use


class FileRange:
    """count octets of an open file from offset; owns fd (closed once sent or dropped)."""

    __slots__ = ("fd", "offset", "count")

    def __init__(self, fd: int, offset: int, count: int) -> None:
        self.fd = fd
        self.offset = offset
        self.count = count

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    __del__ = close  # a range dropped on a path that forgot it: never leak the descriptor

    def __len__(self) -> int:
        return self.count

    def take(self, most: int) -> bytes:
        """The next octets of the range, at most `most`; the range then starts after
        them. Blocking (a pool thread): for a transport that cannot send the file."""
        want = min(most, self.count)
        data = read_range(self.fd, self.offset, want)
        self.offset += want
        self.count -= want
        return data


def read_range(fd: int, offset: int, count: int) -> bytes:
    """count octets of the open file fd from offset (blocking); EIO if it is shorter."""
    chunks, got = [], 0
    while got < count:
        chunk = os.pread(fd, count - got, offset + got)
        if not chunk:
            raise OSError(errno.EIO, "file shorter than announced")
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Spill:
    """Octets made on the way (access/imap: a message's BINARY parts, decoded) kept in
    unnamed temporary files in `directory` (O_TMPFILE where the system has it, so no
    name shows), one per key, handed out as FileRanges: sent like a stored file's
    octets, never held, and gone with the last descriptor."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.files: dict[object, int] = {}

    def range(self, key: object, value: bytes | None, start: int, count: int) -> FileRange:
        """count octets of value from start; value is written once per key (None: the
        key was filled already)."""
        if key not in self.files:
            self.fill(key, [value or b""])
        return FileRange(os.dup(self.files[key]), start, count)

    def fill(self, key: object, pieces: Iterable[bytes]) -> tuple[int, bool]:
        """Write pieces as key's file, one at a time (never joined); (its octets,
        whether a NUL is among them)."""
        size, nul = 0, False
        with tempfile.TemporaryFile(dir=self.directory) as f:
            for piece in pieces:
                f.write(piece)
                size += len(piece)
                nul = nul or b"\0" in piece
            f.flush()
            self.files[key] = os.dup(f.fileno())
        return size, nul

    def read(self, key: object, start: int, count: int) -> bytes:
        """count octets of key's file from start (blocking)."""
        return read_range(self.files[key], start, count)

    def close(self) -> None:
        for fd in self.files.values():
            os.close(fd)
        self.files.clear()


def can_send_files(transport: Any) -> bool:
    """True for a plaintext tcp.Server connection (no TLS, no wrapper like COMPRESS)."""
    return (hasattr(os, "sendfile") and type(transport) in (tcp.Server, SendfileServer)
            and not transport.TLS and transport.connected)


def same_host(transport: Any) -> bool:
    """True when the peer is on this host: a loopback address, or the connection's own
    local address (a client that connects to the host's public address from the host)."""
    try:
        peer = ipaddress.ip_address(transport.getPeer().host)
        local = ipaddress.ip_address(transport.getHost().host)
    except (AttributeError, ValueError):
        return False  # not an IP connection

    def plain(ip: Any) -> Any:
        return getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 is 127.0.0.1

    return plain(peer).is_loopback or plain(peer) == plain(local)


def send(transport: Any, pieces: list[bytes | FileRange], copy: bool = False) -> None:
    """Write pieces in order; FileRanges by sendfile, or copied through a buffer when
    copy is true (a client on this host). can_send_files must be true."""
    if type(transport) is tcp.Server:
        # The same connection, now able to send files. Its session set TCP_NODELAY at
        # connect (connection.no_delay): the small pieces between two files (a
        # literal's ")\r\n", the next one's head) go at once, not after an ACK.
        transport.__class__ = SendfileServer
    transport.copy_files = copy
    run: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, FileRange):
            if run:
                transport.writeSequence(run)
                run = []
            transport.write_file(piece)
        else:
            run.append(piece)
    if len(run) == 1:  # the common case, a batch of small messages: at once if it can
        flow.write_now(transport, run[0])
    elif run:
        transport.writeSequence(run)


def close_all(pieces: list[Any]) -> None:
    """Close the FileRanges among pieces that were never handed to a transport."""
    for piece in pieces:
        if isinstance(piece, FileRange):
            piece.close()


class SendfileServer(tcp.Server):
    """tcp.Server with write_file(); made from one by send() (never TLS: can_send_files)."""

    _queue: deque | None = None  # bytes and FileRanges behind the first range, in order
    _queued = 0  # their octets (file octets not yet sent included)
    copy_files = False  # ranges copied through a buffer, not by sendfile (send's copy)

    @property
    def sending_files(self) -> bool:
        """Files (and what came after them) wait in our queue: a write must join it
        (flow.write_now looks before it sends at once)."""
        return self._queue is not None

    def write_file(self, piece: FileRange) -> None:
        if not self.connected or self._writeDisconnected or self.TLS:
            piece.close()
            return
        if self._queue is None:
            # Bytes Twisted holds go first: they move to the head of our queue.
            self._queue = deque()
            held = lazyByteSlice(self.dataBuffer, self.offset) if self.dataBuffer else b""
            for chunk in [held, *self._tempDataBuffer]:
                if chunk:
                    self._queue.append(chunk)
                    self._queued += len(chunk)
            self.dataBuffer, self.offset = b"", 0
            self._tempDataBuffer, self._tempDataLen = [], 0
        self._queue.append(piece)
        self._queued += piece.count
        self._maybePauseProducer()
        self.startWriting()

    def write(self, data: bytes) -> None:
        if self._queue is None:
            return super().write(data)
        self.writeSequence([data])

    def writeSequence(self, iovec: Any) -> None:
        if self._queue is None:
            return super().writeSequence(iovec)
        if not self.connected or self._writeDisconnected:
            return
        for chunk in iovec:
            if not isinstance(chunk, bytes):
                raise TypeError("Data must be bytes")
            if chunk:
                self._queue.append(chunk)
                self._queued += len(chunk)
        self._maybePauseProducer()
        self.startWriting()

    def _isSendBufferFull(self) -> bool:
        return self._queued > self.bufferSize or super()._isSendBufferFull()

    def doWrite(self) -> Any:
        queue = self._queue
        if queue is None:
            return super().doWrite()
        budget = SENDFILE_CHUNK
        while queue and budget > 0:
            head = queue[0]
            if isinstance(head, FileRange):
                asked = min(head.count, COPY_CHUNK if self.copy_files else SENDFILE_CHUNK)
                sent = self._send_file(head, asked)
            else:
                asked, sent = 0, self.writeSomeData(head)
            if isinstance(sent, BaseException):
                return sent
            if sent == 0:
                return None  # the socket is full: doWrite again once writable
            self._queued -= sent
            budget -= sent
            if isinstance(head, FileRange):
                head.offset += sent
                head.count -= sent
                if head.count == 0:
                    head.close()
                    queue.popleft()
                elif sent < asked:
                    return None  # the socket took less: full, no read for nothing
            elif sent == len(head):
                queue.popleft()
            else:
                queue[0] = lazyByteSlice(head, sent)
        if queue:
            return None  # more next time the socket is writable
        # All sent: back to Twisted's buffer, whose doWrite (empty now) resumes the
        # producer, or closes if loseConnection was asked for meanwhile.
        self._queue = None
        return super().doWrite()

    def _send_file(self, piece: FileRange, count: int) -> int | BaseException:
        try:
            if self.copy_files:
                return self._copy_file(piece, count)
            sent = os.sendfile(self.socket.fileno(), piece.fd, piece.offset, count)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return main.CONNECTION_LOST  # the peer is gone, or the file unreadable
        if sent == 0:  # end of file before the octets announced: the stream is broken
            return main.CONNECTION_LOST
        return sent

    def _copy_file(self, piece: FileRange, count: int) -> int | BaseException:
        """pread then send, through one buffer the reactor thread reuses (count is at
        most COPY_CHUNK, and a regular file's pread gives all of it short of its end);
        what the socket did not take is read again next time."""
        global _copy_buffer
        if _copy_buffer is None:
            _copy_buffer = memoryview(bytearray(COPY_CHUNK))
        got = os.preadv(piece.fd, [_copy_buffer[:count]], piece.offset)
        if got < count:  # end of file before the octets announced: the stream is broken
            return main.CONNECTION_LOST
        return self.socket.send(_copy_buffer[:got])

    def connectionLost(self, reason: Any) -> None:
        if self._queue is not None:
            close_all(list(self._queue))
            self._queue = None
            self._queued = 0
        super().connectionLost(reason)
