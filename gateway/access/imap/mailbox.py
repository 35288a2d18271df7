"""A session's selected mailbox: message sequence numbers over a shared store Folder.

Part of access/imap, over store/folder.py. RFC 3501 numbers messages per
session: another session's EXPUNGE must not renumber this one's messages
until this session is told (7.4.1), and new mail becomes visible only with
an EXISTS response. So each View keeps its own sequence -> UID list and
collects what others changed (folder_changed, called by the Folder under its
lock from any thread); take_updates() turns that into untagged responses at
the moments RFC 3501 allows (NOOP, IDLE, command completion; EXPUNGE never
during FETCH, STORE or SEARCH, 7.4.1).

Keywords: a client learns the flags a mailbox may hold from FLAGS and
PERMANENTFLAGS (RFC 3501 7.2.6, 7.1) and must see a keyword there before a
FETCH shows it. The folder's keyword_names only grows, so the View remembers
how many it has announced and announces them again (new_keywords()) before
the first FETCH that could show a newer one, whichever session set it.

RFC 7162: once the session has CONDSTORE on, each FETCH telling of a flag
change carries the message's MODSEQ; once QRESYNC is on, expunges are told
as VANISHED (UIDs) instead of EXPUNGE (sequence numbers).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence

from gateway.access.imap import keywordlimit
from gateway.access.imap.wire import compact
from gateway.config import ImapSettings
from gateway.store.folder import Folder

SYSTEM_FLAGS = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft $Forwarded"


class View:
    def __init__(self, folder: Folder, name: str, readonly: bool,
                 on_wake: Callable[[], None], settings: ImapSettings | None = None) -> None:
        self.folder = folder
        self.settings = settings or ImapSettings()  # the keyword bounds (keywordlimit.py)
        self.name = name
        self.readonly = readonly
        self.on_wake = on_wake
        # Sequence number - 1 -> UID. Never changed in place: it is often the
        # folder's shared snapshot (Folder.snapshot(), see _share()).
        self.uids: Sequence[int] = ()
        self.recent: set[int] = set()
        self.no_recent = False  # a list archive: its posts are \Recent to no reader (shared.py)
        self._expunged: set[int] = set()
        self._flagged: set[int] = set()
        self._added = False
        self.announced = 0  # how many of folder.keyword_names FLAGS has told
        self.condstore = False  # RFC 7162: MODSEQ in flag updates
        self.qresync = False  # RFC 7162: VANISHED instead of EXPUNGE
        self.rev2 = False  # RFC 9051: an IMAP4rev2 session knows no \Recent
        # RFC 5182 SEARCHRES: the UIDs SEARCH RETURN (SAVE) kept, "$" in later commands.
        # Per selection (a new SELECT starts empty, 2.1); expunged ones drop out of it
        # when it is used, since only UIDs still in this view are looked up.
        self.saved: list[int] = []

    # -- FolderListener ---------------------------------------------------------

    def folder_changed(self, expunged: list[int], flagged: list[int], added: list[int]) -> None:
        self._expunged.update(expunged)
        self._flagged.update(flagged)
        self._added = self._added or bool(added)

    def wake(self) -> None:
        self.on_wake()

    # -- life -------------------------------------------------------------------

    def open(self) -> None:
        """Attach to the folder and take the first snapshot (blocking: a thread)."""
        folder = self.folder
        with folder.lock:
            folder.sync()
            folder.attach(self)
            self.uids = folder.snapshot()
            self.recent = self._recent()
            self._expunged.clear()
            self._flagged.clear()
            self._added = False

    def _recent(self) -> set[int]:
        """The messages \\Recent in this session (RFC 3501 2.3.2): SELECT claims those no
        session has seen, so no other session gets them; EXAMINE shows them without
        claiming, as it must not change the mailbox (RFC 3501 6.3.2)."""
        folder = self.folder
        if self.no_recent or self.rev2:  # rev2: claims none, so rev1 sessions get them
            return set()
        return set(folder.recent) if self.readonly else folder.claim_recent()

    def close(self) -> None:
        self.folder.detach(self)

    def pending(self) -> bool:
        return bool(self._expunged or self._flagged or self._added or self.folder.gone
                    or len(self.folder.keyword_names) != self.announced)

    @property
    def gone(self) -> bool:
        """The folder was deleted or replaced (store/folder.py lose()): the session must
        leave it, as Dovecot does, rather than answer from its old messages."""
        return self.folder.gone

    # -- FLAGS and PERMANENTFLAGS ------------------------------------------------

    def flag_responses(self) -> list[bytes]:
        """FLAGS and OK [PERMANENTFLAGS] naming every keyword the folder knows
        (RFC 3501 7.2.6, 7.1); \\* says clients may make new ones (none read-only, nor
        once the folder holds [imap] max_keywords_per_folder: keywordlimit.py)."""
        names = list(self.folder.keyword_names)  # a copy: other threads append to it
        self.announced = len(names)
        flags = SYSTEM_FLAGS + b"".join(b" " + n.encode("ascii", "replace") for n in names)
        room = b"" if keywordlimit.full(self.folder, self.settings) else b" \\*"
        permanent = b"" if self.readonly else flags + room
        return [b"* FLAGS (" + flags + b")",
                b"* OK [PERMANENTFLAGS (" + permanent + b")] Flags permitted"]

    def new_keywords(self) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS again if the folder learned a keyword since."""
        if len(self.folder.keyword_names) == self.announced:
            return []
        return self.flag_responses()

    # -- numbering --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.uids)

    def largest(self, uid: bool) -> int:
        if not self.uids:
            return 0
        return self.uids[-1] if uid else len(self.uids)

    def select(self, ranges: list[tuple[int, int]], uid: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) of the messages a sequence or UID set names, in order."""
        out: list[tuple[int, int]] = []
        uids = self.uids
        for lo, hi in ranges:
            if uid:
                start, stop = bisect_left(uids, lo), bisect_right(uids, hi)
            else:
                start, stop = max(lo, 1) - 1, min(hi, len(uids))
            out.extend((i + 1, uids[i]) for i in range(start, stop))
        return out

    def saved_pairs(self) -> list[tuple[int, int]]:
        """(sequence number, UID) of the saved search result still here, in order."""
        return sorted((n, u) for u in self.saved if (n := self.seq(u)) is not None)

    def seq(self, uid: int) -> int | None:
        i = bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def flags(self, uid: int) -> list[str] | None:
        flags = self.folder.flags(uid)
        if flags is None:
            return None
        if uid in self.recent:
            flags.append("\\Recent")
        return flags

    # -- telling the client -----------------------------------------------------

    def take_updates(self, allow_expunge: bool) -> list[bytes]:
        """Untagged responses for what other sessions and programs changed."""
        folder = self.folder
        with folder.lock:
            lines = self.new_keywords()  # before any FETCH below shows a new keyword
            if allow_expunge and self._expunged:
                gone = self._expunged
                lines += self._expunge_lines(gone)
                self._expunged = set()
                self.uids = self._share([u for u in self.uids if u not in gone])
                self.recent -= gone
            if self._added:
                self._added = False
                last = self.uids[-1] if self.uids else 0
                new = folder.uids[bisect_right(folder.uids, last):]
                if new:
                    self.uids = self._share([*self.uids, *new])
                    self.recent |= self._recent()
                    lines.append(b"* %d EXISTS" % len(self.uids))
                    if not self.rev2:  # RFC 9051 has no RECENT response
                        lines.append(b"* %d RECENT" % len(self.recent))
            if self._flagged:
                for uid in sorted(self._flagged):
                    n, flags = self.seq(uid), self.flags(uid)
                    if n is not None and flags is not None:
                        lines.append(b"* %d FETCH (UID %d FLAGS (%s)%s)"
                                     % (n, uid, " ".join(flags).encode(), self.modseq_item(uid)))
                self._flagged = set()
        return lines

    def _share(self, uids: list[int]) -> Sequence[int]:
        """The folder's shared snapshot when it numbers the messages as uids does,
        else uids. With no expunge left untold, uids holds only UIDs the folder
        still has, so the same length means the same list."""
        snapshot = self.folder.snapshot()
        if not self._expunged and len(snapshot) == len(uids) \
                and snapshot[-1:] == array("I", uids[-1:]):
            return snapshot
        return uids

    def modseq_item(self, uid: int) -> bytes:
        """' MODSEQ (n)' for a FETCH response once CONDSTORE is on (RFC 7162 3.1.4)."""
        m = self.folder.by_uid.get(uid)
        return b" MODSEQ (%d)" % m.modseq if self.condstore and m is not None else b""

    def _expunge_lines(self, gone: set[int]) -> list[bytes]:
        """EXPUNGE responses, from the end so lower numbers hold; or one VANISHED
        with QRESYNC on (RFC 7162 3.2.10)."""
        known = [u for u in sorted(gone) if self.seq(u) is not None]
        if self.qresync:
            return [b"* VANISHED " + compact(known)] if known else []
        return [b"* %d EXPUNGE" % self.seq(u) for u in reversed(known)]

    def forget(self, uids: list[int]) -> list[bytes]:
        """EXPUNGE responses for this session's own expunge or move of uids."""
        gone = set(uids)
        lines = self._expunge_lines(gone)
        self._expunged -= gone
        self.uids = self._share([u for u in self.uids if u not in gone])
        self.recent -= gone
        self._flagged -= gone
        return lines
