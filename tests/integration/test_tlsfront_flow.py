"""The TLS front for real: `twistd mailgateway` with [[tlsfront]] sections, and
`mailgateway tlsfront` alone; Python's ssl, smtplib and poplib as clients.

Clients bind to 127.0.0.2 so the real client address is told apart from the
front's own 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import imaplib
import os
import poplib
import random
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import trustme
from conftest import BIN, PASSWORD, client_context, free_port, port_open, wait_for
from cryptography import x509
from smtp_sink import SMTPSink

CLIENT = "127.0.0.2"


def front_config(smtps: int, pop3s: int, extra: str = "") -> str:
    return (f'[[tlsfront]]\nname = "submissions"\naccept = "tcp:{smtps}:interface=127.0.0.1"\n'
            f'connect = "submission"\n{extra}\n'
            f'[[tlsfront]]\nname = "pop3s"\naccept = "tcp:{pop3s}:interface=127.0.0.1"\n'
            'connect = "pop3"\n')


def closed_without_a_word(sock: socket.socket) -> bool:
    """The peer closed before sending a byte: EOF, or a reset since our bytes went unread."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def wait_ports(*ports: int) -> None:
    for port in ports:
        wait_for(lambda p=port: port_open(p), what=f"port {port}")


class SMTPFromClient(smtplib.SMTP_SSL):
    """SMTP over implicit TLS from 127.0.0.2."""

    def __init__(self, port: int, ca: trustme.CA, server_hostname: str = "127.0.0.1"):
        self._hostname = server_hostname
        super().__init__("127.0.0.1", port, context=client_context(ca), timeout=30,
                         source_address=(CLIENT, 0))

    def _get_socket(self, host, port, timeout):
        raw = socket.create_connection((host, port), timeout, self.source_address)
        return self.context.wrap_socket(raw, server_hostname=self._hostname)


class POP3FromClient(poplib.POP3_SSL):
    def _create_socket(self, timeout):
        raw = socket.create_connection((self.host, self.port), timeout, (CLIENT, 0))
        return self.context.wrap_socket(raw, server_hostname=self.host)


@pytest.fixture
def sink():
    server = SMTPSink("127.0.0.1", free_port()).start()
    yield server
    server.stop()


def test_smtp_over_the_front_authenticates_relays_and_names_the_real_client(
        make_tls_gateway, ca, sink):
    smtps, pop3s = free_port(), free_port()
    gw = make_tls_gateway(front_config(smtps, pop3s) + (
        f'\n[relay]\nsmarthost = "[127.0.0.1]:{sink.port}"\ntls = "none"\n'))
    wait_ports(smtps, pop3s)
    message = b"From: alice@example.test\r\nSubject: through the front\r\n\r\nhello\r\n"
    with SMTPFromClient(smtps, ca) as s:
        code, reply = s.ehlo("client.test")
        assert code == 250 and b"[127.0.0.2]" in reply
        assert s.has_extn("auth") and not s.has_extn("starttls")
        s.login("alice@example.test", PASSWORD)
        assert s.sendmail("alice@example.test", ["carol@remote.test", "alice@example.test"],
                          message) == {}
    wait_for(lambda: sink.received_for("carol@remote.test"), 30, "the relayed message")
    [relayed] = sink.received_for("carol@remote.test")
    [local] = gw.wait_messages("alice@example.test", 1)
    for stored in (relayed.data, local):
        received = stored[stored.index(b"Received: from client.test"):]
        head = received.split(b";")[0]
        assert head.startswith(b"Received: from client.test ([127.0.0.2])\r\n"
                               b"\tby mx.example.test (mailgateway) with ESMTPSA id "), head
        assert b"(TLSv1.3 with cipher TLS_" in head
    gw.wait_log("tlsfront submissions: client=127.0.0.2:")
    log = gw.wait_log("auth ok: client=unknown[127.0.0.2] service=submission mechanism=")
    assert "sni=- tls=TLSv1.3" in log  # an IP address is not sent as SNI
    # The real client behind the front, in the session's own lines (gateway/logs.py).
    assert "connect from unknown[127.0.0.2] service=submission" in log
    assert "user=<alice@example.test>" in log


def test_pop3_over_the_front(make_tls_gateway, ca):
    smtps, pop3s = free_port(), free_port()
    gw = make_tls_gateway(front_config(smtps, pop3s))
    wait_ports(pop3s)
    with SMTPFromClient(smtps, ca) as s:
        s.login("alice@example.test", PASSWORD)
        s.sendmail("alice@example.test", ["alice@example.test"], b"Subject: x\r\n\r\nbody\r\n")
    gw.wait_messages("alice@example.test", 1)
    pop = POP3FromClient("127.0.0.1", pop3s, context=client_context(ca), timeout=30)
    try:
        capabilities = pop.capa()
        assert "USER" in capabilities and "STLS" not in capabilities
        pop.user("alice@example.test")
        pop.pass_(PASSWORD)
        assert pop.stat()[0] == 1
        assert b"body" in b"\r\n".join(pop.retr(1)[1])
    finally:
        pop.quit()
    gw.wait_log("auth ok: client=unknown[127.0.0.2] service=pop3 mechanism=USER "
                "user=<alice@example.test> tls=yes")


