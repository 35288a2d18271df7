"""access/imap and store: CONDSTORE and QRESYNC (RFC 7162), issue 12.

Mod-sequences persisted per message in the index, HIGHESTMODSEQ that never
goes back (not even across an index rebuild), FETCH MODSEQ / CHANGEDSINCE,
STORE UNCHANGEDSINCE, SEARCH MODSEQ, STATUS HIGHESTMODSEQ, ENABLE, and
QRESYNC's SELECT, VANISHED (EARLIER) and VANISHED instead of EXPUNGE.
"""

from __future__ import annotations

import re
import sqlite3

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.store import index as index_module
from gateway.store.folder import Folder
from gateway.store.index import INDEX_NAME


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    for n in range(1, 5):
        store.deliver(BOX, b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n), f"100{n}.U{n}.host")
    clock = MemoryReactorClock()

    def connect() -> Session:
        return Session(make_factory(store, clock), "127.0.0.1")

    connect.root = store.mailbox_path(BOX)
    return connect


def session(env, *commands: str) -> Session:
    s = env()
    s.login()
    for c in commands:
        s(c)
    return s


def highest(out: bytes) -> int:
    m = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", out)
    assert m, out
    return int(m.group(1))


def modseqs(out: bytes) -> dict[int, int]:
    """sequence number -> MODSEQ from untagged FETCH responses."""
    return {int(n): int(v) for n, v in
            re.findall(rb"^\* (\d+) FETCH \(.*?MODSEQ \((\d+)\)", out, re.M)}


# -- advertising and enabling -------------------------------------------------------------

def test_capability_lists_condstore_and_qresync(env):
    caps = env()("CAPABILITY")
    assert b" CONDSTORE" in caps and b" QRESYNC" in caps


def test_enable_names_only_what_it_turned_on(env):
    s = session(env)
    assert b"* ENABLED CONDSTORE\r\n" in s("ENABLE CONDSTORE X-UNKNOWN")
    assert b"* ENABLED\r\n" in s("ENABLE CONDSTORE")  # already on
    assert b"* ENABLED QRESYNC\r\n" in s("ENABLE QRESYNC")


def test_select_reports_highestmodseq(env):
    s = session(env)
    out = s("SELECT INBOX (CONDSTORE)")
    assert highest(out) > 0
    assert highest(s("EXAMINE INBOX")) == highest(out)


def test_select_with_unknown_parameter_is_bad(env):
    s = session(env)
    s("SELECT INBOX (FOO)", expect=b"BAD")


# -- FETCH MODSEQ and CHANGEDSINCE --------------------------------------------------------

def test_fetch_modseq_enables_condstore_and_tells_highestmodseq_first(env):
    s = session(env, "SELECT INBOX")
    out = s("FETCH 1 MODSEQ")
    assert out.index(b"[HIGHESTMODSEQ") < out.index(b"* 1 FETCH")
    assert modseqs(out)[1] <= highest(out)


def test_store_raises_the_modseq_of_what_changed_only(env):
    s = session(env, "ENABLE CONDSTORE", "SELECT INBOX")
    before = modseqs(s("FETCH 1:4 MODSEQ"))
    out = s("STORE 2 +FLAGS (\\Seen)")
    after = modseqs(out)
    assert after[2] > max(before.values())
    again = modseqs(s("FETCH 1:4 MODSEQ"))
    assert again[1] == before[1] and again[3] == before[3] and again[2] == after[2]
    # The same flag again changes nothing, so no new modseq.
    s("STORE 2 +FLAGS (\\Seen)")
    assert modseqs(s("FETCH 2 MODSEQ"))[2] == after[2]
    # A keyword is a change too.
    s("STORE 3 +FLAGS (Work)")
    assert modseqs(s("FETCH 3 MODSEQ"))[3] > after[2]


