"""STARTTLS picks up renewed [tls] files without a restart (an ACME client's
renewal), and keeps the old pair when the new files are broken (gateway/tls.py)."""

from __future__ import annotations

import smtplib

from conftest import client_context
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def starttls_certificate(gw, ca) -> bytes:
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=30) as s:
        s.starttls(context=client_context(ca))
        return s.sock.getpeercert(binary_form=True)


def renew(tmp_path, ca) -> bytes:
    """Write a new pair where make_tls_gateway put the first; its certificate in DER."""
    cert = ca.issue_cert("127.0.0.1", "mx.example.test")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_bytes(
        Encoding.DER)


def test_starttls_uses_renewed_files_and_keeps_the_old_pair_when_broken(make_tls_gateway, ca,
                                                                        tmp_path):
    gw = make_tls_gateway()
    first = starttls_certificate(gw, ca)
    renewed = renew(tmp_path, ca)
    assert renewed != first
    assert starttls_certificate(gw, ca) == renewed
    gw.wait_log("STARTTLS certificate reloaded")
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    assert starttls_certificate(gw, ca) == renewed  # still served, and the reason logged
    gw.wait_log("STARTTLS certificate not reloaded, keeping the old one")
