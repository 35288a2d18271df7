"""store/index.py, store/folder.py, store/folders.py: UIDs, flags in file names, Maildir++."""

from __future__ import annotations

import os

import pytest

from gateway.store.folder import transfer
from gateway.store.folders import FolderNameError, disk_name
from gateway.store.index import INDEX_NAME
from gateway.store.maildir import MaildirStore

BOX = "alice@example.test"


@pytest.fixture
def store(tmp_path):
    return MaildirStore(tmp_path / "mail")


def names(path, sub="cur"):
    return sorted(os.listdir(path / sub))


def test_uids_follow_arrival_and_survive_a_new_process(store, tmp_path):
    for n in range(3):
        store.deliver(BOX, b"Subject: %d\r\n\r\n" % n, f"U{n}")
        os.utime(store.mailbox_path(BOX) / "new" / f"U{n}", (1000 + n, 1000 + n))
    inbox = store.open_folders(BOX).open("INBOX")
    assert inbox.uids == [1, 2, 3]
    assert [inbox.by_uid[u].base for u in inbox.uids] == ["U0", "U1", "U2"]
    validity = inbox.uidvalidity
    again = MaildirStore(tmp_path / "mail").open_folders(BOX).open("INBOX")
    assert (again.uids, again.uidvalidity, again.uidnext) == ([1, 2, 3], validity, 4)


def test_flags_live_in_file_names_and_other_tools_changes_are_seen(store):
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    inbox = store.open_folders(BOX).open("INBOX")
    inbox.store([1], 1, ["\\Seen", "\\Answered", "\\Flagged", "$Label"])
    root = store.mailbox_path(BOX)
    assert names(root) == ["U1:2,FRSa"]  # the keyword as Dovecot's letter (keywords.py)
    assert inbox.by_uid[1].flags() == ["\\Flagged", "\\Answered", "\\Seen", "$Label"]
    # mutt marks it deleted and drafts a new one straight into cur/.
    os.rename(root / "cur" / "U1:2,FRSa", root / "cur" / "U1:2,FRSTa")
    (root / "cur" / "MUTT1:2,D").write_bytes(b"Subject: draft\r\n\r\n")
    assert inbox.sync(force=True)
    assert "\\Deleted" in inbox.by_uid[1].flags()
    assert inbox.uids == [1, 2] and inbox.by_uid[2].flags() == ["\\Draft"]
    assert inbox.expunge() == [1]
    assert names(root) == ["MUTT1:2,D"]


def test_deleted_index_is_rebuilt_with_a_new_uidvalidity(store, tmp_path):
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    folders = store.open_folders(BOX)
    old = folders.open("INBOX")
    old_validity = old.uidvalidity
    old.store([1], 1, ["\\Seen"])
    fresh = MaildirStore(tmp_path / "mail")
    for name in os.listdir(store.mailbox_path(BOX)):
        if name.startswith(INDEX_NAME):
            os.unlink(store.mailbox_path(BOX) / name)
    (store.mailbox_path(BOX) / "cur").touch()
    os.utime(store.mailbox_path(BOX) / "cur", (1, 1))
    inbox = fresh.open_folders(BOX).open("INBOX")
    assert inbox.uids == [1] and inbox.by_uid[1].flags() == ["\\Seen"]
    assert inbox.uidvalidity >= old_validity


def test_a_damaged_index_is_set_aside_and_rebuilt(store):
    root = store.ensure(BOX)
    (root / INDEX_NAME).write_bytes(b"this is not sqlite" * 100)
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    inbox = store.open_folders(BOX).open("INBOX")
    assert inbox.uids == [1]
    assert (root / (INDEX_NAME + ".broken")).exists()


def test_delivery_wakes_listeners_through_announce(tmp_path):
    calls = []
    store = MaildirStore(tmp_path / "mail", announce=calls.append)
    inbox = store.open_folders(BOX).open("INBOX")

    class Listener:
        changed = None

        def folder_changed(self, expunged, flagged, added):
            self.changed = (expunged, flagged, added)

        def wake(self):
            pass

    listener = Listener()
    inbox.attach(listener)
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    assert listener.changed == ([], [], [1])
    assert calls == [listener.wake]  # handed to the reactor thread, not called here


def test_copy_links_and_move_renames_keeping_flags(store):
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    folders = store.open_folders(BOX)
    inbox, trash = folders.open("INBOX"), folders.open("Trash")
    inbox.store([1], 1, ["\\Seen"])
    assert transfer(inbox, trash, [1], move=False) == [(1, 1)]
    assert transfer(inbox, trash, [1], move=True) == [(1, 2)]
    assert inbox.uids == [] and trash.uids == [1, 2]
    files = names(folders.path("Trash"))
    assert len(files) == 2 and all(f.endswith(":2,S") for f in files)
    assert os.listdir(store.mailbox_path(BOX) / "cur") == []


@pytest.mark.parametrize("bad", ["", ".", "a..b", "../x", "a/b", "x*", "x%", ".hidden",
                                 "trail.", "a\x00b", " pad"])
def test_folder_names_never_escape(bad):
    with pytest.raises(FolderNameError):
        disk_name(bad)


def test_folder_names_are_maildirplusplus_in_modified_utf7(store):
    folders = store.open_folders(BOX)
    assert disk_name("inbox") == ""
    assert disk_name("Lists.Café") == ".Lists.Caf&AOk-"
    assert folders.create("Lists.Café")
    assert (store.mailbox_path(BOX) / ".Lists.Caf&AOk-" / "maildirfolder").exists()
    assert "Lists.Café" in folders.names()
    assert folders.names()[:1] == ["INBOX"]
    assert {"Sent", "Drafts", "Trash", "Junk", "Archive"} <= set(folders.names())


def test_own_changes_do_not_cost_a_listing_but_foreign_ones_are_found(store, monkeypatch):
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    inbox = store.open_folders(BOX).open("INBOX")
    cur = store.mailbox_path(BOX) / "cur"
    for sub in ("new", "cur"):  # old, trustworthy mtimes
        os.utime(store.mailbox_path(BOX) / sub, (1, 1))
    inbox.sync()
    listed = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: listed.append(str(p)) or real(p))
    draft = store.mailbox_path(BOX) / "tmp" / "d"
    draft.write_bytes(b"Subject: d\r\n\r\n")
    inbox.add_file(draft, ["\\Draft"], None)
    inbox.store([1], 1, ["\\Seen"])
    assert not inbox.sync()
    assert listed == []  # 100,000 names are not listed again for our own APPEND and STORE
    (cur / "FOREIGN:2,S").write_bytes(b"Subject: f\r\n\r\n")
    os.utime(cur, (2, 2))
    assert inbox.sync() and str(cur) in listed
    assert [inbox.by_uid[u].base for u in inbox.uids] == ["U1", inbox.by_uid[2].base, "FOREIGN"]


def test_a_folder_deleted_and_made_again_gets_a_new_uidvalidity_at_once(tmp_path):
    from gateway.store.folders import FolderRegistry, FolderSet

    folders = FolderSet(tmp_path, FolderRegistry(lambda f: f()))
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir()
    values = []
    for _ in range(3):  # well within one second
        assert folders.create("Work")
        values.append(folders.open("Work").uidvalidity)
        assert folders.delete("Work")
    assert values == sorted(set(values)), values  # strictly increasing
