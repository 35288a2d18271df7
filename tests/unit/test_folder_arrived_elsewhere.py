"""Folder.arrived_elsewhere: files another process of the gateway renamed into new/
(the runner process, gateway/runnerproc) are indexed by name, with no listing."""

from __future__ import annotations

import os

from gateway.store import folder as folder_module
from gateway.store.folder import Folder


def maildir(tmp_path):
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_told_names_are_indexed_without_listing_and_the_next_sync_lists_nothing(
        tmp_path, monkeypatch):
    box = maildir(tmp_path)
    f = Folder(box, lambda call: call())
    f.sync()
    listed = []
    real = os.listdir
    monkeypatch.setattr(folder_module.os, "listdir",
                        lambda d: listed.append(str(d)) or real(d))
    for name in ("1.Q1", "2.Q2"):
        (box / "new" / name).write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    f.arrived_elsewhere(["1.Q1", "2.Q2"])
    assert len(f.by_uid) == 2
    assert listed == []
    f.sync()
    assert listed == []  # new/'s mtime is known: the two were told by name
    f.relist()  # the runner died: what it renamed and never told is found by a listing
    (box / "new" / "3.Q3").write_bytes(b"Subject: y\r\n\r\nbody\r\n")
    f.sync()
    assert len(f.by_uid) == 3 and any(p.endswith("new") for p in listed)


def test_while_the_runner_delivers_a_sync_leaves_new_to_its_told_names(tmp_path, monkeypatch):
    # A STATUS poll between the runner's rename and its message listed new/ each time.
    box = maildir(tmp_path)
    f = Folder(box, lambda call: call())
    f.sync()
    now = [10**18]
    monkeypatch.setattr(folder_module, "_now_ns", lambda: now[0])
    (box / "new" / "1.Q1").write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    f.arrived_elsewhere(["1.Q1"])
    listed = []
    real = os.listdir
    monkeypatch.setattr(folder_module.os, "listdir",
                        lambda d: listed.append(str(d)) or real(d))
    (box / "new" / "2.Q2").write_bytes(b"Subject: y\r\n\r\nbody\r\n")  # renamed, not yet told
    os.utime(box / "new", ns=(now[0] + 1, now[0] + 1))  # the mtime moved, whatever the clock
    f.sync()
    assert listed == [] and len(f.by_uid) == 1  # left to its message
    f.arrived_elsewhere(["2.Q2"])
    assert len(f.by_uid) == 2
    # Deliveries over: a change not told (another program) is found by the next sync.
    (box / "new" / "3.Q3").write_bytes(b"Subject: z\r\n\r\nbody\r\n")
    os.utime(box / "new", ns=(now[0] + 2, now[0] + 2))
    now[0] += folder_module._TOLD_GRACE_NS + folder_module._STABLE_NS
    f.sync()
    assert any(p.endswith("new") for p in listed) and len(f.by_uid) == 3
