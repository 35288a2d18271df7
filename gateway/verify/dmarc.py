"""DMARC (RFC 7489): the From domain's policy, and whether SPF or DKIM passed aligned.

Record discovery (6.6.3): the TXT at _dmarc.<From domain>, else at
_dmarc.<organizational domain>; sp= applies when the record came from the
organizational domain, and np= (RFC 9091) when the From domain does not exist
at all (NXDOMAIN), checked only when the policy is to be applied. pct= (6.6.4):
a message outside the percentage gets the next milder policy (reject ->
quarantine -> none). Blocking, in checker.py's pool; published_policy() also
serves the list exploder (through service.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from gateway.verify.dkimcheck import DkimResult
from gateway.verify.dnsquery import DnsQuery, TempDNSError
from gateway.verify.orgdomain import OrgDomains
from gateway.verify.spf import SpfResult

POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class DmarcRecord:
    policy: str
    strict_dkim: bool = False
    strict_spf: bool = False
    pct: int = 100
    sub_policy: str | None = None  # sp=
    np_policy: str | None = None  # np= (RFC 9091 4): for non-existent subdomains


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass fail none temperror permerror
    domain: str  # the From domain
    policy: str = "none"  # the policy that applies to this message (after sp= and pct=)
    published: str = ""  # p= or sp= as published, for the header's comment


def parse_record(text: str) -> DmarcRecord | None:
    """A DMARC record's tags (6.3), or None when it is none (v=DMARC1 first, p= valid)."""
    tags = {}
    for part in text.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            tags.setdefault(key.strip().lower(), value.strip())
    if list(tags)[:1] != ["v"] or tags["v"] != "DMARC1":
        return None
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        return None
    try:
        pct = min(max(int(tags.get("pct", "100")), 0), 100)
    except ValueError:
        pct = 100
    # An unknown sp= or np= value is ignored (6.3: the tag is then as if absent).
    sub = tags.get("sp", "").lower()
    np = tags.get("np", "").lower()
    return DmarcRecord(policy, tags.get("adkim", "r").lower() == "s",
                       tags.get("aspf", "r").lower() == "s", pct,
                       sub if sub in POLICIES else None, np if np in POLICIES else None)


def find_record(query: DnsQuery, domain: str, orgs: OrgDomains
                ) -> tuple[DmarcRecord | None, bool]:
    """(domain's record, True when it came from the organizational domain above it),
    or (None, False); TempDNSError passes."""
    org = orgs.org(domain)
    for name in (domain, org):
        records = [t.decode("utf-8", "replace") for t in query.txt(f"_dmarc.{name}")]
        records = [t for t in records if t.lstrip().startswith("v=DMARC1")]
        if len(records) == 1 and (record := parse_record(records[0])) is not None:
            return record, name != domain
        if len(records) > 1:
            return None, False  # 6.6.3: more than one record is no record
        if name == org:
            break
    return None, False


def applied_policy(query: DnsQuery, domain: str, record: DmarcRecord, inherited: bool,
                   check_existence: bool = True) -> str:
    """The policy of record for domain: p= for the domain itself; for a subdomain
    that inherited it, np= when the subdomain does not exist (RFC 9091 3.2; one
    more lookup, only when np= is there and check_existence), else sp=, else p=."""
    if not inherited:
        return record.policy
    if record.np_policy is not None and check_existence and not query.exists(domain):
        return record.np_policy
    return record.sub_policy or record.policy


def published_policy(query: DnsQuery, domain: str, orgs: OrgDomains) -> str:
    """The DMARC policy that applies to mail from domain ("none" without a record):
    what a mailing list asks before it forwards a post (lists/, through service.py).
    TempDNSError passes."""
    record, inherited = find_record(query, domain, orgs)
    if record is None:
        return "none"
    return applied_policy(query, domain, record, inherited)


def evaluate(query: DnsQuery, from_domain: str, spf: SpfResult | None,
             dkims: list[DkimResult], orgs: OrgDomains,
             rng: Callable[[], float] = random.random) -> DmarcResult:
    try:
        record, inherited = find_record(query, from_domain, orgs)
    except TempDNSError:
        return DmarcResult("temperror", from_domain)
    if record is None:
        return DmarcResult("none", from_domain)
    spf_aligned = (spf is not None and spf.result == "pass"
                   and orgs.aligned(spf.domain, from_domain, record.strict_spf))
    dkim_aligned = any(d.result == "pass" and orgs.aligned(d.domain, from_domain,
                                                          record.strict_dkim) for d in dkims)
    if spf_aligned or dkim_aligned:  # the policy is only named: no np= lookups for it
        published = applied_policy(query, from_domain, record, inherited, False)
        return DmarcResult("pass", from_domain, "none", published)
    try:
        published = applied_policy(query, from_domain, record, inherited)
    except TempDNSError:  # whether np= applies is not known: the stricter may
        worst = max((record.np_policy or "none", record.sub_policy or record.policy),
                    key=POLICIES.index)
        return DmarcResult("temperror", from_domain, worst, worst)
    policy = published
    if record.pct < 100 and rng() * 100 >= record.pct:
        policy = POLICIES[max(POLICIES.index(policy) - 1, 0)]
    # An identifier that failed only for now might have passed: say so (temperror).
    maybe = (spf is not None and spf.result == "temperror") or any(
        d.result == "temperror" for d in dkims)
    return DmarcResult("temperror" if maybe else "fail", from_domain, policy, published)
