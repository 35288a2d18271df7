"""The spool's durability rules and the runner's outcomes, with task.Clock for time."""

import json

import pytest
from twisted.internet import defer, task

from gateway.config import parse
from gateway.durable import run_now
from gateway.envelope import Envelope, Recipient, RecipientState, new_queue_id
from gateway.errors import MailError
from gateway.interfaces import Route
from gateway.queue.runner import QueueRunner, backoff
from gateway.queue.spool import Spool


def make_envelope(*recipients: str, arrived: float = 1000.0) -> Envelope:
    return Envelope(sender="bob@remote.test", recipients=[Recipient(r) for r in recipients],
                    queue_id=new_queue_id(arrived), arrived=arrived)


def test_store_load_update_remove(tmp_path):
    spool = Spool(tmp_path, reactor=None)
    env = make_envelope("alice@example.test")
    assert spool.store_blocking(env, b"message") == env.queue_id
    assert spool.queue_ids() == [env.queue_id]
    loaded = spool.load(env.queue_id)
    assert loaded.recipients[0].address == "alice@example.test"
    loaded.recipients[0].state = RecipientState.DONE
    spool.update(loaded)
    assert spool.load(env.queue_id).recipients[0].state is RecipientState.DONE
    with open(spool.message_path(env.queue_id), "rb") as f:
        assert f.read() == b"message"
    spool.remove(env.queue_id)
    assert spool.queue_ids() == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_recover_drops_uncommitted_and_quarantines_unreadable(tmp_path):
    spool = Spool(tmp_path, reactor=None)
    good = make_envelope("alice@example.test")
    spool.store_blocking(good, b"m")
    lone = new_queue_id(5.0)
    (tmp_path / "entries" / f"{lone}.msg").write_bytes(b"never answered 250")
    bad = new_queue_id(6.0)
    (tmp_path / "entries" / f"{bad}.msg").write_bytes(b"m")
    (tmp_path / "entries" / f"{bad}.env").write_bytes(b"{not json")
    (tmp_path / "tmp" / "half").write_bytes(b"x")
    spool.recover()
    assert not (tmp_path / "entries" / f"{lone}.msg").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(KeyError):
        spool.load(bad)
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == [
        f"{bad}.env", f"{bad}.msg"]
    assert spool.queue_ids() == [good.queue_id]


def test_load_refuses_names_that_are_not_queue_ids(tmp_path):
    spool = Spool(tmp_path, reactor=None)
    with pytest.raises(KeyError):
        spool.load("../../etc/passwd")


def test_envelope_json_round_trip():
    env = make_envelope("a@example.test", "b@remote.test")
    env.recipients[1].state = RecipientState.FAILED
    again = Envelope.from_json(json.loads(json.dumps(env.to_json())))
    assert again == env


class Target:
    kind = "local"

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.calls = []

    def deliver(self, envelope, route, message_path, recovering):
        self.calls.append((route.address, recovering))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(None)


class Router:
    def route(self, address):
        if address.endswith("@example.test"):
            return Route("local", address, mailbox=address)
        return Route("remote", address, domain=address.split("@")[1])

    def expand(self, address):
        return [self.route(address)]


def make_runner(tmp_path, target, **queue):
    settings = parse({"server": {"domains": ["example.test"]}, "queue": queue}).queue
    clock = task.Clock()
    clock.advance(1000)
    spool = Spool(tmp_path, reactor=None)
    runner = QueueRunner(spool=spool, router=Router(), targets={"local": target},
                         settings=settings, reactor=clock, run_blocking=run_now)
    return runner, spool, clock


def test_runner_delivers_and_removes_entry(tmp_path):
    target = Target([None])
    runner, spool, clock = make_runner(tmp_path, target)
    env = make_envelope("alice@example.test")
    spool.store_blocking(env, b"m")
    runner.enqueued(env.queue_id)
    clock.advance(0)
    assert target.calls == [("alice@example.test", False)]
    assert spool.queue_ids() == []


def test_runner_retries_temporary_failures_with_backoff(tmp_path):
    temp = MailError(451, "4.3.0", "disk trouble")
    target = Target([temp, temp, None])
    runner, spool, clock = make_runner(tmp_path, target, retry_initial=60, retry_max=100)
    env = make_envelope("alice@example.test")
    spool.store_blocking(env, b"m")
    runner.enqueued(env.queue_id)
    clock.advance(0)
    stored = spool.load(env.queue_id).recipients[0]
    assert (stored.attempts, stored.last_error) == (1, "451 4.3.0 disk trouble")
    clock.advance(59)
    assert len(target.calls) == 1
    clock.advance(1)
    assert len(target.calls) == 2
    clock.advance(99)
    assert len(target.calls) == 2  # second wait is 100 (120 capped at retry_max)
    clock.advance(1)
    assert len(target.calls) == 3
    assert spool.queue_ids() == []


