"""DKIM signing (RFC 6376; ed25519-sha256, RFC 8463) of a message as it leaves.

Called by deliver/relay.py in its pool thread, within [queue]
whole_message_memory (dkimpy needs the message whole), which keeps only the
fields it prepends and then streams the spool file after them; and by the list
exploder (arc.PostSigner) for list posts; never on the reactor thread.

dkimpy does the canonicalization and signing: it is the maintained Python
implementation (RFC 6376, 8301, 8463, and ARC: arc.py), so none of that
subtle code is ours. We choose what it signs:
  - the domain: the From header's (RFC 7489 alignment needs d= to match it),
    or its nearest parent domain holding keys; every key of that domain signs,
    so RSA and ed25519 can sign side by side (RFC 8463 6);
  - c=relaxed/relaxed, which survives the re-folding and re-encoding of
    headers that relays do;
  - h=: the header fields RFC 6376 5.4.1 recommends, plus the ones that decide
    how the signed body is read (Message-ID, Sender, MIME-Version, Content-*,
    as OpenDKIM signs them), each listed once more than present
    ("oversigning", RFC 6376 8.15), so no such field can be added.
dkimpy's RSA is pure Python: 25-55 ms of CPU per signature holding the GIL,
the whole gateway stalled meanwhile. OpenSSLRSAMixin hands that one operation to
OpenSSL (cryptography, ~1 ms); the rest stays dkimpy's.
Mail is signed only when it originated here (see DkimSigner.originated_here):
signing a forwarded message from outside would vouch for a forged From.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from email.utils import getaddresses
from types import SimpleNamespace

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.util import InvalidTagValueList, parse_tag_value
from twisted.logger import Logger

from gateway.envelope import Envelope
from gateway.sign.keys import DkimKey, KeyRing

log = Logger()

# RFC 6376 5.4.1, in its order.
RECOMMENDED = (
    "from", "reply-to", "subject", "date", "to", "cc", "resent-date", "resent-from",
    "resent-to", "resent-cc", "in-reply-to", "references", "list-id", "list-help",
    "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive",
)
# What the message means beyond 5.4.1: a changed Content-Type shows another part.
# RFC 8058 4: a one-click List-Unsubscribe-Post counts only under a DKIM signature.
MEANING = ("sender", "message-id", "mime-version", "content-type",
           "content-transfer-encoding", "list-unsubscribe-post")
SIGNED_HEADERS = RECOMMENDED + MEANING


def oversigned(names: Iterable[str], signed: tuple[str, ...] = SIGNED_HEADERS) -> list[str]:
    """h= for a message with these header names: each signed field once more than present."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    return [h for h in signed for _ in range(counts.get(h, 0) + 1)]


class OpenSSLRSAMixin:
    """For dkimpy's DKIM and ARC: the RSA private-key operation done by OpenSSL
    (self._key, a cryptography RSA key; None leaves dkimpy's own path, for ed25519).

    gen_header() has the header hash computed by dkimpy and signs its digest with
    pk.sign(digest).signature on its ed25519 path; for rsa-sha256 we take that path
    with an RSA key whose sign() is RSASSA-PKCS1-v1_5 over the same SHA-256 digest
    (RFC 8017 8.2), which is exactly what dkimpy's own RSA code computes. The tests
    verify every RSA signature with dkimpy's verifier, so a dkimpy that changed
    this path fails them, never the mail."""

    _key: rsa.RSAPrivateKey | None = None

    def gen_header(self, fields, include_headers, canon_policy, header_name, pk,
                   standardize=False):
        key = self._key
        if key is None:
            return super().gen_header(fields, include_headers, canon_policy, header_name, pk,
                                      standardize)

        def sign(digest: bytes):
            signature = key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
            return SimpleNamespace(signature=signature)

        self.signature_algorithm = b"ed25519-sha256"  # the branch that calls pk.sign
        try:
            return super().gen_header(fields, include_headers, canon_policy, header_name,
                                      SimpleNamespace(sign=sign), standardize)
        finally:
            self.signature_algorithm = b"rsa-sha256"


class _Signer(OpenSSLRSAMixin, dkim.DKIM):
    """dkimpy's DKIM with the RSA private-key operation done by OpenSSL."""


# dkimpy's sign() parses the PEM key with its pure-Python ASN.1 code on every call
# (1-2 ms, a third of a signature's CPU), although OpenSSLRSAMixin never uses what
# it parsed: each key file's content is parsed once. The result is only read.
dkim.parse_pem_private_key = functools.lru_cache(maxsize=64)(dkim.parse_pem_private_key)


