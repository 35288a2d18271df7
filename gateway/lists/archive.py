"""Who may read which list archive: ISharedFolders for the IMAP server.

Sits beside the flow, after lists/exploder.py: the exploder files each
accepted post, decorated as the members get it, into the list's archive (the
INBOX of mailbox dev@example.test in the archive MaildirStore); access/imap
asks readable(user) at every LIST, STATUS, SELECT and EXAMINE, so a member
who leaves loses the folder at once and a new list shows without a new
login. service.py wires it (access never imports lists).

A list's archive is readable when the list has archive on, and the user is
a member (or an owner or moderator), or, with archive_readers = "owners",
only an owner or moderator. It is named by the list's local part ("dev"),
or by the whole address when two readable lists share a local part.
"""

from __future__ import annotations

import threading
from collections import Counter

from zope.interface import implementer

from gateway.interfaces import IMailStore, ISharedFolders, SharedFolder
from gateway.lists.store import ListStore, MailingList


@implementer(ISharedFolders)
class ArchiveFolders:
    def __init__(self, store: ListStore, archive: IMailStore) -> None:
        self.store = store
        self.archive = archive
        self._lock = threading.Lock()
        self._version: tuple[object, ...] | None = None
        self._lists: list[MailingList] = []

    def _archived(self) -> list[MailingList]:
        # Settings are read again only when the database changed
        # (ListStore.data_version: the CLI's commits in another process too).
        with self._lock:
            version = self.store.data_version()
            if version != self._version:
                found = (self.store.get(a) for a in self.store.names())
                self._lists = [m for m in found if m is not None and m.archive]
                self._version = version
            return self._lists

    def readable(self, user: str) -> list[SharedFolder]:
        lists = self._archived()
        if not lists:
            return []
        member_of = set(self.store.lists_of(user))
        mine = [m for m in lists if m.is_moderator(user)
                or (m.archive_readers == "members" and m.address in member_of)]
        clash = Counter(m.name for m in mine)
        return [SharedFolder(m.name if clash[m.name] == 1 else m.address, m.address,
                             self.archive) for m in mine]
