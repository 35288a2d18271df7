"""`mailgateway list ...` (gateway/lists/cli.py) through cli.main(argv), and once as
the real command in a subprocess."""

import io
import json
import subprocess
import sys

import pytest

from gateway import cli
from gateway.lists import outbox
from gateway.lists.store import ListStore

LIST = "dev@example.test"


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'[server]\ndomains = ["example.test"]\nstate_dir = "{tmp_path}"\n')
    return path


def run(conf, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return cli.main(["list", *argv, "--config", str(conf)])


def test_create_show_set_delete(conf, capsys):
    assert run(conf, "create", "Dev@Example.test", "--owner", "alice@example.test",
               "--policy", "moderated") == 0
    assert "dev@example.test: created (policy moderated)" in capsys.readouterr().out
    assert run(conf, "create", LIST, "--owner", "bob@example.test") == 1
    assert "exists" in capsys.readouterr().err
    assert run(conf, "create", "x@example.test") == 1
    assert "--owner" in capsys.readouterr().err
    assert run(conf, "set", LIST, "reply_to=list", "moderators=m1@example.test,m2@example.test",
               "max_size=1000") == 0
    assert run(conf, "set", LIST, "reply_to=all") == 1
    assert "reply_to must be one of" in capsys.readouterr().err
    assert run(conf, "set", LIST, "nonsense") == 1
    capsys.readouterr()
    assert run(conf, "show", LIST, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["policy"] == "moderated" and shown["reply_to"] == "list"
    assert shown["moderators"] == ["m1@example.test", "m2@example.test"]
    assert shown["max_size"] == 1000 and "secret" not in shown
    assert run(conf, "show", LIST) == 0
    text = capsys.readouterr().out
    assert "owners:" in text and "alice@example.test" in text and "members:" in text
    assert run(conf, "show") == 0
    assert capsys.readouterr().out == "dev@example.test\n"
    assert run(conf, "delete", LIST) == 0
    assert run(conf, "show", LIST) == 1
    assert "no list dev@example.test" in capsys.readouterr().err


def test_members_add_remove_enable_with_a_file_from_stdin(conf, capsys, monkeypatch, tmp_path):
    run(conf, "create", LIST, "--owner", "alice@example.test")
    bulk = "".join(f"user{i}@example.org\n" for i in range(2000))
    assert run(conf, "add", LIST, "--file", "-", stdin=bulk + "# comment\n\n",
               monkeypatch=monkeypatch) == 0
    assert "2000 added" in capsys.readouterr().out
    assert run(conf, "add", LIST, "bob@example.org", "not-an-address", "user1@example.org") == 1
    out, err = capsys.readouterr()
    assert "1 added, 1 were members already" in out and "'not-an-address'" in err
    listing = tmp_path / "gone.txt"
    listing.write_text("user0@example.org\nuser1@example.org\nnobody@example.org\n")
    assert run(conf, "remove", LIST, "--file", str(listing)) == 0
    assert "2 removed, 1 were not members" in capsys.readouterr().out
    store = ListStore(tmp_path / "lists")
    store.set(LIST, bounce_threshold=1)
    store.record_bounce(LIST, "bob@example.org", 0)
    assert run(conf, "members", LIST, "--json") == 0
    members = json.loads(capsys.readouterr().out)
    assert len(members) == 1999
    assert {"address": "bob@example.org", "enabled": False, "bounce_score": 1.0} in members
    assert run(conf, "members", LIST) == 0
    assert "bob@example.org  (disabled, bounce score 1)" in capsys.readouterr().out
    assert run(conf, "enable", LIST, "bob@example.org") == 0
    assert store.is_member(LIST, "bob@example.org") and "bob@example.org" in store.members(LIST)
    assert run(conf, "enable", LIST, "nobody@example.org") == 1


def test_held_approve_reject(conf, capsys, tmp_path):
    run(conf, "create", LIST, "--owner", "alice@example.test")
    store = ListStore(tmp_path / "lists")
    post = b"From: eve@example.org\r\nSubject: =?utf-8?q?h=C3=A9llo?=\r\n\r\nbody\r\n"
    first = store.hold(LIST, "eve@example.org", post, "not a member", now=1)
    second = store.hold(LIST, "eve@example.org", post, "not a member", now=2)
    capsys.readouterr()
    assert run(conf, "held", LIST, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0]["subject"] == "héllo" and rows[0]["size"] == len(post)
    assert run(conf, "approve", first) == 0
    [waiting] = outbox.pending(tmp_path / "lists")
    assert (waiting.held_id, waiting.list, outbox.read(waiting)) == (first, LIST, post)
    assert run(conf, "approve", first) == 1  # once only
    assert run(conf, "reject", second) == 0
    assert store.held(LIST) == [] and len(outbox.pending(tmp_path / "lists")) == 1
    assert run(conf, "reject", second) == 1
    assert run(conf, "held", LIST) == 0
    assert "no held posts" in capsys.readouterr().out


def test_the_installed_command(conf):
    """The real `mailgateway` entry point, as an admin's script runs it."""
    command = [sys.executable, "-m", "gateway.cli", "--config", str(conf), "list"]
    done = subprocess.run(command + ["create", LIST, "--owner", "a@example.test"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(command + ["add", LIST, "--file", "-"], input="b@example.org\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "1 added" in done.stdout
    done = subprocess.run(command + ["members", LIST, "--json"], capture_output=True,
                          text=True, timeout=60)
    assert json.loads(done.stdout)[0]["address"] == "b@example.org"
