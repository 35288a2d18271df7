"""One logged-in user's folders, as IMAP sees them: LIST, STATUS, APPEND, COPY/MOVE.

Part of access/imap, over store/folders.py (Maildir++ FolderSet) and
store/folder.py. Every method here blocks on the disk and is run by the
server in the reactor's thread pool. Folder names arrive decoded from
modified UTF-7 (wire.decode_mailbox); the store validates them as paths.
Hierarchy delimiter "." (Maildir++), one personal namespace "" (RFC 2342).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from gateway.access.imap import keywordlimit
from gateway.access.imap.mailbox import View
from gateway.access.imap.shared import SharedNamespace
from gateway.access.imap.wire import No, Upload
from gateway.config import ImapSettings
from gateway.durable import write_synced
from gateway.store.folder import Folder, new_unique, transfer
from gateway.store.folders import DELIMITER, FolderNameError, FolderSet, canonical


def pattern_matcher(pattern: str) -> Callable[[str], bool]:
    """RFC 3501 6.3.8: "*" matches anything, "%" anything but the delimiter.

    Matched by simulating the pattern as a set of positions (a Thompson NFA),
    so one name costs O(len(name) * len(pattern)) whatever the pattern: a
    backtracking regex of "*a*a*a...b" is exponential and a client could
    freeze the process with one LIST or LSUB.
    """
    size = len(pattern)

    def closure(states: set[int]) -> set[int]:
        # A wildcard may match nothing: being before it is also being after it.
        out = set()
        for i in sorted(states):
            while True:
                out.add(i)
                if i < size and pattern[i] in "*%":
                    i += 1
                    continue
                break
        return out

    start = closure({0})

    def match(name: str) -> bool:
        states = start
        for c in name:
            step = set()
            for i in states:
                if i == size:
                    continue
                p = pattern[i]
                if p == "*" or (p == "%" and c != DELIMITER):
                    step.add(i)
                elif p == c:
                    step.add(i + 1)
            if not step:
                return False
            states = closure(step)
        return size in states

    return match


def _parents(names: list[str]) -> set[str]:
    """Every level above the names ("a" and "a.b" for "a.b.c")."""
    out: set[str] = set()
    for name in names:
        levels = name.split(DELIMITER)
        out.update(DELIMITER.join(levels[:i]) for i in range(1, len(levels)))
    return out


def _children(name: str, exist_set: set[str], parents: set[str]) -> list[str]:
    """RFC 3348 / RFC 5258 CHILDREN: \\HasChildren, \\HasNoChildren, or neither."""
    if name in parents:
        return ["\\HasChildren"]
    return ["\\HasNoChildren"] if name in exist_set else []


def _attributes(name: str, exist_set: set[str], parents: set[str]) -> list[str]:
    """LIST attributes of a name: a level with folders under it but no folder of its
    own is \\Noselect (Maildir++ has no such folder), a name of nothing \\NonExistent."""
    attrs = []
    if name not in exist_set:
        attrs.append("\\Noselect" if name in parents else "\\NonExistent")
    return attrs + _children(name, exist_set, parents)


class Account:
    def __init__(self, address: str, folders: FolderSet,
                 shared: SharedNamespace | None = None,
                 settings: ImapSettings | None = None) -> None:
        self.address = address
        self.folders = folders
        self.shared = shared or SharedNamespace(None, address)
        self.settings = settings or ImapSettings()  # the [imap] limits (keywords)
        self._tmp = os.path.join(folders.root, "tmp", "")  # upload_path()'s folder

    def _open(self, name: str, missing: str = "NONEXISTENT") -> Folder:
        return self._open_any(name, missing)[0]

    def _open_any(self, name: str, missing: str = "NONEXISTENT") -> tuple[Folder, bool]:
        """(folder, True for a list archive): an archive first (shared.py), any other
        name is a personal folder."""
        folder = self.shared.open(name)
        if folder is not None:
            return folder, True
        return self._open_personal(name, missing), False

    def _open_personal(self, name: str, missing: str) -> Folder:
        try:
            folder = self.folders.open(name)
        except FolderNameError as e:
            raise No(f"[CANNOT] {e}") from e
        if folder is None:
            raise No(f"[{missing}] No such folder")
        return folder

    # -- folders ------------------------------------------------------------------

    def list(self, reference: str, pattern: str, subscribed: bool) -> list[tuple[str, list[str]]]:
        """(name, attributes) for LIST or LSUB, INBOX first (RFC 3501 6.3.8, 6.3.9)."""
        full = canonical(reference + pattern)
        matcher = pattern_matcher(full)
        existing = self.folders.names()
        exist_set, parents = set(existing), _parents(existing)
        pool = self.folders.subscribed() if subscribed else existing
        # A "%" can match a level whose folder does not exist: RFC 3501 lists it \Noselect.
        candidates = list(dict.fromkeys(pool + sorted(parents - exist_set)))
        out = []
        if subscribed:
            out = self._lsub_parents(pool, matcher) if "%" in full else []
            candidates = pool
        for name in candidates:
            if not matcher(name):
                continue
            attrs = _attributes(name, exist_set, parents)
            special = self.folders.special_use(name)
            if special:
                attrs.append(special)
            out.append((name, attrs))
        out = self.shared.merge(out, matcher, subscribed)
        out.sort(key=lambda item: (item[0] != "INBOX", item[0]))
        return out

    def list_extended(self, reference: str, patterns: list[str], only_subscribed: bool,
                      recursive: bool, return_subscribed: bool
                      ) -> list[tuple[str, list[str], bool]]:
        """(name, attributes, CHILDINFO SUBSCRIBED) for LIST-EXTENDED (RFC 5258): every
        pattern's answer once; SUBSCRIBED selects subscribed names (\\NonExistent when
        no such folder); RECURSIVEMATCH adds the names matched whose subscribed
        descendants the patterns do not match (CHILDINFO, 3.5)."""
        matchers = [pattern_matcher(canonical(reference + p)) for p in patterns]

        def matches(name: str) -> bool:
            return any(m(name) for m in matchers)

        subscribed = self.folders.subscribed()
        marked = set(subscribed) if only_subscribed or return_subscribed else set()
        found: dict[str, list[str]] = {}
        childinfo: set[str] = set()
        if not only_subscribed:
            for p in patterns:
                for name, attrs in self.list(reference, p, False):
                    found.setdefault(name, attrs)
        else:
            existing = self.folders.names()
            exist_set, parents = set(existing), _parents(existing)
            for name in subscribed:
                if matches(name):
                    attrs = [] if name in exist_set else ["\\NonExistent"]
                    found[name] = attrs + _children(name, exist_set, parents)
                elif recursive:
                    levels = name.split(DELIMITER)
                    for i in range(1, len(levels)):
                        parent = DELIMITER.join(levels[:i])
                        if matches(parent):
                            childinfo.add(parent)
            for name in childinfo - found.keys():
                found[name] = _attributes(name, exist_set, parents)
            for name, attrs in self.shared.merge([], matches, True):
                found.setdefault(name, attrs)
        out = []
        for name, attrs in found.items():
            if name in marked:
                attrs = [*attrs, "\\Subscribed"]
            out.append((name, attrs, name in childinfo))
        out.sort(key=lambda item: (item[0] != "INBOX", item[0]))
        return out

    @staticmethod
    def _lsub_parents(subscribed: list[str], matcher: Callable[[str], bool]
                      ) -> list[tuple[str, list[str]]]:
        """RFC 3501 6.3.9: when "%" stops short of a subscribed name, LSUB answers with
        the level it matches, flagged \\Noselect, unless that level is subscribed itself
        (it is listed as such then); whether a folder of that name exists does not matter."""
        pool = set(subscribed)
        found: dict[str, None] = {}
        for name in subscribed:
            levels = name.split(DELIMITER)
            for i in range(1, len(levels)):
                parent = DELIMITER.join(levels[:i])
                if parent not in pool and matcher(parent) and not matcher(name):
                    found[parent] = None
        return [(name, ["\\Noselect"]) for name in found]

    def create(self, name: str) -> None:
        name = name.rstrip(DELIMITER)  # RFC 3501 6.3.3: a trailing delimiter only says "parent"
        self.shared.refuse_change(name, "CREATE", new=True)
        try:
            made = self.folders.create(name)
        except FolderNameError as e:
            raise No(f"[CANNOT] {e}") from e
        if not made:
            raise No("[ALREADYEXISTS] Folder already exists")

    def delete(self, name: str, tell_children: bool = False) -> None:
        """tell_children: NO [HASCHILDREN] for a name that is no folder but has folders
        below it (RFC 9051 6.3.5, 7.1; an IMAP4rev2 session) instead of [NONEXISTENT]."""
        if canonical(name) == "INBOX":
            raise No("[CANNOT] INBOX cannot be deleted")
        self.shared.refuse_change(name, "DELETE", new=False)
        try:
            if not self.folders.delete(name):
                below = canonical(name).rstrip(DELIMITER) + DELIMITER
                if tell_children and any(n.startswith(below) for n in self.folders.names()):
                    raise No("[HASCHILDREN] Only the folders below it exist; delete them "
                             "first")
                raise No("[NONEXISTENT] No such folder")
        except FolderNameError as e:
            raise No(f"[CANNOT] {e}") from e

    def rename(self, old: str, new: str) -> None:
        if canonical(old) == "INBOX":
            return self._rename_inbox(new)
        self.shared.refuse_change(old, "RENAME", new=False)
        self.shared.refuse_change(new, "RENAME", new=True)
        try:
            if not self.folders.exists(old):
                raise No("[NONEXISTENT] No such folder")
            if not self.folders.rename(old, new):
                raise No("[ALREADYEXISTS] Target folder exists")
        except FolderNameError as e:
            raise No(f"[CANNOT] {e}") from e

    def _rename_inbox(self, new: str) -> None:
        """RFC 3501 6.3.5: every INBOX message moves to a new folder, INBOX stays, empty.
        Folders below INBOX stay where they are. The moves are renames (transfer), so
        a crash half-way leaves each message in one folder or the other."""
        new = new.rstrip(DELIMITER)
        if canonical(new) == "INBOX":
            raise No("[CANNOT] INBOX cannot be renamed to itself")
        self.create(new)
        inbox = self._open_personal("INBOX", "NONEXISTENT")
        target = self._open_personal(new, "NONEXISTENT")
        inbox.sync(force=True)  # everything there now, new/ included
        transfer(inbox, target, list(inbox.uids), move=True)

    def subscribe(self, name: str, on: bool) -> None:
        if self.shared.find(name) is not None:  # archives are always subscribed (shared.py)
            if on:
                return
            raise No("[CANNOT] A list archive stays subscribed while you may read it")
        try:
            self.folders.subscribe(name) if on else self.folders.unsubscribe(name)
        except FolderNameError as e:
            raise No(f"[CANNOT] {e}") from e

    def status(self, name: str, items: list[str]) -> list[tuple[str, int]]:
        folder = self._open(name)
        values = {"MESSAGES": lambda: len(folder.uids), "RECENT": lambda: len(folder.recent),
                  "UIDNEXT": lambda: folder.uidnext, "UIDVALIDITY": lambda: folder.uidvalidity,
                  "UNSEEN": folder.unseen, "HIGHESTMODSEQ": lambda: folder.highestmodseq,
                  # RFC 8438 STATUS=SIZE: the sum of RFC822.SIZE, from the index alone.
                  "SIZE": folder.by_uid.total_size,
                  # RFC 9051 6.3.11 (IMAP4rev2): the messages marked \Deleted.
                  "DELETED": lambda: folder.by_uid.count("T")}
        with folder.lock:
            return [(item, values[item]()) for item in items]

    # -- selecting ----------------------------------------------------------------

    def select(self, name: str, readonly: bool, view_factory) -> View:
        """view_factory(folder, readonly): a list archive opens read-only (shared.py)."""
        folder, shared = self._open_any(name)  # one answer: an archive is never writable
        view = view_factory(folder, readonly or shared)
        view.no_recent = shared
        view.open()
        return view

    # -- quota (RFC 9208) ---------------------------------------------------------

    def quota(self):
        """The account's store/quota.py Usage, None when it has no limit."""
        if not self.folders.limit():
            return None  # no limit: nothing to count
        return self.folders.usage()

    def _check_quota(self, adding: int) -> None:
        usage = self.quota()
        if usage is not None and not usage.allows(adding):
            # RFC 9208 4.3.1: the command would go over the limit; nothing was stored.
            raise No("[OVERQUOTA] Mailbox full: quota exceeded")

    # -- adding messages ----------------------------------------------------------

    def upload_path(self) -> str:
        """Where an APPEND literal is spooled: tmp/ of the user's Maildir (same file system).
        A str, made once per APPEND in the reactor thread: no Path arithmetic there."""
        return self._tmp + new_unique() + ".append"

    @staticmethod
    def stage(upload: Upload, data: bytes | bytearray | None, sync: bool) -> None:
        """Write an APPEND message held in memory (data) to upload.path, or take the one
        already streamed there (data None); with sync, its data is on disk on return.

        Runs in the thread pool as soon as the literal's last octet is in, while the
        client still sends the command's end: the sync (a journal commit) overlaps
        that round trip instead of following it, and the reactor thread never
        creates, writes or closes the file of a message held in memory. When the
        command was complete before the write was done, this thread then stores the
        message too (Upload.leave_to_stage): no second pool call, no thread woken.
        """
        try:
            if data is not None and sync:
                write_synced(upload.path, data)  # O_DSYNC: create, write, sync in two calls
            elif data is not None:
                with open(upload.path, "wb") as f:
                    f.write(data)
            elif sync:
                fd = os.open(upload.path, os.O_RDONLY)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            upload.synced = sync
        except BaseException as e:
            upload.error = e
            raise
        finally:
            upload.stage_done()

    def append(self, name: str, upload: Upload, flags: list[str],
               date: int | None) -> tuple[int, int]:
        """Store an uploaded message; returns (UIDVALIDITY, UID) for APPENDUID (RFC 4315).
        In the stage's thread once it has written the message, or a pool call of its own
        (commands.py do_APPEND)."""
        try:
            self.shared.refuse_write(name, self.folders.exists)
            folder = self._open_personal(name, "TRYCREATE")  # writes: never an archive
            self._check_quota(upload.size)
            if upload.staged is not None:
                # Staged by a pool thread that took it before this call (the pool runs
                # calls in the order given), done by now but for a race with its end.
                upload.done.wait()
                if upload.error is not None:
                    raise upload.error
            if not upload.synced:  # its data on disk before its name (RFC 3501 6.3.11: OK
                fd = os.open(upload.path, os.O_RDONLY)  # only once it is in the mailbox)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            with folder.lock:  # the check and the change as one (keywordlimit.py)
                keywordlimit.check(folder, flags, self.settings)
                uid = folder.add_file(upload.path, flags, date, "rename")
            upload.adopted = True  # renamed into the folder: no file left to remove
        except BaseException:
            if upload.staged is not None:
                upload.done.wait()  # else the file could be made after its removal
            Path(upload.path).unlink(missing_ok=True)
            raise
        if uid is None:  # renamed from under us: nothing left to remove
            raise No("[SERVERBUG] Message vanished while being stored")
        return folder.uidvalidity, uid

    def copy(self, view: View, uids: list[int], name: str, move: bool) -> tuple[int, list]:
        """COPY or MOVE; returns (target UIDVALIDITY, [(source UID, target UID)])."""
        self.shared.refuse_write(name, self.folders.exists)
        target = self._open_personal(name, "TRYCREATE")  # writes: never an archive
        if not move:  # a MOVE within the account changes nothing of its usage
            sizes = (view.folder.by_uid.get(u) for u in uids)
            self._check_quota(sum(m.size for m in sizes if m is not None))
        # The keywords the messages carry must fit the target's bounds, checked with
        # both folders locked (in transfer()'s order; the locks are re-entrant) so no
        # other session takes the last keyword slot in between (keywordlimit.py).
        first, second = sorted((view.folder, target), key=lambda f: str(f.path))
        with first.lock, second.lock:
            carried = (m.kw.split(" ") for u in uids
                       if (m := view.folder.by_uid.get(u)) is not None and m.kw)
            keywordlimit.check(target, [k for kws in carried for k in kws], self.settings)
            pairs = transfer(view.folder, target, uids, move, origin=view)
        return target.uidvalidity, pairs
