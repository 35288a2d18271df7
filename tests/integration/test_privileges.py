"""Started as root, the gateway binds a port below 1024, makes state_dir the
serving user's, drops root for good and serves; its state is private; it
refuses to serve as root (gateway/privileges.py)."""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import socket
import ssl
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import BIN, Gateway, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: starts as root and drops to another user")

USER = "mailgateway-test"


@pytest.fixture(scope="module")
def user() -> pwd.struct_passwd:
    """An unprivileged system user (made once if missing; CI runs the tests as root)."""
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        pass
    if not shutil.which("useradd"):
        pytest.skip("no useradd to make an unprivileged user")
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    USER], check=True, capture_output=True)
    return pwd.getpwnam(USER)


@pytest.fixture
def root_dir():
    """A folder the serving user can reach (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="mailgateway-priv-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def privileged_port(skip: int = 0) -> int:
    for port in range(max(700, skip + 1), 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    pytest.skip("no free port below 1024 on 127.0.0.1")


def make(root: Path, server_user: str, front: bool = False, extra: str = "") -> Gateway:
    """A gateway with SMTP on a port below 1024 and [server] user = server_user."""
    front_port = privileged_port() if front else None
    extra += (f'[[tlsfront]]\nname = "submissions"\naccept = "tcp:{front_port}:'
              f'interface=127.0.0.1"\nconnect = "submission"\n') if front else ""
    gw = Gateway(root / "gw", extra)
    port = privileged_port(skip=front_port or 0)
    text = gw.config.read_text().replace('user = "root"\n', server_user)
    gw.config.write_text(text.replace(f"tcp:{gw.ports['smtp']}:", f"tcp:{port}:"))
    gw.ports["smtp"] = port
    if front:
        gw.ports["submissions"] = front_port
    return gw


def process_uids(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


def assert_owned_and_private(state: Path, uid: int) -> None:
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in [state, *state.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == uid, f"{path} belongs to uid {st.st_uid}"
        if not stat.S_ISSOCK(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            assert stat.S_IMODE(st.st_mode) & 0o077 == 0, f"{path} is {st.st_mode:o}"


def send_and_deliver(gw: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=30) as s:
        s.sendmail("bob@example.org", ["alice@example.test"], b"Subject: drop\r\n\r\nhi\r\n")
    gw.wait_messages("alice@example.test", 1)


def test_twistd_uid_gid_after_user_add_as_root(user, root_dir):
    # The issue: `user add` as root made state_dir as root, then `twistd --uid`
    # failed on every connection with PermissionError in queue/tmp.
    gw = make(root_dir, "")
    gw.add_user("alice@example.test")
    assert gw.state.stat().st_uid == 0
    assert stat.S_IMODE(gw.state.stat().st_mode) == 0o700
    try:
        gw.start(f"--uid={user.pw_uid}", f"--gid={user.pw_gid}")
        # The ports open a moment before root is dropped.
        wait_for(lambda: process_uids(gw.proc.pid) == [user.pw_uid] * 4, what="root dropped")
        send_and_deliver(gw)
        assert_owned_and_private(gw.state, user.pw_uid)
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()


def test_server_user_setting_with_the_tls_front(user, root_dir):
    gw = make(root_dir, f'user = "{USER}"\n', front=True)
    gw.add_user("alice@example.test")  # as root: the CLI acts as the serving user
    assert gw.state.stat().st_uid == user.pw_uid
    try:
        gw.start()
        # The ports open a moment before root is dropped.
        wait_for(lambda: process_uids(gw.proc.pid) == [user.pw_uid] * 4, what="root dropped")
        send_and_deliver(gw)
        # The front reaches the submission listener over a unix socket made while root.
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP_SSL("127.0.0.1", gw.ports["submissions"], context=context,
                              timeout=30) as s:
            assert s.ehlo()[0] == 250
        assert_owned_and_private(gw.state, user.pw_uid)
        # The CLI as root reads what the gateway wrote, and writes as its user.
        listed = gw.cli("user", "list")
        assert listed.returncode == 0 and "alice@example.test" in listed.stdout
        assert gw.cli("user", "add", "carol@example.test", "--password-stdin",
                      stdin="pw\n").returncode == 0
        assert (gw.state / "users").stat().st_uid == user.pw_uid
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()


def test_root_without_a_serving_user_refuses_to_start(root_dir):
    gw = make(root_dir, "")
    result = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "mailgateway",
                             "--config", str(gw.config)], capture_output=True, text=True,
                            timeout=60)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in text, text
    assert "refusing to serve as root" in text


def test_a_state_dir_the_user_cannot_write_is_one_line(user, root_dir):
    try:
        subprocess.run([str(BIN / "twistd"), "--version"], user=user.pw_uid, check=True,
                       capture_output=True, timeout=60)
    except (PermissionError, subprocess.CalledProcessError):
        pytest.skip(f"{USER} cannot run this Python (it lives under a private home)")
    gw = make(root_dir, "")
    gw.add_user("alice@example.test")  # as root: state_dir is root's, mode 0700
    result = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "mailgateway",
                             "--config", str(gw.config)], capture_output=True, text=True,
                            timeout=60, user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                            cwd=root_dir)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in text, text
    assert f"server.state_dir: {gw.state}: permission denied (owner uid 0" in text, text


def test_check_as_the_serving_user_finds_a_root_state_dir(user, root_dir):
    from gateway import privileges, startup

    state = root_dir / "state"
    (state / "queue").mkdir(parents=True, mode=0o755)
    (state / "users").write_text("")
    with privileges.acting_as(privileges.identity(USER)):
        fault = startup.check_state_dir(state)
    assert fault.startswith(f"{state}: permission denied (owner uid 0, gid 0, mode ")
    privileges.prepare_state_dir(state, privileges.identity(USER))
    with privileges.acting_as(privileges.identity(USER)):
        assert startup.check_state_dir(state) is None
    assert os.geteuid() == 0  # acting_as gave root back


def test_a_key_the_serving_user_cannot_read_is_one_line(user, root_dir):
    import trustme

    cert = trustme.CA().issue_cert("mx.example.test")
    cert.cert_chain_pems[0].write_to_path(str(root_dir / "cert.pem"))
    cert.private_key_pem.write_to_path(str(root_dir / "key.pem"))
    (root_dir / "key.pem").chmod(0o600)  # root's only: the user cannot reload it later
    gw = make(root_dir, f'user = "{USER}"\n[tls]\ncertificate = "{root_dir}/cert.pem"\n'
                        f'private_key = "{root_dir}/key.pem"\n')
    result = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "mailgateway",
                             "--config", str(gw.config)], capture_output=True, text=True,
                            timeout=60)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in text, text
    assert f"tls: {root_dir}/key.pem: Permission denied" in text, text


@pytest.mark.parametrize("how", ["twistd --uid", "server.user"])
def test_programs_run_as_the_program_user_after_root_is_dropped(user, root_dir, how):
    # The spawner is started while the gateway is still root (privilegedStartService):
    # started after the drop, programs ran as the gateway's user, who owns every mailbox.
    out = root_dir / "out"
    out.mkdir()
    out.chmod(0o777)
    prog = root_dir / "whoami"
    prog.write_text(f"#!/bin/sh\ncat > /dev/null\nid -u > {out}/uid\n")
    prog.chmod(0o755)
    (root_dir / "aliases").write_text(f'who: "|{prog}"\n')
    gw = make(root_dir, f'user = "{USER}"\n' if how == "server.user" else "",
              extra=f'[aliases]\nfile = "{root_dir}/aliases"\n')
    nobody = pwd.getpwnam("nobody").pw_uid
    try:
        if how == "server.user":
            gw.start()
        else:
            gw.start(f"--uid={user.pw_uid}", f"--gid={user.pw_gid}")
        wait_for(lambda: process_uids(gw.proc.pid) == [user.pw_uid] * 4, what="root dropped")
        with smtplib.SMTP("127.0.0.1", gw.ports["smtp"], timeout=30) as s:
            s.sendmail("bob@example.org", ["who@example.test"], b"Subject: who\r\n\r\nhi\r\n")
        wait_for(lambda: (out / "uid").exists() and (out / "uid").read_text().strip(),
                 what="the program's run")
        assert int((out / "uid").read_text()) == nobody != user.pw_uid
    finally:
        gw.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()