def test_fetch_changedsince_returns_only_changed_messages_with_modseq(env):
    s = session(env, "ENABLE CONDSTORE")
    base = highest(s("SELECT INBOX"))
    s("STORE 3 +FLAGS (\\Flagged)")
    out = s(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {base})")
    assert re.findall(rb"^\* (\d+) FETCH", out, re.M) == [b"3"]
    assert b"MODSEQ (" in out and b"\\Flagged" in out
    out = s(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {base})")
    assert b"UID 3" in out


def test_vanished_modifier_needs_qresync_and_uid(env):
    s = session(env, "ENABLE CONDSTORE", "SELECT INBOX")
    s("UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)", expect=b"BAD")


def test_other_sessions_flag_change_carries_modseq(env):
    watcher = session(env, "ENABLE CONDSTORE", "SELECT INBOX")
    other = session(env, "SELECT INBOX")
    other("STORE 1 +FLAGS (\\Answered)")
    out = watcher("NOOP")
    assert re.search(rb"^\* 1 FETCH \(UID 1 FLAGS \(\\Answered[^)]*\) MODSEQ \(\d+\)\)", out,
                     re.M), out
    # Without CONDSTORE, no MODSEQ.
    plain = session(env, "SELECT INBOX")
    other("STORE 1 +FLAGS (\\Flagged)")
    assert b"MODSEQ" not in plain("NOOP")


# -- STORE UNCHANGEDSINCE -----------------------------------------------------------------

def test_store_unchangedsince_refuses_messages_changed_since(env):
    s = session(env, "ENABLE CONDSTORE")
    base = highest(s("SELECT INBOX"))
    s("STORE 2 +FLAGS (\\Flagged)")  # 2 changes after base
    out = s(f"STORE 1:3 (UNCHANGEDSINCE {base}) +FLAGS (\\Seen)")
    assert out.rstrip().endswith(b"OK [MODIFIED 2] Conditional STORE failed"), out
    flags = s("FETCH 1:3 FLAGS")
    assert re.search(rb"\* 1 FETCH \(FLAGS \([^)]*\\Seen", flags)
    assert not re.search(rb"\* 2 FETCH \(FLAGS \([^)]*\\Seen", flags)
    # UID STORE names UIDs; UNCHANGEDSINCE 0 fails for every message.
    out = s("UID STORE 4 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)")
    assert b"[MODIFIED 4]" in out


