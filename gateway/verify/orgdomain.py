"""The organizational domain (RFC 7489 3.2) from the Public Suffix List.

publicsuffixlist ships the list and is released with each change of it; a newer
copy of public_suffix_list.dat can be named in [inbound_auth] public_suffix_list
(fetched by cron, say) and is read again when its modification time changes.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - see below
import encodings.punycode  # noqa: F401
import os
import threading

from publicsuffixlist import PublicSuffixList

# publicsuffixlist encodes the list's IDN labels with the idna codec, whose module
# (and punycode's) Python imports on first use: imported here, with the gateway's
# modules, as the user that starts it. The list is read after the privilege drop
# (service.build), by a user that may not read the Python installation (a pyenv
# under /root): "LookupError: unknown encoding: punycode" otherwise.


class OrgDomains:
    def __init__(self, path: str = ""):
        self.path = path
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._psl = self._load()

    def _load(self) -> PublicSuffixList:
        if not self.path:
            return PublicSuffixList()
        self._mtime = os.stat(self.path).st_mtime
        with open(self.path, "rb") as f:
            return PublicSuffixList(f)

    def _current(self) -> PublicSuffixList:
        if self.path:
            try:
                changed = os.stat(self.path).st_mtime != self._mtime
            except OSError:
                changed = False  # gone for now: keep the list we have
            if changed:
                with self._lock:
                    try:
                        self._psl = self._load()
                    except (OSError, ValueError):
                        pass
        return self._psl

    def org(self, domain: str) -> str:
        """The public suffix plus one label; the domain itself when it is a suffix
        (or under no known one)."""
        domain = domain.lower().rstrip(".")
        return self._current().privatesuffix(domain) or domain

    def aligned(self, a: str, b: str, strict: bool) -> bool:
        """RFC 7489 3.1: strict, the same name; relaxed, the same organizational domain."""
        a, b = a.lower().rstrip("."), b.lower().rstrip(".")
        if strict or a == b:
            return a == b
        return self.org(a) == self.org(b)
