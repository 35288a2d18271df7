"""A dnspython resolver stand-in for unit tests: answers from a dict, no sockets.

{(name, type): [rdata text, ...]} answers; "SERVFAIL" or "TIMEOUT" raise what
dnspython raises; a name with no record at all is NXDOMAIN, one with other
types NoAnswer. Counts the queries it was asked.
"""

from __future__ import annotations

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver


class FakeResolver:
    lifetime = 5.0

    def __init__(self, records: dict[tuple[str, str], list[str] | str]):
        self.records = {(n.lower().rstrip("."), t.upper()): v for (n, t), v in records.items()}
        self.queries: list[tuple[str, str]] = []

    def resolve(self, name, rdtype, lifetime=None, search=False):
        name = str(name).lower().rstrip(".")
        self.queries.append((name, rdtype))
        value = self.records.get((name, rdtype))
        if value == "SERVFAIL":
            raise dns.resolver.NoNameservers()
        if value == "TIMEOUT":
            raise dns.exception.Timeout()
        if value is None:
            if any(n == name for n, _ in self.records):
                raise dns.resolver.NoAnswer()
            raise dns.resolver.NXDOMAIN()
        return [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
                for text in value]
