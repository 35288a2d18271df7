"""tlsfront's TLS side: SNI, versions, ciphers, resumption, client certificates, reload.

Python's ssl is the client (memory BIOs, tlsfront_harness.py); nothing opens a socket.
"""

from __future__ import annotations

import ssl

import pytest
import trustme
from cryptography import x509
from tlsfront_harness import Client, Harness, front_settings, write_cert
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from gateway.proxyproto import parse_header
from gateway.tlsfront.certs import CertificateError, ContextSet, FrontTLS
from gateway.tlsfront.service import FrontService, FrontsService


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def certs(ca, tmp_path) -> list[dict[str, str]]:
    """The default certificate (an exact and a wildcard name) and a second one."""
    return [write_cert(ca, tmp_path, "main", "mail.example.test", "*.wild.example.test"),
            write_cert(ca, tmp_path, "other", "other.example.test")]


def peer_names(client: Client) -> list[str]:
    cert = x509.load_der_x509_certificate(client.obj.getpeercert(binary_form=True))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return san.value.get_values_for_type(x509.DNSName)


def messages(logs) -> list[str]:
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in logs]


@pytest.mark.parametrize("name, served", [
    ("mail.example.test", "mail.example.test"),
    ("x.wild.example.test", "mail.example.test"),
    ("other.example.test", "other.example.test"),
])
def test_each_sni_name_gets_its_certificate_with_chain_and_hostname_verified(
        certs, ca, name, served):
    conn = Harness(front_settings(certs)).connect(Client(ca, name))
    conn.pump()
    assert conn.client.error is None and conn.client.done
    assert served in peer_names(conn.client)


def test_no_sni_or_an_unknown_name_gets_the_default_certificate(certs, ca):
    harness = Harness(front_settings(certs))
    plain = harness.connect(Client(None, None))
    plain.pump()
    assert peer_names(plain.client) == ["mail.example.test", "*.wild.example.test"]
    unknown = harness.connect(Client(ca, "unknown.example.test"))
    unknown.pump()
    assert isinstance(unknown.client.error, ssl.SSLCertVerificationError)
    assert "unknown.example.test" in str(unknown.client.error)


def test_sni_lookup_is_exact_then_one_wildcard_label(certs):
    contexts = ContextSet(front_settings(certs))
    main, other = contexts.exact["mail.example.test"], contexts.exact["other.example.test"]
    assert contexts.for_name(b"OTHER.example.test.") is other
    assert contexts.for_name(b"x.wild.example.test") is main
    assert contexts.for_name(b"a.b.wild.example.test") is None  # RFC 6125 6.4.3
    assert contexts.for_name(b"wild.example.test") is None
    assert contexts.for_name(None) is None


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_1_0_and_1_1_are_refused_with_a_protocol_version_alert(certs, ca, version):
    harness = Harness(front_settings(certs))
    client = Client(ca, "mail.example.test", maximum_version=getattr(ssl.TLSVersion, version))
    with capturedLogs() as logs:
        conn = harness.connect(client)
        conn.pump()
        conn.finish_close()
    assert client.error is not None and not client.done
    # An alert record (21) whose description is protocol_version (70), RFC 8446 6.2.
    raw = client.raw_from_server
    assert raw[:1] == b"\x15" and raw[6:7] == b"\x46", raw[:16]
    assert harness.backend.attempts == []
    assert any("outcome=handshake failed: unsupported protocol" in m for m in messages(logs))


def test_tls_1_2_gets_a_forward_secret_aead_cipher_in_the_servers_order(certs, ca):
    client = Client(ca, "mail.example.test", maximum_version=ssl.TLSVersion.TLSv1_2,
                    minimum_version=ssl.TLSVersion.TLSv1_2)
    # The client prefers ChaCha20; the server's order (AES-GCM first) wins.
    client.obj.context.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"
                                   ":ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256")
    conn = Harness(front_settings(certs)).connect(client)
    conn.pump()
    name, version, _ = client.obj.cipher()
    assert version == "TLSv1.2" and name.startswith("ECDHE-") and "GCM" in name


def test_min_version_1_3_refuses_tls_1_2(certs, ca):
    client = Client(ca, "mail.example.test", maximum_version=ssl.TLSVersion.TLSv1_2,
                    minimum_version=ssl.TLSVersion.TLSv1_2)
    conn = Harness(front_settings(certs, min_version="1.3")).connect(client)
    conn.pump()
    assert client.error is not None and not client.done


def test_sessions_resume(certs, ca):
    harness = Harness(front_settings(certs))
    first = harness.connect(Client(ca, "mail.example.test",
                                   maximum_version=ssl.TLSVersion.TLSv1_2,
                                   minimum_version=ssl.TLSVersion.TLSv1_2))
    first.pump()
    session = first.client.obj.session
    assert session is not None and not first.client.obj.session_reused
    second = harness.connect(Client(None, "mail.example.test", session=session,
                                    context=first.client.context), port=40001)
    second.pump()
    assert second.client.done and second.client.obj.session_reused


def test_plaintext_client_on_the_tls_port_is_dropped(certs):
    harness = Harness(front_settings(certs))
    with capturedLogs() as logs:
        conn = harness.connect(Client(None, None))
        conn.proto.dataReceived(b"EHLO client.example\r\n")
        conn.finish_close()
    assert conn.tcp.disconnecting and conn.tcp.value()[:1] in (b"", b"\x15")
    assert harness.backend.attempts == []
    assert any("outcome=handshake failed" in m for m in messages(logs))


