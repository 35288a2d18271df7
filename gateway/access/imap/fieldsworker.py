"""SEARCH's header fields of many message files, worked out in a child process.

Part of access/imap, beside searchfields.py (whose fill() uses it). The
first SEARCH FROM/TO/CC/BCC/SUBJECT/SENT* of a folder reads and parses the
head of every message once (searchfields.of_head); on a 100,000-message
INBOX that is seconds of one core, and the GIL keeps a thread from sharing
it. Past `[imap] search_process_min` messages, fill() hands all the heads
to one child process started for that search (DESIGN.md: "more processes,
not more threads"), which works from the last one back, while the search
thread works from the first one on; they stop where they meet (fill() asks
the child how far it got, without waiting, between its own steps), so
neither waits for the other however busy the machine is. The child is
ended then, so it costs no memory between searches.

The child only reads and parses: the index is written by the gateway alone
(its Folder lock guards it). It reads a file's first head_read octets once
and answers None wherever it cannot be sure (a file gone or renamed meanwhile,
a header block longer than one read, any error): the parent reads those
itself as it always did (Folder.heads finds a renamed file again). A child
that cannot start or fails as a whole only means the parent parses its
share too.

Between the two, nothing but bytes the parent made: the file paths in (an
unlinked temporary file as the child's stdin), records out (a pipe), one per
BATCH paths, each a marshal dump after its length (4 octets, little-endian):
(how many paths, the positions among them the parent must do, then the
fields of the others packed as the index keeps them: store/fieldpack.py,
the five text columns and the days). The parent adds the UIDs and stores
the pack as it is: the child's share costs the parent no work per message.
"""

from __future__ import annotations

import fcntl
import gc
import marshal
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from gateway.store import fieldpack

_SEP = b"\0"  # between paths in: no file name holds a NUL
BATCH = 1000  # paths per record out: how far the parent sees the child's progress
_LENGTH = 4  # octets of a record's length
_PIPE_SIZE = 1 << 20  # the pipe out holds ~10,000 messages' records: the child never
# waits for a parent busy parsing between two looks (F_SETPIPE_SZ, Linux)
_ROOT = str(Path(__file__).resolve().parents[3])  # the directory that holds gateway/


def _warn(text: str, **fields: Any) -> None:
    # twisted.logger is imported here, not at the top: the child imports this module
    # too, and twisted's import would cost it 0.15 s of its start.
    from twisted.logger import Logger

    Logger(namespace=__name__).warn(text, **fields)


