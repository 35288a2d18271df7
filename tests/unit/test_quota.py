"""Mailbox quotas (store/quota.py, RFC 9208): the running usage every way mail comes and
goes, the RCPT refusal, the delivery deferral, and the IMAP QUOTA commands."""

from __future__ import annotations

import os
import time

import pytest
from imap_dialogue import BOX, Session, make_factory
from smtp_dialogue import Dialogue
from twisted.internet.testing import MemoryReactorClock

from gateway.config import parse, parse_size
from gateway.errors import ConfigError, MailError, OverQuota
from gateway.store import quota
from gateway.store.maildir import MaildirStore

MSG = b"Subject: hi\r\n\r\n" + b"x" * 983 + b"\r\n"  # 1,000 bytes


def store_with(tmp_path, default: int = 0, **users: int) -> MaildirStore:
    quotas = tmp_path / "quotas"
    quota.write_limits(quotas, {k.replace("_", "@", 1) + ".test": v for k, v in users.items()})
    return MaildirStore(tmp_path / "mail", limits=quota.Limits(quotas, default))


def record_lines(store: MaildirStore) -> list[str]:
    return (store.mailbox_path(BOX) / quota.RECORD).read_text().splitlines()


# -- settings -------------------------------------------------------------------------

@pytest.mark.parametrize("value, size", [(0, 0), ("", 0), ("1G", 1 << 30), ("500M", 500 << 20),
                                         ("10k", 10240), ("2048", 2048), (4096, 4096)])
def test_sizes_in_the_quota_setting(value, size):
    assert parse_size(value) == size
    settings = parse({"server": {"domains": ["example.test"]}, "mailbox": {"quota": value}})
    assert settings.mailbox_quota == size


@pytest.mark.parametrize("value", ["lots", "1X", -5, True, 1.5])
def test_a_bad_quota_setting_names_file_key_and_fault(value):
    with pytest.raises(ConfigError) as e:
        parse({"server": {"domains": ["example.test"]}, "mailbox": {"quota": value}}, "g.toml")
    [(source, key, reason)] = e.value.problems
    assert (source, key) == ("g.toml", "mailbox.quota") and "size" in reason or "0" in reason


def test_the_embedded_default_is_unlimited():
    from gateway.config import load
    assert load().mailbox_quota == 0


def test_per_user_limits_override_the_default_and_are_reread(tmp_path):
    limits = quota.Limits(tmp_path / "quotas", 5000)
    assert limits.limit("alice@example.test") == 5000
    quota.write_limits(tmp_path / "quotas", {"alice@example.test": 100})
    assert limits.limit("ALICE@example.test") == 100
    assert limits.limit("bob@example.test") == 5000


# -- accounting -------------------------------------------------------------------------

def test_deliveries_are_counted_without_listing_the_folders(tmp_path, monkeypatch):
    store = store_with(tmp_path, default=10_000)
    store.deliver(BOX, MSG, "1.A.host")  # the first look summed the (empty) folders
    assert store.usage(BOX) == quota.Usage(1000, 1, 10_000)

    def listing(root):
        raise AssertionError("a delivery listed the folders")

    monkeypatch.setattr(quota, "measure", listing)
    store.deliver(BOX, MSG, "2.B.host")
    # Each delivery appended a line: the record tells without a listing.
    assert record_lines(store) == ["10000S", "0 0", "1000 1", "1000 1"]
    assert store.usage(BOX) == quota.Usage(2000, 2, 10_000)


def test_imap_append_copy_move_expunge_and_pop3_delete_keep_the_total(tmp_path):
    store = store_with(tmp_path, default=1 << 20)
    store.deliver(BOX, MSG, "1.A.host")
    assert store.usage(BOX).used == 1000
    folders = store.open_folders(BOX)
    inbox = folders.open("INBOX")
    upload = store.mailbox_path(BOX) / "tmp" / "up"
    upload.write_bytes(b"y" * 500)
    inbox.add_file(upload, [], None)
    assert store.usage(BOX) == quota.Usage(1500, 2, 1 << 20)
    from gateway.store.folder import transfer
    trash = folders.open("Trash")
    uids = sorted(inbox.uids)
    transfer(inbox, trash, uids[:1], move=False)  # a copy (a hard link) counts again
    assert store.usage(BOX).used == 2500
    transfer(inbox, trash, uids[1:], move=True)  # a move changes nothing
    assert store.usage(BOX) == quota.Usage(2500, 3, 1 << 20)
    trash.store(sorted(trash.uids), 1, ["\\Deleted"])
    trash.expunge()
    assert store.usage(BOX) == quota.Usage(1000, 1, 1 << 20)
    with store.open_maildrop(BOX) as drop:
        drop.commit([0])
    assert store.usage(BOX) == quota.Usage(0, 0, 1 << 20)
    # Whatever was counted agrees with the disk.
    assert quota.measure(store.mailbox_path(BOX)) == (0, 0)


