"""The runner with aliases: targets recorded durably before delivery, each with its own
state; owners get the DSNs of what their alias expanded to; loops bounce once."""

from __future__ import annotations

from twisted.internet import defer, task

from gateway.config import parse
from gateway.durable import run_now
from gateway.envelope import Envelope, Recipient, RecipientState, new_queue_id
from gateway.errors import MailError
from gateway.queue.runner import QueueRunner
from gateway.queue.spool import Spool
from gateway.resolve.aliases import parse as parse_aliases
from gateway.resolve.router import Router


class Users:
    def exists(self, address: str) -> bool:
        return address in {"alice@example.test", "bob@example.test"}


class Target:
    def __init__(self, kind: str, spool: Spool, outcomes=()):
        self.kind = kind
        self.spool = spool
        self.outcomes = list(outcomes)
        self.calls = []
        self.seen_on_disk = []

    def deliver(self, envelope, route, message_path, recovering):
        self.calls.append(route)
        # What a crash at this instant would find on disk.
        stored = self.spool.load(envelope.queue_id)
        self.seen_on_disk.append(sorted(r.address for r in stored.recipients if r.route))
        outcome = self.outcomes.pop(0) if self.outcomes else None
        return defer.fail(outcome) if outcome else defer.succeed(None)


class Bouncer:
    def __init__(self):
        self.bounces = []

    def bounce(self, envelope, recipients, message_path, action):
        self.bounces.append((envelope.sender, [r.address for r in recipients], action,
                             [r.last_error for r in recipients]))
        return defer.succeed(None)


ALIASES = ("team: alice, bob, \"|/usr/bin/log\"\nsolo: \"|/usr/bin/log\"\n"
           "dev: alice, ghost\nowner-dev: bob\n"
           "a: b\nb: a\n")


def rig(tmp_path, program_outcomes=(), run_blocking=run_now):
    table, faults = parse_aliases(ALIASES, "aliases", read=lambda p: "", domains=["example.test"])
    assert not faults
    router = Router(["example.test"], Users(), aliases=table)
    spool = Spool(tmp_path, reactor=None)
    local, program = Target("local", spool), Target("program", spool, program_outcomes)
    clock = task.Clock()
    clock.advance(1000)
    bouncer = Bouncer()
    settings = parse({"server": {"domains": ["example.test"]}}).queue
    runner = QueueRunner(spool=spool, router=router, targets={"local": local,
                                                              "program": program},
                         settings=settings, reactor=clock, run_blocking=run_blocking,
                         bouncer=bouncer)
    return runner, spool, clock, local, program, bouncer


def send(runner, spool, clock, *rcpts):
    env = Envelope(sender="carol@remote.test", recipients=[Recipient(r) for r in rcpts],
                   queue_id=new_queue_id(999.0), arrived=999.0)
    spool.store_blocking(env, b"Subject: hi\r\n\r\nbody\r\n")
    runner.enqueued(env.queue_id)
    clock.advance(0)
    return env.queue_id


def test_alias_targets_are_on_disk_before_the_first_delivery(tmp_path):
    runner, spool, clock, local, program, _ = rig(tmp_path)
    send(runner, spool, clock, "team@example.test")
    assert [r.mailbox for r in local.calls] == ["alice@example.test", "bob@example.test"]
    assert [r.command for r in program.calls] == ["/usr/bin/log"]
    assert local.seen_on_disk[0] == ["alice@example.test", "bob@example.test",
                                     "team@example.test"]
    assert spool.queue_ids() == []


def test_a_retried_program_is_the_only_target_attempted_again(tmp_path):
    runner, spool, clock, local, program, _ = rig(
        tmp_path, [MailError(451, "4.3.0", "exit 75")])
    qid = send(runner, spool, clock, "team@example.test")
    stored = spool.load(qid)
    states = {(r.address, r.route["kind"] if r.route else "-"): r.state
              for r in stored.recipients}
    assert states == {("team@example.test", "-"): RecipientState.DONE,
                      ("alice@example.test", "local"): RecipientState.DONE,
                      ("bob@example.test", "local"): RecipientState.DONE,
                      ("team@example.test", "program"): RecipientState.PENDING}
    clock.advance(runner.settings.retry_initial)
    assert len(local.calls) == 2 and len(program.calls) == 2
    assert spool.queue_ids() == []


def test_unknown_target_bounces_to_the_alias_owner_not_the_poster(tmp_path):
    runner, spool, clock, local, _, bouncer = rig(tmp_path)
    send(runner, spool, clock, "dev@example.test")
    assert [r.mailbox for r in local.calls] == ["alice@example.test"]
    assert local.calls[0].sender == "owner-dev@example.test"
    assert len(bouncer.bounces) == 1
    sender, rcpts, action, errors = bouncer.bounces[0]
    assert (sender, rcpts, action) == ("owner-dev@example.test", ["ghost@example.test"],
                                       "failed")
    assert errors[0].startswith("550 5.1.1 <ghost@example.test>")


