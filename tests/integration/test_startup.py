"""Starting the real twistd: it finds the configuration as the CLI does, and a
fault at start is one line naming file, key or listener, with a non-zero exit."""

from __future__ import annotations

import os
import resource
import smtplib
import socket
import subprocess

import pytest
from conftest import BIN, Gateway, port_open, wait_for


def twistd(gw: Gateway, *args: str, env: dict | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    """twistd run to its end (a start that fails), its output as text."""
    return subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "mailgateway", *args],
                          cwd=gw.root, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def assert_one_clean_fault(result: subprocess.CompletedProcess, *expected: str) -> str:
    text = result.stdout + result.stderr
    assert result.returncode != 0, text
    assert "Traceback" not in text, text
    for e in expected:
        assert e in text, text
    return text


def test_twistd_reads_the_file_named_by_the_environment(tmp_path):
    gw = Gateway(tmp_path / "gw")
    gw.add_user("alice@example.test")
    log = open(gw.log, "ab")
    env = {**os.environ, "MAILGATEWAY_CONFIG": str(gw.config)}
    gw.proc = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "mailgateway"],
                               cwd=gw.root, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    try:
        wait_for(lambda: port_open(gw.ports["smtp"]) or gw.proc.poll() is not None)
        assert gw.proc.poll() is None, gw.log_text()
        with smtplib.SMTP("127.0.0.1", gw.ports["smtp"]) as s:
            s.sendmail("bob@example.org", ["alice@example.test"], b"Subject: env\r\n\r\nhi\r\n")
        gw.wait_messages("alice@example.test", 1)
        assert f"configuration: {gw.config} ($MAILGATEWAY_CONFIG)" in gw.log_text()
    finally:
        gw.stop()


def test_bad_toml_under_twistd_is_one_line(tmp_path):
    gw = Gateway(tmp_path / "gw")
    gw.config.write_text("[server\n")
    result = twistd(gw, "--config", str(gw.config))
    assert_one_clean_fault(result, f"{gw.config}: not valid TOML")


def test_config_fault_under_twistd_names_the_key(tmp_path):
    gw = Gateway(tmp_path / "gw")
    gw.config.write_text(gw.config.read_text() + "\n[smtp]\nmax_recipients = 0\n")
    result = twistd(gw, "--config", str(gw.config))
    assert_one_clean_fault(result, f"{gw.config}: smtp.max_recipients: must be greater than 0")


def test_a_port_in_use_is_one_line_naming_the_listener(tmp_path):
    gw = Gateway(tmp_path / "gw")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", gw.ports["pop3"]))
        busy.listen()
        result = twistd(gw, "--config", str(gw.config))
    assert_one_clean_fault(result, f"listen.pop3: 127.0.0.1:{gw.ports['pop3']} is in use")


def test_a_key_that_is_not_the_certificates_is_one_line(tmp_path, ca):
    for name in ("a", "b"):
        cert = ca.issue_cert("mx.example.test")
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
    gw = Gateway(tmp_path / "gw", f'[tls]\ncertificate = "{tmp_path}/a.pem"\n'
                                  f'private_key = "{tmp_path}/b.key"\n')
    result = twistd(gw, "--config", str(gw.config))
    assert_one_clean_fault(result, f"{tmp_path}/b.key: not the private key of {tmp_path}/a.pem")


def test_a_port_in_use_when_daemonized_reaches_the_terminal(tmp_path):
    gw = Gateway(tmp_path / "gw")
    pidfile = gw.root / "twistd.pid"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", gw.ports["smtp"]))
        busy.listen()
        result = subprocess.run(
            [str(BIN / "twistd"), f"--pidfile={pidfile}", f"--logfile={gw.log}",
             "mailgateway", "--config", str(gw.config)],
            cwd=gw.root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert f"listen.smtp: 127.0.0.1:{gw.ports['smtp']} is in use" in result.stderr
    # twistd's child removes its pidfile just after it tells the parent.
    wait_for(lambda: not pidfile.exists(), what="the pidfile removed")


def test_the_gateway_raises_its_open_files_limit(tmp_path):
    # Started with the common soft limit of 1024, as a shell or cron would start it.
    gw = Gateway(tmp_path / "gw")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-files limit here is {hard}: nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        gw.start()  # the child inherits 1024 at fork
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        gateway_soft, _ = resource.prlimit(gw.proc.pid, resource.RLIMIT_NOFILE)
        assert gateway_soft > 1024
        assert "open files limit raised from 1024" in gw.log_text()
    finally:
        gw.stop()
