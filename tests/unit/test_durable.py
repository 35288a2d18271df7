"""Group commit: calls made while trips are in flight share the next trip, in order."""

from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool

from gateway.durable import BlockingBatcher


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
