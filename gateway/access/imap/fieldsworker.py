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
unlinked temporary file as the child's stdin), a marshal of the answers
(tuples of bytes and ints) out (a pipe).
"""

from __future__ import annotations

import gc
import marshal
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The child's share of the heads: the parent also writes every row to the index
# (about a fifth of the work per message) and starts the child (~0.1 s), so the
# child takes more than half (100,000 messages: 1.2 s with 0.6 against 2.3 s alone).
CHILD_SHARE = 0.6
_SEP = b"\0"  # between paths in: no file name holds a NUL
_ROOT = str(Path(__file__).resolve().parents[3])  # the directory that holds gateway/


def _warn(text: str, **fields: Any) -> None:
    # twisted.logger is imported here, not at the top: the child imports this module
    # too, and twisted's import would cost it 0.15 s of its start.
    from twisted.logger import Logger

    Logger(namespace=__name__).warn(text, **fields)


class Child:
    """One running child."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def answers(self, count: int) -> list | None:
        """The child's answer per path (fields, or None: the parent does that one), or
        None when the child failed as a whole (then the parent does them all)."""
        try:
            out, err = self.proc.communicate()
        except OSError as e:
            _warn("search fields child: {error}", error=e)
            return None
        if self.proc.returncode != 0:
            _warn("search fields child ended with {code}: {err}",
                  code=self.proc.returncode, err=err.decode("utf-8", "replace")[-500:])
            return None
        try:
            found = marshal.loads(out)
        except (ValueError, EOFError, TypeError) as e:
            _warn("search fields child gave no usable answer: {error}", error=e)
            return None
        if not isinstance(found, list) or len(found) != count:
            _warn("search fields child answered {n} of {count}",
                  n=len(found) if isinstance(found, list) else -1, count=count)
            return None
        return found

    def stop(self) -> None:
        """End the child if it still runs (the search failed before its answers)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def start(paths: Sequence[str], head_read: int) -> Child | None:
    """A child working out the fields of each of paths; None if it cannot start."""
    code = (f"import sys; sys.path.insert(0, {_ROOT!r}); "
            "from gateway.access.imap.fieldsworker import main; main()")
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
                                    stdin=given, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, close_fds=True)
    except OSError as e:
        _warn("search fields child could not start: {error}", error=e)
        return None
    return Child(proc)


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


def work(paths: list[bytes], head_read: int) -> list:
    """searchfields.of_head of each file's head; None where the parent must look."""
    from gateway.access.imap.searchfields import of_head

    out: list = []
    for path in paths:
        try:
            head = read_head(path, head_read)
            out.append(None if head is None else of_head(head))
        except Exception:  # noqa: BLE001 - the parent parses it and meets the error itself
            out.append(None)
    return out


def main() -> None:
    """The child: paths on stdin (NUL-separated), the answers' marshal on stdout."""
    gc.disable()  # tuples of bytes and ints: no cycles to collect
    head_read = int(sys.argv[1])
    data = sys.stdin.buffer.read()
    paths = data.split(_SEP) if data else []
    sys.stdout.buffer.write(marshal.dumps(work(paths, head_read)))
    sys.stdout.buffer.flush()
