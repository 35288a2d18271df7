"""etc/systemd/mailgateway.service: systemd-analyze verify accepts it, it has the
hardening the issue asks for, and the gateway does what it promises systemd
(Type=notify: READY=1 once listening; ExecReload's SIGHUP does not kill it)."""

from __future__ import annotations

import shutil
import signal
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import BIN

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "etc" / "systemd" / "mailgateway.service"


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_is_hardened():
    d = directives(UNIT.read_text())
    assert d["Type"] == ["notify"]
    assert d["NoNewPrivileges"] == ["yes"] and d["ProtectSystem"] == ["strict"]
    assert d["PrivateTmp"] == ["yes"] and d["ProtectHome"] == ["yes"]
    assert d["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert d["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert d["ReadWritePaths"] == ["/var/lib/mailgateway"]
    assert d["User"] == ["mailgateway"]  # never root
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    # verify checks that ExecStart's program exists: point it at this virtualenv.
    unit = tmp_path / "mailgateway.service"
    unit.write_text(UNIT.read_text().replace("/opt/mailgateway/bin", str(BIN)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "mailgateway.service" not in result.stderr, result.stderr  # no warnings about it


def test_ready_notification_and_sighup(make_gateway, tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(60)  # a deadline for the datagram, not a sleep
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        gw = make_gateway()
        assert notify.recv(4096).split(b"\n")[0] == b"READY=1"
    gw.proc.send_signal(signal.SIGHUP)  # `systemctl reload`
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=30) as s:
        assert s.noop()[0] == 250
    assert gw.proc.poll() is None
