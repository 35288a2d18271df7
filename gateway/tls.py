"""TLS server contexts for STARTTLS/STLS, and the self-signed certificate of first start.

Used by service.py to give every listener the same CertificateOptions.
TLS 1.2 is the minimum (RFC 8996 retired 1.0 and 1.1; RFC 8314).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import ssl
from twisted.logger import Logger

from gateway.tlsfront.certs import CertificateError, load_pair

log = Logger()


def ensure_certificate(cert_path: Path, key_path: Path, hostname: str) -> bool:
    """Make a self-signed certificate for hostname if none exists; True when made."""
    if cert_path.exists() and key_path.exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info("made a self-signed certificate for {hostname} in {path}", hostname=hostname,
             path=str(cert_path))
    return True


def server_options(cert_path: Path, key_path: Path) -> ssl.CertificateOptions:
    """Options for server-side TLS from PEM files (the cert file may hold the chain).

    Raises CertificateError naming the file and the fault (unreadable, not PEM,
    a key that is not the certificate's), which stops start-up in one line.
    """
    certs, key = load_pair(cert_path, key_path)
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0],
        extraCertChain=certs[1:],
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


class ReloadingServerTLS:
    """The STARTTLS/STLS context factory: server_options() of the PEM files, read again
    when they change (an ACME client's renewal), checked at each handshake.

    Twisted's startTLS asks getContext() for every connection; two stat() calls
    there cost nothing next to a handshake and need no timer or signal. A new
    pair that does not load (a key not yet written, a mismatch) keeps the old
    one and says why, as the TLS front does (tlsfront/certs.py).
    """

    def __init__(self, cert_path: Path, key_path: Path):
        self.paths = (Path(cert_path), Path(key_path))
        self._signature = self._stat()
        self._options = server_options(*self.paths)  # CertificateError stops the start

    def _stat(self) -> tuple:
        try:
            return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in map(os.stat, self.paths))
        except OSError:
            return ()

    def getContext(self):  # noqa: N802 (Twisted's context factory interface)
        signature = self._stat()
        if signature != self._signature:
            self._signature = signature
            try:
                self._options = server_options(*self.paths)
                log.info("STARTTLS certificate reloaded from {path}", path=str(self.paths[0]))
            except CertificateError as e:
                log.error("STARTTLS certificate not reloaded, keeping the old one: {why}",
                          why=str(e))
        return self._options.getContext()