@pytest.fixture
def client_ca(ca, tmp_path) -> str:
    path = tmp_path / "clients.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_required_client_certificate_is_verified_and_its_subject_passed_on(certs, ca, client_ca):
    settings = front_settings(certs, client_verify="required", client_ca=client_ca)
    harness = Harness(settings)
    anonymous = harness.connect(Client(ca, "mail.example.test"))
    anonymous.pump()
    anonymous.finish_close()
    assert anonymous.lost and harness.backend.attempts == []

    stranger = trustme.CA().issue_cert("intruder@example.test")
    bad = harness.connect(Client(ca, "mail.example.test", client_cert=stranger), port=40001)
    bad.pump()
    bad.finish_close()
    assert bad.lost and harness.backend.attempts == []

    good = harness.connect(Client(ca, "mail.example.test",
                                  client_cert=ca.issue_cert("alice@example.test",
                                                            common_name="Alice")), port=40002)
    good.pump()
    _, backend = harness.backend.accept()
    header, _ = parse_header(backend.value())
    assert header.tls.client_verified and header.tls.client_cn == "Alice"
    assert header.tls.client_subject.startswith("CN=Alice,")


def test_optional_client_certificate(certs, ca, client_ca):
    harness = Harness(front_settings(certs, client_verify="optional", client_ca=client_ca))
    anonymous = harness.connect(Client(ca, "mail.example.test"))
    anonymous.pump()
    _, backend = harness.backend.accept()
    header, _ = parse_header(backend.value())
    assert header.tls is not None and not header.tls.client_verified
    assert header.tls.client_subject == ""


# --- reload -------------------------------------------------------------------------


def serial(client: Client) -> int:
    return x509.load_der_x509_certificate(client.obj.getpeercert(binary_form=True)).serial_number


def test_reload_serves_the_new_certificate_and_open_connections_go_on(certs, ca, tmp_path):
    harness = Harness(front_settings(certs, protocol="smtp"))
    before = harness.connect(Client(ca, "mail.example.test"))
    before.pump()
    backend_proto, backend = harness.backend.accept()
    old = serial(before.client)

    write_cert(ca, tmp_path, "main", "mail.example.test", "*.wild.example.test")
    assert harness.tls.reload() is True
    after = harness.connect(Client(ca, "mail.example.test"), port=40001)
    after.pump()
    assert serial(after.client) != old

    before.send(b"NOOP\r\n")
    assert backend.value().endswith(b"NOOP\r\n")
    backend_proto.dataReceived(b"250 2.0.0 Ok\r\n")
    before.pump()
    assert before.client.received == b"250 2.0.0 Ok\r\n"


@pytest.mark.parametrize("damage", ["garbage key", "missing certificate", "key of another"])
def test_a_broken_new_file_keeps_the_old_certificate_and_says_why(certs, ca, tmp_path, damage):
    harness = Harness(front_settings(certs))
    first = harness.connect(Client(ca, "mail.example.test"))
    first.pump()
    old = serial(first.client)
    if damage == "garbage key":
        (tmp_path / "main.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n")
    elif damage == "missing certificate":
        (tmp_path / "main.pem").unlink()
    else:
        (tmp_path / "main.key").write_bytes((tmp_path / "other.key").read_bytes())
    with capturedLogs() as logs:
        assert harness.tls.reload() is False
    text = "\n".join(messages(logs))
    assert "keeping the old ones" in text and "main." in text
    again = harness.connect(Client(ca, "mail.example.test"), port=40001)
    again.pump()
    assert again.client.done and serial(again.client) == old


def test_a_broken_file_at_start_is_an_error(certs, tmp_path):
    (tmp_path / "other.pem").write_text("not a certificate")
    with pytest.raises(CertificateError, match="other.pem"):
        FrontTLS(front_settings(certs))


def test_check_reloads_once_per_change(certs, ca, tmp_path):
    tls = FrontTLS(front_settings(certs))
    assert tls.check() is False
    write_cert(ca, tmp_path, "other", "other.example.test")
    assert tls.check() is True and tls.generation == 2
    assert tls.check() is False
    (tmp_path / "other.key").write_text("broken")
    with capturedLogs() as logs:
        assert tls.check() is False
        assert tls.check() is False
    assert len([m for m in messages(logs) if "not reloaded" in m]) == 1
    assert tls.generation == 2


def test_the_service_looks_at_the_files_every_reload_interval(certs, ca, tmp_path):
    reactor = MemoryReactorClock()
    front = FrontService(front_settings(certs, reload_interval=5), reactor)
    front.startService()
    assert reactor.tcpServers[0][0] == 2465
    write_cert(ca, tmp_path, "main", "mail.example.test")
    reactor.advance(4.9)
    assert front.tls.generation == 1
    reactor.advance(0.1)
    assert front.tls.generation == 2
    front.stopService()


def test_sighup_handler_is_installed_and_restored(certs):
    import signal

    reactor = MemoryReactorClock()
    previous = signal.getsignal(signal.SIGHUP)
    fronts = FrontsService([front_settings(certs)], reactor, install_sighup=True)
    fronts.startService()
    try:
        assert signal.getsignal(signal.SIGHUP) == fronts._on_sighup
    finally:
        fronts.stopService()
    assert signal.getsignal(signal.SIGHUP) == previous
