"""The queue runner with a batch target: per-recipient outcomes, durable state after each
batch, DSNs, loop detection, delay warnings and the admin requests; time on task.Clock."""

from __future__ import annotations

from test_bounce import SyncSpool
from twisted.internet import defer, task
from zope.interface import implementer

from gateway.config import parse
from gateway.durable import run_now
from gateway.envelope import Envelope, Recipient, RecipientState, new_queue_id
from gateway.errors import MailError
from gateway.interfaces import IBatchDeliveryTarget, RecipientResult, Route
from gateway.queue import control
from gateway.queue.bounce import Bouncer
from gateway.queue.runner import QueueRunner

TEMP = MailError(451, "4.4.1", "connect to mx.remote.test[127.0.0.2]:25: refused")
GONE = MailError(550, "5.1.1", "<b@remote.test>: no such user")


@implementer(IBatchDeliveryTarget)
class BatchTarget:
    kind = "remote"

    def __init__(self, outcomes: dict[str, list] | None = None, max_batch: int = 50):
        self.outcomes = outcomes or {}
        self.max_batch = max_batch
        self.calls: list[list[str]] = []
        # call number -> a Deferred that holds that transaction until fired
        self.gates: dict[int, defer.Deferred] = {}

    def batch_key(self, route):
        return route.domain

    def deliver(self, envelope, route, message_path, recovering):
        raise AssertionError("the runner must use deliver_batch")

    def deliver_batch(self, envelope, routes, message_path, recovering):
        self.calls.append([r.address for r in routes])
        results = []
        for r in routes:
            queue = self.outcomes.get(r.address, [])
            outcome = queue.pop(0) if queue else None
            results.append(RecipientResult(outcome, remote_mta="mx.remote.test"))
        gate = self.gates.get(len(self.calls) - 1)
        if gate is not None:
            return gate.addCallback(lambda _: results)
        return defer.succeed(results)


class LocalTarget:
    kind = "local"

    def __init__(self):
        self.delivered: list[tuple[str, str]] = []

    def deliver(self, envelope, route, message_path, recovering):
        self.delivered.append((envelope.queue_id, route.address))
        return defer.succeed(None)


class Router:
    def route(self, address):
        domain = address.split("@")[1]
        if domain == "example.test":
            return Route("local", address, mailbox=address)
        return Route("remote", address, domain=domain)

    def expand(self, address):
        return [self.route(address)]



class Rig:
    def __init__(self, tmp_path, target: BatchTarget, **queue):
        self.settings = parse({"server": {"domains": ["example.test"]}, "queue": queue}).queue
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.spool = SyncSpool(tmp_path / "spool", reactor=None)
        self.local = LocalTarget()
        self.target = target
        bouncer = Bouncer(spool=self.spool, hostname="mx.example.test", clock=self.clock,
                          size_limit=50000, max_age=self.settings.max_age,
                          run_blocking=run_now)
        self.runner = QueueRunner(
            spool=self.spool, router=Router(), settings=self.settings, reactor=self.clock,
            targets={"local": self.local, "remote": target}, run_blocking=run_now,
            bouncer=bouncer, control_root=self.spool.root)
        self.root = self.spool.root

    def queue(self, *rcpts: str, sender: str = "alice@example.test",
              message: bytes = b"Subject: t\r\n\r\nbody\r\n") -> str:
        env = Envelope(sender=sender, recipients=[Recipient(r) for r in rcpts],
                       queue_id=new_queue_id(self.clock.seconds()), arrived=self.clock.seconds())
        self.spool.store_blocking(env, message)
        return env.queue_id

    def state(self, qid: str) -> dict[str, str]:
        return {r.address: r.state.value for r in self.spool.load(qid).recipients}

    def dsns(self) -> list[str]:
        """Queue IDs of DSNs waiting or delivered to alice (the local sender)."""
        return [q for q, a in self.local.delivered if a == "alice@example.test"]


def test_one_batch_per_domain_and_per_recipient_outcomes(tmp_path):
    target = BatchTarget({"b@remote.test": [GONE]})
    rig = Rig(tmp_path, target)
    qid = rig.queue("a@remote.test", "b@remote.test", "c@remote.test", "d@other.test")
    rig.runner.start()
    rig.clock.advance(0)
    assert sorted(target.calls) == [["a@remote.test", "b@remote.test", "c@remote.test"],
                                    ["d@other.test"]]
    # Only b failed; its DSN went through the same queue to alice's mailbox.
    assert rig.spool.queue_ids() == []
    (dsn_id,) = rig.dsns()
    assert dsn_id != qid


def test_state_is_saved_after_each_batch_before_the_next(tmp_path):
    target = BatchTarget(max_batch=2)
    gate = target.gates[0] = defer.Deferred()  # the first transaction hangs
    rig = Rig(tmp_path, target)
    qid = rig.queue("a@remote.test", "b@remote.test", "c@remote.test")
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    assert target.calls == [["a@remote.test", "b@remote.test"]]
    assert set(rig.state(qid).values()) == {"pending"}
    gate.callback(None)
    # The second transaction ran after the first's results were on disk.
    assert target.calls[1] == ["c@remote.test"]
    assert rig.spool.queue_ids() == []


