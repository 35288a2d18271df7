"""Real mail clients from Debian's packages against the real gateway, over every transport.

swaks and msmtp send (port 25 plaintext, submission with STARTTLS, submissions on
implicit TLS through the front); fetchmail, mpop and mbsync read (POP3 and IMAP with
STARTTLS/STLS, and on implicit TLS through the front). Each client verifies the
gateway's certificate against the test CA where it can. A test is skipped, saying
which program is missing, on a machine without it (.ci/run installs them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PASSWORD, free_port, port_open, wait_for

ALICE, BOB = "alice@example.test", "bob@example.test"


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (Debian package; .ci/run installs it)")
    return path


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    assert result.returncode == 0, f"{argv}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture
def served(make_gateway, ca, tmp_path):
    """A gateway with STARTTLS and the three implicit-TLS fronts; the CA file for clients.

    The certificate has a common name (fetchmail refuses one without) and the name
    localhost (mbsync matches DNS names only, never an IP address)."""
    cert = ca.issue_cert("127.0.0.1", "localhost", "mx.example.test",
                         common_name="mx.example.test")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    fronts = {name: free_port() for name in ("submission", "pop3", "imap")}
    config = f'[tls]\ncertificate = "{tmp_path / "cert.pem"}"\n' \
             f'private_key = "{tmp_path / "key.pem"}"\n\n'
    config += "".join(f'[[tlsfront]]\nname = "{name}s"\n'
                      f'accept = "tcp:{port}:interface=127.0.0.1"\nconnect = "{name}"\n\n'
                      for name, port in fronts.items())
    gw = make_gateway(config, users=(ALICE, BOB))
    for port in fronts.values():
        wait_for(lambda p=port: port_open(p), what=f"front port {port}")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return gw, fronts, ca_file


def sent_subjects(gw, address: str, count: int) -> set[str]:
    found = set()
    for message in gw.wait_messages(address, count):
        for line in message.split(b"\r\n\r\n")[0].split(b"\n"):
            if line.startswith(b"Subject: "):
                found.add(line[9:].strip().decode())
    return found


def test_swaks_sends_over_plaintext_starttls_and_implicit_tls(served):
    gw, fronts, ca_file = served
    swaks = need("swaks")
    base = [swaks, "--from", ALICE, "--to", BOB, "--tls-verify", "--tls-ca-path", str(ca_file)]
    run([swaks, "--server", f"127.0.0.1:{gw.ports['smtp']}", "--from", "x@remote.test",
         "--to", BOB, "--h-Subject", "swaks port 25"])
    auth = ["--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORD]
    run(base + ["--server", f"127.0.0.1:{gw.ports['submission']}", "--tls", *auth,
                "--h-Subject", "swaks starttls"])
    run(base + ["--server", f"127.0.0.1:{fronts['submission']}", "--tlsc", *auth,
                "--h-Subject", "swaks implicit tls"])
    assert sent_subjects(gw, BOB, 3) == {"swaks port 25", "swaks starttls", "swaks implicit tls"}
    # AUTH is never offered before TLS (RFC 8314): swaks without --tls gives up.
    plain = subprocess.run(base[:5] + ["--server", f"127.0.0.1:{gw.ports['submission']}", *auth],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 and "did not advertise authentication" in plain.stderr


def test_msmtp_sends_over_starttls_and_implicit_tls(served, tmp_path):
    gw, fronts, ca_file = served
    msmtp = need("msmtp")
    for name, port, starttls in (("starttls", gw.ports["submission"], "on"),
                                 ("implicit tls", fronts["submission"], "off")):
        run([msmtp, "--file=/dev/null", "--host=127.0.0.1", f"--port={port}", "--tls=on",
             f"--tls-starttls={starttls}", f"--tls-trust-file={ca_file}", "--auth=on",
             f"--user={ALICE}", f"--passwordeval=echo '{PASSWORD}'", f"--from={ALICE}", BOB],
            input=f"From: {ALICE}\nSubject: msmtp {name}\n\nhello\n")
    assert sent_subjects(gw, BOB, 2) == {"msmtp starttls", "msmtp implicit tls"}


def deliver_two(gw) -> None:
    """Two messages for bob, sent on port 25 with Python's smtplib."""
    import smtplib
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=30) as s:
        for n in (1, 2):
            s.sendmail("x@remote.test", [BOB], f"Subject: read me {n}\r\n\r\nbody {n}\r\n")
    gw.wait_messages(BOB, 2)


TRANSPORTS = [("pop3", "starttls"), ("pop3", "implicit"), ("imap", "starttls"),
              ("imap", "implicit")]


@pytest.mark.parametrize("protocol,transport", TRANSPORTS)
def test_fetchmail_reads(served, tmp_path, protocol, transport):
    gw, fronts, ca_file = served
    fetchmail = need("fetchmail")
    deliver_two(gw)
    port = fronts[protocol] if transport == "implicit" else gw.ports[protocol]
    out = tmp_path / "fetched"
    tls = "ssl" if transport == "implicit" else "sslproto 'TLS1.2+'"
    rc = tmp_path / "fetchmailrc"
    # fetchmail matches only DNS names of the certificate, not its IP address, so it
    # is told which name to expect (mx.example.test is in the certificate).
    rc.write_text(f'poll 127.0.0.1 service {port} protocol {protocol} '
                  f'user "{BOB}" password "{PASSWORD}" keep {tls} sslcertck '
                  f'sslcommonname "mx.example.test" sslcertfile "{ca_file}" mda "cat >> {out}"\n')
    rc.chmod(0o600)
    result = run([fetchmail, "-f", str(rc), "--nosyslog", "-s", "-a"],
                 env={**os.environ, "HOME": str(tmp_path)})
    assert out.read_bytes().count(b"Subject: read me ") == 2, result.stderr
    assert "insecure" not in result.stderr


