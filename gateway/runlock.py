"""One gateway per state directory, and a clean run/ after a crash.

Called by service.py at start, before any listener. The unix sockets of
[proxied] listeners live in <state_dir>/run/ with Twisted's lock files
(NAME.sock.lock, a symlink naming the PID). After kill -9 those stay behind,
and when their PID is alive again (PID reuse after a reboot, or another
program started at once) Twisted refuses to listen: every proxied listener,
the TLS fronts' backends, stays down.

So the gateway first takes an flock(2) on run/gateway.lock. The kernel
releases it when the process dies, however it dies, so it is never stale:
holding it proves no other gateway uses this state_dir, and then every
socket and lock file left in run/ is a dead gateway's and is removed.
Failing to take it means a live gateway has the state_dir: a clear error.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

from twisted.logger import Logger

from gateway.errors import StartupError

log = Logger()

LOCK_NAME = "gateway.lock"
# The queue runner's own lock ([queue] runner_process: taken by the runner process,
# else by the gateway beside gateway.lock): one runner per spool, always.
RUNNER_LOCK_NAME = "runner.lock"


def claim(state_dir: Path) -> IO[str]:
    """Lock <state_dir>/run for this process and clear what a dead gateway left there.

    Returns the open lock file: keep it open as long as the gateway runs.
    """
    run_dir = state_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    run_dir.chmod(0o700)
    handle = open(run_dir / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115  held open
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        handle.close()
        raise StartupError(f"{state_dir}: another gateway (pid {pid}) is running with this "
                           "state_dir; stop it first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    for path in sorted(run_dir.iterdir()):
        if path.name.endswith((".sock", ".sock.lock")):
            path.unlink(missing_ok=True)
            log.info("removed {path}, left by a gateway that stopped without cleaning up",
                     path=str(path))
    return handle


def claim_runner(state_dir: Path, wait: float = 0.0, sleep=time.sleep) -> IO[str]:
    """Lock <state_dir>/run/runner.lock for this process's queue runner.

    wait: seconds to keep trying (a runner process started again while the one
    before it still finishes its last deliveries). Returns the open lock file.
    """
    run_dir = state_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handle = open(run_dir / RUNNER_LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115  held
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                handle.seek(0)
                pid = handle.read().strip() or "?"
                handle.close()
                raise StartupError(f"{state_dir}: another queue runner (pid {pid}) works on "
                                   "this spool; stop it first") from None
            sleep(0.1)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
