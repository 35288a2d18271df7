"""The list store (gateway/lists/store.py): settings, members, held posts, tokens,
bounce scores; durable and atomic with the gateway and the CLI writing at once."""

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from gateway.lists.store import ListStore, MailingList, check_setting


@pytest.fixture
def store(tmp_path):
    s = ListStore(tmp_path / "lists")
    s.create("Dev@Example.TEST", ["Alice@Example.TEST"], "members")
    yield s
    s.close()


def test_create_get_names_and_defaults(store):
    mlist = store.get("DEV@example.test")
    assert mlist.address == "dev@example.test"
    assert mlist.owners == ("Alice@example.test",)
    assert mlist.policy == "members"
    assert mlist.subject_prefix == "[dev] "
    assert (mlist.reply_to, mlist.verp, mlist.dmarc, mlist.bounce_threshold) == (
        "none", True, "munge_from", 5.0)
    assert len(mlist.secret) == 32 and "secret" not in repr(mlist)
    assert "secret" not in mlist.public()
    assert store.names() == ["dev@example.test"]
    assert store.get("nope@example.test") is None
    with pytest.raises(ValueError, match="exists"):
        store.create("dev@example.test", ["bob@example.test"])
    with pytest.raises(ValueError, match="owner"):
        store.create("x@example.test", [])
    with pytest.raises(ValueError, match="policy"):
        store.create("y@example.test", ["a@example.test"], "anarchy")


def test_settings_are_checked_and_survive_reopening(store, tmp_path):
    store.set("dev@example.test", policy="moderated", max_size="2000", archive="no",
              moderators="mod@example.test, Mod2@EXAMPLE.test", description="Développement")
    with pytest.raises(ValueError, match="unknown setting"):
        store.set("dev@example.test", colour="red")
    with pytest.raises(ValueError, match="reply_to must be one of"):
        store.set("dev@example.test", reply_to="everyone")
    with pytest.raises(ValueError, match="https"):
        store.set("dev@example.test", web_base_url="http://lists.example.test")
    with pytest.raises(ValueError, match="owner"):
        store.set("dev@example.test", owners="")
    with pytest.raises(KeyError):
        store.set("nope@example.test", policy="open")
    again = ListStore(tmp_path / "lists").get("dev@example.test")
    assert again.policy == "moderated" and again.max_size == 2000 and again.archive is False
    assert again.moderators == ("mod@example.test", "Mod2@example.test")
    assert again.description == "Développement"
    assert again.is_moderator("MOD2@example.test") and again.is_moderator("alice@example.test")
    assert not again.is_owner("mod@example.test")
    assert check_setting("bounce_threshold", "2.5") == 2.5
    with pytest.raises(ValueError, match="negative"):
        check_setting("max_size", -1)


def test_members_are_normalised_and_unique(store):
    assert store.add_members("dev@example.test", ["Bob@Example.ORG", "carol@example.org",
                                                  "bob@example.org"]) == 2
    assert store.add_members("dev@example.test", ["BOB@example.org"]) == 0
    assert store.members("dev@example.test") == ["Bob@example.org", "carol@example.org"]
    assert store.is_member("DEV@example.test", "bob@EXAMPLE.org")
    assert not store.is_member("dev@example.test", "dave@example.org")
    with pytest.raises(ValueError):
        store.add_members("dev@example.test", ["ok@example.org", "not an address"])
    assert not store.is_member("dev@example.test", "ok@example.org")  # all or nothing
    assert store.remove_members("dev@example.test", ["BOB@example.org", "x@y.test"]) == 1
    assert store.members("dev@example.test") == ["carol@example.org"]
    with pytest.raises(KeyError):
        store.add_members("nope@example.test", ["a@b.test"])


def test_ten_thousand_members_in_one_bulk_add(store):
    addresses = [f"user{i}@d{i % 100}.example" for i in range(10_000)]
    assert store.add_members("dev@example.test", addresses) == 10_000
    assert len(store.members("dev@example.test")) == 10_000
    assert store.is_member("dev@example.test", "user9999@d99.example")
    assert store.add_members("dev@example.test", addresses[:5000] + ["new@x.example"]) == 1


def test_delete_removes_members_held_and_tokens(store):
    store.add_members("dev@example.test", ["bob@example.org"])
    held = store.hold("dev@example.test", "eve@example.org", b"x", "non-member")
    token = store.new_token("dev@example.test", "subscribe", "z@example.org", 0, 100)
    store.delete("dev@example.test")
    assert store.get("dev@example.test") is None and store.names() == []
    store.create("dev@example.test", ["alice@example.test"])
    assert store.members("dev@example.test") == []
    assert store.take_held(held) is None
    assert store.confirm(token, 1) is None


