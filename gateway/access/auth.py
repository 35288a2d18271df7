"""Users and passwords: <state_dir>/users, one `address:hash` line each.

Implements IUserDirectory, and a twisted.cred checker over it so the SMTP and
POP3 servers authenticate through one path. Passwords are kept only as salted
scrypt hashes (RFC 7914); verifying one costs ~50 ms of CPU, so it runs in the
reactor's thread pool; a correct password checked again within [auth]
cache_ttl is answered from access/authcache.py without the hash. The file is
re-read when its mtime changes, so `mailgateway user add` (or a new
password) takes effect on a running gateway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path
from typing import Any

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer, threads
from zope.interface import implementer

from gateway.access.authcache import AuthCache
from gateway.durable import write_synced
from gateway.envelope import normalize_address
from gateway.errors import MailError
from gateway.interfaces import IUserDirectory
from gateway.store.maildir import MaildirStore

# scrypt cost: N=2^15, r=8, p=1 is OWASP's 2023 minimum for interactive logins.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
_PREFIX = "$scrypt$"


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R,
                            p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32)
    b64 = base64.b64encode
    return (f"{_PREFIX}ln={SCRYPT_N.bit_length() - 1},r={SCRYPT_R},p={SCRYPT_P}"
            f"${b64(salt).decode()}${b64(digest).decode()}")


def verify_password(password: str, stored: str) -> bool:
    try:
        _, _, params, salt, digest = stored.split("$")
        p = dict(kv.split("=") for kv in params.split(","))
        n, r, par = 2 ** int(p["ln"]), int(p["r"]), int(p["p"])
        salt_b, want = base64.b64decode(salt), base64.b64decode(digest)
    except (ValueError, KeyError):
        return False
    got = hashlib.scrypt(password.encode("utf-8"), salt=salt_b, n=n, r=r, p=par,
                         maxmem=128 * n * r * 2, dklen=len(want))
    return hmac.compare_digest(got, want)


def read_users(path: Path) -> dict[str, str]:
    users: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return users
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        address, _, stored = line.rpartition(":")
        if address and stored.startswith(_PREFIX):
            users[address.lower()] = stored
    return users


def write_users(path: Path, users: dict[str, str]) -> None:
    """Replace the users file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    lines = ["# address:scrypt-hash, managed by `mailgateway user`\n"]
    lines += [f"{address}:{users[address]}\n" for address in sorted(users)]
    write_synced(tmp, "".join(lines).encode("utf-8"))
    os.replace(tmp, path)


def set_password(path: Path, address: str, password: str) -> str:
    address = normalize_address(address).lower()
    try:
        # The store's own rule for names that become directories (no "/", "..", spaces):
        # a user who cannot have a Maildir is refused now, not at the first delivery.
        MaildirStore(path.parent / "mail").mailbox_path(address)
    except ValueError:
        raise MailError(501, "5.1.3", f"{address!r} cannot be a mailbox name (letters, "
                        "digits and !#$%&'*+-=?^_`{|}~. only, no \"..\")") from None
    users = read_users(path)
    users[address] = hash_password(password)
    write_users(path, users)
    return address


def remove_user(path: Path, address: str) -> bool:
    users = read_users(path)
    found = users.pop(address.lower(), None) is not None
    if found:
        write_users(path, users)
    return found


@implementer(IUserDirectory, ICredentialsChecker)
class UserDirectory:
    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, path: Path, reactor, pool: Any = None,
                 cache: AuthCache | None = None):
        self.path = Path(path)
        self.reactor = reactor
        # Successful logins remembered for a while (access/authcache.py); off if None.
        self.cache = cache
        # Hashing gets its own threads ([threads] auth): guessers wait for each
        # other there, never in front of a spool write.
        self.pool = pool
        self._mtime: float | None = None
        self._users: dict[str, str] = {}
        self._checked = float("-inf")  # reactor time of the last stat of the file

    def _current(self, address: str | None = None) -> dict[str, str]:
        """The users file's table, read again when it changed. A stat per RCPT hands the
        GIL to the pool threads under load (bench/RESULTS.md, the lists change stamp), so
        a table checked less than _RECHECK seconds ago answers for an address it holds;
        a miss always checks, so a user just added is found at once."""
        now = self.reactor.seconds()
        if address is not None and address in self._users and now - self._checked < _RECHECK:
            return self._users
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime:
            self._users = read_users(self.path)
            self._mtime = mtime
        return self._users

    def exists(self, address: str) -> bool:
        address = address.lower()
        return address in self._current(address)

    def authenticate(self, address: str, password: str, client: str = "") -> defer.Deferred:
        try:
            address = normalize_address(address).lower()
        except MailError:
            return defer.fail(error.UnauthorizedLogin("bad user name"))
        # Unknown users cost a hash too, so timing does not tell who exists.
        stored = self._current().get(address, _DUMMY)  # a password just changed counts
        cache = self.cache
        if cache is not None and stored is not _DUMMY and cache.hit(address, password, stored):
            return defer.succeed(address)
        d = threads.deferToThreadPool(self.reactor, self.pool or self.reactor.getThreadPool(),
                                      verify_password, password, stored)

        def checked(ok: bool) -> str:
            if ok and stored is not _DUMMY:
                if cache is not None:
                    cache.remember(address, password, stored)
                return address
            raise error.UnauthorizedLogin("bad user name or password")

        return d.addCallback(checked)

    def requestAvatarId(self, creds) -> defer.Deferred:
        username = creds.username
        password = creds.password
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        return self.authenticate(username, password)


_DUMMY = hash_password("x", salt=b"\0" * 16)
# How long a known address is trusted at RCPT without a stat of the users file: a
# removed user may still receive mail for this long. Logins always check.
_RECHECK = 0.5