@pytest.mark.parametrize("transport", ["starttls", "implicit"])
def test_mpop_reads(served, tmp_path, transport):
    gw, fronts, ca_file = served
    mpop = need("mpop")
    deliver_two(gw)
    box = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (box / sub).mkdir(parents=True)
    port = fronts["pop3"] if transport == "implicit" else gw.ports["pop3"]
    run([mpop, "--file=/dev/null", "--host=127.0.0.1", f"--port={port}", "--tls=on",
         f"--tls-starttls={'off' if transport == 'implicit' else 'on'}",
         f"--tls-trust-file={ca_file}", "--auth=user", f"--user={BOB}",
         f"--passwordeval=echo '{PASSWORD}'", "--keep=on", f"--delivery=maildir,{box}",
         f"--uidls-file={tmp_path / 'uidls'}", "-q"])
    fetched = [p.read_bytes() for p in (box / "new").iterdir()]
    assert sorted(m[m.index(b"Subject: "):].splitlines()[0] for m in fetched) == [
        b"Subject: read me 1", b"Subject: read me 2"]


def mbsync_config(tmp_path: Path, port: int, transport: str, ca_file, store: str,
                  channel: str) -> tuple[Path, Path]:
    """An mbsyncrc for BOB over STARTTLS or implicit TLS (transport), and its local
    Maildir folder; store and channel: more lines of the local store and the channel."""
    local = tmp_path / "mail"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(
        f"IMAPAccount gw\nHost localhost\nPort {port}\nUser {BOB}\nPass \"{PASSWORD}\"\n"
        f"SSLType {'IMAPS' if transport == 'implicit' else 'STARTTLS'}\n"
        f"CertificateFile {ca_file}\n\n"
        "IMAPStore remote\nAccount gw\n\n"
        f"MaildirStore local\nPath {local}/\nInbox {local}/INBOX\n{store}\n"
        f"Channel gw\nFar :remote:\nNear :local:\n{channel}SyncState *\n")
    return rc, local


@pytest.mark.parametrize("transport", ["starttls", "implicit"])
def test_mbsync_syncs_both_ways(served, tmp_path, transport):
    gw, fronts, ca_file = served
    mbsync = need("mbsync")
    deliver_two(gw)
    port = fronts["imap"] if transport == "implicit" else gw.ports["imap"]
    rc, local = mbsync_config(tmp_path, port, transport, ca_file, "SubFolders Verbatim\n",
                              "Patterns *\nCreate Both\n")
    run([mbsync, "-c", str(rc), "-a"])
    inbox = local / "INBOX"
    assert len(list((inbox / "cur").iterdir()) + list((inbox / "new").iterdir())) == 2
    # A folder made on the client side, with a message in it, reaches the server.
    made = local / "Projects"
    for sub in ("new", "cur", "tmp"):
        (made / sub).mkdir(parents=True)
    (made / "cur" / "1.local:2,S").write_bytes(b"Subject: notes\n\nfrom mbsync\n")
    run([mbsync, "-c", str(rc), "-a"])
    on_server = gw.maildir(BOB) / ".Projects"
    files = list((on_server / "cur").iterdir()) + list((on_server / "new").iterdir())
    assert [f.read_bytes().count(b"from mbsync") for f in files] == [1]



@pytest.mark.parametrize("transport", ["starttls", "implicit"])
def test_mbsync_pulls_big_messages_whole_under_compress(served, tmp_path, transport):
    """mbsync takes COMPRESS=DEFLATE when offered: TLS and zlib both in the way of
    sendfile, big messages go from their files a piece at a time, coded or stored as
    the link allows (gateway/deflate.py). Each must arrive octet for octet."""
    import base64

    gw, fronts, ca_file = served
    mbsync = need("mbsync")
    cur = gw.maildir(BOB) / "cur"
    for sub in ("tmp", "new", "cur"):
        (gw.maildir(BOB) / sub).mkdir(parents=True, exist_ok=True)
    big = []
    for n, size in enumerate((3 << 20, 5 << 19)):  # several pieces of fetch_buffer each
        body = base64.encodebytes(os.urandom(size)).replace(b"\n", b"\r\n")
        big.append(b"Subject: big %d\r\nMIME-Version: 1.0\r\n\r\n" % n + body)
        (cur / f"{1700000000 + n}.M{n}P1.test:2,S").write_bytes(big[-1])
    port = fronts["imap"] if transport == "implicit" else gw.ports["imap"]
    rc, local = mbsync_config(tmp_path, port, transport, ca_file, "",
                              "Patterns INBOX\nCreate Near\nSync Pull\n")
    run([mbsync, "-c", str(rc), "-a"])
    inbox = local / "INBOX"
    got = sorted(f.read_bytes() for f in [*(inbox / "cur").iterdir(), *(inbox / "new").iterdir()])
    assert len(got) == 2
    # mbsync keeps LF line ends in its Maildir; the octets are otherwise the same.
    for message, pulled in zip(big, got, strict=True):
        body = message.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
        assert pulled.endswith(body) and b"Subject: big" in pulled
    assert gw.wait_log("compress deflate")
