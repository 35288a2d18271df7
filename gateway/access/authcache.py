"""A short-lived memory of successful logins, so a client that logs in again and
again (a phone polling POP3, imaptest, mbsync per folder) does not pay a scrypt
hash (~50 ms of CPU, access/auth.py) every time.

Sits in access/, inside UserDirectory.authenticate() and so behind the
guessing budget of access/authguard.py, which still counts and delays every
failure. Dovecot has the same thing (auth_cache_size, auth_cache_ttl).

Why it is sound:
- Only a successful check is remembered, as an HMAC-SHA256 of the password
  under a key drawn at random when the process starts (never written
  anywhere), together with the stored scrypt hash it was checked against.
- A hit needs the same address, the same stored hash as the users file holds
  now (so a changed password or a removed user misses at once, whatever the
  TTL) and an equal MAC (constant-time compare). A wrong password never
  matches, so it always pays the full scrypt check: guessing gains nothing,
  and a wrong guess does not evict the entry either.
- Entries live [auth] cache_ttl seconds from the check that made them (not
  renewed by hits), at most cache_size of them, oldest dropped first.
- The answer is faster on a hit, which tells only someone who already typed
  the right password that it is right. Unknown users are never cached.
- A memory dump shows MACs, from which a password could be tried offline
  faster than against scrypt; but the same memory holds every password of
  every login in flight, so this adds little to what such a reader has.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable


class AuthCache:
    def __init__(self, ttl: float, size: int, now: Callable[[], float]) -> None:
        self.ttl = ttl
        self.size = size
        self.now = now
        self._key = os.urandom(32)
        # address -> (stored hash, MAC of the password, expiry)
        self._entries: OrderedDict[str, tuple[str, bytes, float]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.size > 0

    def _mac(self, stored: str, password: str) -> bytes:
        data = stored.encode() + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def hit(self, address: str, password: str, stored: str) -> bool:
        """True if this password was found right for this stored hash within the TTL."""
        entry = self._entries.get(address)
        if entry is None:
            return False
        was_stored, mac, expiry = entry
        if was_stored != stored or self.now() >= expiry:
            del self._entries[address]  # the password changed, or it is too old
            return False
        return hmac.compare_digest(mac, self._mac(stored, password))

    def remember(self, address: str, password: str, stored: str) -> None:
        """After a successful full check of password against stored."""
        if not self.enabled:
            return
        self._entries.pop(address, None)
        self._entries[address] = (stored, self._mac(stored, password), self.now() + self.ttl)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
