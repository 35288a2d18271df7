"""store/folder.py Folder.heads: the heads of many messages, read ahead (issue 12).

A first SEARCH FROM or FETCH ENVELOPE over a cold folder read one file at a
time at the disk's latency; heads() keeps [mailbox] read_ahead files open
ahead with posix_fadvise(WILLNEED). What it yields must be what read_head()
gives one by one, in the UIDs' order, for every shape: short files, a header
longer than the first read, a message expunged or renamed meanwhile.
"""

from __future__ import annotations

import os

import pytest

import gateway.store.folder as folder_mod
from gateway.config import Settings, parse
from gateway.store.folder import HEAD_READ, Folder
from gateway.store.maildir import MaildirStore

BOX = "alice@example.test"


def _folder(tmp_path, count: int, read_ahead: int = 4) -> Folder:
    store = MaildirStore(tmp_path / "mail", read_ahead=read_ahead)
    root = store.ensure(BOX)
    for n in range(count):
        body = b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n)
        if n == 3:  # a header block longer than the first read
            body = b"X-Long: " + b"a" * (HEAD_READ + 100) + b"\r\nSubject: long\r\n\r\nbody\r\n"
        (root / "cur" / f"{n}.U{n}.host:2,").write_bytes(body)
        os.utime(root / "cur" / f"{n}.U{n}.host:2,", (1000 + n, 1000 + n))
    folder = store.open_folders(BOX).open("INBOX")
    assert folder.read_ahead == read_ahead
    return folder


def _cut(head: bytes) -> bytes:
    return head[:head.index(b"\r\n\r\n") + 4]


def test_heads_are_read_heads_in_uid_order(tmp_path):
    folder = _folder(tmp_path, 20)
    got = list(folder.heads(folder.uids))
    assert [u for u, _ in got] == folder.uids
    for uid, head in got:
        assert _cut(head) == _cut(folder.read_head(uid))
    long = dict(got)[folder.uids[3]]
    assert long.endswith(b"Subject: long\r\n\r\n")  # read past the first HEAD_READ octets


def test_heads_skip_expunged_and_find_renamed(tmp_path):
    folder = _folder(tmp_path, 10)
    uids = folder.uids
    gone, moved = folder.by_uid[uids[2]], folder.by_uid[uids[7]]
    os.unlink(folder.path / gone.relpath())  # expunged by another program
    os.rename(folder.path / moved.relpath(), folder.path / "cur" / (moved.base + ":2,S"))
    got = dict(folder.heads(uids))
    assert uids[2] not in got
    assert got[uids[7]].startswith(b"Subject: m7\r\n")
    assert len(got) == 9


def test_heads_hold_at_most_read_ahead_files_open(tmp_path, monkeypatch):
    folder = _folder(tmp_path, 30, read_ahead=5)
    opened: list[int] = []
    real_open, real_close = os.open, os.close
    live: set[int] = set()

    def counting_open(path, flags, *args):
        fd = real_open(path, flags, *args)
        live.add(fd)
        opened.append(len(live))
        return fd

    def counting_close(fd):
        live.discard(fd)
        real_close(fd)

    monkeypatch.setattr(folder_mod.os, "open", counting_open)
    monkeypatch.setattr(folder_mod.os, "close", counting_close)
    heads = folder.heads(folder.uids)
    first = next(heads)
    assert first[0] == folder.uids[0]
    assert max(opened) <= 6  # the window, and the one being read
    heads.close()  # a reader that stops early closes what it opened
    assert not live


def test_heads_go_on_one_by_one_when_descriptors_run_out(tmp_path, monkeypatch):
    folder = _folder(tmp_path, 12, read_ahead=8)
    real_open, calls = os.open, []

    def scarce(path, flags, *args):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(24, "Too many open files")
        return real_open(path, flags, *args)

    monkeypatch.setattr(folder_mod.os, "open", scarce)
    assert [u for u, _ in folder.heads(folder.uids)] == folder.uids


def test_read_ahead_is_a_named_setting():
    assert Settings.mailbox_read_ahead == 64
    parsed = parse({"server": {"domains": ["example.test"]}, "mailbox": {"read_ahead": 7}})
    assert parsed.mailbox_read_ahead == 7
    with pytest.raises(Exception, match="read_ahead"):
        parse({"server": {"domains": ["example.test"]}, "mailbox": {"read_ahead": 0}})
