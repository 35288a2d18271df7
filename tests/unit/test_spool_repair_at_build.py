"""The spool's repair after a crash happens when the gateway is built, before any
listener takes mail: never in the runner's start, which runs while entries are being
written (it deleted their tmp/ files, or died on one renamed meanwhile)."""

from __future__ import annotations

from test_pools import PoolReactor

from gateway import service
from gateway.config import parse


def test_leftovers_are_removed_at_build_and_the_runner_start_repairs_nothing(tmp_path):
    settings = parse({"server": {"domains": ["example.test"], "state_dir": str(tmp_path)},
                      "listen": {name: "" for name in ("smtp", "submission", "pop3", "imap")},
                      "queue": {"runner_process": False}})  # the runner in this process
    tmp = settings.spool_dir / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "1K16XDLLXSVA2FV8.env").write_bytes(b"half written by a crashed gateway")
    top = service.build(settings, PoolReactor())
    try:
        assert list(tmp.iterdir()) == []  # repaired before the reactor ran
        (lane,) = [s for s in top if isinstance(s, service.RunnerService)]
        assert lane.runner.recover is False  # its start only lists the entries
    finally:
        top.run_lock.close()
        top.runner_lock.close()