def test_a_crash_between_batches_never_repeats_a_done_recipient(tmp_path):
    target = BatchTarget(max_batch=1)
    target.gates[1] = defer.Deferred()  # b's transaction is in flight when we "crash"
    rig = Rig(tmp_path, target)
    qid = rig.queue("a@remote.test", "b@remote.test")
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    assert target.calls == [["a@remote.test"], ["b@remote.test"]]
    assert rig.state(qid) == {"a@remote.test": "done", "b@remote.test": "pending"}
    # A new process on the same spool: only b is tried again.
    again = BatchTarget()
    runner = QueueRunner(spool=rig.spool, router=Router(), settings=rig.settings,
                         reactor=rig.clock, targets={"remote": again}, run_blocking=run_now)
    runner.start()
    rig.clock.advance(0)
    assert again.calls == [["b@remote.test"]]
    assert rig.spool.queue_ids() == []


def test_temporary_failure_retries_on_schedule_and_delivers_once(tmp_path):
    target = BatchTarget({"a@remote.test": [TEMP, TEMP]})
    rig = Rig(tmp_path, target, retry_initial=300, retry_max=3600)
    qid = rig.queue("a@remote.test")
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    stored = rig.spool.load(qid).recipients[0]
    assert (stored.attempts, stored.next_attempt) == (1, 1300.0)
    assert stored.last_error.startswith("451 4.4.1 connect to")
    rig.clock.advance(299)
    assert len(target.calls) == 1
    rig.clock.advance(1)
    assert len(target.calls) == 2
    rig.clock.advance(599)
    assert len(target.calls) == 2
    rig.clock.advance(1)
    assert len(target.calls) == 3
    assert rig.spool.queue_ids() == [] and rig.dsns() == []


def test_expiry_bounces_once_with_delivery_time_expired(tmp_path):
    target = BatchTarget({"a@remote.test": [TEMP] * 10})
    rig = Rig(tmp_path, target, retry_initial=100, retry_max=100, max_age=250)
    qid = rig.queue("a@remote.test")
    rig.runner.enqueued(qid)
    for _ in range(5):
        rig.clock.advance(100)
    assert len(target.calls) == 3  # at 0, 100, 200; at 300 it is past max_age
    assert rig.spool.queue_ids() == []
    (dsn_id,) = rig.dsns()
    assert qid != dsn_id


def test_no_dsn_for_a_bounce(tmp_path):
    target = BatchTarget({"alice@remote.test": [GONE]})
    rig = Rig(tmp_path, target)
    qid = rig.queue("alice@remote.test", sender="")
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    assert rig.spool.queue_ids() == [] and rig.local.delivered == []


def test_loop_detected_by_received_count(tmp_path):
    target = BatchTarget()
    rig = Rig(tmp_path, target, max_hops=3)
    looped = b"Received: x\r\n" * 4 + b"Subject: loop\r\n\r\nbody Received: no\r\n"
    qid = rig.queue("a@remote.test", message=looped)
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    assert target.calls == []
    assert rig.spool.queue_ids() == [] and len(rig.dsns()) == 1
    ok = rig.queue("a@remote.test", message=b"Received: x\r\n" * 3 + b"\r\nbody\r\n")
    rig.runner.enqueued(ok)
    rig.clock.advance(0)
    assert target.calls == [["a@remote.test"]]


def test_delay_warning_once(tmp_path):
    target = BatchTarget({"a@remote.test": [TEMP] * 5})
    rig = Rig(tmp_path, target, retry_initial=100, retry_max=100, delay_warning=150)
    qid = rig.queue("a@remote.test")
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    rig.clock.advance(100)
    assert rig.dsns() == []
    rig.clock.advance(100)  # 200s old: the warning
    assert len(rig.dsns()) == 1
    rig.clock.advance(100)
    assert len(rig.dsns()) == 1
    assert rig.spool.load(qid).recipients[0].dsn == "delayed"


def test_a_dsn_that_cannot_be_spooled_is_retried_and_the_entry_kept(tmp_path):
    target = BatchTarget({"b@remote.test": [GONE]})
    rig = Rig(tmp_path, target, retry_initial=60)
    broken = {"on": True}
    store = rig.spool.store

    def flaky(envelope, message):
        if broken["on"]:
            return defer.fail(OSError("disk full"))
        return store(envelope, message)

    rig.spool.store = flaky
    qid = rig.queue("b@remote.test")
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    assert rig.spool.queue_ids() == [qid]
    assert rig.spool.load(qid).recipients[0].state is RecipientState.FAILED
    broken["on"] = False
    rig.clock.advance(60)
    assert rig.spool.queue_ids() == [] and len(rig.dsns()) == 1
    assert target.calls == [["b@remote.test"]]  # never delivered twice


