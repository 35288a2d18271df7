"""Group commit: calls made while trips are in flight share the next trip, in order."""

import os

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool

from gateway import durable
from gateway.durable import BlockingBatcher
from gateway.envelope import Envelope, Recipient, new_queue_id
from gateway.errors import SpoolError
from gateway.queue.spool import Spool


class InlinePool(ThreadPool):
    """Runs nothing until told: each callInThreadWithCallback is one trip to release."""

    def __init__(self):
        super().__init__()
        self.trips = []

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        self.trips.append((onResult, func, args, kw))

    def release(self):
        onResult, func, args, kw = self.trips.pop(0)
        onResult(True, func(*args, **kw))


class Reactor(MemoryReactorClock):
    def __init__(self):
        super().__init__()
        self.pool = InlinePool()

    def getThreadPool(self):
        return self.pool

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)


def test_calls_queue_behind_busy_trips_and_go_together():
    reactor = Reactor()
    batcher = BlockingBatcher(reactor, max_trips=1)
    order, results = [], []
    for n in range(4):
        batcher(lambda n=n: order.append(n) or n * 10).addCallback(results.append)
    assert len(reactor.pool.trips) == 1  # the first call went alone; three wait
    reactor.pool.release()
    assert results == [0] and len(reactor.pool.trips) == 1
    reactor.pool.release()  # the three waiting calls, one trip
    assert results == [0, 10, 20, 30] and order == [0, 1, 2, 3]
    assert reactor.pool.trips == []


def test_an_exception_fails_only_its_own_call():
    reactor = Reactor()
    batcher = BlockingBatcher(reactor, max_trips=1)
    outcomes = []
    batcher(lambda: 1).addBoth(outcomes.append)
    batcher(lambda: 1 / 0).addBoth(outcomes.append)
    batcher(lambda: 3).addBoth(outcomes.append)
    reactor.pool.release()
    reactor.pool.release()
    assert outcomes[0] == 1 and outcomes[2] == 3
    assert outcomes[1].check(ZeroDivisionError)


# --- calls in steps: every call's files durable together, before any rename ---------

class SyncLog:
    """Stands in for syncfs(2): records what each sync found in the spool."""

    def __init__(self):
        self.calls = []
        self.fail = False
        self.spool = None

    def __call__(self, fd):
        self.calls.append({"tmp": len(os.listdir(self.spool.tmp)),
                           "entries": len(os.listdir(self.spool.entries))})
        return -1 if self.fail else 0


@pytest.fixture
def syncfs(monkeypatch):
    log = SyncLog()
    monkeypatch.setattr(durable, "_syncfs", log)
    monkeypatch.setattr(durable, "_devices", {})
    return log


def make_spool(tmp_path, syncfs):
    spool = syncfs.spool = Spool(tmp_path / "queue", reactor=None)
    envelopes = [Envelope(sender="bob@remote.test", recipients=[Recipient("a@example.test")],
                          queue_id=new_queue_id(1000.0 + n), arrived=1000.0 + n)
                 for n in range(3)]
    return spool, envelopes


def test_filesystem_mode_syncs_once_per_step_for_all_calls(tmp_path, syncfs):
    spool, envelopes = make_spool(tmp_path, syncfs)
    calls = [(spool.store_steps, (env, b"message")) for env in envelopes]
    results = durable.run_trip(calls, "filesystem")
    assert [value for _, value in results] == [env.queue_id for env in envelopes]
    # One sync with all six files written and none renamed yet (data before
    # name), then one for the renames: two for the trip, not one per file.
    assert syncfs.calls == [{"tmp": 6, "entries": 0}, {"tmp": 0, "entries": 6}]
    assert spool.queue_ids() == sorted(e.queue_id for e in envelopes)


def test_a_failed_sync_fails_every_waiting_call_and_leaves_no_entry(tmp_path, syncfs):
    syncfs.fail = True
    spool, envelopes = make_spool(tmp_path, syncfs)
    results = durable.run_trip([(spool.store_steps, (env, b"m")) for env in envelopes],
                               "filesystem")
    assert [ok for ok, _ in results] == [False] * 3
    assert all(value.check(SpoolError) for _, value in results)
    assert spool.queue_ids() == [] and os.listdir(spool.tmp) == []


def test_file_mode_never_calls_syncfs(tmp_path, syncfs):
    spool, envelopes = make_spool(tmp_path, syncfs)
    results = durable.run_trip([(spool.store_steps, (env, b"m")) for env in envelopes], "file")
    assert all(ok for ok, _ in results) and len(spool.queue_ids()) == 3
    assert syncfs.calls == []


def stepped_into(order: list):
    """A call in steps (durable.run_trip): notes its write, yields, notes its rename."""
    def stepped(name):
        order.append(f"{name} writes")
        yield
        order.append(f"{name} renames")
        return name
    return stepped


def test_plain_and_stepped_calls_share_a_trip_in_order(tmp_path, syncfs):
    order = []
    stepped = stepped_into(order)

    results = durable.run_trip([(stepped, ("a",)), (order.append, ("plain",)),
                                (stepped, ("b",))], "filesystem")
    assert [value for _, value in results] == ["a", None, "b"]
    assert order == ["a writes", "plain", "b writes", "a renames", "b renames"]


def test_outside_a_trip_each_step_is_durable_at_once(tmp_path, syncfs):
    spool, envelopes = make_spool(tmp_path, syncfs)
    assert spool.store_blocking(envelopes[0], b"m") == envelopes[0].queue_id
    assert syncfs.calls == []  # O_DSYNC and fsync instead
    assert spool.queue_ids() == [envelopes[0].queue_id]


def test_lockstep_runs_several_calls_in_steps_as_one_call(tmp_path, syncfs):
    """An alias's copies in one call of a trip: all written, one sync, all renamed."""
    order = []
    stepped = stepped_into(order)

    def broken():
        raise ValueError("not this one")
        yield  # a call in steps, failing before its step

    calls = [(stepped, ("a",)), (broken, ()), (order.append, ("plain",)), (stepped, ("b",))]
    ((ok, results),) = durable.run_trip([(durable.lockstep, (calls,))], "filesystem")
    assert ok
    assert [value for _, value in results[:1] + results[2:]] == ["a", None, "b"]
    assert results[1][0] is False and results[1][1].check(ValueError)
    assert order == ["a writes", "plain", "b writes", "a renames", "b renames"]


def test_a_failed_sync_reaches_each_call_of_a_lockstep(tmp_path, syncfs):
    syncfs.fail = True
    spool, envelopes = make_spool(tmp_path, syncfs)
    calls = [(spool.store_steps, (env, b"m")) for env in envelopes]
    ((ok, results),) = durable.run_trip([(durable.lockstep, (calls,))], "filesystem")
    assert ok and [ok for ok, _ in results] == [False] * 3
    assert all(value.check(SpoolError) for _, value in results)
    assert spool.queue_ids() == [] and os.listdir(spool.tmp) == []  # each cleaned up
