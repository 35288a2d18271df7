"""DKIM signing (gateway/sign/): keys made by `mailgateway dkim keygen`, messages signed
and then checked by dkimpy's verifier against the printed TXT record (a fake DNS)."""

from __future__ import annotations

import re
import stat

import dkim
import pytest

from gateway import cli
from gateway.envelope import Envelope
from gateway.sign.keys import KeyRing
from gateway.sign.signer import DkimSigner, oversigned

MESSAGE = (b"From: Alice <alice@example.test>\r\n"
           b"To: bob@remote.test\r\n"
           b"Subject: signed\r\n"
           b"Date: Thu, 26 Nov 2026 14:00:00 +0000\r\n"
           b"Message-ID: <1@example.test>\r\n"
           b"\r\n"
           b"Hello,\r\n\r\nthe body.\r\n")


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(f'[server]\ndomains = ["example.test"]\nstate_dir = "{tmp_path}/var"\n')
    return path


def keygen(conf, capsys, domain="example.test", selector="s1", algorithm="ed25519"):
    """Run the CLI; return the TXT record as DNS holds it: (name, value)."""
    assert cli.main(["dkim", "keygen", domain, "--selector", selector, "--algorithm",
                     algorithm, "--config", str(conf)]) == 0
    out = capsys.readouterr().out.strip()
    m = re.fullmatch(r'(\S+)\. IN TXT ((?:"[^"]*" ?)+)', out)
    assert m, out
    return m.group(1), "".join(re.findall(r'"([^"]*)"', m.group(2)))


def fake_dns(records: dict[str, str]):
    def dnsfunc(name, timeout=5):
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value is not None else None
    return dnsfunc


def signer(conf) -> DkimSigner:
    return DkimSigner(KeyRing(conf.parent / "var" / "dkim"))


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_signed_message_verifies_against_the_printed_record(conf, capsys, algorithm):
    name, value = keygen(conf, capsys, algorithm=algorithm)
    assert name == "s1._domainkey.example.test"
    assert value.startswith(f"v=DKIM1; k={algorithm}; p=")
    signed = signer(conf).sign(MESSAGE)
    assert signed.endswith(MESSAGE)
    assert signed.startswith(b"DKIM-Signature: v=1; a=" + (
        b"ed25519-sha256" if algorithm == "ed25519" else b"rsa-sha256"))
    assert b"c=relaxed/relaxed" in signed and b"d=example.test" in signed
    assert dkim.verify(signed, dnsfunc=fake_dns({name: value}))
    # The record is what checks it: another domain's key does not.
    other, other_value = keygen(conf, capsys, domain="other.test", algorithm=algorithm)
    assert not dkim.verify(signed, dnsfunc=fake_dns({name: other_value}))


def test_dual_signing_both_signatures_verify(conf, capsys):
    records = dict([keygen(conf, capsys, selector="ed", algorithm="ed25519"),
                    keygen(conf, capsys, selector="rsa", algorithm="rsa")])
    signed = signer(conf).sign(MESSAGE)
    assert signed.count(b"DKIM-Signature:") == 2
    d = dkim.DKIM(signed)
    assert d.verify(idx=0, dnsfunc=fake_dns(records))
    assert d.verify(idx=1, dnsfunc=fake_dns(records))


def test_oversigned_headers_cannot_be_added(conf, capsys):
    records = dict([keygen(conf, capsys)])
    signed = signer(conf).sign(MESSAGE)
    h = re.search(rb"h=([^;]*);", signed.replace(b"\r\n ", b" ")).group(1)
    fields = [f.strip() for f in h.decode().split(":")]
    assert fields.count("from") == 2 and fields.count("subject") == 2
    assert fields.count("reply-to") == 1 and fields.count("list-id") == 1
    assert "received" not in fields and "return-path" not in fields
    dnsfunc = fake_dns(records)
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    header_end = signed.index(b"\r\n\r\n") + 2
    for added in (b"From: mallory@evil.test\r\n", b"Reply-To: mallory@evil.test\r\n",
                  b"Subject: pay now\r\n"):
        # At the bottom of the header section, where a verifier looks first.
        forged = signed[:header_end] + added + signed[header_end:]
        assert not dkim.verify(forged, dnsfunc=dnsfunc), added
    # A trace field may be added by relays on the way: still valid.
    traced = b"Received: from relay.test\r\n" + signed
    assert dkim.verify(traced, dnsfunc=dnsfunc)


def test_one_click_headers_are_covered(conf, capsys):
    """RFC 8058 4: List-Unsubscribe and List-Unsubscribe-Post under the signature, so a
    link changed on the way (someone else's unsubscribe) fails the check."""
    records = dict([keygen(conf, capsys)])
    head, _, body = MESSAGE.partition(b"\r\n\r\n")
    copy = (head + b"\r\nList-Unsubscribe: <https://l.example.test/u?m=bob>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n" + body)
    signed = signer(conf).sign(copy)
    h = re.search(rb"h=([^;]*);", signed.replace(b"\r\n ", b" ")).group(1).decode()
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= {f.strip() for f in h.split(":")}
    dnsfunc = fake_dns(records)
    assert dkim.verify(signed, dnsfunc=dnsfunc)
    assert not dkim.verify(signed.replace(b"m=bob", b"m=eve"), dnsfunc=dnsfunc)
    assert not dkim.verify(signed.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"
                                          b"\r\n", b""), dnsfunc=dnsfunc)


def test_oversigned_counts_each_field_once_more_than_present():
    h = oversigned(["From", "To", "Received", "To"], signed=("from", "to", "cc"))
    assert h == ["from", "from", "to", "to", "to", "cc"]


