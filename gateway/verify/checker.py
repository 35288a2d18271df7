"""InboundAuth: SPF, DKIM and DMARC for one message, off the reactor thread, and the verdict.

accept/smtp.py calls check_sender() at MAIL FROM (SPF: a fail is refused before
DATA) and check() at the end of DATA on port 25 (not for submission,
authenticated clients or trusted_networks: those get only the removal of forged
Authentication-Results). The checks run in a pool of their own ([inbound_auth]
threads), their DNS with one time budget for SPF at MAIL and one for the rest
at the dot ([inbound_auth] timeout, dnsquery.py); the reactor also gives up on
the result a little after the budget, so a stuck thread delays one message,
never the gateway. What the
verdict does with the results ([inbound_auth] settings):
- SPF fail: 550 5.7.23 (RFC 7372) with spf_fail = "reject", at MAIL FROM, else only
  marked (the result found at MAIL is the one written and used for DMARC);
- DMARC fail under p=reject: 550 5.7.1 (dmarc_reject = "reject"), the Junk
  folder ("quarantine") or marked ("mark"); under p=quarantine: Junk
  (dmarc_quarantine = "junk") or marked;
- DMARC temperror where p=reject would refuse: 451 4.7.1, try again later.
Anything else, and every internal fault, is accepted with its results written
down: a check never costs a message.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import getaddresses

from twisted.internet import defer
from twisted.logger import Logger

from gateway.config import InboundAuthSettings
from gateway.errors import MailError
from gateway.verify import results
from gateway.verify.dkimcheck import DkimResult, unverified, verify_all
from gateway.verify.dmarc import DmarcResult, evaluate
from gateway.verify.dnsquery import DnsQuery
from gateway.verify.orgdomain import OrgDomains
from gateway.verify.spf import SpfResult, check_spf

log = Logger()
# Seconds the reactor waits past the DNS budget before answering without the thread.
GRACE = 5.0


@dataclass(frozen=True)
class AuthFacts:
    """What the SMTP session knows of the sender: the real client (behind tlsfront or
    PROXY, the address it told), the HELO name and MAIL FROM ("" for <>); spf: the
    result check_sender() found at MAIL FROM, used again at the dot (None: not
    checked yet, evaluate() does it)."""

    client_address: str
    helo: str
    sender: str
    spf: SpfResult | None = None


@dataclass
class Verdict:
    authserv_id: str
    headers: bytes = b""  # Authentication-Results and Received-SPF, to go on top
    refusal: MailError | None = None
    folder: str = ""  # every local copy goes there (DMARC quarantine: Junk)
    spf: SpfResult | None = None
    dkim: list[DkimResult] = field(default_factory=list)
    dmarc: DmarcResult | None = None

    def header_block(self, received: bytes, head: bytes) -> tuple[bytes, int] | None:
        """The new start of the spool file and how many bytes of the old one it
        replaces, or None when nothing changes. The old file is received (our
        Received field) then the message, whose start is head: the new one is our
        fields, received, then the message's header without the fields that
        claim our id. Ours go above our Received, as RFC 7208 9.1 says for
        Received-SPF and RFC 8601's examples (Appendix B) show. A header block
        longer than head (a 64 KiB header) keeps what is past it as it came."""
        header, body = results.split_header(head)
        if not body and not head.endswith((b"\r\n\r\n", b"\n\n")):
            header = b""  # not all of it in head: leave it as it came
        kept, dropped = results.strip_claims(header, self.authserv_id)
        if not self.headers and not dropped:
            return None
        return self.headers + received + kept, len(received) + len(header)

    def rewrite(self, message: bytes) -> bytes:
        """message with Authentication-Results claiming our id dropped and ours on top."""
        header, body = results.split_header(message)
        header, _ = results.strip_claims(header, self.authserv_id)
        return self.headers + header + body

    def summary(self) -> str:
        spf = self.spf.result if self.spf else "skipped"
        dkim = ",".join(d.result for d in self.dkim) or "none"
        dmarc = self.dmarc.result if self.dmarc else "none"
        return f"spf={spf} dkim={dkim} dmarc={dmarc}"


class InboundAuth:
    def __init__(self, settings: InboundAuthSettings, authserv_id: str, resolver,
                 run_blocking: Callable[..., defer.Deferred], clock, orgs: OrgDomains,
                 rng: Callable[[], float] = random.random,
                 monotonic: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.authserv_id = authserv_id
        self.resolver = resolver
        self.run_blocking = run_blocking
        self.clock = clock
        self.orgs = orgs
        self.rng = rng
        self.monotonic = monotonic

    def check(self, facts: AuthFacts, message: bytes | Callable[[], bytes],
              skip: bool = False, whole: bool = True) -> defer.Deferred:
        """Deferred Verdict for message (as received, without our Received field).

        message: its bytes, or a function giving them that runs in the pool
        thread (a read of the spool file: accept/smtp.py). whole=False: message
        is only its start (it is bigger than max_verify_size), enough for SPF and
        DMARC's From; its DKIM signatures are then neutral, not verified."""
        if skip:
            return defer.succeed(Verdict(self.authserv_id))
        d = self.run_blocking(self.evaluate, facts, message, whole)
        d.addTimeout(self.settings.timeout + GRACE, self.clock)
        d.addErrback(self._failed, facts)
        return d

    def check_sender(self, facts: AuthFacts) -> defer.Deferred:
        """Deferred SpfResult of MAIL FROM (or HELO for <>), at MAIL time: RFC 7208 2.4
        recommends checking before the message is sent, and a fail refused here
        (spf_refusal) costs no DATA. In the pool, with the same DNS budget and grace
        as check(); the result goes into AuthFacts.spf for the checks at the dot.
        Never fails: a timeout or fault is a temperror result."""
        d = self.run_blocking(self._check_spf, facts)
        d.addTimeout(self.settings.timeout + GRACE, self.clock)
        d.addErrback(self._spf_failed, facts)
        return d

    def _check_spf(self, facts: AuthFacts) -> SpfResult:
        query = DnsQuery(self.resolver, self.settings.timeout, self.monotonic)
        return check_spf(query, facts.client_address, facts.sender, facts.helo,
                         self.authserv_id)

    def _spf_failed(self, failure, facts: AuthFacts) -> SpfResult:
        reason = _why(failure, facts, "SPF check", "not done in time")
        identity = "mailfrom" if facts.sender else "helo"
        domain = (facts.sender.rpartition("@")[2] if facts.sender else facts.helo).lower()
        header = (f"TempError ({self.authserv_id}: {reason}) identity={identity}; "
                  f"client-ip={facts.client_address}; helo={facts.helo}; "
                  f"envelope-from={facts.sender}; receiver={self.authserv_id}")
        return SpfResult("temperror", identity, domain, reason, header)

    def spf_refusal(self, spf: SpfResult | None) -> MailError | None:
        """550 5.7.23 (RFC 7372) for an SPF fail when spf_fail = "reject"; else None."""
        if spf is None or spf.result != "fail" or self.settings.spf_fail != "reject":
            return None
        return MailError(550, "5.7.23", f"SPF: {spf.domain} does not designate "
                         "your address as a permitted sender (RFC 7208)")

    def _failed(self, failure, facts: AuthFacts) -> Verdict:
        reason = _why(failure, facts, "sender checks", "checks timed out")
        header = (f"Authentication-Results: {self.authserv_id}; none ({reason})\r\n")
        return Verdict(self.authserv_id, header.encode("ascii"))

    def evaluate(self, facts: AuthFacts, message: bytes | Callable[[], bytes],
                 whole: bool = True) -> Verdict:
        """The checks themselves (blocking: a pool thread)."""
        s = self.settings
        if callable(message):
            message = message()
        query = DnsQuery(self.resolver, s.timeout, self.monotonic)
        spf = facts.spf or check_spf(query, facts.client_address, facts.sender, facts.helo,
                                     self.authserv_id)
        header, _ = results.split_header(message)
        if whole:
            dkims = verify_all(message, query, s.dkim_min_key_bits)
        else:
            reason = f"not verified: message over {s.max_verify_size} bytes"
            dkims = [unverified(f.partition(b":")[2], reason) for f in results.fields(header)
                     if f.partition(b":")[0].strip().lower() == b"dkim-signature"]
        domains = from_domains(header)
        dmarcs = [evaluate(query, d, spf, dkims, self.orgs, self.rng) for d in domains]
        if dmarcs:
            dmarc = max(dmarcs, key=_severity)
        else:  # no From address to align with (RFC 7489 6.6.1): nothing to apply
            dmarc = DmarcResult("permerror" if not domains else "none", "")
        verdict = Verdict(self.authserv_id, spf=spf, dkim=dkims, dmarc=dmarc)
        verdict.headers = (results.authentication_results(self.authserv_id, spf, dkims, dmarc)
                           + results.received_spf(spf.received_spf))
        self._decide(verdict)
        log.info("{client}: {summary} from=<{sender}> header.from={domain}",
                 client=facts.client_address, summary=verdict.summary(), sender=facts.sender,
                 domain=dmarc.domain)
        return verdict

    def _decide(self, v: Verdict) -> None:
        s, dmarc = self.settings, v.dmarc
        v.refusal = self.spf_refusal(v.spf)
        if v.refusal is not None:
            return
        if dmarc.result == "fail" and dmarc.policy == "reject":
            if s.dmarc_reject == "reject":
                v.refusal = MailError(550, "5.7.1", f"DMARC policy of {dmarc.domain} "
                                      "rejects this message: it is not authenticated")
            elif s.dmarc_reject == "quarantine":
                v.folder = s.junk_folder
        elif dmarc.result == "fail" and dmarc.policy == "quarantine":
            if s.dmarc_quarantine == "junk":
                v.folder = s.junk_folder
        elif (dmarc.result == "temperror" and dmarc.policy == "reject"
              and s.dmarc_reject == "reject"):
            v.refusal = MailError(451, "4.7.1", f"DMARC of {dmarc.domain}: temporary DNS "
                                  "failure, try again later", temporary=True)


def from_domains(header: bytes) -> list[str]:
    """The distinct domains of the From field(s) (RFC 5322 3.6.2); [] when none."""
    values = []
    for f in results.fields(header):
        name, _, value = f.partition(b":")
        if name.strip().lower() == b"from":
            values.append(value.decode("utf-8", "replace").replace("\r", "").replace("\n", ""))
    domains = []
    for _, address in getaddresses(values):
        domain = address.rpartition("@")[2].strip().lower().rstrip(".")
        if "@" in address and domain and domain not in domains:
            domains.append(domain)
    return domains


def _severity(d: DmarcResult) -> int:
    if d.result in ("fail", "temperror"):
        return 1 + ("none", "quarantine", "reject").index(d.policy)
    return 0


def _why(failure, facts: AuthFacts, what: str, timed_out: str) -> str:
    """Log a check that did not finish; the reason for its temperror header: a timeout
    (the DNS budget ran out) is a warning, anything else a bug with its traceback."""
    if failure.check(defer.TimeoutError):
        log.warn("{client}: {what} not done in time", client=facts.client_address, what=what)
        return timed_out
    log.failure("{client}: {what} failed", failure, client=facts.client_address, what=what)
    return "internal error"
