"""access/imap over store/: never answer from data the Maildir no longer holds (issue 12).

A folder deleted and made again (by a session of this gateway, or behind its
back by another program) gets a new UIDVALIDITY and nothing of the old
folder's cached summaries (RFC 3501 2.3.1.1); a Maildir changed by another
program (mutt, a second gateway) is seen at the next NOOP or SELECT.
Another program's changes are made here the way it makes them (rename,
unlink, a new file), then the directories' mtimes are moved to a settled
past moment, as a real clock would have done by the next command.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

OLD = b"From: Old Sender <old@example.test>\r\nSubject: deleted data\r\n\r\nold body\r\n"
NEW = b"From: New Sender <new@example.test>\r\nSubject: fresh data\r\n\r\nnew body\r\n"


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, b"Subject: hello\r\n\r\nhi\r\n", "0.U0.host")
    factory = make_factory(store, MemoryReactorClock())

    def connect() -> Session:
        s = Session(factory, "127.0.0.1")
        s.login()
        return s

    connect.store, connect.root = store, store.mailbox_path(BOX)
    return connect


def append(s: Session, folder: str, message: bytes) -> bytes:
    s.n += 1
    out = s.raw(b"a%d APPEND %s {%d+}\r\n%s\r\n" % (s.n, folder.encode(), len(message),
                                                    message))
    assert b"a%d OK" % s.n in out, out
    return out


def uidvalidity(out: bytes) -> int:
    return int(re.search(rb"\[UIDVALIDITY (\d+)\]", out).group(1))


def settle(*dirs) -> None:
    """Directory mtimes as another program leaves them, once the clock moved on."""
    for n, d in enumerate(dirs):
        os.utime(d, (1000 + n, 1000 + n))


def look_at_old(s: Session, folder: str = "Work") -> int:
    """SELECT, then FETCH ENVELOPE and SEARCH, so the old messages' summaries are cached."""
    out = s(f"SELECT {folder}")
    assert b"deleted data" in s("FETCH 1:* (ENVELOPE BODYSTRUCTURE)")
    assert b"* SEARCH 1" in s("SEARCH FROM old@example.test")
    return uidvalidity(out)


# -- DELETE, CREATE, APPEND: only the new messages ------------------------------------------

def test_delete_create_append_serves_only_the_new_messages(env):
    s = env()
    s("CREATE Work")
    append(s, "Work", OLD)
    append(s, "Work", OLD)
    before = look_at_old(s)
    s("SELECT INBOX")
    s("DELETE Work")
    s("CREATE Work")
    append(s, "Work", NEW)
    out = s("SELECT Work")
    assert b"* 1 EXISTS" in out and uidvalidity(out) > before
    out = s("FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY.PEEK[])")
    assert b"fresh data" in out and b"new body" in out
    assert b"deleted data" not in out and b"old body" not in out
    assert re.search(rb"\* SEARCH\r\n", s("SEARCH FROM old@example.test"))
    assert re.search(rb"\* SEARCH\r\n", s("SEARCH SUBJECT deleted"))
    assert b"* SEARCH 1\r\n" in s("SEARCH FROM new@example.test")
    assert b"* SEARCH 1\r\n" in s("SEARCH TEXT new")


def test_a_session_that_had_the_deleted_folder_selected_is_never_served_its_data(env):
    s, t = env(), env()
    s("CREATE Work")
    append(s, "Work", OLD)
    look_at_old(t)  # t keeps Work selected while s deletes and re-creates it
    s("DELETE Work")
    s("CREATE Work")
    append(s, "Work", NEW)
    out = t("FETCH 1 (ENVELOPE)", expect=None)
    assert b"deleted data" not in out
    assert b"* BYE" in out and b"deleted" in out.lower(), out  # as Dovecot: disconnect
    assert t.transport.disconnecting
    u = env()
    out = u("SELECT Work")
    assert b"fresh data" in u("FETCH 1 ENVELOPE")


