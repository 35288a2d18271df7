"""Which local addresses are list addresses: the router's `lists` lookup.

resolve/router.py asks this for every local part it meets (at RCPT TO and at
delivery), so it must be cheap: the list names are kept in memory and read
again only when the database changed (ListStore.data_version: one stat() of the
stamp every ListStore commit grows, `mailgateway list create` in another
process too).
"""

from __future__ import annotations

import threading

from gateway.interfaces import Route
from gateway.lists.addresses import classify
from gateway.lists.store import ListStore


class ListDirectory:
    def __init__(self, store: ListStore):
        self.store = store
        self._lock = threading.Lock()
        self._version: tuple[object, ...] | None = None
        self._names: frozenset[str] = frozenset()

    def names(self) -> frozenset[str]:
        with self._lock:
            version = self.store.data_version()
            if version != self._version:
                self._names = frozenset(self.store.names())
                self._version = version
            return self._names

    def __call__(self, local: str, domain: str) -> Route | None:
        """Route(kind "list", address as given, mailbox = the list, extension = role)."""
        names = self.names()
        if not names:
            return None
        found = classify(local, domain, names)
        if found is None:
            return None
        return Route(kind="list", address=f"{local}@{domain.lower()}", mailbox=found.list,
                     extension=found.role)
