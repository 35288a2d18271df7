"""The shared namespace of one IMAP user: mailing-list archives, read-only.

Part of access/imap, beside account.py (the personal folders), which asks
this module first for every name. RFC 2342 NAMESPACE announces it as
(("Lists." ".")): a client shows a top-level "Lists" with one folder per
list archive the user may read ("Lists.dev"). Which ones comes from an
ISharedFolders (gateway/lists/archive.py, wired by service.py), asked again
at each LIST/STATUS/SELECT, so a member who leaves loses the folder at once.
The messages live in the list's archive Maildir, opened as one store Folder
through the archive's IMailStore (open_folder), so UIDs and UIDVALIDITY come
from the same index code as a personal folder's.

Read-only to everyone (owners too): SELECT opens it as EXAMINE does
([READ-ONLY]); STORE, EXPUNGE and MOVE out are refused by the selected
state's read-only check; APPEND, COPY/MOVE into it, CREATE/DELETE/RENAME in
the namespace get NO [NOPERM] (RFC 5530). \\Seen is therefore not kept for
a shared folder: every message shows unseen to every reader, each time.

A personal folder whose name starts with "Lists." (made before this
namespace existed) stays reachable: a name that is no archive here falls
through to the personal folders, and can be renamed out of the namespace.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.access.imap.wire import No
from gateway.interfaces import ISharedFolders, SharedFolder
from gateway.store.folder import Folder
from gateway.store.folders import DELIMITER

# "Lists" rather than Dovecot's "Shared"/"Public": it says what is inside, and
# Thunderbird shows the namespace root as an ordinary (unselectable) folder.
PREFIX = "Lists"
_FORBIDDEN = set("*%") | {chr(c) for c in range(32)} | {"\x7f"}


def _usable(name: str) -> bool:
    """A list name that makes a sane folder name (no wildcard, no empty level)."""
    return not any(c in _FORBIDDEN for c in name) and all(name.split(DELIMITER))


class SharedNamespace:
    """One user's view of the shared namespace. Blocking methods (pool threads)."""

    def __init__(self, source: ISharedFolders | None, user: str) -> None:
        self.source = source
        self.user = user

    def namespace(self) -> bytes:
        """The shared namespace part of a NAMESPACE response (RFC 2342 5)."""
        if self.source is None:
            return b"NIL"
        return b'(("%s%s" "%s"))' % (PREFIX.encode(), DELIMITER.encode(), DELIMITER.encode())

    def claims(self, name: str) -> bool:
        """True when name lies in the shared namespace ("Lists" or below it)."""
        return self.source is not None and (
            name == PREFIX or name.startswith(PREFIX + DELIMITER))

    def folders(self) -> dict[str, SharedFolder]:
        """Full IMAP name ("Lists.dev") -> the archive, for what the user may read now."""
        if self.source is None:
            return {}
        out = {}
        for shared in self.source.readable(self.user):
            if _usable(shared.name):
                out[PREFIX + DELIMITER + shared.name] = shared
        return out

    def find(self, name: str) -> SharedFolder | None:
        return self.folders().get(name) if self.claims(name) else None

    def open(self, name: str) -> Folder | None:
        """The archive's Folder, synced; None when name is no archive this user reads."""
        shared = self.find(name)
        if shared is None:
            return None
        folder = shared.store.open_folder(shared.mailbox)
        # No reader owns a post, so it is \Recent to none (RFC 3501 2.3.2 leaves
        # to the server which session sees \Recent); moving new posts to cur/
        # keeps new/, which each sync lists, short.
        folder.claim_recent()
        return folder

    # -- LIST / LSUB (RFC 3501 6.3.8, 6.3.9; RFC 3348 CHILDREN) ------------------------

    def merge(self, personal: list[tuple[str, list[str]]], matches: Callable[[str], object],
              subscribed: bool) -> list[tuple[str, list[str]]]:
        """personal's LIST/LSUB answer with the archives that matches() accepts.

        Archives count as subscribed (no client has to find them first); the
        levels above them ("Lists") are \\Noselect, as RFC 3501 lists a level
        that holds folders but is none (in LSUB only where "%" stops at it, 6.3.9).
        """
        archives = self.folders()
        if not archives:
            return personal
        parents: set[str] = set()
        for name in archives:
            levels = name.split(DELIMITER)
            parents.update(DELIMITER.join(levels[:i]) for i in range(1, len(levels)))
        found: dict[str, list[str]] = {}
        for name in archives:
            if matches(name):
                found[name] = ["\\HasChildren" if name in parents else "\\HasNoChildren"]
        out = []
        for name, attrs in personal:
            if name in found:
                continue  # an archive shadows a personal folder of the same name
            if name in parents:  # a personal folder that is also a level above an archive
                attrs = [a for a in attrs if a not in ("\\HasNoChildren", "\\NonExistent")]
                attrs += [] if "\\HasChildren" in attrs else ["\\HasChildren"]
                parents.discard(name)
            out.append((name, attrs))
        for name in parents:
            # LSUB: a level only where "%" stopped short of a subscribed archive below it.
            hides = any(a.startswith(name + DELIMITER) and a not in found for a in archives)
            if matches(name) and (not subscribed or hides):
                found[name] = ["\\Noselect", "\\HasChildren"]
        return out + list(found.items())

    # -- writes are refused ---------------------------------------------------------------

    def refuse_write(self, name: str, personal_exists: Callable[[str], bool]) -> None:
        """NO [NOPERM] for APPEND/COPY/MOVE into name when it is shared, not personal."""
        if not self.claims(name):
            return
        if self.find(name) is not None or not personal_exists(name):
            raise No(f"[NOPERM] {name} is a list archive, read-only")

    def refuse_change(self, name: str, verb: str, new: bool) -> None:
        """NO [NOPERM] for CREATE, or a RENAME into, the namespace (new=True); for
        DELETE or RENAME of the namespace root or of an archive (new=False)."""
        if not self.claims(name):
            return
        if new or name == PREFIX or self.find(name) is not None:
            raise No(f"[NOPERM] {verb}: {PREFIX}{DELIMITER} holds the list archives "
                     "(read-only); choose another name")
