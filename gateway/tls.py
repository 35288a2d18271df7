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

from gateway.tlsfront.certs import load_pair

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
