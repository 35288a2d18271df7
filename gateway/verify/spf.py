"""SPF (RFC 7208) of the MAIL FROM identity, or of HELO for the null sender <>.

pyspf does the evaluation: it is the implementation postfix-policyd-spf-python and
spf-engine run, it passes the RFC's test suite, and it keeps the processing limits
of RFC 7208 4.6.4 (10 mechanisms and modifiers that do DNS, 2 void lookups; more
is permerror). Its DNS goes through our DnsQuery (the [relay] name servers and the
message's time budget) by pyspf's one hook, the module function DNSLookup: it reads
the query of the calling thread, so concurrent checks in the pool never mix.
Blocking; runs in checker.py's pool.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import spf as pyspf

from gateway.verify.dnsquery import DnsQuery, TempDNSError

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
_current = threading.local()


def _lookup(name: str, qtype: str, strict=True, timeout=30) -> list:
    """pyspf's DNSLookup: [((name, type), value), ...], pyspf's own value shapes."""
    query: DnsQuery = _current.query
    try:
        answers = query.query(name, qtype)
    except TempDNSError as e:
        raise pyspf.TempError(f"DNS {e}") from None
    out = []
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            value = rdata.address
        elif qtype == "MX":
            value = (rdata.preference, rdata.exchange)
        elif qtype == "PTR":
            value = rdata.target.to_text(True)
        elif qtype in ("TXT", "SPF"):
            value = rdata.strings
        else:
            continue
        out.append(((name, qtype), value))
    return out


pyspf.DNSLookup = _lookup


@dataclass(frozen=True)
class SpfResult:
    result: str  # one of RESULTS
    identity: str  # "mailfrom" or "helo"
    domain: str  # the domain checked (MAIL FROM's, or the HELO name)
    text: str  # pyspf's explanation
    received_spf: str  # the Received-SPF field's value (RFC 7208 9.1)


def check_spf(query: DnsQuery, client_ip: str, sender: str, helo: str,
              receiver: str) -> SpfResult:
    """Evaluate SPF for one message (blocking)."""
    _current.query = query
    try:
        q = pyspf.query(i=client_ip, s=sender, h=helo, receiver=receiver, strict=True)
        result, _code, text = q.check()
        if result not in RESULTS:  # "ambiguous" exists only in pyspf's harsh mode
            result = "permerror"
        header = q.get_header(result, receiver)
    except (ValueError, TypeError) as e:  # a client address pyspf cannot read
        result, text = "permerror", str(e)
        header = f"PermError ({receiver}: {e}) identity=mailfrom"
        q = None
    finally:
        _current.query = None
    identity = q.ident if q is not None else "mailfrom"
    domain = (q.o if q is not None else sender.rpartition("@")[2]).lower()
    return SpfResult(result, identity, domain, text, header)