def test_a_from_domain_without_keys_is_left_unchanged(conf, capsys):
    keygen(conf, capsys)
    message = MESSAGE.replace(b"alice@example.test", b"alice@elsewhere.test")
    assert signer(conf).sign(message) == message
    assert DkimSigner(KeyRing(conf.parent / "nothing")).sign(MESSAGE) == MESSAGE


def test_a_subdomain_is_signed_with_its_parents_keys(conf, capsys):
    records = dict([keygen(conf, capsys)])
    message = MESSAGE.replace(b"alice@example.test", b"alice@lists.example.test")
    signed = signer(conf).sign(message)
    assert b"d=example.test" in signed and dkim.verify(signed, dnsfunc=fake_dns(records))


def test_only_mail_that_originated_here_is_signed(conf, capsys):
    import ipaddress

    keygen(conf, capsys)
    s = DkimSigner(KeyRing(conf.parent / "var" / "dkim"),
                   trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),))
    outside = Envelope(sender="alice@example.test", recipients=[],
                       client_address="198.51.100.7")
    assert s.sign_outbound(outside, MESSAGE) == MESSAGE  # forwarded from outside: a forgery?
    for envelope in (Envelope(sender="", recipients=[], protocol="local"),
                     Envelope(sender="a@example.test", recipients=[],
                              client_address="198.51.100.7", authenticated="alice"),
                     Envelope(sender="a@example.test", recipients=[],
                              client_address="192.0.2.9")):
        assert s.sign_outbound(envelope, MESSAGE).startswith(b"DKIM-Signature:")
    s.enabled = False  # [dkim] sign = false
    assert s.sign_outbound(Envelope(sender="", recipients=[], protocol="local"),
                           MESSAGE) == MESSAGE


def test_keys_are_read_once_and_again_when_the_directory_changes(conf, capsys, monkeypatch):
    now = [0.0]
    ring = KeyRing(conf.parent / "var" / "dkim", check_interval=5.0, clock=lambda: now[0])
    assert ring.keys() == {}
    keygen(conf, capsys, selector="a")
    assert ring.keys() == {}  # not looked at again before check_interval
    now[0] = 5.0
    assert [k.selector for k in ring.keys()["example.test"]] == ["a"]
    reads = []
    import gateway.sign.keys as keys_module
    real = keys_module.load_all
    monkeypatch.setattr(keys_module, "load_all", lambda root: reads.append(root) or real(root))
    now[0] = 10.0
    ring.keys()
    assert reads == []  # nothing changed: no key file read
    keygen(conf, capsys, selector="b", algorithm="rsa")
    now[0] = 15.0
    assert sorted(k.selector for k in ring.keys()["example.test"]) == ["a", "b"]
    assert len(reads) == 1


def test_keygen_file_modes_and_refusals(conf, capsys):
    keygen(conf, capsys, algorithm="rsa")
    root = conf.parent / "var" / "dkim"
    key = root / "example.test" / "s1.rsa.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    before = key.read_bytes()
    argv = ["dkim", "keygen", "example.test", "-s", "s1", "-a", "rsa", "--config", str(conf)]
    assert cli.main(argv) == 1  # never overwrites a key silently
    assert "exists" in capsys.readouterr().err and key.read_bytes() == before
    assert cli.main(["dkim", "keygen", "bad domain", "--config", str(conf)]) == 1
    assert "not a valid domain" in capsys.readouterr().err


def test_a_bad_key_file_is_skipped_not_fatal(conf, capsys):
    records = dict([keygen(conf, capsys)])
    (conf.parent / "var" / "dkim" / "example.test" / "x.rsa.key").write_bytes(b"garbage")
    signed = signer(conf).sign(MESSAGE)
    assert signed.count(b"DKIM-Signature:") == 1
    assert dkim.verify(signed, dnsfunc=fake_dns(records))


def test_signing_twice_with_the_same_key_adds_nothing(conf, capsys):
    records = dict([keygen(conf, capsys)])
    s = signer(conf)
    once = s.sign(MESSAGE)  # e.g. a list post signed by the exploder, then relayed
    assert s.sign(once) == once
    assert dkim.verify(once, dnsfunc=fake_dns(records))


def test_the_relay_signs_before_dot_stuffing(conf, capsys, tmp_path):
    from twisted.internet.testing import StringTransport

    from gateway.deliver.relay import signature_fields
    from gateway.deliver.streaming import SpoolStream
    from gateway.durable import run_now

    records = dict([keygen(conf, capsys)])
    message = MESSAGE + b".a line with a leading dot\r\n"
    path = tmp_path / "message"
    path.write_bytes(message)
    fields = signature_fields(str(path), signer(conf).sign)
    assert fields.startswith(b"DKIM-Signature:") and not fields.endswith(message)
    wire = StringTransport()
    SpoolStream(str(path), fields, run_now, piece=7)(wire)
    stuffed = wire.value()
    assert stuffed.endswith(b"..a line with a leading dot\r\n")
    signed = stuffed.replace(b"\r\n..", b"\r\n.")
    assert signed == fields + message and dkim.verify(signed, dnsfunc=fake_dns(records))


def test_dkim_settings_are_checked():
    from gateway import config
    from gateway.errors import ConfigError

    base = {"server": {"domains": ["example.test"]}}
    assert config.parse(base).dkim == config.DkimSettings(sign=True, check_interval=5.0)
    assert config.parse({**base, "dkim": {"sign": False}}).dkim.sign is False
    with pytest.raises(ConfigError) as e:
        config.parse({**base, "dkim": {"sign": "yes", "check_interval": 0, "keys": 1}}, "g.toml")
    assert sorted(e.value.problems) == [
        ("g.toml", "dkim.check_interval", "must be greater than 0, not 0.0"),
        ("g.toml", "dkim.keys", "unknown key"),
        ("g.toml", "dkim.sign", "must be bool, not str")]
