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
