"""DNS for the inbound checks: one dnspython resolver, a deadline per message.

SPF (spf.py), DKIM key (dkimcheck.py) and DMARC record (dmarc.py) lookups all go
through one DnsQuery made for one message, so the whole message's lookups share
one time budget ([inbound_auth] timeout): a name server that never answers
holds up that message for at most the budget, then its result is temperror.
Blocking: called in the verification pool's threads only (checker.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import dns.exception
import dns.name
import dns.resolver


class TempDNSError(Exception):
    """The lookup failed for now (timeout, SERVFAIL, no server answered)."""


class DnsQuery:
    def __init__(self, resolver: dns.resolver.Resolver, budget: float,
                 clock: Callable[[], float] = time.monotonic):
        self.resolver = resolver
        self.clock = clock
        self.deadline = clock() + budget

    def query(self, name: str, rdtype: str) -> list:
        """The answer's rdata; [] when the name or the type does not exist."""
        return self._query(name, rdtype) or []

    def exists(self, name: str) -> bool:
        """False when name does not exist: NXDOMAIN for its A, AAAA and MX records
        (RFC 9091 2.1, the DMARC np= test); TempDNSError passes."""
        return any(self._query(name, t) is not None for t in ("A", "AAAA", "MX"))

    def _query(self, name: str, rdtype: str) -> list | None:
        """The answer's rdata; [] when the type does not exist, None for NXDOMAIN (or a
        name that cannot exist)."""
        left = self.deadline - self.clock()
        if left <= 0:
            raise TempDNSError(f"{name} {rdtype}: time budget spent")
        try:
            answer = self.resolver.resolve(name, rdtype, lifetime=min(left, self.resolver.lifetime),
                                           search=False)
        except dns.resolver.NoAnswer:
            return []
        except (dns.resolver.NXDOMAIN, dns.exception.SyntaxError, dns.name.NameTooLong):
            return None  # no such name, or none that can exist (an empty or long label)
        except dns.exception.DNSException as e:
            # Timeout, NoNameservers (SERVFAIL, refused), bad names ...: temporary.
            raise TempDNSError(f"{name} {rdtype}: {type(e).__name__}") from None
        return list(answer)

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record of name, its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(r.strings) for r in self.query(name, "TXT")]
