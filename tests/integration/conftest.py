"""Integration fixtures: the real `twistd -n mailgateway` on loopback, in a temp state dir.

Clients are independent (smtplib, poplib, ssl, raw sockets). Nothing sleeps to
wait: every wait polls with a deadline.
"""

from __future__ import annotations

import imaplib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from loopback_ports import free_port  # noqa: F401  (tests import it from here)

BIN = Path(sys.executable).parent
PASSWORD = "correct horse battery staple"


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    """Poll predicate until it returns something true; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Whether process pid runs (a zombie, ended but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(parent_pid: int, needle: bytes) -> list[int]:
    """The live child processes of parent_pid whose command line holds needle, by /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if int(fields[1]) == parent_pid and fields[0] != "Z" and needle in command:
            found.append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    """Every live process under pid (children, theirs, ...), by /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(parents.get(child, []))
    return found


class Gateway:
    """One gateway process and its state directory."""

    def __init__(self, root: Path, extra_config: str = ""):
        self.root = root
        root.mkdir()
        self.state = root / "var"
        self.ports = {name: free_port() for name in ("smtp", "submission", "pop3", "imap")}
        self.config = root / "mailgateway.toml"
        listen = "\n".join(f'{name} = "tcp:{port}:interface=127.0.0.1"'
                           for name, port in self.ports.items())
        if "[relay]" not in extra_config:
            # Tests never ask real DNS: by default the relay's name server is a
            # closed loopback port, so remote mail simply waits (4.4.3, retried).
            extra_config += (f'\n[relay]\nnameservers = ["127.0.0.1"]\n'
                             f"dns_port = {free_port()}\ndns_timeout = 2\n")
        if "[inbound_auth]" not in extra_config:
            # SPF/DKIM/DMARC would ask the closed name server about every sender;
            # the tests of those checks (test_inbound_auth_flow.py) turn them on.
            extra_config += "\n[inbound_auth]\ncheck = false\n"
        # Tests run as root on CI, where the gateway refuses to serve as root
        # unless told so in as many words (test_privileges.py drops for real).
        user = 'user = "root"\n' if os.geteuid() == 0 else ""
        self.config.write_text(
            "[server]\nhostname = \"mx.example.test\"\ndomains = [\"example.test\"]\n"
            f"state_dir = \"{self.state}\"\n{user}\n[listen]\n{listen}\n\n{extra_config}\n")
        self.log = root / "twistd.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "mailgateway"), "--config", str(self.config), *args],
                              input=stdin, capture_output=True, text=True, timeout=60)

    def add_user(self, address: str, password: str = PASSWORD) -> None:
        result = self.cli("user", "add", address, "--password-stdin", stdin=password + "\n")
        assert result.returncode == 0, result.stderr

    def start(self, *twistd_options: str) -> None:
        self.starts += 1
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", *twistd_options, "mailgateway",
             "--config", str(self.config)], cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        for port in self.ports.values():
            wait_for(lambda p=port: port_open(p) or self.proc.poll() is not None,
                     what=f"port {port}")
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        """SIGKILL the gateway alone: its child processes see their pipes close and stop
        on their own, finishing what they were doing."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def crash(self) -> None:
        """SIGKILL the gateway and every process under it at once, as a power cut would
        leave the state directory; returns once none of them runs."""
        family = descendants(self.proc.pid)
        for pid in [self.proc.pid, *family]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        wait_for(lambda: not any(alive(pid) for pid in family), what="the children killed")

    def runner_pid(self) -> int | None:
        """The runner process ([queue] runner_process, gateway/runnerproc), if one runs."""
        found = children(self.proc.pid, b"gateway.runnerproc")
        return found[0] if found else None

    def delivery_pid(self) -> int:
        """The process that delivers: the runner process, else the gateway itself."""
        from gateway.config import load  # the setting as the gateway reads it, default too

        if load(self.config).queue.runner_process:
            return wait_for(lambda: self.runner_pid(), what="the runner process")
        return self.proc.pid

    def maildir(self, address: str) -> Path:
        local, domain = address.split("@")
        return self.state / "mail" / domain / local.lower()

    def messages(self, address: str) -> list[bytes]:
        box = self.maildir(address)
        files = []
        for sub in ("new", "cur"):
            if (box / sub).is_dir():
                files += sorted((box / sub).iterdir())
        return [f.read_bytes() for f in files]

    def wait_messages(self, address: str, count: int, timeout: float = 30.0) -> list[bytes]:
        wait_for(lambda: len(self.messages(address)) >= count, timeout,
                 what=f"{count} messages for {address}")
        return self.messages(address)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def imap_login(self, address: str, timeout: float = 30) -> imaplib.IMAP4:
        """A plaintext IMAP session logged in as address (plaintext_from_loopback)."""
        m = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=timeout)
        m.login(address, PASSWORD)
        return m

    def wait_log(self, text: str, timeout: float = 20.0) -> str:
        """The log once it holds TEXT. Lines reach the file from the log writer's thread
        (gateway/logwriter.py), within [log] flush_interval of the event."""
        wait_for(lambda: text in self.log_text(), timeout, what=f"{text!r} in the log")
        return self.log_text()


@pytest.fixture
def make_gateway(tmp_path):
    made: list[Gateway] = []

    def make(extra_config: str = "", users: tuple[str, ...] = ("alice@example.test",)):
        gw = Gateway(tmp_path / f"gw{len(made)}", extra_config)
        for user in users:
            gw.add_user(user)
        gw.start()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()
        text = gw.log_text()
        assert "Traceback" not in text and "Unhandled" not in text, text[-5000:]


@pytest.fixture
def gateway(make_gateway) -> Gateway:
    return make_gateway()


# -- TLS: a trustme CA, a gateway with its certificate, clients that trust it --


@pytest.fixture
def plain_gw(make_gateway) -> Gateway:
    """A gateway that takes LOGIN in the clear from loopback: imaplib without TLS."""
    return make_gateway("[auth]\nplaintext_from_loopback = true\n")


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def make_tls_gateway(make_gateway, ca, tmp_path) -> Callable[..., Gateway]:
    """make_gateway, plus a [tls] certificate for 127.0.0.1 signed by `ca`."""
    cert = ca.issue_cert("127.0.0.1", "mx.example.test")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))

    def make(extra_config: str = "", **kw) -> Gateway:
        return make_gateway(f'[tls]\ncertificate = "{tmp_path / "cert.pem"}"\n'
                            f'private_key = "{tmp_path / "key.pem"}"\n\n{extra_config}', **kw)

    return make


@pytest.fixture
def tls_gateway(make_tls_gateway) -> Gateway:
    return make_tls_gateway()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that verifies the gateway's certificate against `ca`."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx
