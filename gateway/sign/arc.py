"""ARC sealing (RFC 8617) of mail the gateway passes on: list posts, and relayed mail.

Where it sits: the list exploder changes a post (Subject prefix, List-*
fields, maybe From), which breaks the author's DKIM signature; the seal
carries what this gateway saw when the post arrived, signed by the list's
domain, so a receiver that trusts us can still judge the author's domain
(RFC 8617 1). lists/exploder.py calls PostSigner in its pool thread once per
explosion (the copy every member gets; VERP changes only envelopes), so a
10,000-member list costs one seal. deliver/relay.py seals mail from outside
that leaves again ([arc] seal_relayed, off by default). Neither imports this
package: service.py hands them the callables.

The three fields of one ARC set (dkimpy's ARC writes them; we choose):
  ARC-Authentication-Results  our authserv-id and the results of the message's
      arrival: arrival_results(), the one function the inbound verification
      (issue 15) replaces with what it found; plus arc= (the chain's state).
  ARC-Message-Signature  like our DKIM-Signature: relaxed/relaxed, h= the
      fields of signer.SIGNED_HEADERS oversigned (dkimpy refuses
      DKIM-Signature and Authentication-Results there).
  ARC-Seal  cv=none on the first set; on a message that arrived sealed, the
      chain's validity as it arrived (before our changes): the arc= result of
      our Authentication-Results when the inbound check wrote one, else
      dkimpy's arc_verify with the gateway's resolver (blocking DNS: this runs
      in a pool thread, never on the reactor).
Seals are rsa-sha256 only (dkimpy's ARC_HASH_ALGORITHMS, what ARC receivers check
today): a domain whose keys are all ed25519 gets no seal (logged once).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.parser import BytesHeaderParser
from email.policy import compat32

import authres
import dkim
from twisted.logger import Logger

from gateway.sign.keys import DkimKey, KeyRing
from gateway.sign.signer import DkimSigner, OpenSSLRSAMixin, header_names, oversigned

log = Logger()

# name (bytes, e.g. b"sel._domainkey.example.test.") -> its TXT record or None; dkimpy's
# dnsfunc interface.
DnsFunc = Callable[..., bytes | None]


def arrival_results(message: bytes, authserv_id: str) -> list[str]:
    """The authentication results this gateway recorded when message arrived: each
    result (RFC 8601 resinfo, e.g. "dkim=pass header.d=example.org") of the
    Authentication-Results fields that carry our authserv-id; [] when none.

    Only as trustworthy as the removal of forged fields claiming our id, which the
    inbound verification does at acceptance (issue 15); until then the fields are
    taken as they came. That work may replace this function with its own record."""
    found: list[str] = []
    headers = BytesHeaderParser(policy=compat32).parsebytes(message, headersonly=True)
    for value in headers.get_all("authentication-results", []):
        unfolded = " ".join(str(value).split())
        try:
            parsed = authres.AuthenticationResultsHeader.parse(
                "Authentication-Results: " + unfolded)
        except authres.core.SyntaxError:
            continue  # not a field we wrote
        if parsed.authserv_id.lower() == authserv_id.lower():
            found.extend(str(r) for r in parsed.results)
    return found


def chain_status(message: bytes, results: list[str], dnsfunc: DnsFunc | None) -> str:
    """The cv= of the set we add (RFC 8617): "none" when message carries no ARC
    set; else "pass" or "fail" for its chain as it arrived."""
    sets, _ = dkim.ARC(message).sorted_arc_headers()
    if sets == 0:
        return "none"
    recorded = [r.split("=", 1)[1].split()[0].lower() for r in results
                if r.lower().startswith("arc=")]
    if len(recorded) == 1 and recorded[0] in ("pass", "fail"):
        return recorded[0]
    if dnsfunc is None:
        return "fail"
    cv, _, reason = dkim.arc_verify(message, dnsfunc=dnsfunc)
    if cv != dkim.CV_Pass:
        log.info("arc: incoming chain of {sets} sets not valid: {reason}", sets=sets,
                 reason=reason)
    return "pass" if cv == dkim.CV_Pass else "fail"


class _Arc(OpenSSLRSAMixin, dkim.ARC):
    """dkimpy's ARC, sealing with OpenSSL's RSA (signer.OpenSSLRSAMixin), and reading the
    authentication results we give it rather than the message's own fields."""

    def __init__(self, message: bytes, key, authserv_id: str, results: list[str], cv: str):
        super().__init__(message, signature_algorithm=b"rsa-sha256")
        self._key = key
        # ARC.sign takes the AAR's content and cv= from the Authentication-Results
        # fields with srv_id (exact name "Authentication-Results"): exactly one, ours.
        # Not signed (AMS h= never holds it) and not part of the output.
        resinfo = [r for r in results if not r.lower().startswith("arc=")] + [f"arc={cv}"]
        field = f" {authserv_id};\r\n " + ";\r\n ".join(resinfo) + "\r\n"
        self.headers = [(n, v) for n, v in self.headers
                        if n.lower() != b"authentication-results"]
        self.headers.append((b"Authentication-Results", field.encode("utf-8")))


class ArcSealer:
    """Adds one ARC set to a message, with a domain's RSA key. Blocking (CPU, and DNS for
    an incoming chain): run in a thread."""

    def __init__(self, keys: KeyRing, authserv_id: str, *, dnsfunc: DnsFunc | None = None,
                 results: Callable[[bytes, str], list[str]] = arrival_results,
                 clock: Callable[[], float] = time.time):
        self.keys = keys
        self.authserv_id = authserv_id
        self.dnsfunc = dnsfunc
        self.results = results
        self.clock = clock
        self._warned: set[str] = set()

    def key_for(self, domain: str) -> DkimKey | None:
        """The domain's (or its nearest parent's) first RSA key."""
        table = self.keys.keys()
        domain = domain.lower().rstrip(".")
        while domain and domain not in table:
            domain = domain.partition(".")[2]
        for key in table.get(domain, []):
            if key.algorithm == "rsa" and key.loaded is not None:
                return key
        if domain and domain not in self._warned:
            self._warned.add(domain)
            log.warn("arc: {domain} has no RSA key (ARC seals with rsa-sha256 only):"
                     " its mail goes unsealed", domain=domain)
        return None

    def sealed_by(self, message: bytes, domain: str) -> bool:
        """The newest ARC-Seal of message is domain's (ours already: do not seal again)."""
        sets, fields = dkim.ARC(message).sorted_arc_headers()
        for instance, (name, value) in fields:
            if instance == sets and name.lower() == b"arc-seal":
                tags = dkim.util.parse_tag_value(value.replace(b" ", b""))
                return tags.get(b"d", b"").lower().decode("ascii", "replace") == domain
        return False

    def seal(self, domain: str, arrived: bytes, message: bytes, queue_id: str = "") -> bytes:
        """message (arrived as `arrived`, then changed by us) with a new ARC set of
        domain's key prepended; message itself when domain has no RSA key."""
        key = self.key_for(domain)
        if key is None:
            return message
        results = self.results(arrived, self.authserv_id)
        cv = chain_status(arrived, results, self.dnsfunc)
        arc = _Arc(message, key.loaded, self.authserv_id, results, cv)
        include = [h.encode("ascii") for h in oversigned(header_names(arc.headers))]
        try:
            fields = arc.sign(key.selector.encode("ascii"), key.domain.encode("ascii"),
                              key.private, self.authserv_id.encode("ascii"),
                              include_headers=include, timestamp=int(self.clock()))
        except dkim.DKIMException as e:
            log.error("{queue_id}: arc: not sealed with {selector}._domainkey.{domain}: "
                      "{error}", queue_id=queue_id, selector=key.selector, domain=key.domain,
                      error=e)
            return message
        if not fields:
            return message
        log.debug("{queue_id}: arc: sealed i={i} cv={cv} by {domain}", queue_id=queue_id,
                  i=arc.sorted_arc_headers()[0], cv=cv, domain=key.domain)
        return b"".join(fields) + message


class PostSigner:
    """What a list post gets from the list's domain, once per post: a DKIM signature
    (d= the list's domain: its reputation, and DMARC alignment when From was
    rewritten to the list) and an ARC seal. Either may be off (None)."""

    def __init__(self, signer: DkimSigner | None, sealer: ArcSealer | None):
        self.signer = signer
        self.sealer = sealer

    def __call__(self, domain: str, arrived: bytes, copy: bytes, queue_id: str = "") -> bytes:
        if self.signer is not None:
            copy = self.signer.sign(copy, queue_id=queue_id, domain=domain)
        if self.sealer is not None:
            copy = self.sealer.seal(domain, arrived, copy, queue_id)
        return copy


class RelaySealer:
    """deliver/relay.py's sign callable with [arc] seal_relayed: the DKIM signing of mail
    that originated here, and a seal by `domain` on mail from outside passing
    through (what forwarding breaks, RFC 8617 1)."""

    def __init__(self, signer: DkimSigner, sealer: ArcSealer, domain: str):
        self.signer = signer
        self.sealer = sealer
        self.domain = domain

    def wanted(self, envelope) -> bool:
        """Whether __call__ may add anything (DkimSigner.outbound_wanted's twin)."""
        if self.signer.originated_here(envelope):
            return self.signer.outbound_wanted(envelope)
        return self.sealer.key_for(self.domain) is not None

    def __call__(self, envelope, message: bytes) -> bytes:
        if self.signer.originated_here(envelope):  # list posts too: sealed by the exploder
            return self.signer.sign_outbound(envelope, message)
        if self.sealer.sealed_by(message, self.domain):
            return message
        return self.sealer.seal(self.domain, message, message, envelope.queue_id)
