"""An alias's local copies as one batch: one call in the group commit, two syncs in all,
each copy its own outcome, no copy held in memory while the batch waits for its sync."""

from __future__ import annotations

import os
import sys

import pytest
from test_bounce import SyncSpool
from test_relay_runner import Router
from twisted.internet import defer, task
from zope.interface import implementer

from gateway import durable
from gateway.config import parse
from gateway.deliver.maildir import MaildirDelivery
from gateway.envelope import Envelope, Recipient, new_queue_id
from gateway.errors import MailError
from gateway.interfaces import IBatchDeliveryTarget, RecipientResult, Route
from gateway.queue.runner import QueueRunner
from gateway.store.maildir import MaildirStore

MAILBOXES = [f"u{n:04d}@example.test" for n in range(1, 301)]


class Trips:
    """A run_blocking that runs each call as its own group-commit trip ("filesystem")."""

    def __init__(self):
        self.calls = 0

    def __call__(self, f, *args):
        self.calls += 1
        ((ok, value),) = durable.run_trip([(f, args)], "filesystem")
        return defer.succeed(value) if ok else defer.fail(value)


class SyncCount:
    """Stands in for syncfs(2)."""

    def __init__(self):
        self.calls = 0
        self.fail = False

    def __call__(self, fd):
        self.calls += 1
        return -1 if self.fail else 0


@pytest.fixture
def rig(tmp_path, monkeypatch):
    syncfs = SyncCount()
    monkeypatch.setattr(durable, "_syncfs", syncfs)
    monkeypatch.setattr(durable, "_devices", {})
    trips = Trips()
    store = MaildirStore(tmp_path / "mail")
    target = MaildirDelivery(store, "mx.example.test", trips)
    msg = tmp_path / "q.msg"
    msg.write_bytes(b"Subject: team\r\n\r\nbody\r\n")
    env = Envelope(sender="bob@remote.test", recipients=[Recipient("team@example.test")],
                   queue_id="1K0WBNWWCN0NW0NJ", arrived=1795411989.5)
    return target, trips, syncfs, env, str(msg), tmp_path / "mail" / "example.test"


def routes(mailboxes):
    return [Route("local", m, mailbox=m) for m in mailboxes]


def run(target, env, rs, msg):
    out = []
    target.deliver_batch(env, rs, msg, False).addBoth(out.append)
    return out[0]


def test_an_alias_s_copies_are_one_call_with_one_sync_for_data_and_one_for_names(rig):
    target, trips, syncfs, env, msg, root = rig
    results = run(target, env, routes(MAILBOXES), msg)
    assert results == [RecipientResult()] * len(MAILBOXES)
    assert trips.calls == 1 and syncfs.calls == 2  # was 300 calls (5 trips, 10 syncs)
    for n, mailbox in enumerate(MAILBOXES):
        (name,) = os.listdir(root / mailbox.split("@")[0] / "new")
        copy = (root / mailbox.split("@")[0] / "new" / name).read_bytes()
        assert copy == (b"Return-Path: <bob@remote.test>\r\nDelivered-To: " + mailbox.encode()
                        + b"\r\nSubject: team\r\n\r\nbody\r\n"), n


def test_each_copy_has_its_own_outcome(rig):
    target, trips, syncfs, env, msg, root = rig
    results = run(target, env, routes(["a@example.test", "../x@example.test",
                                       "b@example.test"]), msg)
    assert results[0] == results[2] == RecipientResult()
    assert results[1].error.code in (550, 553)  # never a file outside the mail root
    assert os.listdir(root / "a" / "new") and os.listdir(root / "b" / "new")


def test_a_failed_sync_defers_every_copy_and_names_none(rig):
    target, trips, syncfs, env, msg, root = rig
    syncfs.fail = True
    results = run(target, env, routes(MAILBOXES[:5]), msg)
    assert [r.error.code for r in results] == [451] * 5
    assert all(os.listdir(root / m.split("@")[0] / "new") == [] for m in MAILBOXES[:5])


