"""File recipients: a "file" Route's message appended to an mbox file.

Implements IDeliveryTarget for kind "file". Only the aliases file (or an
:include: file that [aliases] allow_include_files admits) names such a path;
resolve/ decided it, this appends, the way procmail and Postfix's local(8) do:
  - "From sender date" separator and mboxrd quoting (">From " lines get one
    more ">"), LF line ends, a blank line after each message, so mutt and
    Python's mailbox.mbox read it;
  - both locks readers expect: a dot-lock (path.lock, made with O_EXCL) and
    an fcntl lock on the file itself, waited for up to [mbox] lock_timeout;
  - written and fsync'd before success; on any failure the file is truncated
    back to its old length, so it never holds half a message, and the
    delivery goes back to the queue;
  - no symlinks followed and nothing but regular files written;
  - the spool file is read and appended a piece (1 MiB) at a time, quoted on
    the fly (MboxQuoter), so a 34 MB message costs a buffer (issue 11).
Runs in a pool thread: locks and fsync wait, the reactor must not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator

from twisted.internet import defer
from zope.interface import implementer

from gateway.config import MboxSettings
from gateway.deliver.maildir import local_file
from gateway.envelope import Envelope
from gateway.errors import MailError
from gateway.interfaces import IDeliveryTarget, Route

_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)
# The start of a line that may still become ">*From " once more bytes come.
_UNDECIDED = re.compile(rb">*(F(r(o(m)?)?)?)?")
# A dot-lock older than this is left over from a crash (procmail's default).
STALE_LOCK = 300.0
# Bytes of the spool file read at a time (issue 11: a buffer, not the message).
PIECE = 1024 * 1024


class MboxQuoter:
    """mboxrd quoting and LF line ends over a message given in pieces: a piece border
    may fall anywhere (inside "\r\n", inside ">From "), the output is the same as for
    the whole message at once. Only the start of a line that is still undecided
    (">>Fro") is held back, so memory is a piece, whatever the message's size."""

    def __init__(self) -> None:
        self._carry = b""
        self._mid_line = False  # the next byte continues a line already written
        self._last = b""

    def feed(self, piece: bytes) -> bytes:
        data = self._carry + piece
        cut = data.rfind(b"\n") + 1
        body, tail = data[:cut], data[cut:]
        hold = b""
        if tail.endswith(b"\r"):  # maybe half of a CRLF
            tail, hold = tail[:-1], b"\r"
        tail_at_start = bool(body) or not self._mid_line
        if tail_at_start and _UNDECIDED.fullmatch(tail):
            tail, hold = b"", tail + hold
        self._carry = hold
        return self._emit(body + tail)

    def end(self) -> bytes:
        """The rest, a final LF if the message lacked one, and the blank line after it."""
        out = self._emit(self._carry)
        self._carry = b""
        if not (out or self._last).endswith(b"\n"):
            out += b"\n"
        return out + b"\n"

    def _emit(self, text: bytes) -> bytes:
        if not text:
            return text
        text = text.replace(b"\r\n", b"\n")
        if self._mid_line:
            end = text.find(b"\n") + 1
            if end == 0:
                self._last = text
                return text
            text = text[:end] + _FROM_LINE.sub(rb">\1", text[end:])
        else:
            text = _FROM_LINE.sub(rb">\1", text)
        self._mid_line = not text.endswith(b"\n")
        self._last = text[-1:]
        return text


def separator(sender: str, now: float) -> bytes:
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(now))
    return f"From {sender or 'MAILER-DAEMON'} {stamp}\n".encode()


def entry_pieces(sender: str, pieces: Iterable[bytes], now: float) -> Iterator[bytes]:
    """One mbox message in pieces: separator, LF line ends, mboxrd quoting, blank line."""
    quoter = MboxQuoter()
    yield separator(sender, now)
    for piece in pieces:
        out = quoter.feed(piece)
        if out:
            yield out
    yield quoter.end()


def mbox_entry(sender: str, message: bytes, now: float) -> bytes:
    """One mbox message (entry_pieces of a message at hand)."""
    return b"".join(entry_pieces(sender, [message], now))


def file_pieces(head: bytes, path: str) -> Iterator[bytes]:
    """head, then the file at path a piece at a time (blocking reads)."""
    yield head
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            yield piece


class _DotLock:
    def __init__(self, path: str, timeout: float):
        self.path = path + ".lock"
        self.timeout = timeout
        self.held = False

    def __enter__(self) -> _DotLock:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.close(fd)
                self.held = True
                return self
            except FileExistsError:
                try:
                    if time.time() - os.stat(self.path).st_mtime > STALE_LOCK:
                        os.unlink(self.path)
                        continue
                except FileNotFoundError:
                    continue
            if time.monotonic() > deadline:
                raise MailError(451, "4.2.1", f"{self.path} held too long (mbox.lock_timeout)")
            time.sleep(0.05)  # another writer holds it: poll, as procmail does

    def __exit__(self, *exc) -> None:
        if self.held:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _lock(fd: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() > deadline:
            raise MailError(451, "4.2.1", f"{path} locked too long (mbox.lock_timeout)")
        time.sleep(0.05)


def append(path: str, entry: bytes | Iterable[bytes], lock_timeout: float) -> None:
    """Append entry (bytes, or its pieces) to the mbox at path: all of it, durably, or
    nothing (blocking). Pieces are written as they come, under the locks."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK, 0o600)
    except OSError as e:
        permanent = e.errno in (errno.ELOOP, errno.EISDIR, errno.ENOENT, errno.EACCES)
        raise MailError(550 if permanent else 451, "5.2.0" if permanent else "4.2.0",
                        f"cannot open {path}: {e.strerror}") from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MailError(550, "5.2.0", f"{path} is not a regular file")
        with _DotLock(path, lock_timeout):
            _lock(fd, path, lock_timeout)
            size = os.fstat(fd).st_size
            try:
                for piece in [entry] if isinstance(entry, bytes) else entry:
                    view = memoryview(piece)
                    while view:
                        view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as e:
                os.ftruncate(fd, size)
                os.fsync(fd)
                raise MailError(451, "4.2.0", f"cannot write {path}: {e.strerror}") from e
    finally:
        os.close(fd)  # releases the fcntl lock


@implementer(IDeliveryTarget)
class MboxDelivery:
    kind = "file"

    def __init__(self, settings: MboxSettings, clock,
                 run_blocking: Callable[..., defer.Deferred]):
        self.settings = settings
        self.clock = clock
        self.run_blocking = run_blocking

    def deliver(self, envelope: Envelope, route: Route, message_path: str,
                recovering: bool) -> defer.Deferred:
        return self.run_blocking(self._deliver, envelope, route, message_path,
                                 self.clock.seconds())

    def _deliver(self, envelope: Envelope, route: Route, message_path: str, now: float) -> None:
        # The spool file in pieces (issue 11), after the trace headers local_file makes.
        message = local_file(envelope, route, message_path)
        sender = envelope.sender if route.sender is None else route.sender
        pieces = iter([message]) if isinstance(message, bytes) else \
            file_pieces(message.head, message.path)
        append(route.path, entry_pieces(sender, pieces, now), self.settings.lock_timeout)