class IMAP4FromClient(imaplib.IMAP4_SSL):
    def _create_socket(self, timeout):
        raw = socket.create_connection((self.host, self.port), timeout, (CLIENT, 0))
        return self.ssl_context.wrap_socket(raw, server_hostname=self.host)


def test_imap_over_the_front(make_tls_gateway, ca):
    imaps = free_port()
    gw = make_tls_gateway(f'[[tlsfront]]\nname = "imaps"\naccept = "tcp:{imaps}:interface='
                          '127.0.0.1"\nconnect = "imap"\n')
    wait_ports(imaps)
    m = IMAP4FromClient("127.0.0.1", imaps, ssl_context=client_context(ca), timeout=30)
    try:
        assert "STARTTLS" not in m.capabilities and "LOGINDISABLED" not in m.capabilities
        m.login("alice@example.test", PASSWORD)
        assert m.select("INBOX")[0] == "OK"
    finally:
        m.logout()
    wait_for(lambda: "tlsfront imaps: client=127.0.0.2:" in gw.log_text(), what="the log line")


def test_plaintext_claiming_proxy_is_refused_everywhere_but_the_fronts_socket(
        make_tls_gateway, ca):
    smtps, pop3s = free_port(), free_port()
    gw = make_tls_gateway(front_config(smtps, pop3s))
    wait_ports(smtps)
    # The public plaintext port: PROXY is just an unknown command; the address stays.
    with socket.create_connection(("127.0.0.1", gw.ports["submission"]), timeout=10,
                                  source_address=(CLIENT, 0)) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 25\r\nEHLO client.test\r\n")
        assert f.readline().startswith(b"502 5.5.2")
        assert b"[127.0.0.2]" in f.readline()
    # The proxied socket: only our user may open it, and it wants a header first.
    sock_path = gw.state / "run" / "submission.sock"
    assert stat.S_IMODE(sock_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock_path.parent.stat().st_mode) == 0o700
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sock_path))
        s.sendall(b"EHLO client.test\r\n")
        assert closed_without_a_word(s)  # no greeting
    gw.wait_log("proxied listener: unix socket peer refused: no PROXY header")


def test_tcp_proxied_listener_trusts_only_its_sources(make_tls_gateway, ca):
    smtps, pop3s, proxied = free_port(), free_port(), free_port()
    gw = make_tls_gateway(front_config(smtps, pop3s) + (
        f'\n[proxied]\nsubmission = "tcp:{proxied}:interface=127.0.0.1"\n'
        'trusted_sources = ["127.0.0.1/32"]\n'))
    wait_ports(smtps, proxied)
    with SMTPFromClient(smtps, ca) as s:  # the front reaches it from 127.0.0.1
        assert b"[127.0.0.2]" in s.ehlo("client.test")[1]
    header = b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 465\r\n"
    with socket.create_connection(("127.0.0.1", proxied), timeout=10,
                                  source_address=(CLIENT, 0)) as s:
        s.sendall(header + b"EHLO client.test\r\n")
        assert closed_without_a_word(s)
    gw.wait_log("proxied listener: 127.0.0.2 refused: not in [proxied] trusted_sources")


def test_the_front_works_again_after_kill_9(make_tls_gateway, ca):
    smtps, pop3s = free_port(), free_port()
    gw = make_tls_gateway(front_config(smtps, pop3s))
    wait_ports(smtps)
    gw.kill9()  # leaves the unix sockets and their lock files behind
    assert (gw.state / "run" / "submission.sock").exists()
    gw.start()
    wait_ports(smtps)
    with SMTPFromClient(smtps, ca) as s:
        assert b"[127.0.0.2]" in s.ehlo("client.test")[1]


def test_restart_after_kill_9_when_the_stale_locks_name_a_live_pid(make_tls_gateway, ca):
    smtps, pop3s = free_port(), free_port()
    gw = make_tls_gateway(front_config(smtps, pop3s))
    wait_ports(smtps)
    gw.kill9()
    locks = sorted((gw.state / "run").glob("*.sock.lock"))
    assert locks
    for lock in locks:  # the PID in each lock is alive again (PID reuse after a reboot)
        lock.unlink()
        os.symlink(str(os.getpid()), lock)
    gw.start()
    wait_ports(smtps)
    with SMTPFromClient(smtps, ca) as s:
        assert b"[127.0.0.2]" in s.ehlo("client.test")[1]
    gw.wait_log("removed")