def test_an_unreadable_queue_file_defers_every_copy(rig, tmp_path):
    target, trips, syncfs, env, msg, root = rig
    results = run(target, env, routes(MAILBOXES[:3]), str(tmp_path / "gone.msg"))
    assert [r.error.code for r in results] == [451] * 3


def test_a_copy_is_not_held_while_its_batch_waits_for_the_sync(tmp_path):
    """1,000 copies of a 64 KiB message waiting for one sync would be 64 MB."""
    store = MaildirStore(tmp_path / "mail")
    message = b"Subject: big\r\n\r\n" + b"x" * 60000
    before = sys.getrefcount(message)
    steps = store.deliver_steps("a@example.test", message, "Q1")
    next(steps)  # written; waiting for the sync
    assert sys.getrefcount(message) == before
    with pytest.raises(StopIteration):
        next(steps)


@implementer(IBatchDeliveryTarget)
class HeldLocal:
    kind = "local"
    max_batch = 1000

    def __init__(self):
        self.calls: list[defer.Deferred] = []

    def batch_key(self, route):
        return ""

    def deliver_batch(self, envelope, rs, message_path, recovering):
        self.calls.append(defer.Deferred())
        return self.calls[-1].addCallback(lambda _: [RecipientResult()] * len(rs))


def test_the_runner_records_no_outcomes_for_a_local_batch(tmp_path):
    """Local copies are recognised after a crash by their Maildir names: a durable
    record of each batch's outcomes would be one more sync for nothing."""
    settings = parse({"server": {"domains": ["example.test"]}}).queue
    clock = task.Clock()
    spool = SyncSpool(tmp_path / "spool", reactor=None)
    recorded = []
    record_steps = spool.record_steps
    spool.record_steps = lambda *a: recorded.append(a) or record_steps(*a)
    target = HeldLocal()
    runner = QueueRunner(spool=spool, router=Router(), settings=settings, reactor=clock,
                         targets={"local": target}, run_blocking=durable.run_now)
    env = Envelope(sender="bob@remote.test", queue_id=new_queue_id(clock.seconds()),
                   recipients=[Recipient(m) for m in MAILBOXES[:3]], arrived=clock.seconds())
    spool.store_blocking(env, b"Subject: t\r\n\r\nbody\r\n")
    runner.enqueued(env.queue_id)
    clock.advance(0)
    assert len(target.calls) == 1  # the three copies in one batch
    target.calls[0].callback(None)
    assert recorded == [] and spool.queue_ids() == []


def test_a_batch_that_fails_whole_defers_each_copy(rig, monkeypatch):
    target, trips, syncfs, env, msg, root = rig
    target.run_blocking = lambda f, *a: defer.fail(OSError(5, "Input/output error"))
    results = run(target, env, routes(MAILBOXES[:2]), msg)
    assert [r.error.code for r in results] == [451, 451]
    assert isinstance(results[0].error, MailError)


def test_a_batch_cut_off_by_a_crash_is_delivered_once_each_at_recovery(rig, tmp_path):
    """kill -9 after some copies of a batch were named and the rest only written: the
    entry is found at start (recovering) and every mailbox ends with exactly one copy."""
    target, trips, syncfs, env, msg, root = rig
    rs = routes(MAILBOXES[:10])
    assert run(target, env, rs[:4], msg) == [RecipientResult()] * 4  # named before the crash
    cut = target._deliver_batch(env, rs[4:], msg, False)
    next(cut)  # the other six written to tmp/, never renamed: the process dies here
    for mailbox in MAILBOXES[:4]:  # a reader saw the first four (Maildir flags: cur/)
        box = root / mailbox.split("@")[0]
        (name,) = os.listdir(box / "new")
        os.rename(box / "new" / name, box / "cur" / f"{name}:2,S")
    again = MaildirDelivery(MaildirStore(tmp_path / "mail"), "mx.example.test", Trips())
    out = []
    again.deliver_batch(env, rs, msg, True).addBoth(out.append)
    assert out[0] == [RecipientResult()] * 10
    for mailbox in MAILBOXES[:10]:
        box = root / mailbox.split("@")[0]
        copies = os.listdir(box / "new") + os.listdir(box / "cur")
        assert len(copies) == 1 and os.listdir(box / "tmp") == [], mailbox