def test_runner_permanent_failure_and_expiry(tmp_path):
    target = Target([MailError(550, "5.1.1", "gone"), MailError(451, "4.0.0", "later")])
    runner, spool, clock = make_runner(tmp_path, target, max_age=10)
    env = make_envelope("alice@example.test", "bob@example.test", arrived=900.0)
    spool.store_blocking(env, b"m")
    runner.enqueued(env.queue_id)
    clock.advance(0)
    assert spool.queue_ids() == []  # one failed for good, the other expired


def test_remote_recipients_stay_queued_without_a_relay(tmp_path):
    target = Target([None])
    runner, spool, clock = make_runner(tmp_path, target)
    env = make_envelope("alice@example.test", "carol@remote.test")
    spool.store_blocking(env, b"m")
    runner.enqueued(env.queue_id)
    clock.advance(0)
    stored = spool.load(env.queue_id)
    assert [r.state for r in stored.recipients] == [RecipientState.DONE,
                                                    RecipientState.PENDING]
    assert stored.recipients[1].last_error.startswith("451 4.4.0")


def test_fresh_envelope_is_used_without_reading_it_back(tmp_path):
    target = Target([None])
    runner, spool, clock = make_runner(tmp_path, target)
    env = make_envelope("alice@example.test")
    env.hops = 1
    spool.store_blocking(env, b"m")
    (tmp_path / "entries" / f"{env.queue_id}.env").write_text("{broken")  # never read
    runner.enqueued(env.queue_id, env)
    clock.advance(0)
    assert target.calls == [("alice@example.test", False)]
    assert spool.queue_ids() == []


def test_hop_count_comes_from_the_message_when_not_counted(tmp_path):
    target = Target([None])
    runner, spool, clock = make_runner(tmp_path, target, max_hops=2)
    env = make_envelope("alice@example.test")
    spool.store_blocking(env, b"Received: a\r\nReceived: b\r\nreceived: c\r\n\r\nbody")
    runner.enqueued(env.queue_id, env)  # hops == -1: counted from the file
    clock.advance(0)
    assert target.calls == []  # 3 > max_hops: a loop, failed without delivery
    assert spool.queue_ids() == []


def test_start_recovers_entries_with_recovering_flag(tmp_path):
    target = Target([None])
    runner, spool, clock = make_runner(tmp_path, target)
    env = make_envelope("alice@example.test")
    spool.store_blocking(env, b"m")
    runner.start()
    clock.advance(0)
    assert target.calls == [("alice@example.test", True)]


def test_backoff_doubles_to_cap():
    settings = parse({"server": {"domains": ["e.test"]},
                      "queue": {"retry_initial": 300, "retry_max": 3600}}).queue
    assert [backoff(settings, n) for n in (1, 2, 3, 4, 5, 6)] == [
        300, 600, 1200, 2400, 3600, 3600]


def test_local_recipients_of_one_sender_are_delivered_at_once(tmp_path):
    """A list post without VERP: one sender for every local member. Each copy waits for a
    disk sync; one after the other they would wait for all of them in turn."""
    class SlowTarget:
        kind = "local"
        parallel = 10  # takes several routes at once, as ProgramDelivery does

        def __init__(self):
            self.pending = {}

        def deliver(self, envelope, route, message_path, recovering):
            self.pending[route.address] = defer.Deferred()
            return self.pending[route.address]

    target = SlowTarget()
    runner, spool, clock = make_runner(tmp_path, target)
    env = make_envelope("a@example.test", "b@example.test", "c@example.test")
    spool.store_blocking(env, b"m")
    runner.enqueued(env.queue_id)
    clock.advance(0)
    assert sorted(target.pending) == ["a@example.test", "b@example.test", "c@example.test"]
    target.pending["b@example.test"].errback(MailError(550, "5.1.1", "gone"))
    target.pending["c@example.test"].callback(None)
    assert spool.queue_ids() == [env.queue_id]  # a still pending
    target.pending["a@example.test"].callback(None)
    assert spool.queue_ids() == []