def header_names(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The field names of dkimpy's parsed header section."""
    return [name.decode("ascii", "replace") for name, _ in headers]


def _signed_by(values: list) -> set[tuple[str, str]]:
    """(d=, s=) of signatures already present: a list post signed by the exploder and
    then relayed is not signed twice with the same key."""
    pairs = set()
    for value in values:
        try:
            unfolded = str(value).replace("\r", "").replace("\n", "")
            tags = parse_tag_value(unfolded.encode("ascii", "replace"))
        except InvalidTagValueList:
            continue
        d, sel = tags.get(b"d"), tags.get(b"s")
        if d and sel:
            pairs.add((d.decode("ascii", "replace").lower(), sel.decode("ascii", "replace")))
    return pairs


class DkimSigner:
    def __init__(self, keys: KeyRing, *, enabled: bool = True,
                 trusted_networks: tuple = ()):
        self.keys = keys
        self.enabled = enabled
        self.trusted_networks = trusted_networks

    def originated_here(self, envelope: Envelope) -> bool:
        """Made here (bounces, list posts, replies), from a logged-in client, or from
        trusted_networks: the mail OpenDKIM signs (its InternalHosts and
        authenticated senders). Mail from outside that is forwarded is not ours."""
        if envelope.protocol == "local" or envelope.authenticated:
            return True
        try:
            address = ipaddress.ip_address(envelope.client_address)
        except ValueError:
            return False
        return any(address in net for net in self.trusted_networks)

    def outbound_wanted(self, envelope: Envelope) -> bool:
        """Whether sign_outbound may add anything: when not, the relay streams the
        message without ever reading it whole (issue 11)."""
        return self.enabled and bool(self.keys.keys()) and self.originated_here(envelope)

    def sign_outbound(self, envelope: Envelope, message: bytes) -> bytes:
        """message with DKIM-Signature fields prepended when it originated here and its
        From domain has keys; otherwise message itself. Blocking (CPU): run in a thread."""
        if not self.outbound_wanted(envelope):
            return message
        return self.sign(message, queue_id=envelope.queue_id)

    def keys_for(self, headers: list[tuple[bytes, bytes]], domain: str = "") -> list[DkimKey]:
        """The keys that sign a message with these header fields (dkimpy's parse: raw
        name, value): its From domain's, or domain's when given; none that signed it
        already."""
        table = self.keys.keys()
        if not table:
            return []
        found: dict[str, list[str]] = {"from": [], "dkim-signature": []}
        for name, value in headers:
            values = found.get(name.decode("ascii", "replace").lower())
            if values is not None:
                values.append(value.decode("utf-8", "replace"))
        chosen: list[DkimKey] = []
        seen: set[str] = set()
        done = _signed_by(found["dkim-signature"])
        if domain:
            domains = [domain]
        else:
            domains = [address.rpartition("@")[2] for _, address
                       in getaddresses([" ".join(v.split()) for v in found["from"]])]
        for domain in domains:
            domain = domain.lower().rstrip(".")
            while domain and domain not in table:  # a subdomain: the parent's keys
                domain = domain.partition(".")[2]
            if domain and domain not in seen:
                seen.add(domain)
                chosen.extend(k for k in table[domain] if (k.domain, k.selector) not in done)
        return chosen

    def sign(self, message: bytes, queue_id: str = "", domain: str = "") -> bytes:
        """message signed by every key of its From domain, or of domain when given (a
        list's; unchanged when none). Blocking (CPU): run in a thread."""
        if not self.enabled or not self.keys.keys():
            return message
        d = _Signer(message)  # parsed once, for the choice and every signature
        keys = self.keys_for(d.headers, domain)
        if not keys:
            return message
        include = [h.encode("ascii") for h in oversigned(header_names(d.headers))]
        signatures = []
        for key in keys:
            d._key = key.loaded  # None: dkimpy's own ed25519 path
            try:
                signatures.append(d.sign(
                    key.selector.encode("ascii"), key.domain.encode("ascii"), key.private,
                    signature_algorithm=key.signature_algorithm,
                    canonicalize=(b"relaxed", b"relaxed"), include_headers=include))
            except dkim.DKIMException as e:
                # Unsigned mail still goes: the receiver judges it as it would any.
                log.error("{queue_id}: dkim: not signed with {selector}._domainkey.{domain}:"
                          " {error}", queue_id=queue_id, selector=key.selector,
                          domain=key.domain, error=e)
        return b"".join(signatures) + message