def test_store_silent_still_tells_the_new_modseq(env):
    s = session(env, "ENABLE CONDSTORE", "SELECT INBOX")
    out = s("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert re.search(rb"^\* 1 FETCH \(MODSEQ \(\d+\)\)", out, re.M), out


# -- SEARCH MODSEQ and STATUS ---------------------------------------------------------------

def test_search_modseq_gives_the_highest_modseq_found(env):
    s = session(env, "ENABLE CONDSTORE")
    base = highest(s("SELECT INBOX"))
    s("STORE 4 +FLAGS (\\Seen)")
    s("STORE 2 +FLAGS (\\Seen)")
    top = modseqs(s("FETCH 2 MODSEQ"))[2]
    out = s(f"SEARCH MODSEQ {base + 1}")
    assert f"* SEARCH 2 4 (MODSEQ {top})".encode() in out
    out = s(f'SEARCH MODSEQ "/flags/\\\\seen" all {base + 1}')
    assert f"* SEARCH 2 4 (MODSEQ {top})".encode() in out
    assert b"* SEARCH\r\n" in s(f"SEARCH MODSEQ {top + 1}")


def test_status_highestmodseq_follows_changes(env):
    s = session(env)
    first = int(re.search(rb"HIGHESTMODSEQ (\d+)", s("STATUS INBOX (HIGHESTMODSEQ)")).group(1))
    other = session(env, "SELECT INBOX")
    other("STORE 1 +FLAGS (\\Seen)")
    later = int(re.search(rb"HIGHESTMODSEQ (\d+)", s("STATUS INBOX (HIGHESTMODSEQ)")).group(1))
    assert later > first


# -- the store: persisted, never going back ------------------------------------------------

def test_modseqs_persist_and_arrivals_and_expunges_raise_highestmodseq(env):
    root = env.root
    folder = Folder(root, lambda f: f())
    start = folder.highestmodseq
    folder.store([1], 1, ["\\Seen"])
    m1 = folder.message(1).modseq
    assert m1 > start
    folder.store([2], 1, ["\\Deleted"])
    assert folder.expunge() == [2]
    after_expunge = folder.highestmodseq
    assert after_expunge > m1 and folder.vanished_since(m1) == [(2, 2)]
    folder.close()
    again = Folder(root, lambda f: f())
    assert again.message(1).modseq == m1 and again.highestmodseq == after_expunge
    assert again.vanished_since(m1) == [(2, 2)] and again.vanished_since(after_expunge) == []
    again.close()


def test_a_rebuilt_index_never_goes_back(env, monkeypatch):
    root = env.root
    folder = Folder(root, lambda f: f())
    # A burst of changes faster than the clock: modseqs run ahead of it.
    frozen = index_module._clock_ns()
    monkeypatch.setattr(index_module, "_clock_ns", lambda: frozen)
    for _ in range(5):
        folder.store([1], 0, ["\\Seen"])
        folder.store([1], 0, [])
    old = folder.highestmodseq
    folder.close()
    monkeypatch.setattr(index_module, "_clock_ns", lambda: frozen + 1_000_000)  # 1 ms on
    (root / INDEX_NAME).unlink()
    rebuilt = Folder(root, lambda f: f())
    assert rebuilt.highestmodseq > old
    assert all(rebuilt.message(u).modseq > old for u in rebuilt.uids)
    rebuilt.close()


def test_a_schema_2_index_is_upgraded_keeping_its_uids(env):
    root = env.root
    folder = Folder(root, lambda f: f())
    validity = folder.uidvalidity
    folder.close()
    db = sqlite3.connect(root / INDEX_NAME)
    db.execute("DROP TABLE vanished")  # schema 2's msg table: no modseq column
    db.execute("CREATE TABLE old AS SELECT uid, base, sub, suffix, kw, size, idate FROM msg")
    db.execute("DROP TABLE msg")
    db.execute("ALTER TABLE old RENAME TO msg")
    db.execute("DELETE FROM meta WHERE key='highestmodseq'")
    db.execute("UPDATE meta SET value=2 WHERE key='schema'")
    db.commit()
    db.close()
    again = Folder(root, lambda f: f())
    assert again.uidvalidity == validity and again.uids == [1, 2, 3, 4]
    assert again.highestmodseq > 0
    assert {again.message(u).modseq for u in again.uids} == {again.highestmodseq}
    again.close()


# -- QRESYNC --------------------------------------------------------------------------------

def test_select_qresync_needs_enable(env):
    s = session(env)
    s("SELECT INBOX (QRESYNC (1 1))", expect=b"BAD")


def test_select_qresync_tells_vanished_earlier_and_changed_flags(env):
    s = session(env, "ENABLE QRESYNC")
    out = s("SELECT INBOX")
    validity = int(re.search(rb"UIDVALIDITY (\d+)", out).group(1))
    known = highest(out)
    s("UNSELECT")
    other = session(env, "SELECT INBOX")
    other("STORE 2,3 +FLAGS (\\Deleted)")
    other("EXPUNGE")
    other("STORE 2 +FLAGS (\\Flagged)")  # now UID 4
    out = s(f"SELECT INBOX (QRESYNC ({validity} {known}))")
    assert b"* VANISHED (EARLIER) 2:3\r\n" in out
    assert re.search(rb"^\* 2 FETCH \(UID 4 FLAGS \([^)]*\\Flagged[^)]*\) MODSEQ \(\d+\)\)",
                     out, re.M), out
    assert b"UID 1 " not in out
    # Known UIDs limit the answer; another UIDVALIDITY gets a plain SELECT.
    out = s(f"SELECT INBOX (QRESYNC ({validity} {known} 1:2))")
    assert b"* VANISHED (EARLIER) 2\r\n" in out and b"UID 4" not in out
    assert b"* OK [CLOSED]" in out
    out = s(f"SELECT INBOX (QRESYNC ({validity + 1} {known}))")
    assert b"VANISHED" not in out and b"FETCH" not in out


def test_qresync_session_hears_vanished_not_expunge(env):
    s = session(env, "ENABLE QRESYNC", "SELECT INBOX")
    other = session(env, "SELECT INBOX")
    other("STORE 1,3 +FLAGS (\\Deleted)")
    other("EXPUNGE")
    out = s("NOOP")
    assert b"* VANISHED 1,3\r\n" in out and b"EXPUNGE" not in out
    s("STORE 1 +FLAGS (\\Deleted)")  # UID 2
    out = s("EXPUNGE")
    assert b"* VANISHED 2\r\n" in out and b" EXPUNGE\r\n" not in out


def test_uid_fetch_changedsince_vanished(env):
    s = session(env, "ENABLE QRESYNC")
    known = highest(s("SELECT INBOX"))
    s("STORE 2 +FLAGS (\\Deleted)")
    s("EXPUNGE")
    s("STORE 3 +FLAGS (\\Seen)")  # UID 4
    out = s(f"UID FETCH 1:* FLAGS (CHANGEDSINCE {known} VANISHED)")
    assert out.index(b"* VANISHED (EARLIER) 2\r\n") < out.index(b"FETCH (UID 4")
    assert b"UID 1 " not in out


def test_with_qresync_every_fetch_response_names_its_uid(env):
    s = session(env, "ENABLE QRESYNC", "SELECT INBOX")
    assert re.search(rb"^\* 2 FETCH \(UID 2 FLAGS", s("FETCH 2 FLAGS"), re.M)
    assert re.search(rb"^\* 1 FETCH \(UID 1 MODSEQ \(\d+\)\)",
                     s("STORE 1 +FLAGS.SILENT (\\Seen)"), re.M)
    assert re.search(rb"^\* 3 FETCH \(FLAGS \([^)]*\) UID 3 MODSEQ",
                     s("STORE 3 +FLAGS (\\Seen)"), re.M)


def test_vanished_uids_are_pruned_and_an_older_client_gets_every_missing_uid(tmp_path):
    """[mailbox] vanished_uids bounds the table; a QRESYNC from before the forgotten
    expunges gets every UID below UIDNEXT the folder lacks (RFC 7162 3.2.5.1, 6)."""
    store = fresh_store(tmp_path)
    for n in range(1, 11):
        store.deliver(BOX, b"Subject: m%d\r\n\r\nbody\r\n" % n, f"100{n}.U{n}.host")
    folder = Folder(store.mailbox_path(BOX), lambda f: f(), vanished_limit=3)
    start = folder.highestmodseq
    for uid in (2, 3, 5, 7):  # one expunge each: four modseqs
        folder.store([uid], 1, ["\\Deleted"])
        folder.expunge()
    db = sqlite3.connect(store.mailbox_path(BOX) / INDEX_NAME)
    assert db.execute("SELECT COUNT(*) FROM vanished").fetchone()[0] <= 3
    # Forgotten: every gap below UIDNEXT (11); known-uids clip it.
    assert folder.vanished_since(start) == [(2, 3), (5, 5), (7, 7)]
    recent = folder.vanished_since(folder.highestmodseq - 1)
    assert recent == [(7, 7)]
    folder.close()
    from gateway.access.imap.wire import compact_ranges
    assert compact_ranges([(2, 3), (5, 5), (7, 7)], [(3, 6)]) == b"3,5"
    assert compact_ranges([(1, 2), (3, 9)]) == b"1:9"


def test_vanished_uids_is_a_named_setting():
    from gateway.config import Settings, parse
    assert Settings.mailbox_vanished_uids == 50000
    parsed = parse({"server": {"domains": ["example.test"]}, "mailbox": {"vanished_uids": 7}})
    assert parsed.mailbox_vanished_uids == 7