def test_counts_by_state_for_the_metrics(tmp_path):
    temp = MailError(451, "4.3.0", "later")
    runner, spool, clock = make_runner(tmp_path, Target([temp]), retry_initial=60)
    assert runner.counts() == {"active": 0, "scheduled": 0}
    env = make_envelope("alice@example.test")
    spool.store_blocking(env, b"m")
    runner.enqueued(env.queue_id)
    assert runner.counts() == {"active": 0, "scheduled": 1}  # due now, not yet run
    clock.advance(0)
    assert runner.counts() == {"active": 0, "scheduled": 1}  # deferred: its retry waits


def test_outcome_records_beside_the_envelope(tmp_path):
    from gateway.durable import complete

    spool = Spool(tmp_path, reactor=None)
    env = make_envelope("a@example.test", "b@remote.test", "c@remote.test")
    spool.store_blocking(env, b"m")
    b = Recipient("b@remote.test", state=RecipientState.DONE, attempts=1)
    c = Recipient("c@remote.test", state=RecipientState.FAILED, attempts=1, last_error="550 x")
    complete(spool.record_steps, env.queue_id, 0, [(1, b.to_json())])
    complete(spool.record_steps, env.queue_id, 0, [(2, c.to_json())])
    with open(tmp_path / "entries" / f"{env.queue_id}.out", "ab") as f:
        f.write(b'{"g":0,"i":0,"r":{"addr')  # a record cut short by a crash
    loaded = spool.load(env.queue_id)
    assert [r.state for r in loaded.recipients] == [
        RecipientState.PENDING, RecipientState.DONE, RecipientState.FAILED]
    # A rewrite folds them in and starts a new generation: old records no longer count.
    loaded.recipients[2].dsn = "failed"
    loaded.generation += 1
    spool.update(loaded)
    assert not (tmp_path / "entries" / f"{env.queue_id}.out").exists()
    complete(spool.record_steps, env.queue_id, 0, [(2, c.to_json())])  # stale generation
    assert spool.load(env.queue_id).recipients[2].dsn == "failed"
    spool.remove(env.queue_id)
    assert list((tmp_path / "entries").iterdir()) == []


def test_a_batch_appends_its_outcomes_and_does_not_rewrite_the_envelope(tmp_path):
    class Spy(Spool):
        updates = 0

        def update_steps(self, envelope):
            Spy.updates += 1
            return (yield from super().update_steps(envelope))

    class Batch:
        kind = "remote"
        max_batch = 1

        def __init__(self):
            self.seen = []

        def batch_key(self, route):
            return route.domain

        def deliver(self, *a):
            raise AssertionError("batches only")

        def deliver_batch(self, envelope, routes, message_path, recovering):
            # What a crash now would find: the batches before this one, recorded.
            self.seen.append(sum(r.state is RecipientState.DONE
                                 for r in spool.load(envelope.queue_id).recipients))
            return defer.succeed([RecipientResult()] * len(routes))

    from zope.interface import directlyProvides

    from gateway.interfaces import IBatchDeliveryTarget, RecipientResult

    settings = parse({"server": {"domains": ["example.test"]}}).queue
    clock = task.Clock()
    spool = Spy(tmp_path, reactor=None)
    target = Batch()
    directlyProvides(target, IBatchDeliveryTarget)
    runner = QueueRunner(spool=spool, router=Router(), targets={"remote": target},
                         settings=settings, reactor=clock, run_blocking=run_now)
    env = make_envelope(*(f"r{i}@d{i}.test" for i in range(5)))
    env.sender = ""  # no DSN involved
    spool.store_blocking(env, b"m")
    runner.enqueued(env.queue_id)
    clock.advance(0)
    assert target.seen == [0, 1, 2, 3, 4]
    assert Spy.updates == 0  # every recipient done: removed, never rewritten
    assert spool.queue_ids() == []


def test_an_expired_recipient_and_the_removal_are_logged(tmp_path):
    from twisted.logger import formatEvent, globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        target = Target([MailError(451, "4.4.1", "no answer")])
        runner, spool, clock = make_runner(tmp_path, target, max_age=10)
        env = make_envelope("alice@example.test", arrived=900.0)  # older than max_age
        env.sender = ""  # no DSN to queue
        spool.store_blocking(env, b"m")
        runner.enqueued(env.queue_id)
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("queue_id") == env.queue_id]
    assert any("to=<alice@example.test>" in x and "status=expired" in x for x in lines), lines
    assert lines[-1] == f"{env.queue_id}: removed"
