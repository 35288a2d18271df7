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
  - no symlinks followed and nothing but regular files written.
Runs in a pool thread: locks and fsync wait, the reactor must not.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Callable

from twisted.internet import defer
from zope.interface import implementer

from gateway.config import MboxSettings
from gateway.deliver.maildir import local_copy
from gateway.envelope import Envelope
from gateway.errors import MailError
from gateway.interfaces import IDeliveryTarget, Route

_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)
# A dot-lock older than this is left over from a crash (procmail's default).
STALE_LOCK = 300.0


def mbox_entry(sender: str, message: bytes, now: float) -> bytes:
    """One mbox message: separator, LF line ends, mboxrd quoting, blank line after."""
    body = message.replace(b"\r\n", b"\n")
    body = _FROM_LINE.sub(rb">\1", body)
    if not body.endswith(b"\n"):
        body += b"\n"
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(now))
    return f"From {sender or 'MAILER-DAEMON'} {stamp}\n".encode() + body + b"\n"


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


def append(path: str, entry: bytes, lock_timeout: float) -> None:
    """Append entry to the mbox at path: all of it, durably, or nothing (blocking)."""
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
                view = memoryview(entry)
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
        message = local_copy(envelope, route, message_path)
        sender = envelope.sender if route.sender is None else route.sender
        append(route.path, mbox_entry(sender, message, now), self.settings.lock_timeout)
