"""The spool: each accepted message and its envelope, on disk before the 250.

Implements ISpool. Layout under <state_dir>/queue/:
  tmp/          files being written
  entries/      ID.msg (the message as received, Received header first)
                ID.env (the envelope as JSON; its presence commits the entry)
  quarantine/   entries that could not be parsed, kept for the admin, never dropped
  spare/        removed entries' files, for new entries to write over (queue/spare.py)

A store writes ID.msg and ID.env in tmp/, makes both durable, renames the
message first and the envelope last, then makes entries/ durable: a crash
leaves either a whole entry or a lone .msg (never answered 250), which
start-up removes. Envelope updates replace ID.env atomically the same way.
Both are calls in steps (gateway/durable.py), so a trip of the batcher makes
all its entries durable together.

A message from SMTP is not stored whole: receive() gives an Incoming
(queue/incoming.py) that writes tmp/ID.msg as DATA arrives; its commit is
the same store, finishing that file instead of writing one (commit_steps).
Start-up removes whatever a crash left in tmp/.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from twisted.logger import Logger
from zope.interface import implementer

from gateway.durable import (
    Steps,
    append_file,
    complete,
    file_written,
    fsync_dir,
    in_thread,
    sync_dir,
    write_all,
    write_file,
    writeback,
)
from gateway.envelope import Envelope, Recipient, valid_queue_id
from gateway.errors import SpoolError
from gateway.interfaces import ISpool
from gateway.queue.incoming import Incoming, spool_error
from gateway.queue.spare import SpareFiles

log = Logger()


@implementer(ISpool)
class Spool:
    def __init__(self, root: Path, reactor, run_blocking=None, run_write=None,
                 writeback_window: int = 0, spare_files: int = 0):
        self.root = Path(root)
        # A streamed message past this many bytes is written back as it arrives.
        self.writeback_window = writeback_window
        self.reactor = reactor
        self.run_blocking = run_blocking or in_thread(reactor)
        # The parts of messages streamed in (receive()): plain writes, no group commit.
        self.run_write = run_write or in_thread(reactor)
        self.tmp = self.root / "tmp"
        self.entries = self.root / "entries"
        self.quarantine_dir = self.root / "quarantine"
        spare_dir = self.root / "spare"
        for d in (self.tmp, self.entries, self.quarantine_dir, spare_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Files of removed entries, reused by new ones: no inode made or freed per message.
        self.spare = SpareFiles(str(spare_dir), spare_files)
        # Plain strings on the per-message path: pathlib showed in profiles.
        self._tmp = str(self.tmp) + os.sep
        self._entries = str(self.entries) + os.sep

    # --- writing ---------------------------------------------------------------

    def store(self, envelope: Envelope, message: bytes):
        """Deferred firing with the queue ID once the entry is durable (in a thread)."""
        return self.run_blocking(self.store_steps, envelope, message)

    def has(self, queue_id: str) -> bool:
        """True when queue_id is a complete entry (blocking: one stat)."""
        return valid_queue_id(queue_id) and os.path.exists(f"{self._entries}{queue_id}.env")

    def store_blocking(self, envelope: Envelope, message: bytes) -> str:
        return complete(self.store_steps, envelope, message)

    def receive(self, queue_id: str, buffer_size: int) -> Incoming:
        """queue_id's message, written to tmp/ as it arrives (queue/incoming.py)."""
        if not valid_queue_id(queue_id):
            raise SpoolError(f"invalid queue ID {queue_id!r}")
        return Incoming(queue_id, f"{self._tmp}{queue_id}.msg", buffer_size,
                        self.run_write, self.run_blocking, self.commit_steps,
                        self.writeback_window)

    def store_steps(self, envelope: Envelope, message: bytes) -> Steps:
        return self.commit_steps(envelope, message)

    def commit_steps(self, envelope: Envelope, tail: bytes, fd: int | None = None,
                     head: bytes | None = None, skip: int = 0) -> Steps:
        """Store envelope's entry, a call in steps. Its message is tail, or, when fd is
        given (tmp/ID.msg open, streamed in by an Incoming), what fd holds plus tail;
        fd is closed here. head (with fd): the message's first skip bytes are
        replaced by head (a header block the sender checks changed)."""
        qid = envelope.queue_id
        tmp_msg, tmp_env = f"{self._tmp}{qid}.msg", f"{self._tmp}{qid}.env"
        try:
            if not valid_queue_id(qid):
                raise SpoolError(f"invalid queue ID {qid!r}")
            if fd is not None and head is not None:
                fd, tail = self._rewrite_head(fd, tmp_msg, head, skip, tail)
            if fd is None:
                # A spare file written over: no new inode, and its blocks reused.
                write_file(tmp_msg, tail, over=self.spare.take(tmp_msg))
            else:
                try:
                    write_all(fd, tail)
                    file_written(fd, tmp_msg)
                finally:
                    os.close(fd)
            write_file(tmp_env, self._encode(envelope), over=self.spare.take(tmp_env))
            yield
            os.rename(tmp_msg, f"{self._entries}{qid}.msg")
            os.rename(tmp_env, f"{self._entries}{qid}.env")
            sync_dir(self.entries)
        except OSError as e:
            for p in (tmp_msg, tmp_env, f"{tmp_msg}.new", f"{self._entries}{qid}.msg"):
                try:
                    os.unlink(p)
                except OSError:
                    pass
            raise spool_error(qid, e) from e
        return qid

    @staticmethod
    def _rewrite_head(fd: int, path: str, head: bytes, skip: int,
                      tail: bytes) -> tuple[int, bytes]:
        """path (open as fd) as a new file: head, then its bytes from skip on; the
        new file's fd, and what of tail is still to be appended. A file cannot
        grow at its front, so this is one copy, done by the kernel
        (copy_file_range) in pieces: no message in memory (queue/incoming.py)."""
        new = f"{path}.new"
        nfd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            wb = writeback(nfd)  # the trip's: the copy of a big message goes out as made
            write_all(nfd, head, wb)
            src = os.open(path, os.O_RDONLY)
            try:
                end = os.fstat(src).st_size
                offset = min(skip, end)
                while offset < end:
                    count = min(end - offset, 1 << 24)
                    try:
                        done = os.copy_file_range(src, nfd, count, offset)
                    except OSError as e:  # a file system without it: in 1 MiB pieces
                        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                           errno.EOPNOTSUPP):
                            raise
                        piece = os.pread(src, min(count, 1 << 20), offset)
                        write_all(nfd, piece)
                        done = len(piece)
                    if done <= 0:
                        raise OSError(errno.EIO, f"{path}: short copy")
                    offset += done
                    if wb is not None:
                        wb.wrote(done)
            finally:
                os.close(src)
            os.rename(new, path)
        except BaseException:
            os.close(nfd)
            raise
        finally:
            os.close(fd)
        return nfd, tail[max(0, skip - end):]

    def update(self, envelope: Envelope) -> None:
        complete(self.update_steps, envelope)

    def update_steps(self, envelope: Envelope) -> Steps:
        qid = envelope.queue_id
        tmp = f"{self._tmp}{qid}.env"
        try:
            write_file(tmp, self._encode(envelope))
            yield
            os.replace(tmp, f"{self._entries}{qid}.env")
            sync_dir(self.entries)
        except OSError as e:
            raise SpoolError(f"{qid}: cannot update envelope: {e}") from e
        try:  # folded into the envelope (and of an older generation): not needed
            os.unlink(f"{self._entries}{qid}.out")
        except FileNotFoundError:
            pass

    def record_steps(self, queue_id: str, generation: int, records: list[tuple[int, dict]]
                     ) -> Steps:
        """Append the state of some recipients (index, Recipient.to_json) beside the
        envelope instead of rewriting it: a list explosion's 10,000-recipient envelope
        would otherwise be encoded again after every batch. load() applies the records
        of the envelope's own generation; a rewrite (update) starts the next one (the
        caller bumps Envelope.generation). A call in steps."""
        qid = queue_id
        lines = b"".join(json.dumps({"g": generation, "i": i, "r": r},
                                    separators=(",", ":")).encode("utf-8") + b"\n"
                         for i, r in records)
        try:
            append_file(f"{self._entries}{qid}.out", lines)
            yield
            sync_dir(self.entries)  # the first record made the file
        except OSError as e:
            raise SpoolError(f"{qid}: cannot record outcomes: {e}") from e

    def remove(self, queue_id: str) -> None:
        # Envelope first: without it the entry no longer exists, whatever else remains.
        # Each file leaves entries/ by a rename into spare/ (or an unlink when spare/
        # is full), as atomic as the unlink it replaces.
        for suffix in (".env", ".msg", ".out"):
            self.spare.give(f"{self._entries}{queue_id}{suffix}")
        # No fsync of the directory: should the removal be lost in a crash, the
        # entry is found again at start and delivered with recovering=True, which
        # the targets use to skip what they already delivered.

    def remove_durably(self, queue_id: str) -> None:
        """remove(), and the removal durable: at once, or with the trip's directory sync
        (gateway/durable.py). For an entry whose last outcomes were never recorded
        (a relayed message, queue/runner.py): its durable removal records them."""
        self.remove(queue_id)
        sync_dir(self.entries)

    @staticmethod
    def _encode(envelope: Envelope) -> bytes:
        return json.dumps(envelope.to_json(), separators=(",", ":")).encode("utf-8")

    # --- reading ---------------------------------------------------------------

    def load(self, queue_id: str) -> Envelope:
        if not valid_queue_id(queue_id):
            raise KeyError(queue_id)
        try:
            with open(f"{self._entries}{queue_id}.env", "rb") as f:
                data = json.loads(f.read())
            envelope = Envelope.from_json(data)
        except FileNotFoundError:
            raise KeyError(queue_id) from None
        except (ValueError, KeyError, TypeError) as e:
            self.quarantine(queue_id, f"unreadable envelope: {e}")
            raise KeyError(queue_id) from e
        envelope.queue_id = queue_id
        self._apply_records(envelope)
        return envelope

    def _apply_records(self, envelope: Envelope) -> None:
        try:
            with open(f"{self._entries}{envelope.queue_id}.out", "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                record = json.loads(line)
                if record["g"] != envelope.generation:
                    continue  # written before the envelope's last rewrite
                i = int(record["i"])
                if 0 <= i < len(envelope.recipients):
                    envelope.recipients[i] = Recipient.from_json(record["r"])
            except (ValueError, KeyError, TypeError):
                continue  # a record cut short by a crash was never acknowledged

    def message_path(self, queue_id: str) -> str:
        return f"{self._entries}{queue_id}.msg"

    def queue_ids(self) -> list[str]:
        ids = []
        for name in os.listdir(self.entries):
            qid, _, suffix = name.partition(".")
            if suffix == "env" and valid_queue_id(qid):
                ids.append(qid)
        return sorted(ids)

    # --- start-up repair -----------------------------------------------------------

    def recover(self) -> None:
        """Remove what a crash left half-written; quarantine what cannot be read."""
        for name in os.listdir(self.tmp):
            (self.tmp / name).unlink()
        names = set(os.listdir(self.entries))
        for name in names:
            qid, _, suffix = name.partition(".")
            if not valid_queue_id(qid) or suffix not in ("msg", "env", "out"):
                self.quarantine_file(self.entries / name, "unexpected file in spool")
            elif suffix == "out" and f"{qid}.env" not in names:
                (self.entries / name).unlink()  # its entry was removed
            elif suffix == "msg" and f"{qid}.env" not in names:
                # Written before a crash, never committed, never answered 250.
                (self.entries / name).unlink()
            elif suffix == "env" and f"{qid}.msg" not in names:
                self.quarantine(qid, "envelope without message")
        fsync_dir(self.entries)

    def quarantine(self, queue_id: str, reason: str) -> None:
        for suffix in (".env", ".msg", ".out"):
            path = self.entries / f"{queue_id}{suffix}"
            if path.exists():
                self.quarantine_file(path, reason)

    def quarantine_file(self, path: Path, reason: str) -> None:
        log.error("quarantined {file}: {reason}", file=path.name, reason=reason)
        os.replace(path, self.quarantine_dir / path.name)
