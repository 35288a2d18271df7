"""store/keywords.py + store/folder.py: keywords in the Maildir, as Dovecot keeps them."""

from __future__ import annotations

import os

import pytest

from gateway.store.folder import transfer
from gateway.store.index import INDEX_NAME
from gateway.store.keywords import KEYWORDS_NAME, parse
from gateway.store.maildir import MaildirStore

BOX = "alice@example.test"


@pytest.fixture
def store(tmp_path):
    return MaildirStore(tmp_path / "mail")


def names(path, sub="cur"):
    return sorted(os.listdir(path / sub))


def drop_index(root):
    for name in os.listdir(root):
        if name.startswith(INDEX_NAME):
            os.unlink(root / name)


def test_keywords_are_letters_in_the_file_name_numbered_in_dovecot_keywords(store):
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    inbox = store.open_folders(BOX).open("INBOX")
    inbox.store([1], 1, ["\\Seen", "$Label1", "Work"])
    root = store.mailbox_path(BOX)
    assert names(root) == ["U1:2,Sab"]
    assert (root / KEYWORDS_NAME).read_text() == "0 $Label1\n1 Work\n"
    inbox.store([1], -1, ["$Label1"])
    assert names(root) == ["U1:2,Sb"]
    assert inbox.by_uid[1].flags() == ["\\Seen", "Work"]


def test_a_rebuilt_index_keeps_the_keywords(store, tmp_path):
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    store.deliver(BOX, b"Subject: y\r\n\r\n", "U2")
    inbox = store.open_folders(BOX).open("INBOX")
    inbox.store([1], 1, ["$Junk"])
    inbox.store([2], 1, ["\\Flagged", "Project-X", "$Junk"])
    root = store.mailbox_path(BOX)
    drop_index(root)
    again = MaildirStore(tmp_path / "mail").open_folders(BOX).open("INBOX")
    by_base = {again.by_uid[u].base: again.by_uid[u].flags() for u in again.uids}
    assert by_base == {"U1": ["$Junk"], "U2": ["\\Flagged", "$Junk", "Project-X"]}
    assert set(again.keyword_names) == {"$Junk", "Project-X"}


def test_a_file_renamed_by_another_maildir_program_is_read(store):
    root = store.ensure(BOX)
    # Dovecot numbered two keywords; mutt-like tools keep the letters when renaming.
    (root / KEYWORDS_NAME).write_text("0 $Forwarded-old\n1 Important\n")
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    inbox = store.open_folders(BOX).open("INBOX")
    assert inbox.by_uid[1].flags() == []
    os.rename(root / "new" / "U1", root / "cur" / "U1:2,Sb")
    assert inbox.sync(force=True)
    assert inbox.by_uid[1].flags() == ["\\Seen", "Important"]
    # Dovecot adds a slot and a letter while we have the folder open.
    (root / KEYWORDS_NAME).write_text("0 $Forwarded-old\n1 Important\n2 Later\n")
    os.rename(root / "cur" / "U1:2,Sb", root / "cur" / "U1:2,Sbc")
    assert inbox.sync(force=True)
    assert inbox.by_uid[1].flags() == ["\\Seen", "Important", "Later"]
    assert "Later" in inbox.keyword_names
    # Our next keyword takes the next free slot; Dovecot's slots keep their numbers.
    inbox.store([1], 1, ["New"])
    assert parse((root / KEYWORDS_NAME).read_text()) == {
        0: "$Forwarded-old", 1: "Important", 2: "Later", 3: "New"}
    assert names(root) == ["U1:2,Sbcd"]


def test_letters_the_keywords_file_does_not_name_are_kept(store):
    root = store.ensure(BOX)
    (root / "cur" / "U1:2,Sz").write_bytes(b"Subject: x\r\n\r\n")
    inbox = store.open_folders(BOX).open("INBOX")
    inbox.store([1], 1, ["Work"])
    assert names(root) == ["U1:2,Saz"]
    assert inbox.by_uid[1].flags() == ["\\Seen", "Work"]


def test_past_26_keywords_the_rest_stay_in_the_index_only(store, tmp_path):
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    inbox = store.open_folders(BOX).open("INBOX")
    words = [f"K{n}" for n in range(28)]
    inbox.store([1], 1, words)
    root = store.mailbox_path(BOX)
    assert names(root) == ["U1:2,abcdefghijklmnopqrstuvwxyz"]
    assert inbox.by_uid[1].flags() == words
    # A new process with the index: all 28; another program's rename keeps the two.
    again = MaildirStore(tmp_path / "mail").open_folders(BOX).open("INBOX")
    assert again.by_uid[1].flags() == words
    os.rename(root / "cur" / "U1:2,abcdefghijklmnopqrstuvwxyz",
              root / "cur" / "U1:2,Sabcdefghijklmnopqrstuvwxyz")
    assert again.sync(force=True)
    assert again.by_uid[1].flags() == ["\\Seen", *words]
    drop_index(root)  # as Dovecot: the index-only ones go with the index
    third = MaildirStore(tmp_path / "mail").open_folders(BOX).open("INBOX")
    assert third.by_uid[1].flags() == ["\\Seen", *words[:26]]


def test_append_and_copy_give_keywords_letters_of_the_target_folder(store):
    store.deliver(BOX, b"Subject: x\r\n\r\n", "U1")
    folders = store.open_folders(BOX)
    inbox, trash = folders.open("INBOX"), folders.open("Trash")
    trash_root = folders.path("Trash")
    (trash_root / KEYWORDS_NAME).write_text("0 Other\n")
    inbox.store([1], 1, ["Mine"])
    assert transfer(inbox, trash, [1], move=False) == [(1, 1)]
    assert [f.split(":")[1] for f in names(trash_root)] == ["2,b"]
    assert trash.by_uid[1].flags() == ["Mine"]
    draft = store.mailbox_path(BOX) / "tmp" / "d"
    draft.write_bytes(b"Subject: d\r\n\r\n")
    uid = trash.add_file(draft, ["\\Draft", "Other", "Mine"], None)
    assert trash.by_uid[uid].base + ":2,Dab" in names(trash_root)


def test_keywords_file_lines_that_are_not_slots_are_ignored():
    assert parse("0 $Junk\n26 TooFar\nx Bad\n1 two words\n\n3 Ok\n") == {
        0: "$Junk", 1: "two words", 3: "Ok"}


def test_a_slot_imap_cannot_name_is_neither_shown_nor_given_again(store):
    root = store.ensure(BOX)
    (root / KEYWORDS_NAME).write_text("0 two words\n2 Ok\n")
    (root / "cur" / "U1:2,ac").write_bytes(b"Subject: x\r\n\r\n")
    inbox = store.open_folders(BOX).open("INBOX")
    assert inbox.by_uid[1].flags() == ["Ok"]
    inbox.store([1], 1, ["Next"])
    assert (root / KEYWORDS_NAME).read_text() == "0 two words\n1 Next\n2 Ok\n"
    assert names(root) == ["U1:2,abc"]
    assert inbox.by_uid[1].flags() == ["Ok", "Next"]
