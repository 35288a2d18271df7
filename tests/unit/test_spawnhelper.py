"""deliver/spawnhelper.py as the gateway runs it: a real helper process and real programs.

No sockets: the helper speaks over its standard input and output (pipes), and
the programs are /bin/sh one-liners that end in milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gateway.deliver.spawner import HELPER

FRAME = struct.Struct(">I")
NOBODY = 65534
# The program identity, as deliver/spawner.py gives it: only root can change it.
IDENTITY = [str(NOBODY), str(NOBODY)] if os.geteuid() == 0 else ["-", "-"]


class Helper:
    def __init__(self, identity=IDENTITY, directory="/"):
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", str(HELPER), *identity,
                                      directory], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={})

    def send(self, **obj) -> None:
        data = json.dumps(obj).encode()
        self.proc.stdin.write(FRAME.pack(len(data)) + data)
        self.proc.stdin.flush()

    def recv(self) -> dict:
        head = self.proc.stdout.read(FRAME.size)
        assert len(head) == FRAME.size, "the helper ended"
        return json.loads(self.proc.stdout.read(FRAME.unpack(head)[0]))

    def start(self, n: int, argv: list[str], message: str, head: str = "", **kw) -> dict:
        req = {"id": n, "argv": argv, "env": {"PATH": "/usr/bin:/bin", "X": "1"},
               "head": head, "message": message, "output_limit": 4096, "reply_limit": 0}
        req.update(kw)
        self.send(**req)
        return self.recv()

    def close(self) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout=10)


@pytest.fixture
def helper():
    h = Helper()
    yield h
    if not h.proc.stdin.closed:
        h.close()  # and the helper ends: nothing of it outlives a test
    h.proc.stdout.close()
    h.proc.stderr.close()


@pytest.fixture
def message(tmp_path):
    path = tmp_path / "m.msg"
    path.write_bytes(b"Subject: hi\r\n\r\nbody\r\n")
    return str(path)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_the_program_gets_head_and_message_on_stdin_and_only_the_given_environment(
        helper, message):
    started = helper.start(1, ["/bin/sh", "-c", "cat; env | sort >&2"], message,
                           head="Delivered-To: a@b\r\n", reply_limit=100)
    assert started["id"] == 1 and started["pid"] > 0
    ended = helper.recv()
    assert (ended["exit"], ended["signal"]) == (0, None)
    assert ended["stdout"] == "Delivered-To: a@b\r\nSubject: hi\r\n\r\nbody\r\n"
    # stderr and stdout together in output; the environment is the request's alone.
    env = [line for line in ended["output"].splitlines() if line.startswith(("X=", "PATH="))]
    assert sorted(env) == ["PATH=/usr/bin:/bin", "X=1"]
    assert "PWD=/" in ended["output"] or "OLDPWD" not in ended["output"]


def test_output_and_reply_are_cut_at_their_limits(helper, message):
    helper.start(1, ["/bin/sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x; echo err >&2"],
                 message, output_limit=10, reply_limit=5)
    ended = helper.recv()
    assert ended["exit"] == 0
    assert ended["output"] == "x" * 10 and ended["stdout"] == "x" * 5


def test_exit_status_and_signal(helper, message):
    helper.start(1, ["/bin/sh", "-c", "exit 75"], message)
    assert helper.recv()["exit"] == 75
    helper.start(2, ["/bin/sh", "-c", "kill -TERM $$"], message)
    ended = helper.recv()
    assert (ended["exit"], ended["signal"]) == (None, 15)


def test_a_program_that_reads_nothing_of_a_large_message_ends_normally(helper, tmp_path):
    big = tmp_path / "big.msg"
    big.write_bytes(b"x" * (4 << 20))  # far beyond a pipe's buffer
    helper.start(1, ["/bin/true"], str(big))
    assert helper.recv()["exit"] == 0


def test_kill_reaches_the_whole_process_group(helper, message, tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="mg-spawn-", dir="/tmp"))  # nobody writes here
    shared.chmod(0o777)
    pidfile = shared / "child"
    helper.start(1, ["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], message)
    deadline = time.monotonic() + 10
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline, "the program did not start its child"
        time.sleep(0.01)
    child = int(pidfile.read_text())
    helper.send(id=1, kill=True)
    ended = helper.recv()
    assert (ended["exit"], ended["signal"]) == (None, 9)
    deadline = time.monotonic() + 10
    while alive(child):
        assert time.monotonic() < deadline, "the program's own child survived the kill"
        time.sleep(0.01)
    shutil.rmtree(shared)


def test_a_program_that_cannot_start_is_reported_and_the_helper_goes_on(helper, message):
    failed = helper.start(1, ["/nonexistent/prog"], message)
    assert failed["id"] == 1 and failed["error"].startswith("not started (FileNotFoundError")
    helper.start(2, ["/bin/true"], message)
    assert helper.recv() == {"id": 2, "exit": 0, "signal": None, "output": "", "stdout": ""}


def test_end_of_input_kills_the_running_programs_and_ends_the_helper(helper, message):
    started = helper.start(1, ["/bin/sleep", "300"], message)
    assert helper.close() == 0
    deadline = time.monotonic() + 10
    while alive(started["pid"]):
        assert time.monotonic() < deadline, "a program outlived the helper"
        time.sleep(0.01)


def test_programs_run_in_the_directory_the_helper_was_given(tmp_path, message):
    helper = Helper(directory="/usr")
    try:
        helper.start(1, ["/bin/pwd"], message, reply_limit=100)
        assert helper.recv()["stdout"] == "/usr\n"
    finally:
        helper.close()
        helper.proc.stdout.close()
        helper.proc.stderr.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_as_root_every_id_of_a_program_is_the_given_user_s_with_no_group_or_capability(
        helper, message):
    helper.start(1, ["/bin/grep", "-E", "^(Uid|Gid|Groups|CapPrm|CapEff):", "/proc/self/status"],
                 message, reply_limit=1000)
    status = dict(line.split(":", 1) for line in helper.recv()["stdout"].splitlines())
    assert status["Uid"].split() == [str(NOBODY)] * 4  # real, effective, saved, file system
    assert status["Gid"].split() == [str(NOBODY)] * 4
    assert status["Groups"].split() == []
    assert int(status["CapPrm"], 16) == int(status["CapEff"], 16) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
@pytest.mark.parametrize("identity", [["-", "-"], ["0", str(NOBODY)], [str(NOBODY), "0"]])
def test_as_root_the_helper_refuses_to_run_programs_as_root(identity):
    helper = Helper(identity)
    _, err = helper.proc.communicate(timeout=30)
    assert helper.proc.returncode == 1 and b"never run as root" in err


def test_a_ping_is_answered_while_programs_run(helper, message):
    started = helper.start(1, ["/bin/sh", "-c", "sleep 5"], message)
    assert "pid" in started
    helper.send(ping=7)
    assert helper.recv() == {"pong": 7}
    helper.send(id=1, kill=True)
    assert helper.recv()["signal"] == 9


def _uids(pid: int) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split()[1:] for line in f if line.startswith("Uid:"))


@pytest.mark.skipif(os.geteuid() != 0, reason="changing user needs root")
def test_as_root_no_program_can_signal_the_helper(helper, message):
    # kill(2) lets a process signal another whose real or saved uid is its own: the
    # helper's are root's but for the moment a program is spawned.
    started = helper.start(1, ["/bin/sh", "-c", "sleep 5"], message)
    # posix_spawn returns once the child has released the parent's memory, a moment
    # before execve gives it its saved uid: the IDs are the program's from its first
    # instruction on, which is what is polled for here (never ["0"] at the end).
    deadline = time.monotonic() + 10
    while (uids := _uids(started["pid"])) != [str(NOBODY)] * 4 \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert uids == [str(NOBODY)] * 4
    assert _uids(helper.proc.pid) == ["0"] * 4
    helper.send(id=1, kill=True)
    assert helper.recv()["signal"] == 9


def test_a_helper_started_without_root_refuses_another_program_user(monkeypatch, tmp_path):
    # A restart after the gateway dropped root: programs would run as the gateway.
    from gateway.deliver import spawnhelper

    for name in ("geteuid", "getuid", "getgid"):
        monkeypatch.setattr(spawnhelper.os, name, lambda: 1000)
    monkeypatch.setattr(spawnhelper.os, "chdir", lambda path: None)
    with pytest.raises(PermissionError, match="that needs root"):
        spawnhelper.take_identity(NOBODY, NOBODY, str(tmp_path))
    assert spawnhelper.take_identity(1000, 1000, str(tmp_path)) is None  # the same user
    assert spawnhelper.take_identity(None, None, str(tmp_path)) is None