def test_loop_bounces_once_with_its_diagnostic(tmp_path):
    runner, spool, clock, local, program, bouncer = rig(tmp_path)
    send(runner, spool, clock, "a@example.test")
    assert local.calls == [] and program.calls == []
    assert len(bouncer.bounces) == 1
    sender, rcpts, action, errors = bouncer.bounces[0]
    assert (sender, rcpts, action) == ("carol@remote.test", ["a@example.test"], "failed")
    assert errors == ["554 5.4.6 alias loop: a -> b -> a"]
    assert spool.queue_ids() == []


class HeldTarget:
    """A target whose deliveries end only when the test says so."""

    def __init__(self, kind: str, parallel: int | None = None):
        self.kind = kind
        if parallel is not None:
            self.parallel = parallel
        self.waiting: list[tuple[str, defer.Deferred]] = []
        self.recovering: list[bool] = []

    def deliver(self, envelope, route, message_path, recovering):
        d: defer.Deferred = defer.Deferred()
        self.recovering.append(recovering)
        self.waiting.append((route.mailbox or route.command, d))
        return d

    def finish_first(self):
        _, d = self.waiting.pop(0)
        d.callback(None)  # the runner may hand over the next one at once


def fanout_rig(tmp_path, local):
    names = [f"u{i}" for i in range(1, 8)]
    table, faults = parse_aliases("crew: " + ", ".join(names) + "\n", "aliases",
                                  read=lambda p: "", domains=["example.test"])
    assert not faults

    class Everyone:
        def exists(self, address: str) -> bool:
            return address.split("@")[0] in names

    spool = Spool(tmp_path, reactor=None)
    clock = task.Clock()
    clock.advance(1000)
    runner = QueueRunner(spool=spool, router=Router(["example.test"], Everyone(), aliases=table),
                         targets={"local": local},
                         settings=parse({"server": {"domains": ["example.test"]}}).queue,
                         reactor=clock, run_blocking=run_now, bouncer=Bouncer())
    return runner, spool, clock


def test_a_target_that_takes_several_gets_an_aliass_copies_at_once(tmp_path):
    local = HeldTarget("local", parallel=3)
    runner, spool, clock = fanout_rig(tmp_path, local)
    send(runner, spool, clock, "crew@example.test")
    # Three in flight, not one: Maildir copies then share one group commit.
    assert [m for m, _ in local.waiting] == [f"u{i}@example.test" for i in (1, 2, 3)]
    local.waiting.pop(1)[1].callback(None)  # one ends: the next starts, never more than 3
    assert [m for m, _ in local.waiting] == [f"u{i}@example.test" for i in (1, 3, 4)]
    while local.waiting:
        local.finish_first()
    assert spool.queue_ids() == []


def test_a_target_without_parallel_gets_one_route_at_a_time(tmp_path):
    local = HeldTarget("local")
    runner, spool, clock = fanout_rig(tmp_path, local)
    qid = send(runner, spool, clock, "crew@example.test")
    assert [m for m, _ in local.waiting] == ["u1@example.test"]
    local.finish_first()
    assert [m for m, _ in local.waiting] == ["u2@example.test"]
    while local.waiting:
        local.finish_first()
    assert spool.queue_ids() == [] and qid


def recording_pool(calls):
    """run_now that notes what went to the pool (the reactor thread must not wait on disk)."""
    def run_blocking(f, *args):
        calls.append(f.__name__)
        return run_now(f, *args)
    return run_blocking


def test_the_finished_entry_is_removed_in_the_pool(tmp_path):
    calls = []
    runner, spool, clock, local, program, _ = rig(tmp_path, run_blocking=recording_pool(calls))
    send(runner, spool, clock, "team@example.test")
    assert spool.queue_ids() == [] and calls[-1] == "remove"


def test_one_target_is_delivered_without_recording_it_first(tmp_path):
    calls = []
    runner, spool, clock, local, program, _ = rig(tmp_path, run_blocking=recording_pool(calls))
    send(runner, spool, clock, "solo@example.test")
    # Nothing could be done before the only target: no envelope rewrite ahead of it.
    assert [r.command for r in program.calls] == ["/usr/bin/log"]
    assert program.seen_on_disk == [[]] and "update_steps" not in calls
    assert spool.queue_ids() == []
    send(runner, spool, clock, "team@example.test")  # several: recorded first, as before
    assert "update_steps" in calls and local.seen_on_disk[0] != []


def test_an_alias_of_mailboxes_only_is_not_recorded_before_its_copies(tmp_path):
    local = HeldTarget("local", parallel=3)
    runner, spool, clock = fanout_rig(tmp_path, local)
    qid = send(runner, spool, clock, "crew@example.test")
    local.finish_first()
    local.finish_first()
    # A crash now finds the alias itself pending, its copies not yet written down ...
    (stored,) = spool.load(qid).recipients
    assert (stored.address, stored.route) == ("crew@example.test", None)
    runner.stop()
    # ... and the next start expands it again, every copy marked as maybe done
    # already, which a Maildir recognises by its name (deliver/maildir.py).
    again = HeldTarget("local", parallel=3)
    runner, spool, clock = fanout_rig(tmp_path, again)
    runner.start()
    clock.advance(0)
    while again.waiting:
        again.finish_first()
    assert len(again.recovering) == 7 and all(again.recovering)
    assert spool.queue_ids() == []
