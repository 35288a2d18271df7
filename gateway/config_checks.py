"""Checks of configuration values that need more than their type: config.py's helpers.

Kernel module (imports nothing else of gateway). Each returns the reason a
value is wrong, or None, so that `mailgateway check-config` and the start
report it with file and key instead of failing later (or never) with a
traceback: an endpoint whose port is not a number, a certificate that is
not one or does not match its key, a state_dir that cannot be made.
"""

from __future__ import annotations

import os
from pathlib import Path


def endpoint_fault(value: str) -> str | None:
    """Why a tcp:/tcp6: server endpoint string cannot listen, or None."""
    if not value.startswith(("tcp:", "tcp6:")):
        return None
    port = value.split(":", 2)[1]
    if port.startswith("port="):
        port = port[5:]
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"{value!r}: the port must be a number from 0 to 65535, not {port!r}"
    return None


def tls_pair_faults(cert: Path, key: Path) -> list[tuple[str, str]]:
    """(key name, reason) for a PEM certificate and private key that cannot serve TLS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    faults: list[tuple[str, str]] = []
    certificate = private = None
    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as e:
        faults.append(("certificate", f"{cert}: not a PEM certificate ({e})"))
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        faults.append(("private_key", f"{key}: not an unencrypted PEM private key ({e})"))
    if certificate is not None and private is not None:
        raw = serialization.PublicFormat.SubjectPublicKeyInfo
        pem = serialization.Encoding.PEM
        if certificate.public_key().public_bytes(pem, raw) != \
                private.public_key().public_bytes(pem, raw):
            faults.append(("private_key", f"{key} does not belong to the certificate {cert}"))
    return faults


def state_dir_fault(path: Path) -> str | None:
    """Why state_dir cannot be used (made, or written), or None."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory, so {path} cannot be made"
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "written" if existing == path else "made"
        return f"{path} cannot be {what}: no write permission on {existing}"
    return None
