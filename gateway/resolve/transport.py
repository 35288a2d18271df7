"""The transport map: recipient domain -> next hop and TLS policy. Implements ITransportMap.

A pure decision (no I/O) that deliver/relay.py asks for every remote domain,
in the manner of Postfix's transport(5) and smtp_tls_policy_maps:
  1. [relay.routes]: "example.org" exactly, ".example.org" for its subdomains;
  2. else [relay] smarthost, when set;
  3. else the domain's own MX records, on [relay] port.
A next hop in brackets ("[host]:port") is connected to directly, without an
MX lookup. The TLS policy is [relay.tls_policy] for the domain (same
matching), else [relay] tls; credentials go only to the smarthost.
"""

from __future__ import annotations

from zope.interface import implementer

from gateway.config import RelaySettings, split_next_hop
from gateway.interfaces import ITransportMap, NextHop


def _lookup(table: dict[str, str], domain: str) -> str | None:
    """Exact domain first, then ".parent" entries from the closest parent up."""
    if domain in table:
        return table[domain]
    labels = domain.split(".")
    for i in range(1, len(labels)):
        parent = "." + ".".join(labels[i:])
        if parent in table:
            return table[parent]
    return None


@implementer(ITransportMap)
class TransportMap:
    def __init__(self, settings: RelaySettings):
        self.settings = settings

    def tls_policy(self, domain: str) -> str:
        return _lookup(self.settings.tls_policy, domain) or self.settings.tls

    def next_hop(self, domain: str) -> NextHop:
        domain = domain.lower().rstrip(".")
        tls = self.tls_policy(domain)
        route = _lookup(self.settings.routes, domain)
        if route is not None:
            host, port, brackets = split_next_hop(route)
            return NextHop(host, port or self.settings.port, mx=not brackets, tls=tls)
        if self.settings.smarthost:
            host, port, brackets = split_next_hop(self.settings.smarthost)
            auth = bool(self.settings.smarthost_user)
            # Credentials never travel in plaintext: AUTH implies at least "encrypt".
            if auth and tls in ("none", "may"):
                tls = "encrypt"
            return NextHop(host, port or self.settings.port, mx=not brackets, tls=tls,
                           auth=auth)
        return NextHop(domain, self.settings.port, mx=True, tls=tls)
