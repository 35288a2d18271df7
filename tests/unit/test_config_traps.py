"""Configuration traps (issue 11): each is a fault with file, key and reason, not an ok."""

from __future__ import annotations

import os

import pytest
import trustme

from gateway.config import load
from gateway.errors import ConfigError


def faults(tmp_path, text: str | bytes) -> list[tuple[str, str]]:
    path = tmp_path / "gw.toml"
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(b'[server]\ndomains = ["example.test"]\n' + text)
    try:
        load(path)
    except ConfigError as e:
        assert all(f == str(path) for f, _, _ in e.problems)
        return [(k, r) for _, k, r in e.problems]
    return []


def test_proxied_tcp_listener_with_trusted_networks_is_a_fault(tmp_path):
    text = (f'state_dir = "{tmp_path}/var"\ntrusted_networks = ["10.0.0.0/8"]\n'
            '[proxied]\nsubmission = "tcp:2600:interface=127.0.0.1"\n[[tlsfront]]\n'
            'accept = "tcp:2465:interface=127.0.0.1"\nconnect = "submission"\n')
    (key, reason), = faults(tmp_path, text)
    assert key == "proxied.submission" and "can claim a trusted address" in reason
    # A unix socket is guarded by its mode: fine.
    assert faults(tmp_path, text.replace("tcp:2600:interface=127.0.0.1",
                                         f"unix:{tmp_path}/s.sock")) == []


def test_a_port_that_is_not_a_number_is_a_fault(tmp_path):
    text = f'state_dir = "{tmp_path}"\n[listen]\nsmtp = "tcp:notaport"\n'
    (key, reason), = faults(tmp_path, text)
    assert key == "listen.smtp" and "must be a number from 0 to 65535, not 'notaport'" in reason
    assert faults(tmp_path, f'state_dir = "{tmp_path}"\n[listen]\nsmtp = "tcp:70000"\n')
    assert faults(tmp_path, f'state_dir = "{tmp_path}"\n[listen]\nsmtp = "tcp:port=25"\n') == []


def start_faults(tmp_path, text: str) -> list[str]:
    """What check-config and the start refuse beyond the file's syntax (startup.check)."""
    from gateway import startup

    path = tmp_path / "gw.toml"
    path.write_text('[server]\ndomains = ["example.test"]\n' + text)
    return startup.check(load(path))


def test_garbage_or_mismatched_certificate_and_key_are_faults(tmp_path):
    ca = trustme.CA()
    one, two = ca.issue_cert("a.test"), ca.issue_cert("b.test")
    one.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    one.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    two.private_key_pem.write_to_path(str(tmp_path / "other.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    tls = (f'state_dir = "{tmp_path}"\n[tls]\ncertificate = "{tmp_path}/%s"\n'
           f'private_key = "{tmp_path}/%s"\n')
    assert start_faults(tmp_path, tls % ("cert.pem", "key.pem")) == []
    for pair in (("cert.pem", "other.pem"), ("junk.pem", "key.pem"), ("cert.pem", "junk.pem")):
        (fault,) = start_faults(tmp_path, tls % pair)
        assert fault.startswith(f"{tmp_path}/gw.toml: tls: "), fault


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_state_dir_that_cannot_be_made_is_a_fault_unprivileged(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    (fault,) = start_faults(tmp_path, f'state_dir = "{locked}/var"\n')
    assert "server.state_dir" in fault and "cannot be made" in fault


def test_a_state_dir_under_a_file_is_a_fault(tmp_path):
    (tmp_path / "file").write_text("")
    (fault,) = start_faults(tmp_path, f'state_dir = "{tmp_path}/file/var"\n')
    assert "server.state_dir" in fault, fault


def test_a_file_that_is_not_utf8_is_a_fault(tmp_path):
    assert faults(tmp_path, b'# caf\xe9\n') == [("", "not UTF-8: byte 0xe9 on line 3")]


@pytest.mark.parametrize("name", ["a/b@example.test", '"a..b"@example.test',
                                  '"a b"@example.test', "a/b@"])
def test_user_add_refuses_names_that_cannot_be_a_mailbox(tmp_path, name):
    from gateway.access import auth
    from gateway.errors import MailError

    with pytest.raises(MailError):
        auth.set_password(tmp_path / "users", name, "pw")
    assert auth.read_users(tmp_path / "users") == {}
    assert auth.set_password(tmp_path / "users", "o'brien@example.test", "pw") \
        == "o'brien@example.test"
