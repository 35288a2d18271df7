"""MX resolution for outbound relay (RFC 5321 section 5, RFC 7505 null MX), with dnspython.

Used by deliver/relay.py: a destination domain becomes an ordered list of
hosts with their addresses. dnspython's asyncio resolver does not run on
Twisted's reactor, so each lookup is the blocking dns.resolver run in a
thread (run_blocking: deferToThreadPool with the injected reactor); the
reactor thread never waits for DNS. Name servers, their port and the timeout
are settings ([relay] nameservers, dns_port, dns_timeout) so tests run a real
DNS server on loopback.

Rules (RFC 5321 5.1):
  - MX records in preference order, shuffled among equal preference;
  - no MX record (NOERROR, no data): the domain itself is the host ("implicit MX");
  - a lone MX with exchange "." is a null MX (RFC 7505): 556 5.1.10, permanent;
  - NXDOMAIN: 550 5.1.2, permanent; SERVFAIL, timeouts: 451 4.4.3, temporary;
  - an MX naming this host drops it and every record of equal or higher preference value
    (a loop otherwise); none left: 554 5.4.6.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.resolver
from twisted.internet import defer

from gateway.errors import MailError


@dataclass(frozen=True)
class Host:
    """One SMTP server to try: its name (for TLS checks and logs) and addresses."""

    name: str
    addresses: tuple[str, ...]
    preference: int = 0


def make_resolver(nameservers: Iterable[str] = (), port: int = 53,
                  timeout: float = 10.0) -> dns.resolver.Resolver:
    """A dnspython resolver: the given servers, or the system's (/etc/resolv.conf)."""
    servers = list(nameservers)
    resolver = dns.resolver.Resolver(configure=not servers)
    if servers:
        resolver.nameservers = servers
        resolver.port = port
    resolver.lifetime = timeout
    resolver.timeout = min(timeout, 5.0)
    # Shared by the worker threads; dnspython's LRUCache locks internally.
    resolver.cache = dns.resolver.LRUCache(10000)
    return resolver


def _temporary(name: str, rdtype: str, e: Exception) -> MailError:
    return MailError(451, "4.4.3", f"DNS lookup of {name} {rdtype} failed: "
                     f"{type(e).__name__}, will retry")


class MXResolver:
    def __init__(self, *, resolver, run_blocking: Callable[..., defer.Deferred],
                 local_names: Iterable[str] = (), max_addresses: int = 5,
                 rng: random.Random | None = None):
        self.resolver = resolver
        self.run_blocking = run_blocking
        self.local_names = frozenset(n.lower().rstrip(".") for n in local_names)
        self.max_addresses = max_addresses
        self.rng = rng or random.Random()

    def hosts_for_domain(self, domain: str) -> defer.Deferred:
        """Deferred list of Host for mail to domain, best first; fails with MailError."""
        return self.run_blocking(self.lookup_domain, domain)

    def hosts_for_name(self, name: str) -> defer.Deferred:
        """Deferred [Host] for one named server (a smarthost): its own addresses, no MX."""
        return self.run_blocking(self.lookup_name, name)

    # --- blocking work, in a thread ------------------------------------------------

    def _query(self, name: str, rdtype: str):
        """The answer's rdatas; [] when the name has none of that type.

        NXDOMAIN propagates; every other DNS fault becomes a temporary MailError.
        """
        try:
            return list(self.resolver.resolve(name, rdtype, search=False))
        except dns.resolver.NoAnswer:
            return []
        except dns.resolver.NXDOMAIN:
            raise
        except (dns.exception.DNSException, OSError) as e:
            raise _temporary(name, rdtype, e) from e

    def addresses(self, name: str) -> tuple[str, ...]:
        """IPv4 then IPv6 addresses of name; () when it has none or does not exist."""
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                found += [r.address for r in self._query(name, rdtype)]
            except dns.resolver.NXDOMAIN:
                return ()
        return tuple(found)

    def lookup_name(self, name: str) -> list[Host]:
        name = name.lower().rstrip(".")
        if _is_ip(name):
            return [Host(name, (name,))]
        addresses = self.addresses(name)
        if not addresses:
            raise MailError(550, "5.4.4", f"Host {name} has no address (A/AAAA) records")
        return [Host(name, addresses)]

    def lookup_domain(self, domain: str) -> list[Host]:
        domain = domain.lower().rstrip(".")
        try:
            records = self._query(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise MailError(550, "5.1.2", f"Domain {domain} does not exist (NXDOMAIN)") from None
        if not records:
            # RFC 5321 5.1: no MX records -> the domain is its own implicit MX.
            addresses = self.addresses(domain)
            if not addresses:
                raise MailError(550, "5.4.4", f"Domain {domain} has no MX and no address "
                                "records")
            return [Host(domain, addresses)]
        mxs = [(r.preference, r.exchange) for r in records]
        if all(exchange == dns.name.root for _, exchange in mxs):
            raise MailError(556, "5.1.10", f"Domain {domain} accepts no mail (null MX, "
                            "RFC 7505)")
        ordered = self._order([(p, x.to_text(omit_final_dot=True).lower())
                               for p, x in mxs if x != dns.name.root])
        ordered = self._drop_self(domain, ordered)
        return self._resolve_hosts(domain, ordered)

    def _order(self, mxs: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """Preference order; equal preferences in random order (RFC 5321 5.1)."""
        self.rng.shuffle(mxs)
        return sorted(mxs, key=lambda m: m[0])  # sorted() is stable: keeps the shuffle

    def _drop_self(self, domain: str, mxs: list[tuple[int, str]]) -> list[tuple[int, str]]:
        mine = [p for p, name in mxs if name in self.local_names]
        if not mine:
            return mxs
        kept = [(p, n) for p, n in mxs if p < min(mine)]
        if not kept:
            raise MailError(554, "5.4.6", f"Mail for {domain} loops back to myself "
                            "(this host is its best MX)")
        return kept

    def _resolve_hosts(self, domain: str, mxs: list[tuple[int, str]]) -> list[Host]:
        hosts: list[Host] = []
        trouble: MailError | None = None
        count = 0
        for preference, name in mxs:
            if count >= self.max_addresses:
                break
            try:
                addresses = (name,) if _is_ip(name) else self.addresses(name)
            except MailError as e:
                trouble = e
                continue
            if addresses:
                hosts.append(Host(name, addresses, preference))
                count += len(addresses)
        if hosts:
            return hosts
        if trouble is not None:
            raise trouble
        raise MailError(550, "5.4.4", f"No MX host of {domain} has an address record")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
