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


def test_garbage_or_mismatched_certificate_and_key_are_faults(tmp_path):
    ca = trustme.CA()
    one, two = ca.issue_cert("a.test"), ca.issue_cert("b.test")
    one.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    one.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    two.private_key_pem.write_to_path(str(tmp_path / "other.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    tls = (f'state_dir = "{tmp_path}"\n[tls]\ncertificate = "{tmp_path}/%s"\n'
           f'private_key = "{tmp_path}/%s"\n')
    assert faults(tmp_path, tls % ("cert.pem", "key.pem")) == []
    (key, reason), = faults(tmp_path, tls % ("cert.pem", "other.pem"))
    assert key == "tls.private_key" and "does not belong to the certificate" in reason
    (key, reason), = faults(tmp_path, tls % ("junk.pem", "key.pem"))
    assert key == "tls.certificate" and "not a PEM certificate" in reason
    (key, reason), = faults(tmp_path, tls % ("cert.pem", "junk.pem"))
    assert key == "tls.private_key" and "not an unencrypted PEM private key" in reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_state_dir_that_cannot_be_made_is_a_fault_unprivileged(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    (key, reason), = faults(tmp_path, f'state_dir = "{locked}/var"\n')
    assert key == "server.state_dir" and "no write permission" in reason


def test_a_state_dir_under_a_file_is_a_fault(tmp_path):
    (tmp_path / "file").write_text("")
    (key, reason), = faults(tmp_path, f'state_dir = "{tmp_path}/file/var"\n')
    assert key == "server.state_dir" and "is not a directory" in reason


def test_a_file_that_is_not_utf8_is_a_fault(tmp_path):
    assert faults(tmp_path, b'# caf\xe9\n') == [("", "not UTF-8 text (byte 41)")]


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
