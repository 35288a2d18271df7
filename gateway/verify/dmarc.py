"""DMARC (RFC 7489): the From domain's policy, and whether SPF or DKIM passed aligned.

Record discovery (6.6.3): the TXT at _dmarc.<From domain>, else at
_dmarc.<organizational domain>; sp= applies when the record came from the
organizational domain. pct= (6.6.4): a message outside the percentage gets
the next milder policy (reject -> quarantine -> none). Blocking, in checker.py's pool.
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
    return DmarcRecord(policy, tags.get("adkim", "r").lower() == "s",
                       tags.get("aspf", "r").lower() == "s", pct)


def _sub_policy(text: str) -> str | None:
    for part in text.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "sp" and value.strip().lower() in POLICIES:
            return value.strip().lower()
    return None


def find_record(query: DnsQuery, domain: str, orgs: OrgDomains) -> tuple[DmarcRecord | None, str]:
    """(record, the policy that applies) for domain, or (None, "none"); TempDNSError passes."""
    org = orgs.org(domain)
    for name, at_org in ((domain, domain == org), (org, True)):
        records = [t.decode("utf-8", "replace") for t in query.txt(f"_dmarc.{name}")]
        records = [t for t in records if t.lstrip().startswith("v=DMARC1")]
        if len(records) == 1 and (record := parse_record(records[0])) is not None:
            sub = _sub_policy(records[0]) if at_org and domain != name else None
            return record, sub or record.policy
        if len(records) > 1:
            return None, "none"  # 6.6.3: more than one record is no record
        if name == org:
            break
    return None, "none"


def evaluate(query: DnsQuery, from_domain: str, spf: SpfResult | None,
             dkims: list[DkimResult], orgs: OrgDomains,
             rng: Callable[[], float] = random.random) -> DmarcResult:
    try:
        record, published = find_record(query, from_domain, orgs)
    except TempDNSError:
        return DmarcResult("temperror", from_domain)
    if record is None:
        return DmarcResult("none", from_domain)
    spf_aligned = (spf is not None and spf.result == "pass"
                   and orgs.aligned(spf.domain, from_domain, record.strict_spf))
    dkim_aligned = any(d.result == "pass" and orgs.aligned(d.domain, from_domain,
                                                          record.strict_dkim) for d in dkims)
    if spf_aligned or dkim_aligned:
        return DmarcResult("pass", from_domain, "none", published)
    policy = published
    if record.pct < 100 and rng() * 100 >= record.pct:
        policy = POLICIES[max(POLICIES.index(policy) - 1, 0)]
    # An identifier that failed only for now might have passed: say so (temperror).
    maybe = (spf is not None and spf.result == "temperror") or any(
        d.result == "temperror" for d in dkims)
    return DmarcResult("temperror" if maybe else "fail", from_domain, policy, published)
