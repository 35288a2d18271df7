"""aliasfile.AliasReloader: a change to the aliases file is never missed by the check."""

from __future__ import annotations

import os
from types import SimpleNamespace

from twisted.internet.testing import MemoryReactorClock

from gateway import aliasfile
from gateway.config import parse


def reloader(tmp_path, text: str):
    path = tmp_path / "aliases"
    path.write_text(text)
    settings = parse({"server": {"domains": ["example.test"], "state_dir": str(tmp_path)},
                      "aliases": {"file": str(path)}})
    table, faults = aliasfile.load_table(settings)
    assert faults == []
    router = SimpleNamespace(aliases=table)
    return aliasfile.AliasReloader(settings, router, MemoryReactorClock(),
                                   install_sighup=False), router, path


def test_a_write_made_while_the_file_is_read_is_found_by_the_next_check(tmp_path, monkeypatch):
    r, router, path = reloader(tmp_path, "team: alice\n")
    real = aliasfile._read
    writes = ["team: alice\nstaff: bob\n"]

    def read_then_written(p):
        text = real(p)
        if writes:  # an editor saves again just after our read
            path.write_text(writes.pop())
        return text

    monkeypatch.setattr(aliasfile, "_read", read_then_written)
    path.write_text("team: bob\n")
    assert r.reload("changed")
    assert len(router.aliases) == 1
    r.check()  # the second write is new to the check
    assert len(router.aliases) == 2


def test_a_rewrite_within_one_clock_tick_is_seen_by_its_size(tmp_path):
    r, router, path = reloader(tmp_path, "team: alice\n")
    mtime = os.stat(path).st_mtime_ns
    path.write_text("team: alice\nstaff: bob\n")
    os.utime(path, ns=(mtime, mtime))  # the same tick of the file system's clock
    r.check()
    assert len(router.aliases) == 2


def test_sighup_is_handled_from_the_privileged_start_when_twistd_binds_the_ports(tmp_path):
    import signal

    path = tmp_path / "aliases"
    path.write_text("team: alice\n")
    settings = parse({"server": {"domains": ["example.test"], "state_dir": str(tmp_path)},
                      "aliases": {"file": str(path)}})
    table, _ = aliasfile.load_table(settings)
    before = signal.getsignal(signal.SIGHUP)
    r = aliasfile.AliasReloader(settings, SimpleNamespace(aliases=table), MemoryReactorClock())
    r.privilegedStartService()
    try:
        # The ports answer from here on: a SIGHUP now must not take SIGHUP's default
        # action (the end of the gateway) while startService has not yet run.
        assert signal.getsignal(signal.SIGHUP) == r._on_sighup
        r.startService()
        assert signal.getsignal(signal.SIGHUP) == r._on_sighup
    finally:
        r.stopService()
    assert signal.getsignal(signal.SIGHUP) == before
