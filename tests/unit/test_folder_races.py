"""store/folders.py under sessions that arrive together (imaptest stress, issue 12).

Ten clients logging in at once to a new account, then selecting INBOX at
once, met two races: the default folders made twice (the second rename
failed: "Directory not empty") and two Folder objects built over one index
(both indexed the same new files: "UNIQUE constraint failed"). Threads here
are the mailbox thread pool's; an Event widens the window, it is not a wait
for an outcome.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import gateway.store.folders as folders_mod
from gateway.store.folder import Folder
from gateway.store.maildir import MaildirStore

BOX = "alice@example.test"


def test_one_folder_opened_by_many_sessions_at_once_is_built_once(tmp_path, monkeypatch):
    store = MaildirStore(tmp_path / "mail")
    root = store.ensure(BOX)
    for n in range(50):
        (root / "new" / f"{n}.U{n}.host").write_bytes(b"Subject: x\r\n\r\n")
    built, second = [], threading.Event()

    class Slow(Folder):
        def __init__(self, *args, **kw):
            built.append(self)
            if len(built) == 1:
                second.wait(0.5)  # a second build would start now if nothing stopped it
            else:
                second.set()
            super().__init__(*args, **kw)

    monkeypatch.setattr(folders_mod, "Folder", Slow)
    with ThreadPoolExecutor(4) as pool:
        opened = list(pool.map(lambda _: store.open_folders(BOX).open("INBOX"), range(4)))
    assert len(built) == 1 and all(f is opened[0] for f in opened)
    assert len(opened[0].uids) == 50


def test_first_logins_at_once_make_the_default_folders_once(tmp_path):
    store = MaildirStore(tmp_path / "mail")
    with ThreadPoolExecutor(8) as pool:
        sets = list(pool.map(lambda _: store.open_folders(BOX), range(16)))
    names = sets[0].names()
    for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
        assert name in names
    assert not list((store.mailbox_path(BOX) / "tmp").iterdir())  # nothing left half-made


def test_a_leftover_from_a_crashed_create_does_not_block_the_folder(tmp_path):
    store = MaildirStore(tmp_path / "mail")
    folders = store.open_folders(BOX)
    (folders.root / "tmp" / ".Work.creating" / "cur").mkdir(parents=True)
    assert folders.create("Work") and folders.exists("Work")
    assert not folders.create("Work")


def test_a_folder_with_cur_but_without_new_or_tmp_opens_and_gets_them(tmp_path):
    store = MaildirStore(tmp_path / "mail")
    root = store.ensure(BOX)
    (root / "cur" / "1.U1.host:2,S").write_bytes(b"Subject: kept\r\n\r\n")
    (root / "new").rmdir()
    (root / "tmp").rmdir()
    folder = store.open_folder(BOX)
    assert len(folder.uids) == 1 and folder.message(folder.uids[0]).flags() == ["\\Seen"]
    assert (root / "new").is_dir() and (root / "tmp").is_dir()
