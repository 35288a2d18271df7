"""POP3 TRANSACTION state: reading the maildrop. access stage.

access/pop3.py's POP3Server (connection, input, AUTHORIZATION, QUIT) mixes in
TransactionCommands for STAT, LIST, UIDL, DELE, RETR and TOP over the store's
Maildrop (a twisted.mail.pop3.IMailbox). RETR and TOP hand the open message
file to a MessageSender, registered as an IPullProducer on the transport, so a
10 MB message goes out in chunks as the client reads and never sits in memory
whole; top_length() measures the part TOP sends. Follows RFC 1939 3
(multi-line responses, byte-stuffing), 5 (TRANSACTION state) and 7 (TOP, UIDL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, BinaryIO

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

if TYPE_CHECKING:
    from gateway.store.maildrop import Maildrop

CHUNK = 64 * 1024


def top_length(fp: BinaryIO, lines: int) -> int:
    """Bytes of fp making up the header, the blank line and `lines` body lines (TOP)."""
    offset, in_header, at_line_start = 0, True, True
    while True:
        if not in_header and lines == 0:
            return offset
        piece = fp.readline(CHUNK)
        if not piece:
            return offset
        offset += len(piece)
        if in_header and at_line_start and piece in (b"\r\n", b"\n"):
            in_header = False
        elif not in_header and piece.endswith(b"\n"):
            lines -= 1
        at_line_start = piece.endswith(b"\n")


@implementer(IPullProducer)
class MessageSender:
    """Streams one message as a POP3 multi-line response, then fires .deferred.

    Byte-exact for CRLF files; a bare LF (a file some other MDA wrote) goes out
    as CRLF. Dot-stuffing (RFC 1939 3) knows whether a chunk starts a line, and
    a CR at the end of a chunk waits for the next one so CRLF is never split.
    .deferred fires True when the terminating ".CRLF" was written, False when
    the transfer was stopped (connection lost).
    """

    def __init__(self, fp: BinaryIO, consumer: Any, limit: int | None, progress: Any) -> None:
        self._fp, self._consumer, self._left, self._progress = fp, consumer, limit, progress
        self._carry = b""
        self._line_start = True
        self._done = False
        self.deferred: defer.Deferred[bool] = defer.Deferred()

    def resumeProducing(self) -> None:
        if self._done:
            return
        self._progress()  # the client is reading: that is not idleness
        want = CHUNK if self._left is None else min(CHUNK, self._left)
        data = self._fp.read(want) if want else b""
        if self._left is not None:
            self._left -= len(data)
        eof = not data
        data, self._carry = self._carry + data, b""
        if not eof and data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        if data:
            if b"\n" in data:
                data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            if self._line_start and data.startswith(b"."):
                data = b"." + data
            data = data.replace(b"\n.", b"\n..")
            self._line_start = data.endswith(b"\n")
            self._consumer.write(data)
        if eof:
            self._done = True
            self._consumer.write(b".\r\n" if self._line_start else b"\r\n.\r\n")
            self._consumer.unregisterProducer()
            self._fp.close()
            self.deferred.callback(True)

    def stopProducing(self) -> None:
        if not self._done:
            self._done = True
            self._fp.close()
            self.deferred.callback(False)


class TransactionCommands:
    """RFC 1939 5, TRANSACTION state: the commands that read the maildrop.

    A mixin for access/pop3.POP3Server (which dispatches to these do_* methods
    after checking state and arity, so self.mbox is open here). _send streams
    RETR/TOP through a MessageSender and holds later commands until it ends.
    """

    mbox: Maildrop | None
    transport: Any
    _sender: MessageSender | None

    if TYPE_CHECKING:
        def successResponse(self, message: Any = b"") -> None: ...
        def failResponse(self, message: Any = b"") -> None: ...
        def resetTimeout(self) -> None: ...
        def sending(self, sender: MessageSender) -> None: ...
        def _wait(self, d: defer.Deferred) -> None: ...

    def _index(self, arg: bytes) -> int | None:
        """0-based index of a live message named by arg, or None after an -ERR."""
        n = int(arg) if arg.isdigit() else 0
        if not 1 <= n <= len(self.mbox):
            self.failResponse(b"No such message")
            return None
        if n - 1 in self.mbox.deleted:
            self.failResponse(b"Message %d already deleted" % n)
            return None
        return n - 1

    def do_STAT(self) -> None:
        # RFC 1939 5: deleted messages are not counted (Twisted counts them).
        sizes = [self.mbox.listMessages(i) for i in self.mbox.live()]
        self.successResponse(b"%d %d" % (len(sizes), sum(sizes)))

    def do_LIST(self, arg: bytes | None = None) -> None:
        if arg is not None:
            i = self._index(arg)
            if i is not None:
                self.successResponse(b"%d %d" % (i + 1, self.mbox.listMessages(i)))
            return
        live = self.mbox.live()
        out = [b"+OK %d messages\r\n" % len(live)]
        out += [b"%d %d\r\n" % (i + 1, self.mbox.listMessages(i)) for i in live]
        self.transport.writeSequence(out + [b".\r\n"])

    def do_UIDL(self, arg: bytes | None = None) -> None:
        if arg is not None:
            i = self._index(arg)
            if i is not None:
                self.successResponse(b"%d %s" % (i + 1, self.mbox.getUidl(i)))
            return
        out = [b"+OK\r\n"]
        out += [b"%d %s\r\n" % (i + 1, self.mbox.getUidl(i)) for i in self.mbox.live()]
        self.transport.writeSequence(out + [b".\r\n"])

    def do_DELE(self, arg: bytes) -> None:
        i = self._index(arg)
        if i is not None:
            self.mbox.deleteMessage(i)
            self.successResponse(b"Message %d deleted" % (i + 1))

    def do_RETR(self, arg: bytes) -> None:
        i = self._index(arg)
        if i is not None:
            self._send(i, None)

    def do_TOP(self, arg: bytes, lines: bytes) -> None:
        i = self._index(arg)
        if i is None:
            return
        if not lines.isdigit():
            return self.failResponse(b"Bad line count")
        self._send(i, int(lines))

    def _send(self, i: int, top: int | None) -> None:
        try:
            fp = self.mbox.getMessage(i)
        except FileNotFoundError:
            return self.failResponse(b"Message %d has been removed by another client" % (i + 1))
        limit = None
        if top is not None:
            limit = top_length(fp, top)
            fp.seek(0)
            self.successResponse(b"Top of message follows")
        else:
            self.mbox.retrieved.add(i)
            self.successResponse(b"%d octets" % self.mbox.listMessages(i))
        self._sender = MessageSender(fp, self.transport, limit, self.resetTimeout)
        self.sending(self._sender)
        self._wait(self._sender.deferred)