def test_a_second_gateway_on_the_same_state_dir_is_refused_in_one_line(make_tls_gateway):
    gw = make_tls_gateway()
    other = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "mailgateway", "--config",
                            str(gw.config)], cwd=gw.root, capture_output=True, text=True,
                           timeout=60)
    assert other.returncode != 0
    assert f"another gateway (pid {gw.proc.pid}) is running with this state_dir" \
        in other.stdout + other.stderr
    assert "Traceback" not in other.stdout + other.stderr


def serial_of(port: int, ca: trustme.CA) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(CLIENT, 0)) as raw:
        with client_context(ca).wrap_socket(raw, server_hostname="mx.example.test") as s:
            return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_certificate_reload_on_sighup_keeps_open_connections(make_tls_gateway, ca, tmp_path):
    cert, key = tmp_path / "front.pem", tmp_path / "front.key"

    def issue():
        leaf = ca.issue_cert("mx.example.test")
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))

    issue()
    smtps, pop3s = free_port(), free_port()
    gw = make_tls_gateway(front_config(smtps, pop3s, extra=(
        f'certificates = [{{certificate = "{cert}", private_key = "{key}"}}]\n'
        "reload_interval = 0\n")))
    wait_ports(smtps)
    first = serial_of(smtps, ca)
    with SMTPFromClient(smtps, ca, server_hostname="mx.example.test") as s:
        s.ehlo("client.test")
        issue()
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: serial_of(smtps, ca) != first, what="the new certificate")
        assert s.noop()[0] == 250  # the open connection goes on
        second = serial_of(smtps, ca)
        key.write_text("not a key")
        gw.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the old ones" in gw.log_text(), what="the refusal")
        assert serial_of(smtps, ca) == second
        assert s.noop()[0] == 250
    gw.wait_log(f"{key}")


# --- `mailgateway tlsfront` alone -------------------------------------------------------


@pytest.fixture
def front_cert(ca, tmp_path) -> tuple[Path, Path]:
    leaf = ca.issue_cert("front.example.test")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture
