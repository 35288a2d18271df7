"""store/maildrop.py: the POP3 view of a Maildir (snapshot, UIDL, lock, commit)."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import pytest
from twisted.mail.pop3 import IMailbox
from zope.interface.verify import verifyObject

from gateway.store.maildir import MaildirStore
from gateway.store.maildrop import LOCK_FILE, Maildrop, MaildropInUse, uidl_for

BOX = "alice@example.test"


def deliver(store: MaildirStore, unique: str, body: bytes, mtime: int) -> Path:
    store.deliver(BOX, body, unique)
    path = store.mailbox_path(BOX) / "new" / unique
    os.utime(path, ns=(mtime, mtime))
    return path


@pytest.fixture
def store(tmp_path: Path) -> MaildirStore:
    s = MaildirStore(tmp_path / "mail")
    # Delivered out of name order: the snapshot follows delivery time.
    deliver(s, "BBBB", b"Subject: two\r\n\r\nsecond\r\n", 2_000_000_000)
    deliver(s, "AAAA", b"Subject: three\r\n\r\nthird\r\n", 3_000_000_000)
    deliver(s, "CCCC", b"Subject: one\r\n\r\nfirst\r\n", 1_000_000_000)
    return s


def opened(store: MaildirStore) -> Maildrop:
    md = store.open_maildrop(BOX)
    md.open()
    return md


def test_snapshot_in_delivery_order_with_sizes_and_uidls(store):
    md = opened(store)
    try:
        assert [m.unique for m in md.messages] == ["CCCC", "BBBB", "AAAA"]
        assert md.read(0) == b"Subject: one\r\n\r\nfirst\r\n"
        assert md.size(0) == len(b"Subject: one\r\n\r\nfirst\r\n")
        assert [md.uidl(i) for i in range(3)] == ["CCCC", "BBBB", "AAAA"]
        verifyObject(IMailbox, md)
    finally:
        md.close()


def test_uidl_survives_a_flag_rename_and_a_new_session(store):
    md = opened(store)
    first = [md.uidl(i) for i in range(len(md))]
    md.close()
    root = store.mailbox_path(BOX)
    os.rename(root / "new" / "BBBB", root / "cur" / "BBBB:2,RS")
    md = opened(store)
    try:
        assert [md.uidl(i) for i in range(len(md))] == first
        assert md.read(1) == b"Subject: two\r\n\r\nsecond\r\n"
    finally:
        md.close()


def test_uidl_rules_of_rfc_1939():
    assert uidl_for("1700000000.M1P2.host") == "1700000000.M1P2.host"
    long = "x" * 71
    assert uidl_for(long) == hashlib.sha1(long.encode()).hexdigest()
    assert uidl_for("has space") == hashlib.sha1(b"has space").hexdigest()
    assert uidl_for("x" * 70) == "x" * 70


def test_read_follows_a_rename_made_after_the_snapshot(store):
    md = opened(store)
    try:
        root = store.mailbox_path(BOX)
        os.rename(root / "new" / "AAAA", root / "cur" / "AAAA:2,F")
        assert md.read(2) == b"Subject: three\r\n\r\nthird\r\n"
    finally:
        md.close()


def test_second_open_in_process_is_in_use_until_closed(store):
    md = opened(store)
    with pytest.raises(MaildropInUse):
        opened(store)
    md.close()
    md.close()  # twice is harmless
    opened(store).close()


def test_flock_held_elsewhere_is_in_use(store):
    # A separate open file description stands in for another process.
    fd = os.open(store.mailbox_path(BOX) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(MaildropInUse):
            opened(store)
    finally:
        os.close(fd)
    opened(store).close()


def test_commit_unlinks_deleted_and_flags_retrieved_as_seen(store):
    root = store.mailbox_path(BOX)
    md = opened(store)
    md.deleteMessage(0)
    md.retrieved.update({0, 1})
    assert md.listMessages() == [0, md.size(1), md.size(2)]
    assert md.live() == [1, 2]
    assert md.sync() == []
    md.close()
    assert sorted(os.listdir(root / "new")) == ["AAAA"]
    assert os.listdir(root / "cur") == ["BBBB:2,S"]
    md = opened(store)
    try:
        assert [md.uidl(i) for i in range(len(md))] == ["BBBB", "AAAA"]
    finally:
        md.close()


def test_seen_flag_is_added_in_order_to_existing_flags(store):
    root = store.mailbox_path(BOX)
    os.rename(root / "new" / "CCCC", root / "cur" / "CCCC:2,T")
    md = opened(store)
    md.mark_seen([0])
    md.close()
    assert os.listdir(root / "cur") == ["CCCC:2,ST"]


def test_delete_tolerates_gone_and_renamed_files(store):
    root = store.mailbox_path(BOX)
    md = opened(store)
    os.unlink(root / "new" / "CCCC")
    os.rename(root / "new" / "BBBB", root / "cur" / "BBBB:2,S")
    assert md.delete([0, 1]) == []
    md.close()
    assert os.listdir(root / "cur") == []
    assert os.listdir(root / "new") == ["AAAA"]


def test_undelete_and_bad_indices(store):
    md = opened(store)
    try:
        md.deleteMessage(1)
        md.undeleteMessages()
        assert md.live() == [0, 1, 2]
        with pytest.raises(ValueError):
            md.deleteMessage(3)
        with pytest.raises(ValueError):
            md.getUidl(-1)
    finally:
        md.close()


def test_dotfiles_and_duplicates_are_skipped(store):
    root = store.mailbox_path(BOX)
    (root / "cur" / ".hidden").write_bytes(b"x")
    # A crash between link and unlink can leave one delivery in new/ and cur/.
    os.link(root / "new" / "AAAA", root / "cur" / "AAAA:2,S")
    md = opened(store)
    try:
        assert [m.unique for m in md.messages] == ["CCCC", "BBBB", "AAAA"]
    finally:
        md.close()
