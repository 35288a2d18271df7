"""ARC sealing (gateway/sign/arc.py): sealed messages checked by dkimpy's arc_verify
against the keys' published records (a fake DNS), first and second hops; the list
target seals once per post."""

from __future__ import annotations

import re

import dkim
import pytest

from gateway.config import ArcSettings, ConfigError, load, parse
from gateway.envelope import Envelope, Recipient
from gateway.sign import keys
from gateway.sign.arc import (
    ArcSealer,
    PostSigner,
    RelaySealer,
    arrival_results,
    chain_status,
)
from gateway.sign.keys import KeyRing
from gateway.sign.signer import DkimSigner

AUTHSERV = "mx.example.test"
POST = (b"Authentication-Results: mx.example.test; dkim=pass header.d=remote.test;\r\n"
        b" spf=pass smtp.mailfrom=bob@remote.test\r\n"
        b"Authentication-Results: forger.test; dkim=pass header.d=bank.test\r\n"
        b"From: Bob <bob@remote.test>\r\n"
        b"To: dev@example.test\r\n"
        b"Subject: topic\r\n"
        b"Date: Thu, 26 Nov 2026 14:00:00 +0000\r\n"
        b"Message-ID: <1@remote.test>\r\n"
        b"\r\n"
        b"Hello list,\r\n\r\nthe body.\r\n")


def decorated(message: bytes) -> bytes:
    """What a list does to a post: a Subject prefix and a footer (the author's DKIM
    signature no longer holds)."""
    return (message.replace(b"Subject: topic", b"Subject: [dev] topic")
            + b"-- \r\ndev mailing list\r\n")


class Keys:
    """Keys written where KeyRing reads them, and their TXT records: a fake DNS."""

    def __init__(self, root):
        self.root = root
        self.records: dict[str, bytes] = {}

    def add(self, domain: str, selector: str = "s1", algorithm: str = "rsa") -> None:
        private, public = keys.generate(algorithm)
        keys.write_key(keys.key_path(self.root, domain, selector, algorithm), private)
        self.records[f"{selector}._domainkey.{domain}"] = keys.txt_record(
            algorithm, public).encode()

    def dnsfunc(self, name, timeout=5):
        return self.records.get(name.decode().rstrip("."))


@pytest.fixture
def ring(tmp_path):
    k = Keys(tmp_path / "dkim")
    return k


def sealer(k: Keys, authserv=AUTHSERV, clock=lambda: 1_790_000_000) -> ArcSealer:
    return ArcSealer(KeyRing(k.root, check_interval=0), authserv, dnsfunc=k.dnsfunc,
                     clock=clock)


def field(message: bytes, name: bytes) -> str:
    m = re.search(rb"^" + name + rb": (.*?)\r\n(?! )", message, re.M | re.S | re.I)
    assert m, name
    return " ".join(m.group(1).decode().split())


def test_arrival_results_are_ours_only():
    assert arrival_results(POST, AUTHSERV) == ["dkim=pass header.d=remote.test",
                                               "spf=pass smtp.mailfrom=bob@remote.test"]
    assert arrival_results(POST, "other.test") == []
    assert arrival_results(b"From: a@b.test\r\n\r\nx\r\n", AUTHSERV) == []


def test_a_first_seal_verifies_with_cv_none_and_carries_our_results(ring):
    ring.add("example.test")
    copy = decorated(POST)
    sealed = sealer(ring).seal("example.test", POST, copy)
    assert sealed.endswith(copy)
    cv, results, reason = dkim.arc_verify(sealed, dnsfunc=ring.dnsfunc)
    assert cv == dkim.CV_Pass, reason
    assert [(r["instance"], r["cv"]) for r in results] == [(1, b"none")]
    aar = field(sealed, b"ARC-Authentication-Results")
    assert aar == ("i=1; mx.example.test; dkim=pass header.d=remote.test; "
                   "spf=pass smtp.mailfrom=bob@remote.test; arc=none")
    assert "bank.test" not in aar  # another authserv-id's claims are not ours to carry
    seal = field(sealed, b"ARC-Seal")
    assert "d=example.test" in seal and "s=s1" in seal and "a=rsa-sha256" in seal
    # The seal binds the copy: a member's copy changed on the way fails.
    forged = sealed.replace(b"the body.", b"pay now.")
    assert dkim.arc_verify(forged, dnsfunc=ring.dnsfunc)[0] == dkim.CV_Fail
    # And only the published key checks it.
    other = Keys(ring.root.parent / "other")
    other.add("example.test")
    assert dkim.arc_verify(sealed, dnsfunc=other.dnsfunc)[0] == dkim.CV_Fail


def test_without_our_results_the_seal_says_so(ring):
    ring.add("example.test")
    plain = POST.split(b"\r\n", 3)[3]  # no Authentication-Results at all
    sealed = sealer(ring).seal("example.test", plain, decorated(plain))
    assert field(sealed, b"ARC-Authentication-Results") == "i=1; mx.example.test; arc=none"
    assert dkim.arc_verify(sealed, dnsfunc=ring.dnsfunc)[0] == dkim.CV_Pass


