"""Client TLS for outbound STARTTLS (RFC 3207), by policy: none | may | encrypt | verify.

Used by deliver/outbound.py through deliver/relay.py. "may" and "encrypt"
encrypt without checking the certificate (opportunistic TLS, RFC 7435: most
MX certificates would not pass, and plaintext is the alternative); "verify"
checks the chain against tls_ca_file (or the system's trust store) and the
MX host name with service-identity, through Twisted's optionsForClientTLS.
TLS 1.2 is the minimum (RFC 8996).
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import ssl


class ClientTLS:
    """Callable: (policy, host name) -> a connection creator for transport.startTLS."""

    def __init__(self, ca_file: str = ""):
        self.ca_file = ca_file
        self._root = None
        self._unverified = None

    def trust_root(self):
        if self._root is None:
            if self.ca_file:
                pem = Path(self.ca_file).read_bytes()
                marker = b"-----BEGIN CERTIFICATE-----"
                certs = [ssl.Certificate.loadPEM(marker + block)
                         for block in pem.split(marker)[1:]]
                self._root = ssl.trustRootFromCertificates(certs)
            else:
                self._root = ssl.platformTrust()
        return self._root

    def __call__(self, policy: str, hostname: str):
        if policy == "verify":
            return ssl.optionsForClientTLS(
                hostname, trustRoot=self.trust_root(),
                extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})
        if self._unverified is None:
            self._unverified = ssl.CertificateOptions(
                verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        return self._unverified
