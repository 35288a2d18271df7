"""DKIM keys: made by `mailgateway dkim keygen`, read by the signer.

Layout: <state_dir>/dkim/<domain>/<selector>.<algorithm>.key, algorithm
"rsa" (PEM, PKCS#1, 2048 bits) or "ed25519" (base64 of the 32-byte seed, the
form dkimpy and OpenDKIM read, RFC 8463). Files are 0600 in 0700
directories: a private key readable by others is a signing key for anyone.

KeyRing loads every key once and again only when a directory's mtime
changes (a key added, replaced by rename, or removed changes its domain
directory; a new domain changes the top one). It looks at most every
check_interval seconds, so a message costs no disk access at all.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.logger import Logger

log = Logger()

ALGORITHMS = ("ed25519", "rsa")
RSA_BITS = 2048  # RFC 8301 3.2: at least 1024, 2048 recommended


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    private: bytes  # as dkimpy's sign() takes it
    # RSA: the key loaded by cryptography once, for OpenSSL's signing (signer.py).
    loaded: rsa.RSAPrivateKey | None = field(default=None, compare=False, repr=False)

    @property
    def signature_algorithm(self) -> bytes:
        return b"ed25519-sha256" if self.algorithm == "ed25519" else b"rsa-sha256"


def key_path(root: Path, domain: str, selector: str, algorithm: str) -> Path:
    return root / domain / f"{selector}.{algorithm}.key"


def generate(algorithm: str) -> tuple[bytes, bytes]:
    """A new key: (private key file content, public key for the TXT record's p=)."""
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        # RFC 6376 3.6.1: p= is the DER SubjectPublicKeyInfo (what OpenDKIM publishes).
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return private, public
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
        # RFC 8463 4: p= is the raw 32-byte public key.
        public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                               serialization.PublicFormat.Raw)
        return base64.b64encode(seed) + b"\n", public
    raise ValueError(f"unknown algorithm {algorithm!r}")


def txt_record(algorithm: str, public: bytes) -> str:
    """The TXT record's value (RFC 6376 3.6.1 tags v, k, p)."""
    k = "ed25519" if algorithm == "ed25519" else "rsa"
    return f"v=DKIM1; k={k}; p={base64.b64encode(public).decode('ascii')}"


def write_key(path: Path, private: bytes) -> None:
    """Write a key file 0600 (created so, never readable by others for a moment), in
    0700 directories; atomic by rename so the gateway never reads half a key."""
    path.parent.parent.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # state_dir
    for d in (path.parent.parent, path.parent):
        d.mkdir(mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, private)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _parse_name(name: str) -> tuple[str, str] | None:
    """<selector>.<algorithm>.key -> (selector, algorithm); selectors may hold dots."""
    if not name.endswith(".key"):
        return None
    selector, _, algorithm = name[:-4].rpartition(".")
    if not selector or algorithm not in ALGORITHMS:
        return None
    return selector, algorithm


def _check(algorithm: str, data: bytes) -> rsa.RSAPrivateKey | None:
    """The loaded RSA key (None for ed25519); ValueError unless data is a usable key."""
    if algorithm == "rsa":
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("not an RSA key")
        return key
    if len(base64.b64decode(data.strip(), validate=True)) != 32:
        raise ValueError("not a base64 ed25519 seed of 32 bytes")
    return None


def load_all(root: Path) -> dict[str, list[DkimKey]]:
    """Every usable key under root, by domain; a bad file is logged and skipped."""
    keys: dict[str, list[DkimKey]] = {}
    try:
        domains = sorted(p for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return keys
    for d in domains:
        for f in sorted(d.iterdir()):
            parsed = _parse_name(f.name)
            if parsed is None:
                continue
            selector, algorithm = parsed
            try:
                data = f.read_bytes()
                loaded = _check(algorithm, data)
            except (OSError, ValueError, TypeError) as e:
                log.error("dkim: {path}: unusable key, not signing with it: {error}",
                          path=str(f), error=e)
                continue
            if f.stat().st_mode & 0o077:
                log.warn("dkim: {path} is readable by others (chmod 600)", path=str(f))
            domain = d.name.lower().rstrip(".")
            keys.setdefault(domain, []).append(DkimKey(domain, selector, algorithm, data,
                                                           loaded))
    return keys


class KeyRing:
    """The keys of every domain, reloaded when their directories change. Thread-safe:
    the signer runs in pool threads."""

    def __init__(self, root: Path, check_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.root = Path(root)
        self.check_interval = check_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._checked = float("-inf")
        self._keys: dict[str, list[DkimKey]] = {}

    def _directory_stamp(self) -> tuple:
        stamp = []
        try:
            stamp.append(("", self.root.stat().st_mtime_ns))
            for d in self.root.iterdir():
                if d.is_dir():
                    stamp.append((d.name, d.stat().st_mtime_ns))
        except FileNotFoundError:
            pass
        return tuple(sorted(stamp))

    def keys(self) -> dict[str, list[DkimKey]]:
        """domain -> its keys (the current table; do not change it)."""
        now = self.clock()
        with self._lock:
            if now - self._checked >= self.check_interval:
                self._checked = now
                stamp = self._directory_stamp()
                if stamp != self._stamp:
                    self._keys = load_all(self.root)
                    self._stamp = stamp
                    log.info("dkim: keys for {domains}", domains=sorted(self._keys) or "no domain")
            return self._keys