def test_a_second_hop_seals_with_cv_pass(ring):
    # Hop 1: an upstream list at upstream.test seals its copy; hop 2: ours.
    ring.add("upstream.test", selector="up")
    ring.add("example.test")
    hop1 = sealer(ring, authserv="mx.upstream.test").seal("upstream.test", POST,
                                                           decorated(POST))
    assert dkim.arc_verify(hop1, dnsfunc=ring.dnsfunc)[0] == dkim.CV_Pass
    assert chain_status(hop1, [], ring.dnsfunc) == "pass"
    hop2 = sealer(ring).seal("example.test", hop1,
                             hop1.replace(b"[dev] topic", b"[ours] [dev] topic"))
    cv, results, reason = dkim.arc_verify(hop2, dnsfunc=ring.dnsfunc)
    assert cv == dkim.CV_Pass, reason
    assert sorted((r["instance"], r["cv"]) for r in results) == [(1, b"none"), (2, b"pass")]
    assert field(hop2, b"ARC-Authentication-Results").endswith("; arc=pass")


def test_a_broken_incoming_chain_is_sealed_as_failed(ring):
    ring.add("upstream.test", selector="up")
    ring.add("example.test")
    hop1 = sealer(ring, authserv="mx.upstream.test").seal("upstream.test", POST, POST)
    tampered = hop1.replace(b"the body.", b"another body.")
    assert chain_status(tampered, [], ring.dnsfunc) == "fail"
    # What the inbound check recorded wins over a look of our own.
    assert chain_status(tampered, ["arc=pass"], None) == "pass"
    hop2 = sealer(ring).seal("example.test", tampered, tampered)
    assert "cv=fail" in field(hop2, b"ARC-Seal")
    # A receiver sees the chain ended by a failure: nothing to trust.
    assert dkim.arc_verify(hop2, dnsfunc=ring.dnsfunc)[0] != dkim.CV_Pass


def test_no_rsa_key_no_seal(ring):
    ring.add("example.test", algorithm="ed25519")
    copy = decorated(POST)
    assert sealer(ring).seal("example.test", POST, copy) == copy
    assert sealer(ring).seal("nokeys.test", POST, copy) == copy


def test_a_list_post_is_signed_and_sealed_by_the_list_domain(ring):
    ring.add("lists.example.test", selector="l1")
    ring.add("lists.example.test", selector="l2", algorithm="ed25519")
    ring.add("example.test")
    keyring = KeyRing(ring.root, check_interval=0)
    sign_post = PostSigner(DkimSigner(keyring),
                           ArcSealer(keyring, AUTHSERV, dnsfunc=ring.dnsfunc))
    copy = decorated(POST)
    out = sign_post("lists.example.test", POST, copy, "Q1")
    # d= the list's domain, whatever the From (remote.test has no key here).
    d = dkim.DKIM(out)
    assert out.count(b"DKIM-Signature:") == 2
    assert d.verify(idx=0, dnsfunc=ring.dnsfunc) and d.verify(idx=1, dnsfunc=ring.dnsfunc)
    assert b"d=lists.example.test" in out
    cv, results, _ = dkim.arc_verify(out, dnsfunc=ring.dnsfunc)
    assert cv == dkim.CV_Pass
    assert "d=lists.example.test" in field(out, b"ARC-Seal")
    # Either part may be off.
    assert PostSigner(None, None)("lists.example.test", POST, copy) == copy


def test_relayed_mail_from_outside_is_sealed_once_and_ours_is_signed(ring):
    ring.add("example.test")
    keyring = KeyRing(ring.root, check_interval=0)
    signer = DkimSigner(keyring)
    relay_sign = RelaySealer(signer, ArcSealer(keyring, AUTHSERV, dnsfunc=ring.dnsfunc),
                             "example.test")
    outside = Envelope(sender="bob@remote.test", recipients=[Recipient("x@far.test")],
                       client_address="192.0.2.7", queue_id="Q2")
    sealed = relay_sign(outside, POST)
    assert b"DKIM-Signature" not in sealed  # not ours to vouch for
    assert dkim.arc_verify(sealed, dnsfunc=ring.dnsfunc)[0] == dkim.CV_Pass
    assert relay_sign(outside, sealed) == sealed  # a retry of the same: not sealed again
    ours = POST.replace(b"bob@remote.test", b"alice@example.test")
    local = Envelope(sender="alice@example.test", recipients=[Recipient("x@far.test")],
                     protocol="local", queue_id="Q3")
    signed = relay_sign(local, ours)
    assert b"ARC-Seal" not in signed  # DKIM-signed: nothing broke, nothing to carry
    assert dkim.verify(signed, dnsfunc=ring.dnsfunc)



def test_arc_settings_defaults_and_faults():
    assert load().arc == ArcSettings() == parse({"server": {"domains": ["example.test"]}}).arc
    assert ArcSettings().seal_lists and not ArcSettings().seal_relayed
    got = parse({"server": {"domains": ["example.test"]},
                 "arc": {"seal_relayed": True, "domain": "Example.TEST.",
                         "authserv_id": "mx.example.test"}}).arc
    assert (got.seal_relayed, got.domain, got.authserv_id) == (
        True, "example.test", "mx.example.test")
    with pytest.raises(ConfigError) as e:
        parse({"server": {"domains": ["example.test"]},
               "arc": {"authserv_id": "mx example", "seal_lists": "yes"}}, "a.toml")
    assert sorted(e.value.problems) == [
        ("a.toml", "arc.authserv_id", "'mx example' is not a token (RFC 8601 2.5)"),
        ("a.toml", "arc.seal_lists", "must be bool, not str")]
