"""gateway/runlock.py: one gateway per state_dir; what a killed one left in run/ is cleared."""

from __future__ import annotations

import os
import socket

import pytest

from gateway import runlock
from gateway.errors import StartupError


def test_stale_sockets_and_locks_naming_a_live_pid_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    # What kill -9 leaves: a socket, and Twisted's lock naming a PID that is alive
    # again (here this very process), which made Twisted refuse to listen.
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(run / "submission.sock"))
    os.symlink(str(os.getpid()), run / "submission.sock.lock")
    handle = runlock.claim(tmp_path)
    try:
        assert sorted(p.name for p in run.iterdir()) == ["gateway.lock"]
        assert (run / "gateway.lock").read_text() == f"{os.getpid()}\n"
        assert oct(run.stat().st_mode & 0o777) == "0o700"
    finally:
        handle.close()


def test_a_live_gateway_on_the_same_state_dir_is_a_clear_error(tmp_path):
    first = runlock.claim(tmp_path)
    try:
        (tmp_path / "run" / "pop3.sock").touch()  # the live gateway's: must stay
        with pytest.raises(StartupError) as e:
            runlock.claim(tmp_path)
        assert str(e.value) == (f"{tmp_path}: another gateway (pid {os.getpid()}) is running "
                                "with this state_dir; stop it first")
        assert (tmp_path / "run" / "pop3.sock").exists()
    finally:
        first.close()
    runlock.claim(tmp_path).close()  # released with its holder: never stale