def test_record_recalculated_when_missing_too_long_or_the_limit_changed(tmp_path):
    store = store_with(tmp_path, default=1 << 20)
    root = store.mailbox_path(BOX)
    store.deliver(BOX, MSG, "1.A.host")
    store.usage(BOX)
    (root / quota.RECORD).unlink()
    (root / "cur" / "foreign:2,S").write_bytes(b"z" * 300)  # mutt saved one meanwhile
    assert store.usage(BOX).used == 1300
    with open(root / quota.RECORD, "a") as f:  # grown past 5,120 bytes
        f.write("1 1\n" * 2000)
    assert store.usage(BOX).used == 1300 and len(record_lines(store)) == 2
    quota.write_limits(tmp_path / "quotas", {BOX: 5000})
    assert store.usage(BOX) == quota.Usage(1300, 2, 5000)
    assert record_lines(store)[0] == "5000S"


def test_an_over_record_is_checked_against_the_disk_once_stale(tmp_path):
    store = store_with(tmp_path, default=1500)
    root = store.mailbox_path(BOX)
    store.deliver(BOX, MSG, "1.A.host")
    store.usage(BOX)
    store.deliver(BOX, b"s" * 500, "2.B.host")
    assert store.over_quota(BOX)
    for name in os.listdir(root / "new"):  # another program removes everything
        os.unlink(root / "new" / name)
    assert store.usage(BOX).over  # a fresh record is believed ...
    old = time.time() - quota.STALE - 1
    os.utime(root / quota.RECORD, (old, old))
    assert not store.over_quota(BOX)  # ... a stale one is not, at RCPT
    assert store.usage(BOX) == quota.Usage(0, 0, 1500)  # and is summed again


# -- delivery -----------------------------------------------------------------------------

def test_delivery_over_quota_is_a_temporary_4_2_2_and_writes_nothing(tmp_path):
    store = store_with(tmp_path, alice_example=1500)
    store.deliver(BOX, MSG, "1.A.host")
    with pytest.raises(OverQuota) as e:
        store.deliver(BOX, MSG, "2.B.host")
    assert (e.value.code, e.value.enhanced, e.value.temporary) == (452, "4.2.2", True)
    assert isinstance(e.value, MailError)
    root = store.mailbox_path(BOX)
    assert os.listdir(root / "new") == ["1.A.host"] and os.listdir(root / "tmp") == []
    store.deliver("bob@example.test", MSG * 3, "3.C.host")  # no limit for bob


def test_the_delivery_that_fills_the_mailbox_may_pass_it_by_the_grace(tmp_path):
    store = store_with(tmp_path, default=1900)  # grace 10%: up to 2,090 bytes
    store.deliver(BOX, MSG, "1.A.host")
    store.deliver(BOX, MSG, "2.B.host")  # 2,000: past 1,900, within the grace
    assert store.usage(BOX).over and store.over_quota(BOX)
    with pytest.raises(OverQuota):
        store.deliver(BOX, b"tiny", "3.C.host")  # full: nothing more, however small
    with pytest.raises(ConfigError) as e:
        parse({"server": {"domains": ["example.test"]}, "mailbox": {"quota_grace": 101}})
    assert e.value.problems[0][1:] == ("mailbox.quota_grace",
                                       "must be a percentage from 0 to 100, not 101")


def test_local_delivery_target_defers_a_message_over_quota(tmp_path):
    from twisted.internet import defer

    from gateway.deliver.maildir import MaildirDelivery
    from gateway.durable import complete
    from gateway.envelope import Envelope
    from gateway.interfaces import Route

    store = store_with(tmp_path, default=100)
    target = MaildirDelivery(store, "mx.example.test",
                             lambda f, *a: defer.maybeDeferred(complete, f, *a))
    path = tmp_path / "message"
    path.write_bytes(MSG)
    env = Envelope(sender="bob@remote.test", recipients=[BOX], queue_id="Q1", arrived=1.0)
    failures = []
    target.deliver(env, Route(kind="local", address=BOX, mailbox=BOX), str(path),
                   False).addErrback(failures.append)
    [f] = failures
    assert f.check(MailError) and f.value.code == 452 and f.value.temporary


# -- SMTP RCPT --------------------------------------------------------------------------

def test_rcpt_for_a_full_mailbox_gets_452_4_2_2_and_others_pass(tmp_path):
    store = store_with(tmp_path, default=2000)
    store.deliver("alice@example.test", MSG, "1.A.host")
    d = Dialogue(quota=store)
    d.ehlo()
    d.mail()
    d.rcpt("alice@example.test")  # 1,000 of 2,000 used: still room
    store.deliver("alice@example.test", MSG, "2.B.host")
    out = d.rcpt("alice@example.test", expect=b"452")
    assert out == b"452 4.2.2 <alice@example.test>: Mailbox full\r\n"
    d.rcpt("bob@remote.test", expect=b"554")  # the session goes on


# -- IMAP (RFC 9208) --------------------------------------------------------------------

