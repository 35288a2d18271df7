"""MX resolution rules (RFC 5321 5.1, RFC 7505) over a fake dnspython resolver (no sockets)."""

from __future__ import annotations

import random

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import pytest
from twisted.internet import defer

from gateway.deliver.mx import Host, MXResolver, make_resolver
from gateway.errors import MailError


def rdata(rdtype: str, text: str):
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)


class FakeResolver:
    """zone: (name, type) -> list of rdata texts, or an exception to raise."""

    def __init__(self, zone: dict):
        self.zone = zone
        self.queries: list[tuple[str, str]] = []

    def resolve(self, name, rdtype, search=True):
        assert search is False  # never append search domains to a mail domain
        self.queries.append((name, rdtype))
        value = self.zone.get((name, rdtype))
        if value is None:
            if any(n == name for n, _ in self.zone):
                raise dns.resolver.NoAnswer()
            raise dns.resolver.NXDOMAIN()
        if isinstance(value, Exception):
            raise value
        return [rdata(rdtype, t) for t in value]


def lookup(zone: dict, domain: str = "remote.test", seed: int = 1, **kw) -> list[Host]:
    mx = MXResolver(resolver=FakeResolver(zone), run_blocking=defer.maybeDeferred,
                    rng=random.Random(seed), **kw)
    box = []
    mx.hosts_for_domain(domain).addBoth(box.append)
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def failure_of(zone: dict, domain: str = "remote.test", **kw) -> MailError:
    with pytest.raises(MailError) as e:
        lookup(zone, domain, **kw)
    return e.value


ZONE = {
    ("remote.test", "MX"): ["20 mx2.remote.test.", "10 mx1.remote.test.",
                            "30 mx3.remote.test."],
    ("mx1.remote.test", "A"): ["127.0.0.2"], ("mx1.remote.test", "AAAA"): ["::2"],
    ("mx2.remote.test", "A"): ["127.0.0.3"],
    ("mx3.remote.test", "A"): ["127.0.0.4"],
}


def test_preference_order_with_addresses():
    hosts = lookup(ZONE)
    assert [(h.name, h.addresses, h.preference) for h in hosts] == [
        ("mx1.remote.test", ("127.0.0.2", "::2"), 10),
        ("mx2.remote.test", ("127.0.0.3",), 20),
        ("mx3.remote.test", ("127.0.0.4",), 30)]


def test_equal_preferences_are_shuffled():
    zone = {("remote.test", "MX"): ["10 a.remote.test.", "10 b.remote.test.",
                                    "5 first.remote.test."],
            ("a.remote.test", "A"): ["127.0.0.2"], ("b.remote.test", "A"): ["127.0.0.3"],
            ("first.remote.test", "A"): ["127.0.0.4"]}
    orders = {tuple(h.name for h in lookup(zone, seed=seed)) for seed in range(20)}
    assert orders == {("first.remote.test", "a.remote.test", "b.remote.test"),
                      ("first.remote.test", "b.remote.test", "a.remote.test")}


def test_implicit_mx_when_the_domain_has_no_mx():
    zone = {("remote.test", "A"): ["127.0.0.5"]}
    assert lookup(zone) == [Host("remote.test", ("127.0.0.5",), 0)]


def test_null_mx_is_permanent():
    e = failure_of({("remote.test", "MX"): ["0 ."]})
    assert (e.code, e.enhanced, e.temporary) == (556, "5.1.10", False)


def test_nxdomain_is_permanent():
    e = failure_of({}, "nowhere.test")
    assert (e.code, e.enhanced, e.temporary) == (550, "5.1.2", False)


def test_no_mx_and_no_address_is_permanent():
    e = failure_of({("remote.test", "TXT"): ['"x"']})
    assert (e.code, e.enhanced, e.temporary) == (550, "5.4.4", False)


@pytest.mark.parametrize("fault", [dns.resolver.NoNameservers(), dns.resolver.LifetimeTimeout(
    timeout=1.0, errors=[])])
def test_servfail_and_timeout_are_temporary(fault):
    e = failure_of({("remote.test", "MX"): fault})
    assert (e.code, e.enhanced, e.temporary) == (451, "4.4.3", True)


def test_hosts_without_address_are_skipped_and_trouble_is_temporary():
    zone = {("remote.test", "MX"): ["10 gone.remote.test.", "20 broken.remote.test.",
                                    "30 ok.remote.test."],
            ("broken.remote.test", "A"): dns.resolver.NoNameservers(),
            ("ok.remote.test", "A"): ["127.0.0.9"]}
    assert [h.name for h in lookup(zone)] == ["ok.remote.test"]
    del zone[("ok.remote.test", "A")]
    e = failure_of(zone)
    assert (e.code, e.temporary) == (451, True)


def test_an_mx_naming_this_host_drops_it_and_worse_ones():
    hosts = lookup(ZONE, local_names={"mx2.remote.test"})
    assert [h.name for h in hosts] == ["mx1.remote.test"]
    e = failure_of(ZONE, local_names={"MX1.remote.test."})
    assert (e.code, e.enhanced) == (554, "5.4.6")


def test_address_limit_stops_lookups():
    resolver = FakeResolver(ZONE)
    mx = MXResolver(resolver=resolver, run_blocking=defer.maybeDeferred, max_addresses=2)
    box = []
    mx.hosts_for_domain("remote.test").addCallback(box.append)
    assert [h.name for h in box[0]] == ["mx1.remote.test"]  # it has two addresses
    assert ("mx3.remote.test", "A") not in resolver.queries


def test_smarthost_name_and_literal():
    mx = MXResolver(resolver=FakeResolver(ZONE), run_blocking=defer.maybeDeferred)
    box = []
    mx.hosts_for_name("mx2.remote.test").addCallback(box.append)
    mx.hosts_for_name("10.1.2.3").addCallback(box.append)
    assert box == [[Host("mx2.remote.test", ("127.0.0.3",))], [Host("10.1.2.3", ("10.1.2.3",))]]


def test_make_resolver_uses_the_configured_servers_and_port():
    r = make_resolver(["127.0.0.1"], 5353, 3.0)
    assert (r.nameservers, r.port, r.lifetime) == (["127.0.0.1"], 5353, 3.0)
