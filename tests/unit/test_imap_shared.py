"""List archives as IMAP shared folders (access/imap/shared.py, lists/archive.py):
the real ListStore and archive MaildirStore behind an IMAP session over
StringTransport (tests/unit/imap_dialogue.py), no sockets."""

from __future__ import annotations

import re

import pytest
from imap_dialogue import BOX, Session, fresh_store, make_factory
from twisted.internet.testing import MemoryReactorClock

from gateway.lists.archive import ArchiveFolders
from gateway.lists.store import ListStore
from gateway.store.maildir import MaildirStore

LIST = "dev@example.test"
POST = (b"From: bob@example.test\r\nTo: dev@example.test\r\nSubject: [dev] plans\r\n"
        b"List-Id: <dev.example.test>\r\nMessage-ID: <p1@example.test>\r\n\r\nLet us ship.\r\n")
PERSONAL = b"From: erin@example.test\r\nSubject: mine\r\n\r\nhello\r\n"


@pytest.fixture
def env(tmp_path):
    store = fresh_store(tmp_path)
    store.deliver(BOX, PERSONAL, "1000.U1.host")
    lists = ListStore(tmp_path / "lists")
    lists.create(LIST, ["owner@example.test"])
    archive = MaildirStore(tmp_path / "lists" / "archive")
    archive.deliver(LIST, POST, "Q1Lxxxx.archive")
    clock = MemoryReactorClock()

    def connect() -> Session:
        s = Session(make_factory(store, clock, shared=ArchiveFolders(lists, archive)))
        s.login()
        return s

    connect.lists, connect.archive, connect.store = lists, archive, store
    yield connect
    lists.close()


def member(env) -> Session:
    env.lists.add_members(LIST, [BOX])
    return env()


def listed(out: bytes) -> dict[str, bytes]:
    """LIST/LSUB answer -> {name: attributes}."""
    return {m.group(3).decode(): m.group(2) for m in re.finditer(
        rb'\* (LIST|LSUB) \(([^)]*)\) "\." "?([^"\r]*)"?\r\n', out)}


def test_namespace_names_the_shared_lists_namespace(env):
    s = env()
    assert b'* NAMESPACE (("" ".")) NIL (("Lists." "."))\r\n' in s("NAMESPACE")


def test_a_member_lists_the_archive_under_lists_with_wildcards(env):
    s = member(env)
    everything = listed(s('LIST "" "*"'))
    assert everything["Lists"] == b"\\Noselect \\HasChildren"
    assert everything["Lists.dev"] == b"\\HasNoChildren"
    assert "INBOX" in everything and "Sent" in everything
    top = listed(s('LIST "" "%"'))
    assert "Lists" in top and "Lists.dev" not in top
    assert set(listed(s('LIST "Lists." "%"'))) == {"Lists.dev"}
    assert set(listed(s('LIST "" "L*.d%"'))) == {"Lists.dev"}
    assert listed(s('LIST "" "lists.dev"')) == {}  # names are case-sensitive (RFC 3501 5.1)
    assert "Lists.dev" in listed(s('LSUB "" "*"'))  # always subscribed: clients show it
    assert "Lists" not in listed(s('LSUB "" "*"'))
    assert listed(s('LSUB "" "%"'))["Lists"] == b"\\Noselect \\HasChildren"  # RFC 3501 6.3.9
    assert b"[CANNOT]" in s('UNSUBSCRIBE "Lists.dev"', expect=b"NO")
    s('SUBSCRIBE "Lists.dev"')


def test_a_non_member_sees_no_archive_and_cannot_open_it(env):
    s = env()
    assert not any(n.startswith("Lists") for n in listed(s('LIST "" "*"')))
    assert b"[NONEXISTENT]" in s('SELECT "Lists.dev"', expect=b"NO")
    assert b"[NONEXISTENT]" in s('STATUS "Lists.dev" (MESSAGES)', expect=b"NO")


def test_owners_only_archive_hides_from_members_not_owners(env):
    env.lists.set(LIST, archive_readers="owners")
    assert "Lists.dev" not in listed(member(env)('LIST "" "*"'))
    env.lists.set(LIST, moderators=[BOX])
    assert "Lists.dev" in listed(env()('LIST "" "*"'))
    env.lists.set(LIST, moderators=[], owners=[BOX])
    assert "Lists.dev" in listed(env()('LIST "" "*"'))


def test_leaving_the_list_removes_the_folder_in_the_same_session(env):
    s = member(env)
    assert "Lists.dev" in listed(s('LIST "" "*"'))
    env.lists.remove_members(LIST, [BOX])
    assert listed(s('LIST "" "Lists*"')) == {}