def test_held_posts_are_taken_once(store):
    message = b"Subject: hi\r\n\r\n\xe9t\xe9 body\r\n"
    held = store.hold("dev@example.test", "eve@example.org", message, "non-member", now=5.0)
    [h] = store.held("dev@example.test")
    assert (h.id, h.sender, h.reason, h.held_at, h.message) == (
        held, "eve@example.org", "non-member", 5.0, message)
    assert store.get_held(held.upper()).message == message
    assert store.take_held(held) == ("dev@example.test", "eve@example.org", message)
    assert store.take_held(held) is None
    assert store.held("dev@example.test") == []


def test_tokens_expire_and_work_once(store):
    token = store.new_token("dev@example.test", "subscribe", "bob@example.org", now=1000,
                            ttl=60)
    assert len(token) == 32 and token.isalnum()
    late = store.new_token("dev@example.test", "unsubscribe", "bob@example.org", 1000, 60)
    assert store.confirm(token.upper(), now=1059) == ("dev@example.test", "subscribe",
                                                      "bob@example.org")
    assert store.confirm(token, now=1059) is None  # single use
    assert store.confirm(late, now=1061) is None  # expired
    assert store.confirm("0" * 32, now=0) is None


def test_bounce_score_disables_at_threshold_and_decays(store):
    store.set("dev@example.test", bounce_threshold=3.0, bounce_reset_days=7)
    store.add_members("dev@example.test", ["bob@example.org"])
    day = 86400
    assert store.record_bounce("dev@example.test", "bob@example.org", 0) is False
    assert store.record_bounce("dev@example.test", "bob@example.org", 1 * day) is False
    # eight quiet days: the score starts again
    assert store.record_bounce("dev@example.test", "bob@example.org", 9 * day) is False
    assert store.record_bounce("dev@example.test", "bob@example.org", 10 * day) is False
    assert store.record_bounce("dev@example.test", "BOB@example.org", 11 * day) is True
    assert store.members("dev@example.test") == []
    assert store.members("dev@example.test", enabled_only=False) == ["bob@example.org"]
    assert store.record_bounce("dev@example.test", "bob@example.org", 12 * day) is False
    [m] = store.member_records("dev@example.test")
    assert not m.enabled and m.bounce_score == 3.0
    assert store.enable("dev@example.test", "bob@example.org") is True
    assert store.members("dev@example.test") == ["bob@example.org"]
    assert store.member_records("dev@example.test")[0].bounce_score == 0
    assert store.enable("dev@example.test", "nobody@example.org") is False
    assert store.record_bounce("dev@example.test", "nobody@example.org", 0) is False


_WRITER = """
import sys
from gateway.lists.store import ListStore
store = ListStore(sys.argv[1])
n = 0
while True:
    store.add_members("dev@example.test", [f"c{n + i}@child.example" for i in range(100)])
    n += 100
    print(n, flush=True)
"""


def test_two_processes_write_and_a_kill_loses_no_committed_change(store, tmp_path):
    """The CLI and the gateway write at once; a kill -9 mid-transaction leaves
    every change whole or absent, and each reported commit present."""
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "lists")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reported = 0
    mine = 0
    deadline = time.monotonic() + 60
    try:
        while reported < 3000 and time.monotonic() < deadline:
            # This process writes too, between the child's transactions.
            store.add_members("dev@example.test", [f"p{mine}@parent.example"])
            mine += 1
            ready, _, _ = select.select([child.stdout], [], [], 0.01)
            if ready:
                line = child.stdout.readline()
                assert line, child.stderr.read()
                reported = int(line)
        assert reported >= 3000, "the writer made no progress"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stderr.close()
    db = sqlite3.connect(tmp_path / "lists" / "lists.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    again = ListStore(tmp_path / "lists")
    members = again.members("dev@example.test")
    from_child = [m for m in members if m.endswith("@child.example")]
    assert len(from_child) % 100 == 0 and len(from_child) >= reported
    assert sum(m.endswith("@parent.example") for m in members) == mine


def test_a_list_of_a_later_version_still_loads(store, tmp_path):
    db = sqlite3.connect(tmp_path / "lists" / "lists.sqlite3")
    db.execute("UPDATE lists SET settings = json_set(settings, '$.future', 1)")
    db.commit()
    db.close()
    assert isinstance(store.get("dev@example.test"), MailingList)