def test_a_folder_replaced_behind_the_gateways_back_is_read_afresh(env):
    """Another program (a second gateway, a restore, mbsync) deletes the folder and
    makes it again, even with the same file name for a different message."""
    s = env()
    s("CREATE Work")
    append(s, "Work", OLD)
    before = look_at_old(s)
    s("SELECT INBOX")
    work = env.root / ".Work"
    name = os.listdir(work / "cur")[0]
    shutil.rmtree(work)
    for sub in ("tmp", "new", "cur"):
        (work / sub).mkdir(parents=True)
    (work / "cur" / name).write_bytes(NEW)
    settle(work / "new", work / "cur")
    out = s("SELECT Work")
    assert b"* 1 EXISTS" in out and uidvalidity(out) > before
    out = s("FETCH 1 (ENVELOPE BODYSTRUCTURE)")
    assert b"fresh data" in out and b"deleted data" not in out
    assert re.search(rb"\* SEARCH\r\n", s("SEARCH FROM old@example.test"))
    assert b"* SEARCH 1\r\n" in s("SEARCH FROM new@example.test")


def test_a_selected_folder_replaced_behind_the_gateways_back_ends_the_session(env):
    s = env()
    s("CREATE Work")
    append(s, "Work", OLD)
    look_at_old(s)
    work = env.root / ".Work"
    name = os.listdir(work / "cur")[0]
    shutil.rmtree(work)
    for sub in ("tmp", "new", "cur"):
        (work / sub).mkdir(parents=True)
    (work / "cur" / name).write_bytes(NEW)
    settle(work / "new", work / "cur")
    out = s("NOOP", expect=None)
    assert b"deleted data" not in out and b"* BYE" in out, out


# -- another program changes the Maildir: seen at the next NOOP or SELECT ----------------------

@pytest.fixture
def three(env):
    """INBOX with U1, U2, U3 in new/ and a session that EXAMINEd it (nothing moved)."""
    for n in (1, 2, 3):
        env.store.deliver(BOX, b"From: s%d@example.test\r\nSubject: m%d\r\n\r\nb%d\r\n"
                          % (n, n, n), f"{n}.U{n}.host")
    os.unlink(env.root / "new" / "0.U0.host")
    s = env()
    out = s("EXAMINE INBOX")
    assert b"* 3 EXISTS" in out
    assert b"m2" in s("FETCH 1:* (ENVELOPE)")
    return s


def test_a_move_to_cur_with_flags_by_another_program_is_seen_at_noop(env, three):
    root = env.root
    os.rename(root / "new" / "1.U1.host", root / "cur" / "1.U1.host:2,FS")
    settle(root / "new", root / "cur")
    out = three("NOOP")
    assert re.search(rb"\* 1 FETCH \(UID 1 FLAGS \((\\Flagged \\Seen|\\Seen \\Flagged)", out), out
    assert b"* SEARCH 1\r\n" in three("SEARCH SEEN")
    assert b"m1" in three("FETCH 1 ENVELOPE")  # still readable where it went


def test_a_file_removed_by_another_program_is_expunged_at_noop(env, three):
    root = env.root
    os.unlink(root / "new" / "2.U2.host")
    settle(root / "new", root / "cur")
    out = three("NOOP")
    assert b"* 2 EXPUNGE" in out
    assert b"* SEARCH 1 2\r\n" in three("SEARCH ALL")
    out = three("FETCH 1:* (ENVELOPE)")
    assert b"m1" in out and b"m3" in out and b"m2" not in out


def test_a_file_added_by_another_program_is_seen_at_noop_and_select(env, three):
    root = env.root
    (root / "cur" / "9.MUTT.host:2,S").write_bytes(
        b"From: mutt@example.test\r\nSubject: from mutt\r\n\r\nx\r\n")
    settle(root / "new", root / "cur")
    out = three("NOOP")
    assert b"* 4 EXISTS" in out
    assert b"from mutt" in three("FETCH 4 ENVELOPE")
    assert b"* SEARCH 4\r\n" in three("SEARCH FROM mutt")
    t = env()
    assert b"* 4 EXISTS" in t("SELECT INBOX")


def test_all_three_at_once_give_the_right_picture_at_select(env, three):
    root = env.root
    os.rename(root / "new" / "1.U1.host", root / "cur" / "1.U1.host:2,S")
    os.unlink(root / "new" / "2.U2.host")
    (root / "new" / "8.OTHER.host").write_bytes(b"Subject: other mda\r\n\r\ny\r\n")
    settle(root / "new", root / "cur")
    t = env()
    out = t("SELECT INBOX")
    assert b"* 3 EXISTS" in out
    out = t("FETCH 1:* (UID FLAGS ENVELOPE)")
    assert b"m1" in out and b"m3" in out and b"other mda" in out and b"m2" not in out
    assert b"* SEARCH 1\r\n" in t("SEARCH SEEN")
