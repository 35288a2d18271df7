"""The front's TLS contexts: certificates chosen by SNI, reloaded without dropping anyone.

Where it sits: each relay.FrontConnection asks its front's FrontTLS (an
IOpenSSLServerConnectionCreator) for a pyOpenSSL connection; each new client
connection starts on the default certificate's context, and Twisted's public
SNI hook (CertificateOptions(contextForServerName=...), RFC 6066 3) switches
it to the certificate whose subjectAltName matches the requested name, exact
first, then a wildcard for the first label (RFC 6125 6.4.3).

Each context comes from CertificateOptions: TLS 1.2 at least (RFC 8996),
forward-secret AEAD ciphers, the server's cipher order, a session cache and
session tickets (RFC 5077) for resumption, no renegotiation. Optional client
certificates are verified against a CA file ("optional" or "required").

Reload (SIGHUP, or a changed file seen by check()) builds a whole new set;
only when every file loads does it replace the old one. Open connections
keep the context they started with; a broken file is logged with its reason
and the old certificates stay in service.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config import FrontSettings

log = Logger()

_MARKER = b"-----BEGIN CERTIFICATE-----"
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class CertificateError(Exception):
    """A certificate, key or CA file that cannot serve; the message says which and why."""


def names_of(cert: x509.Certificate) -> list[str]:
    """The DNS names a certificate answers for: its subjectAltName, else its CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
                 if isinstance(a.value, str)]
    return [n.lower().rstrip(".") for n in names]


def load_pair(cert_path: Path, key_path: Path) -> tuple[list[x509.Certificate], object]:
    """The chain (leaf first) and private key from PEM files; CertificateError if unusable."""
    try:
        cert_pem = Path(cert_path).read_bytes()
        key_pem = Path(key_path).read_bytes()
    except OSError as e:
        raise CertificateError(f"{e.filename}: {e.strerror}") from None
    blocks = [_MARKER + b for b in cert_pem.split(_MARKER)[1:]]
    if not blocks:
        raise CertificateError(f"{cert_path}: no PEM certificate")
    try:
        chain = [x509.load_pem_x509_certificate(b) for b in blocks]
    except ValueError as e:
        raise CertificateError(f"{cert_path}: {e}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"{key_path}: {e}") from None
    if key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo,
    ) != chain[0].public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertificateError(f"{key_path}: not the private key of {cert_path}")
    return chain, key


class ContextSet:
    """One generation of contexts: the default and one per SNI name."""

    def __init__(self, front: FrontSettings):
        self.exact: dict[str, SSL.Context] = {}
        self.wildcard: dict[str, SSL.Context] = {}
        self.names: list[list[str]] = []
        self.default: SSL.Context | None = None
        for pair in front.certificates:
            chain, key = load_pair(pair.certificate, pair.private_key)
            ctx = self._context(front, chain, key, sni=self.default is None)
            if self.default is None:
                self.default = ctx
            names = names_of(chain[0])
            self.names.append(names)
            for name in names:
                table, key_name = ((self.wildcard, name[2:]) if name.startswith("*.")
                                   else (self.exact, name))
                table.setdefault(key_name, ctx)  # the first certificate naming it wins

    def _context(self, front: FrontSettings, chain: list, key: object,
                 sni: bool) -> SSL.Context:
        try:
            options = ssl.CertificateOptions(
                privateKey=key, certificate=chain[0], extraCertChain=chain[1:],
                raiseMinimumTo=_VERSIONS[front.min_version],
                acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(front.ciphers),
                enableSessions=True, enableSessionTickets=True,
                contextForServerName=self.for_name if sni else None)
            ctx = options.getContext()
        except (ValueError, SSL.Error) as e:
            raise CertificateError(f"{front.name}: cannot make a TLS context: {e}") from None
        # TLS 1.2 renegotiation costs the server a handshake at the client's whim, and
        # nothing here needs it (TLS 1.3 has none).
        ctx.set_options(SSL.OP_NO_RENEGOTIATION)
        if front.client_verify != "none" and front.client_ca is not None:
            try:
                ctx.load_verify_locations(os.fsencode(front.client_ca))
                ctx.load_client_ca(os.fsencode(front.client_ca))  # names sent to the client
            except SSL.Error as e:
                raise CertificateError(f"{front.client_ca}: not a PEM CA file: {e}") from None
            mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
            if front.client_verify == "required":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            ctx.set_verify(mode)
        return ctx

    def for_name(self, server_name: bytes | None) -> SSL.Context | None:
        """The context for an SNI name; None keeps the default."""
        if not server_name:
            return None
        name = server_name.decode("ascii", "replace").lower().rstrip(".")
        if name in self.exact:
            return self.exact[name]
        _, dot, parent = name.partition(".")
        return self.wildcard.get(parent) if dot else None


def _signature(paths: list[Path]) -> tuple:
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


@implementer(IOpenSSLServerConnectionCreator)
class FrontTLS:
    """The current ContextSet of one front; raises CertificateError if it cannot start."""

    def __init__(self, front: FrontSettings):
        self.front = front
        self.paths = [p for c in front.certificates for p in (c.certificate, c.private_key)]
        if front.client_ca is not None:
            self.paths.append(front.client_ca)
        self._seen = _signature(self.paths)
        self.current = ContextSet(front)
        self.generation = 1

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        return SSL.Connection(self.current.default)

    def reload(self, why: str = "SIGHUP") -> bool:
        """Load every file again; keep the old set if anything is wrong. True when replaced."""
        self._seen = _signature(self.paths)
        try:
            fresh = ContextSet(self.front)
        except CertificateError as e:
            log.error("tlsfront {front}: certificates not reloaded ({why}), keeping the "
                      "old ones: {error}", front=self.front.name, why=why, error=str(e))
            return False
        self.current = fresh
        self.generation += 1
        log.info("tlsfront {front}: certificates reloaded ({why}): {names}",
                 front=self.front.name, why=why,
                 names="; ".join(", ".join(n) for n in fresh.names))
        return True

    def check(self) -> bool:
        """Reload when a file changed since the last attempt (one try per change)."""
        if _signature(self.paths) == self._seen:
            return False
        return self.reload("file changed")