def test_select_is_read_only_and_fetch_search_status_work(env):
    s = member(env)
    out = s('STATUS "Lists.dev" (MESSAGES RECENT UNSEEN)')
    assert b'* STATUS "Lists.dev" (MESSAGES 1 RECENT 0 UNSEEN 1)' in out
    out = s('SELECT "Lists.dev"')
    assert b"* 1 EXISTS" in out and b"[PERMANENTFLAGS ()]" in out
    assert out.endswith(b"OK [READ-ONLY] SELECT completed\r\n")
    out = s("FETCH 1 (BODY[] FLAGS)")
    assert POST in out
    # Not kept for a read-only shared folder: still unseen afterwards.
    assert b"\\Seen" not in s("FETCH 1 FLAGS")
    assert b"* SEARCH 1\r\n" in s("UID SEARCH SUBJECT plans")
    assert b"* SEARCH\r\n" in s("SEARCH SUBJECT nothing")
    assert b"\r\nList-Id: <dev.example.test>\r\n" in s(
        "UID FETCH 1:* BODY.PEEK[HEADER.FIELDS (List-Id)]")
    assert s('EXAMINE "Lists.dev"').endswith(b"OK [READ-ONLY] EXAMINE completed\r\n")


@pytest.mark.parametrize("command", ["STORE 1 +FLAGS (\\Flagged)", "UID STORE 1 FLAGS ()",
                                     "EXPUNGE", "UID EXPUNGE 1", "MOVE 1 INBOX"])
def test_changes_in_the_selected_archive_are_refused(env, command):
    s = member(env)
    s('SELECT "Lists.dev"')
    assert b"NO [READ-ONLY]" in s(command, expect=b"NO")
    assert b"* 1 EXISTS" in s('EXAMINE "Lists.dev"')


@pytest.mark.parametrize("command", [
    'CREATE "Lists.mine"', 'CREATE "Lists"', 'DELETE "Lists.dev"', 'DELETE "Lists"',
    'RENAME "Lists.dev" "Old"', 'RENAME "Sent" "Lists.Sent"',
    'APPEND "Lists.dev" {5+}\r\nhello', 'APPEND "Lists.other" {5+}\r\nhello'])
def test_namespace_changes_and_appends_are_refused_with_noperm(env, command):
    s = member(env)
    assert b"NO [NOPERM]" in s(command, expect=b"NO")
    assert "Lists.dev" in listed(s('LIST "" "*"'))


def test_copy_into_the_archive_is_refused_copy_out_of_it_works(env):
    s = member(env)
    s("SELECT INBOX")
    assert b"NO [NOPERM]" in s('COPY 1 "Lists.dev"', expect=b"NO")
    s('SELECT "Lists.dev"')
    assert b"[COPYUID" in s("COPY 1 Archive")
    assert b"MESSAGES 1" in s("STATUS Archive (MESSAGES)")
    assert b"MESSAGES 1" in s('STATUS "Lists.dev" (MESSAGES)')


def test_a_new_post_shows_in_an_open_archive(env):
    s = member(env)
    s('SELECT "Lists.dev"')
    env.archive.deliver(LIST, POST.replace(b"p1@", b"p2@"), "Q2Lxxxx.archive")
    out = s("NOOP")
    assert b"* 2 EXISTS" in out
    assert b"* 2 FETCH (UID 2)" in s("FETCH 2 UID")


def test_uids_and_uidvalidity_stay_across_sessions(env):
    first = member(env)('SELECT "Lists.dev"')
    again = env()('EXAMINE "Lists.dev"')
    validity = re.search(rb"UIDVALIDITY (\d+)", first).group(1)
    assert b"UIDVALIDITY " + validity in again
    # The archive's Maildir has no personal defaults made in it.
    assert not (env.archive.mailbox_path(LIST) / ".Sent").exists()


def test_old_personal_folders_under_lists_stay_reachable(env):
    env.store.open_folders(BOX).create("Lists.Old")
    s = member(env)
    names = listed(s('LIST "" "*"'))
    assert names["Lists.Old"] == b"\\HasNoChildren" and "Lists.dev" in names
    assert b"* 0 EXISTS" in s('SELECT "Lists.Old"')
    s("CLOSE")
    s('RENAME "Lists.Old" "Old"')
    assert "Old" in listed(s('LIST "" "*"'))


def test_two_lists_with_one_local_part_are_told_apart(env):
    env.lists.create("dev@example.org", ["owner@example.test"])
    env.lists.add_members("dev@example.org", [BOX])
    names = listed(member(env)('LIST "" "Lists.*"'))
    assert "Lists.dev@example.test" in names and "Lists.dev@example.org" in names


def test_without_a_shared_source_there_is_no_shared_namespace(tmp_path):
    s = Session(make_factory(fresh_store(tmp_path), MemoryReactorClock()))
    s.login()
    assert b'* NAMESPACE (("" ".")) NIL NIL\r\n' in s("NAMESPACE")
    s('CREATE "Lists.mine"')


def test_archive_off_offers_no_folder(env):
    env.lists.set(LIST, archive=False)
    assert listed(member(env)('LIST "" "Lists*"')) == {}