# --- administration: hold, release, delete, retry, flush --------------------------------


def test_hold_release_and_retry(tmp_path):
    target = BatchTarget({"a@remote.test": [TEMP]})
    rig = Rig(tmp_path, target, retry_initial=3000, control_interval=1)
    rig.runner.start()
    qid = rig.queue("a@remote.test")
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    assert len(target.calls) == 1
    control.write_request(rig.root, "hold", qid)
    rig.clock.advance(1)
    assert rig.spool.load(qid).held and control.pending_requests(rig.root) == []
    rig.clock.advance(3000)  # due, but held
    assert len(target.calls) == 1
    control.write_request(rig.root, "release", qid)
    rig.clock.advance(1)
    assert len(target.calls) == 2 and rig.spool.queue_ids() == []


def test_retry_and_flush_skip_the_wait(tmp_path):
    target = BatchTarget({"a@remote.test": [TEMP], "b@remote.test": [TEMP]})
    rig = Rig(tmp_path, target, retry_initial=3000, control_interval=1)
    rig.runner.start()
    first, second = rig.queue("a@remote.test"), rig.queue("b@remote.test")
    for qid in (first, second):
        rig.runner.enqueued(qid)
    rig.clock.advance(0)
    control.write_request(rig.root, "retry", first)
    rig.clock.advance(1)
    assert rig.spool.queue_ids() == [second]
    control.write_request(rig.root, "flush")
    rig.clock.advance(1)
    assert rig.spool.queue_ids() == []


def test_delete_removes_without_a_bounce(tmp_path):
    target = BatchTarget({"a@remote.test": [TEMP]})
    rig = Rig(tmp_path, target, control_interval=1)
    rig.runner.start()
    qid = rig.queue("a@remote.test")
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    control.write_request(rig.root, "delete", qid)
    rig.clock.advance(1)
    assert rig.spool.queue_ids() == [] and rig.dsns() == []
    rig.clock.advance(10000)
    assert len(target.calls) == 1


def test_requests_made_while_stopped_apply_before_delivery(tmp_path):
    target = BatchTarget()
    rig = Rig(tmp_path, target)
    qid = rig.queue("a@remote.test")
    control.write_request(rig.root, "hold", qid)
    rig.runner.start()
    rig.clock.advance(0)
    assert target.calls == [] and rig.spool.load(qid).held


def test_a_request_for_an_entry_in_flight_waits(tmp_path):
    target = BatchTarget({"a@remote.test": [TEMP]})
    gate = target.gates[0] = defer.Deferred()
    rig = Rig(tmp_path, target, control_interval=1, retry_initial=3000)
    rig.runner.start()
    qid = rig.queue("a@remote.test")
    rig.runner.enqueued(qid)
    rig.clock.advance(0)
    control.write_request(rig.root, "hold", qid)
    rig.clock.advance(1)
    assert len(control.pending_requests(rig.root)) == 1  # not applied mid-attempt
    gate.callback(None)
    rig.clock.advance(1)
    assert rig.spool.load(qid).held  # the attempt's rewrite did not undo it


def test_junk_in_the_control_directory_is_ignored(tmp_path):
    rig = Rig(tmp_path, BatchTarget())
    directory = control.control_dir(rig.root)
    directory.mkdir()
    (directory / "1.hold.ABC..DEF").write_text("")
    (directory / "x").write_text("")
    assert control.pending_requests(rig.root) == []
    assert list(directory.iterdir()) == []


def test_a_batch_that_ends_the_entry_is_recorded_by_its_durable_removal(tmp_path):
    """The usual relayed message (one batch, all sent): no record appended and then an
    unsynced removal, but one removal made durable in the run lane; an entry that goes
    on (a recipient deferred) still has every outcome on disk before its next step."""
    rig = Rig(tmp_path, BatchTarget({"b@remote.test": [TEMP]}))
    lanes: list[tuple[str, str]] = []

    def lane(name):
        def run(f, *args):
            lanes.append((name, f.__name__))
            return run_now(f, *args)
        return run

    rig.runner.run_blocking, rig.runner.run_unsynced = lane("synced"), lane("unsynced")
    done = rig.queue("a@remote.test")
    rig.runner.enqueued(done)
    rig.clock.advance(0)
    assert rig.spool.queue_ids() == []
    assert [f for _, f in lanes] == ["_load", "remove_durably"]
    assert lanes[-1] == ("synced", "remove_durably")

    lanes.clear()
    going_on = rig.queue("a@remote.test", "b@remote.test")
    rig.runner.enqueued(going_on)
    rig.clock.advance(0)
    assert ("synced", "record_steps") in lanes  # a's outcome, before anything else
    assert rig.state(going_on) == {"a@remote.test": "done", "b@remote.test": "pending"}
