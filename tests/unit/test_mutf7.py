"""Folder names in modified UTF-7 (RFC 3501 5.1.3): the fast path for plain names
must give exactly what Twisted's codec gives, and refuse what it refuses."""

import pytest
import twisted.mail.imap4  # noqa: F401  registers the "imap4-utf-7" codec

from gateway.access.imap import wire
from gateway.store import folders, mutf7

NAMES = ["INBOX", "Sent Items", "a&b", "&", "Entwürfe", "日本語", "tab\there", "x\x7fy",
         "~!@#$%^*()_+{}|:\"<>?", "Lists.Twisted", "&-", "a+b", ""]


@pytest.mark.parametrize("name", NAMES)
def test_encode_is_the_codec(name):
    assert mutf7.encode(name) == name.encode("imap4-utf-7")


@pytest.mark.parametrize("name", [n for n in NAMES if n.isprintable()])
def test_decode_inverts_encode(name):  # control characters: never in a folder name
    assert mutf7.decode(mutf7.encode(name)) == name


@pytest.mark.parametrize("raw", [b"Entw&APw-rfe", b"&ZeVnLIqe-", b"a&-b", b"plain", b"sp ace"])
def test_decode_is_the_codec(raw):
    assert mutf7.decode(raw) == raw.decode("imap4-utf-7")


def test_a_plain_name_is_itself():
    assert mutf7.decode(b"Archive.2026") == "Archive.2026"
    assert mutf7.encode("Archive.2026") == b"Archive.2026"


@pytest.mark.parametrize("raw", [b"&", b"&Jjo", b"\xff"])
def test_bad_names_are_refused_on_the_wire(raw):
    with pytest.raises(wire.No):
        wire.decode_mailbox(raw)


def test_the_wire_name_of_a_folder_on_disk():
    assert wire.decode_mailbox(b"Entw&APw-rfe") == "Entwürfe"
    assert wire.mailbox_name("Entwürfe") == b'"Entw&APw-rfe"'
    assert folders.disk_name("Entwürfe") == ".Entw&APw-rfe"
    assert folders.folder_name(".Entw&APw-rfe") == "Entwürfe"
    assert folders.folder_name(".a&b") is None  # not the canonical spelling of a&b


def test_folder_paths_are_remembered_but_bad_names_refused_each_time(tmp_path):
    fs = folders.FolderSet(tmp_path, folders.FolderRegistry(lambda f: None))
    assert fs.path("Drafts") == tmp_path / ".Drafts"
    assert fs.path("Drafts") is fs.path("Drafts")
    assert fs.path("inbox") == tmp_path
    for _ in range(2):
        with pytest.raises(folders.FolderNameError):
            fs.path("a/b")
    for n in range(folders._PATHS_KEPT + 5):  # bounded: forgets and starts again
        assert fs.path(f"F{n}") == tmp_path / f".F{n}"
    assert len(fs._paths) <= folders._PATHS_KEPT