class Child:
    """One running child; ready() gives the records it has sent so far."""

    def __init__(self, proc: subprocess.Popen, errors: IO[bytes]) -> None:
        self.proc, self.errors = proc, errors
        assert proc.stdout is not None
        self._fd = proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._buf = bytearray()
        self.over = False  # it ended, failed or answered wrongly: nothing more comes

    def ready(self) -> list[tuple]:
        """The records (the module's docstring) the child has sent since the last
        call, in path order; never waits. A record that is not one ends them, logged:
        the caller does the paths no record answered."""
        if self.over:
            return []
        while True:
            try:
                chunk = os.read(self._fd, _PIPE_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                _warn("search fields child could not be read: {error}", error=e)
                chunk = b""
            if not chunk:
                self.over = True  # what is in the buffer still counts
                break
            self._buf += chunk
        out: list[tuple] = []
        buf = self._buf
        while len(buf) >= _LENGTH:
            n = int.from_bytes(buf[:_LENGTH], "little")
            if len(buf) < _LENGTH + n:
                break
            try:
                record = marshal.loads(bytes(buf[_LENGTH:_LENGTH + n]))
            except (ValueError, TypeError, EOFError) as e:
                _warn("search fields child gave no usable answer: {error}", error=e)
                record = None
            del buf[:_LENGTH + n]
            if not (isinstance(record, tuple) and len(record) == 8):
                if record is not None:
                    _warn("search fields child gave a {kind}, not a record",
                          kind=type(record).__name__)
                self.over = True
                break
            out.append(record)
        if self.over:
            buf.clear()
        return out

    def stop(self) -> None:
        """End the child (if it still runs: the search thread got to its part first, or
        failed), reap it, and log why it failed if it did."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        if self.proc.returncode not in (0, -signal.SIGKILL):
            self.errors.seek(0)
            _warn("search fields child ended with {code}: {err}", code=self.proc.returncode,
                  err=self.errors.read()[-500:].decode("utf-8", "replace"))
        self.errors.close()


def start(paths: Sequence[str], head_read: int) -> Child | None:
    """A child working out the fields of each of paths (in their order); None if it
    cannot start."""
    code = (f"import sys; sys.path.insert(0, {_ROOT!r}); "
            "from gateway.access.imap.fieldsworker import main; main()")
    errors = tempfile.TemporaryFile()  # read only if it fails: a pipe could fill and block it
    try:
        # The paths reach the child through an unlinked file, not a pipe: written in
        # one call, the search thread starts on its own share at once. (Through a
        # pipe, a thread feeding it took the GIL back for every 64 KiB the child read,
        # waiting each time for the parsing thread to let go: the child began late.)
        with tempfile.TemporaryFile() as given:
            given.write(_SEP.join(map(os.fsencode, paths)))
            given.flush()
            given.seek(0)
            # -I: no current directory, user site or PYTHON* variables in the child's
            # imports; the gateway is found where this process found it (_ROOT).
            proc = subprocess.Popen([sys.executable, "-I", "-c", code, str(head_read)],
                                    stdin=given, stdout=subprocess.PIPE, stderr=errors,
                                    close_fds=True)
    except OSError as e:
        errors.close()
        _warn("search fields child could not start: {error}", error=e)
        return None
    assert proc.stdout is not None
    try:
        fcntl.fcntl(proc.stdout.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
    except OSError:
        pass  # a smaller pipe: the child may wait for the parent's next look, no more
    return Child(proc, errors)


def read_head(path: bytes, head_read: int) -> bytes | None:
    """The file's first head_read octets if the header block ends within them, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        head = os.read(fd, head_read)
    finally:
        os.close(fd)
    if len(head) == head_read and b"\n\n" not in head and b"\n\r\n" not in head:
        return None  # a longer header block: the parent reads it (Folder.read_head)
    return head


def work(paths: list[bytes], head_read: int) -> Iterator[tuple]:
    """searchfields.of_head of each file's head, packed BATCH paths at a time (the
    module's docstring); the positions where the parent must look are listed."""
    from gateway.access.imap.searchfields import of_head

    for start in range(0, len(paths), BATCH):
        got: list[tuple] = []
        left: list[int] = []
        for n, path in enumerate(paths[start:start + BATCH]):
            try:
                head = read_head(path, head_read)
                fields = None if head is None else of_head(head)
            except Exception:  # noqa: BLE001 - the parent parses it and meets the error itself
                fields = None
            if fields is None:
                left.append(n)
            else:
                got.append(fields)
        columns = list(zip(*got, strict=True)) if got else [()] * 6
        yield (min(BATCH, len(paths) - start), left,
               *(fieldpack.join(c) for c in columns[:5]), fieldpack.ints(columns[5], "i"))


def main() -> None:
    """The child: paths on stdin (NUL-separated); on stdout, a record (work(), after
    its length) per BATCH paths, in their order."""
    gc.disable()  # tuples of bytes and ints: no cycles to collect
    head_read = int(sys.argv[1])
    data = sys.stdin.buffer.read()
    paths = data.split(_SEP) if data else []
    out = sys.stdout.buffer
    for batch in work(paths, head_read):
        record = marshal.dumps(batch)
        out.write(len(record).to_bytes(_LENGTH, "little") + record)
        out.flush()  # the parent sees how far this child got at once
