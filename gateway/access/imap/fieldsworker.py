"""SEARCH's header fields of many message files, worked out in a child process.

Part of access/imap, beside searchfields.py (whose fill() uses it). The
first SEARCH FROM/TO/CC/BCC/SUBJECT/SENT* of a folder reads and parses the
head of every message once (searchfields.of_head); on a 100,000-message
INBOX that is seconds of one core, and the GIL keeps a thread from sharing
it. Past `[imap] search_process_min` messages, fill() hands the heads of
a share of them (CHILD_SHARE) to one child process started for that search
(DESIGN.md: "more processes, not more threads") and parses the rest itself
meanwhile; the child ends when its share is done, so it costs no memory
between searches.

The child only reads and parses: the index is written by the gateway alone
(its Folder lock guards it). It reads a file's first head_read octets once
and answers None wherever it cannot be sure (a file gone or renamed meanwhile,
a header block longer than one read, any error): the parent reads those
itself as it always did (Folder.heads finds a renamed file again). A child
that cannot start or fails as a whole only means the parent parses its
share too.

Between the two, nothing but bytes the parent made: the file paths in (an
unlinked temporary file as the child's stdin), marshal records out (a pipe),
one per BATCH paths: (how many paths, the positions among them the parent
must do, then the fields of the others packed as the index keeps them:
store/fieldpack.py, the five text columns and the days). The parent adds
the UIDs and stores the pack as it is: the child's share costs the parent
no work per message.
"""

from __future__ import annotations

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

# The child's share of the heads. The parent also lists what is missing, starts
# the child (~0.1 s, and the child's imports ~0.2 s of its own) and stores the
# packs; the child pays its start: about half each (bench/RESULTS.md, 2026-11-27
# "packed search fields").
CHILD_SHARE = 0.55
_SEP = b"\0"  # between paths in: no file name holds a NUL
BATCH = 5000  # answers per marshal record out: what the parent holds at a time
_ROOT = str(Path(__file__).resolve().parents[3])  # the directory that holds gateway/


def _warn(text: str, **fields: Any) -> None:
    # twisted.logger is imported here, not at the top: the child imports this module
    # too, and twisted's import would cost it 0.15 s of its start.
    from twisted.logger import Logger

    Logger(namespace=__name__).warn(text, **fields)


class Child:
    """One running child: its answers come in batches (batches())."""

    def __init__(self, proc: subprocess.Popen, errors: IO[bytes]) -> None:
        self.proc, self.errors = proc, errors

    def batches(self) -> Iterator[tuple]:
        """The child's answers in path order, BATCH paths at a time, each a tuple
        (paths, [positions left to the parent], *five text columns, days) (the
        module's docstring). Ends early, logged, if the child fails: the caller does
        the paths no batch answered. One batch is held at a time, so the answers of
        60,000 messages never sit in this process's memory at once."""
        assert self.proc.stdout is not None
        while True:
            try:
                batch = marshal.load(self.proc.stdout)
            except EOFError:
                return
            except (ValueError, TypeError, OSError) as e:
                _warn("search fields child gave no usable answer: {error}", error=e)
                return
            if not (isinstance(batch, tuple) and len(batch) == 8):
                _warn("search fields child gave a {kind}, not a batch", kind=type(batch).__name__)
                return
            yield batch

    def stop(self) -> None:
        """End the child (if it still runs: the search failed or it answered wrongly),
        reap it, and log why it failed if it did."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        if self.proc.returncode not in (0, -signal.SIGKILL):
            self.errors.seek(0)
            _warn("search fields child ended with {code}: {err}", code=self.proc.returncode,
                  err=self.errors.read()[-500:].decode("utf-8", "replace"))
        self.errors.close()


def start(paths: Sequence[str], head_read: int) -> Child | None:
    """A child working out the fields of each of paths; None if it cannot start."""
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
    """The child: paths on stdin (NUL-separated); on stdout, a marshal record (a
    batch, work()) per BATCH paths, in their order."""
    gc.disable()  # tuples of bytes and ints: no cycles to collect
    head_read = int(sys.argv[1])
    data = sys.stdin.buffer.read()
    paths = data.split(_SEP) if data else []
    out = sys.stdout.buffer
    for batch in work(paths, head_read):
        marshal.dump(batch, out)
    out.flush()