def run_front(tmp_path):
    procs: list[subprocess.Popen] = []

    def run(*args: str) -> int:
        port = free_port()
        log = open(tmp_path / f"front{len(procs)}.log", "wb")
        proc = subprocess.Popen([str(BIN / "mailgateway"), "tlsfront", "--accept",
                                 f"tcp:{port}:interface=127.0.0.1", *args],
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        wait_for(lambda: port_open(port) or proc.poll() is not None, what="the front")
        assert proc.poll() is None, (tmp_path / f"front{len(procs) - 1}.log").read_text()
        return port

    run.procs = procs
    yield run
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    for log in tmp_path.glob("front*.log"):
        assert "Traceback" not in log.read_text(), log.read_text()


class SlowSinkThenSource:
    """A plaintext backend: waits a while before reading (a slow reader), hashes `size`
    bytes, then sends `size` bytes of its own. One direction at a time, so the client
    never uses its TLS socket from two threads."""

    def __init__(self, size: int, delay: float):
        self.size, self.delay = size, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.got, self.sent = hashlib.sha256(), hashlib.sha256()
        self.received = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        self.server.close()
        with conn:
            threading.Event().wait(self.delay)
            while self.received < self.size:
                chunk = conn.recv(1 << 20)
                if not chunk:
                    return
                self.got.update(chunk)
                self.received += len(chunk)
            rng = random.Random(7)
            for _ in range(self.size // (1 << 20)):
                chunk = rng.randbytes(1 << 20)
                self.sent.update(chunk)
                conn.sendall(chunk)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_100_mb_through_the_front_arrive_intact_with_bounded_memory(run_front, front_cert, ca):
    size, piece = 100 * 1024 * 1024, 1 << 20
    backend = SlowSinkThenSource(size, delay=1.0)
    cert, key = front_cert
    port = run_front("--connect", f"tcp:127.0.0.1:{backend.port}", "--cert", str(cert),
                     "--key", str(key), "--proxy", "none")
    pid = run_front.procs[-1].pid
    baseline = rss_kib(pid)
    peak = [baseline]
    done = threading.Event()

    def watch():
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_kib(pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    rng = random.Random(5)
    sent, got = hashlib.sha256(), hashlib.sha256()
    raw = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(CLIENT, 0))
    with client_context(ca).wrap_socket(raw, server_hostname="front.example.test") as s:
        for _ in range(size // piece):
            chunk = rng.randbytes(piece)
            sent.update(chunk)
            s.sendall(chunk)  # blocks while the backend does not read: flow control
        total = 0
        while total < size:
            chunk = s.recv(1 << 20)
            assert chunk, f"closed after {total} bytes"
            got.update(chunk)
            total += len(chunk)
    done.set()
    watcher.join()
    assert backend.received == size and backend.got.hexdigest() == sent.hexdigest()
    assert got.hexdigest() == backend.sent.hexdigest()
    # Without flow control the front would have read the 100 MB the slow backend did not.
    assert peak[0] - baseline < 32 * 1024, (baseline, peak[0])


@pytest.mark.parametrize("backend", ["tcp", "unix"])
def test_a_backend_that_is_down_gets_smtp_clients_a_421(run_front, front_cert, ca, tmp_path,
                                                         backend):
    # TCP fails once the connect is tried (EINPROGRESS, then ECONNREFUSED); a missing
    # UNIX socket fails at once, inside the handshake's own turn.
    connect = (f"tcp:127.0.0.1:{free_port()}" if backend == "tcp"
               else f"unix:{tmp_path / 'nobody-listens.sock'}")
    cert, key = front_cert
    port = run_front("--connect", connect, "--cert", str(cert),
                     "--key", str(key), "--protocol", "smtp", "--hostname", "front.example.test")
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        SMTPFromClient(port, ca, server_hostname="front.example.test")
    assert refused.value.smtp_code == 421
    assert refused.value.smtp_error.startswith(b"4.3.2 front.example.test Service not available")


def test_plaintext_and_old_tls_are_dropped(run_front, front_cert, ca):
    cert, key = front_cert
    port = run_front("--connect", f"tcp:127.0.0.1:{free_port()}", "--cert", str(cert),
                     "--key", str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"EHLO client.test\r\n")
        try:
            answer = s.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b"" or answer[:1] == b"\x15"  # nothing, or a TLS alert
    ctx = client_context(ca)
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="front.example.test") as s:
            assert s.version() == "TLSv1.2"


# Pipelined behind a busy login (the password check runs in a thread): the lazy read
# hold (flow.ReadGate) and the answers sent at once (flow.write_now, TCP_NODELAY) must
# hold inside TLS too, on STARTTLS and on the front's implicit-TLS ports.
PIPELINED = {
    "imap": (b"a STARTTLS", b"a OK",
             f'b LOGIN alice@example.test "{PASSWORD}"\r\nc NOOP\r\nd STATUS INBOX (MESSAGES)'
             '\r\ne LOGOUT\r\n'.encode(),
             [b"b OK", b"c OK", b'* STATUS "INBOX" (MESSAGES 0)', b"d OK", b"* BYE", b"e OK"]),
    "pop3": (b"STLS", b"+OK",
             f"USER alice@example.test\r\nPASS {PASSWORD}\r\nSTAT\r\nNOOP\r\nQUIT\r\n".encode(),
             [b"+OK", b"+OK", b"+OK 0 0", b"+OK", b"+OK"]),
}


def answers_in_order(tls: ssl.SSLSocket, commands: bytes, want: list[bytes]) -> None:
    tls.sendall(commands)  # one write: every command after the first waits behind it
    got = b""
    while chunk := tls.recv(65536):  # until the server closes after LOGOUT / QUIT
        got += chunk
    lines, at = got.split(b"\r\n"), 0
    for answer in want:  # each in its turn, after the one before
        at = next((n for n in range(at, len(lines)) if lines[n].startswith(answer)), None)
        assert at is not None, (answer, got)
        at += 1


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_pipelined_commands_inside_starttls_are_answered_in_order(make_tls_gateway, ca,
                                                                  protocol):
    gw = make_tls_gateway()
    starttls, ok, commands, want = PIPELINED[protocol]
    with socket.create_connection(("127.0.0.1", gw.ports[protocol]), timeout=30) as raw:
        reader = raw.makefile("rb")
        reader.readline()
        raw.sendall(starttls + b"\r\n")
        assert reader.readline().startswith(ok)
        reader.close()
        with client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            answers_in_order(tls, commands, want)


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_pipelined_commands_over_the_front_are_answered_in_order(make_tls_gateway, ca,
                                                                 protocol):
    port = free_port()
    make_tls_gateway(f'[[tlsfront]]\nname = "{protocol}s"\naccept = "tcp:{port}:'
                     f'interface=127.0.0.1"\nconnect = "{protocol}"\n')
    wait_ports(port)
    _, _, commands, want = PIPELINED[protocol]
    raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(CLIENT, 0))
    with client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        reader = tls.makefile("rb")
        reader.readline()  # the greeting
        reader.close()
        answers_in_order(tls, commands, want)