def imap(store: MaildirStore) -> Session:
    s = Session(make_factory(store, MemoryReactorClock()))
    s.login()
    return s


def test_capability_and_getquotaroot_getquota_in_kib(tmp_path):
    store = store_with(tmp_path, alice_example=10 * 1024)
    store.deliver(BOX, MSG * 3, "1.A.host")
    s = imap(store)
    caps = s("CAPABILITY")
    assert b" QUOTA " in caps and b" QUOTA=RES-STORAGE" in caps
    assert s("GETQUOTAROOT INBOX") == (b'* QUOTAROOT "INBOX" ""\r\n'
                                       b'* QUOTA "" (STORAGE 2 10)\r\n'
                                       b"a3 OK GETQUOTAROOT completed\r\n")
    assert s('GETQUOTA ""') == b'* QUOTA "" (STORAGE 2 10)\r\na4 OK GETQUOTA completed\r\n'
    assert b"a5 NO [NONEXISTENT]" in s('GETQUOTA "other"', expect=b"NO")
    assert b"a6 NO [NONEXISTENT]" in s("GETQUOTAROOT Nowhere", expect=b"NO")
    assert b"a7 NO [NOPERM]" in s('SETQUOTA "" (STORAGE 99999)', expect=b"NO")


def test_a_user_without_a_limit_has_no_quota_root(tmp_path):
    s = imap(store_with(tmp_path))
    assert s("GETQUOTAROOT INBOX") == b'* QUOTAROOT "INBOX"\r\na2 OK GETQUOTAROOT completed\r\n'
    s('GETQUOTA ""', expect=b"NO")


def test_append_and_copy_over_quota_get_overquota_and_store_nothing(tmp_path):
    store = store_with(tmp_path, alice_example=2500)
    store.deliver(BOX, MSG, "1.A.host")
    s = imap(store)
    body = b"y" * 1000
    s(b"APPEND INBOX {%d+}\r\n" % len(body) + body)  # 2,000 of 2,500
    out = s(b"APPEND INBOX {%d+}\r\n" % len(body) + body, expect=b"NO")
    assert out.endswith(b"a3 NO [OVERQUOTA] Mailbox full: quota exceeded\r\n")
    s("SELECT INBOX")
    out = s("COPY 1 Trash", expect=b"NO")
    assert b"NO [OVERQUOTA]" in out
    s("MOVE 1 Trash")  # a move takes no more room
    assert b"* 1 EXISTS" in s("EXAMINE Trash")  # the COPY before added nothing
    assert store.usage(BOX) == quota.Usage(2000, 2, 2500)
    assert os.listdir(store.mailbox_path(BOX) / "tmp") == []


# -- the CLI ----------------------------------------------------------------------------

def test_cli_user_add_with_quota_and_user_quota(tmp_path, monkeypatch, capsys):
    import io

    from gateway import cli

    conf = tmp_path / "c.toml"
    conf.write_text(f'[server]\ndomains = ["example.test"]\nstate_dir = "{tmp_path}"\n'
                    '[mailbox]\nquota = "1G"\n')
    c = ["--config", str(conf)]
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert cli.main(["user", "add", BOX, "--password-stdin", "--quota", "lots", *c]) == 1
    assert "--quota must be a size" in capsys.readouterr().err
    assert not (tmp_path / "users").exists()  # refused before anything was written
    monkeypatch.setattr("sys.stdin", io.StringIO("pw\n"))
    assert cli.main(["user", "add", BOX, "--password-stdin", "--quota", "2M", *c]) == 0
    assert quota.read_limits(tmp_path / "quotas") == {BOX: 2 << 20}
    assert cli.main(["user", "quota", BOX, "default", *c]) == 0
    assert "quota 1073741824 bytes (1024.0 MiB) (the default)" in capsys.readouterr().out
    MaildirStore(tmp_path / "mail").deliver(BOX, MSG, "1.A.host")
    assert cli.main(["user", "quota", BOX, "0", *c]) == 0
    assert cli.main(["user", "quota", BOX, *c]) == 0
    assert capsys.readouterr().out.endswith(
        f"{BOX}: 1000 bytes in 1 messages; quota unlimited\n")
    assert cli.main(["user", "quota", "nobody@example.test", "1G", *c]) == 1
    assert cli.main(["user", "del", BOX, *c]) == 0
    assert quota.read_limits(tmp_path / "quotas") == {}  # its own limit went with it


def test_status_size_is_the_sum_of_the_messages(tmp_path):
    store = store_with(tmp_path)
    store.deliver(BOX, MSG, "1.A.host")
    store.deliver(BOX, b"y" * 234, "2.B.host")
    s = imap(store)
    assert b" STATUS=SIZE" in s("CAPABILITY")
    assert s("STATUS INBOX (MESSAGES SIZE)").startswith(
        b'* STATUS "INBOX" (MESSAGES 2 SIZE 1234)\r\n')
    assert b"SIZE 0)" in s("STATUS Trash (SIZE)")
