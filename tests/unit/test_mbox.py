"""deliver/mbox.py: whole messages or nothing, locks readers respect, no symlinks."""

from __future__ import annotations

import errno
import mailbox
import os
from pathlib import Path

import pytest

from gateway.deliver import mbox
from gateway.errors import MailError


def test_entry_has_separator_lf_ends_and_mboxrd_quoting():
    entry = mbox.mbox_entry("a@b.test", b"Subject: x\r\n\r\nFrom me\r\n>From you\r\nok", 0)
    assert entry == (b"From a@b.test Thu Jan 01 00:00:00 1970\n"
                     b"Subject: x\n\n>From me\n>>From you\nok\n\n")
    assert mbox.mbox_entry("", b"x\r\n", 0).startswith(b"From MAILER-DAEMON ")


def test_appends_are_readable_by_python(tmp_path):
    path = str(tmp_path / "box")
    for i in range(3):
        mbox.append(path, mbox.mbox_entry("a@b.test", f"Subject: {i}\r\n\r\nhi\r\n".encode(),
                                          0), 1)
    box = mailbox.mbox(path)
    try:
        assert [m["Subject"] for m in box] == ["0", "1", "2"]
    finally:
        box.close()
    assert not os.path.exists(path + ".lock")
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_failed_write_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = str(tmp_path / "box")
    mbox.append(path, b"From a Thu Jan 01 00:00:00 1970\nfirst\n\n", 1)
    before = Path(path).read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 10:
            real_write(fd, bytes(data[:10]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(MailError) as e:
        mbox.append(path, b"From a Thu Jan 01 00:00:00 1970\nsecond message\n\n", 1)
    monkeypatch.undo()
    assert (e.value.code, e.value.temporary) == (451, True)
    assert Path(path).read_bytes() == before


def test_symlinks_and_directories_are_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(MailError) as e:
        mbox.append(str(tmp_path / "link"), b"From x\n\n", 1)
    assert e.value.code == 550
    assert target.read_bytes() == b""
    with pytest.raises(MailError):
        mbox.append(str(tmp_path), b"From x\n\n", 1)


def test_a_held_dot_lock_makes_the_delivery_wait_then_retry(tmp_path):
    path = str(tmp_path / "box")
    open(path + ".lock", "w").close()
    with pytest.raises(MailError) as e:
        mbox.append(path, b"From x\n\n", 0.1)
    assert (e.value.code, e.value.enhanced) == (451, "4.2.1")
    assert os.path.getsize(path) == 0


def whole_entry(message: bytes) -> bytes:
    """The quoting done on the whole message at once: what pieces must equal."""
    import re
    body = message.replace(b"\r\n", b"\n")
    body = re.sub(rb"^(>*From )", rb">\1", body, flags=re.MULTILINE)
    if not body.endswith(b"\n"):
        body += b"\n"
    return body + b"\n"


@pytest.mark.parametrize("message", [
    b"Subject: x\r\n\r\nab\r\nFrom me\r\n>>From you\r\nFromage\r\nx From y\r\nend",
    b"From a\r\n\r\n>From\r\nFrom \r\n",
    b"a\r\r\nFrom b\rFrom c\r\n",
    b"",
])
def test_quoting_is_the_same_wherever_a_piece_border_falls(message):
    for size in range(1, len(message) + 2):  # "\n|From ", "\r|\n", "Fr|om " ...
        pieces = [message[i:i + size] for i in range(0, len(message), size)]
        got = b"".join(mbox.entry_pieces("a@b.test", pieces, 0))
        assert got.partition(b"\n")[2] == whole_entry(message), size


def test_a_delivery_reads_the_spool_file_in_pieces(tmp_path, monkeypatch):
    from read_spy import ReadSpy

    from gateway.config import parse
    from gateway.durable import run_now
    from gateway.envelope import Envelope, Recipient
    from gateway.interfaces import Route

    spool = tmp_path / "spooled"
    # Over deliver/maildir.WHOLE: a smaller message is written from the loop check's read.
    spool.write_bytes(b"Subject: big\r\n\r\n" + b"line\r\nFrom x\r\n" * 6000)
    monkeypatch.setattr(mbox, "PIECE", 64)
    spy = ReadSpy()
    monkeypatch.setattr(mbox, "open", spy.open, raising=False)
    settings = parse({"server": {"domains": ["x.test"]}}).mbox
    target = mbox.MboxDelivery(settings, task_clock(), run_now)
    box = tmp_path / "box"
    route = Route("file", "/box", path=str(box))
    target.deliver(Envelope(sender="s@x.test", recipients=[Recipient("u@x.test")]), route,
                   str(spool), False)
    assert spy.reads and all(0 < n <= 64 for n in spy.reads)  # never read(-1): never whole
    assert box.read_bytes().count(b"\n>From x\n") == 6000


def task_clock():
    from twisted.internet import task
    return task.Clock()
