"""The runner process's pipe (gateway/runnerproc): framing, and what each side does
with a frame. No process, no socket: StringTransport and task.Clock."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, formatEventAsClassicLogText

from gateway.envelope import Envelope, Recipient
from gateway.metrics import Registry
from gateway.runnerproc import channel
from gateway.runnerproc.child import METRICS_INTERVAL, ChildChannel
from gateway.runnerproc.parent import Dispatch, RunnerProcess, child_argv, merge_metrics


def test_frames_survive_any_split():
    data = (channel.frame(channel.QUEUED, b"1K16KFD0JLB0TGN8")
            + channel.frame(channel.RELOAD)
            + channel.frames(channel.DELIVERED, [b"/var/mail/a", "/x/é".encode()]))
    for cut in range(len(data) + 1):
        d = channel.Decoder()
        got = d.feed(data[:cut]) + d.feed(data[cut:])
        assert got == [(b"Q", b"1K16KFD0JLB0TGN8"), (b"H", b""), (b"D", b"/var/mail/a"),
                       (b"D", "/x/é".encode())]


@pytest.mark.parametrize("bad", [b"x:Q,", b"5:Qabcd;", b"0:,", b"99999999:Q",
                                 b"123456789012345"])
def test_garbage_is_a_frame_error(bad):
    with pytest.raises(channel.FrameError):
        channel.Decoder(max_frame=1000).feed(bad)


def test_a_log_event_keeps_its_text_level_and_fields():
    events = []
    log = Logger(namespace="gateway.queue.runner", observer=events.append)
    log.warn("{queue_id}: to=<{to}> deferred", queue_id="QID1", to="a@b.test",
             route=object())
    back = channel.decode_event(channel.encode_event(events[0]))
    assert back["log_level"] is LogLevel.warn
    assert back["queue_id"] == "QID1" and back["to"] == "a@b.test"
    assert "route" not in back and back["process"] == "runner"
    assert back["log_time"] == events[0]["log_time"]
    line = formatEventAsClassicLogText(back)
    assert "[gateway.queue.runner#warn] QID1: to=<a@b.test> deferred" in line


def test_a_failure_travels_as_text():
    events = []
    log = Logger(observer=events.append)
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        log.failure("{queue_id}: runner error", queue_id="Q2")
    back = channel.decode_event(channel.encode_event(events[0]))
    assert back["log_level"] is LogLevel.critical
    assert "ZeroDivisionError" in back["log_text"] and "Q2: runner error" in back["log_text"]
    json.dumps(back, default=str)


# -- the parent's side --

class FakeFolder:
    def __init__(self):
        self.learned: list[list[str]] = []
        self.relisted = 0

    def relist(self):
        self.relisted += 1


def test_parent_indexes_told_names_one_learn_at_a_time_spaced():
    pending: list[defer.Deferred] = []
    folder = FakeFolder()

    def learn(f, names):
        f.learned.append(names)
        d = defer.Deferred()
        pending.append(d)
        return d

    clock = task.Clock()
    dispatch = Dispatch(lambda path: [folder] if path == "/m/alice" else [], learn,
                        publish=lambda e: None, clock=clock, spacing=0.1)
    dispatch.frames(channel.Decoder().feed(channel.frames(channel.DELIVERED, [
        channel.join_delivered("/m/alice", ["1.Q1", "2.Q2"]),
        channel.join_delivered("/m/bob", ["3.Q3"])])))
    assert folder.learned == [["1.Q1", "2.Q2"]]
    dispatch.frames([(channel.DELIVERED, channel.join_delivered("/m/alice", ["4"])),
                     (channel.DELIVERED, channel.join_delivered("/m/alice", ["5"]))])
    assert len(folder.learned) == 1  # one runs: the two go in the next, after it
    pending.pop(0).callback([1, 2])
    assert len(folder.learned) == 1  # spaced: each learn is an index commit
    clock.advance(0.1)
    assert folder.learned[1] == ["4", "5"]
    pending.pop(0).callback([3, 4])
    clock.advance(1)
    assert len(folder.learned) == 2
    dispatch.frames([(channel.DELIVERED, channel.join_delivered("/m/alice", ["6"]))])
    assert folder.learned[2] == ["6"]  # nothing ran: at once
    dispatch.child_ended()
    assert folder.relisted == 1


def test_delivered_payload_round_trip():
    path, names = channel.split_delivered(channel.join_delivered("/m/é", ["a", "b:2,S"]))
    assert path == "/m/é" and names == ["a", "b:2,S"]


def test_parent_takes_counts_and_publishes_log_events():
    published = []
    dispatch = Dispatch(lambda p: [], lambda f, n: defer.succeed(None), published.append)
    events = []
    Logger(observer=events.append).info("{queue_id}: removed", queue_id="Q3")
    dispatch.frames([(channel.COUNTS, b"3 17"),
                     (channel.LOG, channel.encode_event(events[0]))])
    assert dispatch.counts == {"active": 3, "scheduled": 17}
    assert published[0]["queue_id"] == "Q3"


class FakeProcessTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.pid = 4242
        self.stdin_closed = False
        self.signals = []

    def closeStdin(self):
        self.stdin_closed = True

    def signalProcess(self, sig):
        self.signals.append(sig)


class FakeSpawner(task.Clock):
    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, proto, executable, args, env=None, childFDs=None):
        proto.makeConnection(FakeProcessTransport())
        self.spawned.append((proto, args, env, childFDs))
        return proto.transport


def ended(proto, code=0, signal=None):
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure
    proto.processEnded(Failure(ProcessTerminated(code, signal)))


def test_queue_ids_go_down_the_pipe_and_a_dead_child_is_started_again_with_backoff():
    reactor = FakeSpawner()
    rp = RunnerProcess(reactor, child_argv("/etc/m.toml", 8, 9),
                       Dispatch(lambda p: [], lambda f, n: None, lambda e: None),
                       env={"A": "1"})
    rp.privilegedStartService()
    rp.startService()
    proto, args, env, fds = reactor.spawned[0]
    assert args[1:] == ["-m", "gateway.runnerproc", "--config", "/etc/m.toml",
                        "--uid", "8", "--gid", "9"]
    assert fds == {0: "w", 1: "r", 2: "r"}
    rp.enqueued("AAA")
    envelope = Envelope("a@example.test", [Recipient("b@example.test")], queue_id="BBB",
                        hops=2)
    rp.enqueued("BBB", envelope)
    assert proto.transport.value() == b""  # gathered for one write
    reactor.advance(channel.GATHER)
    (a, b) = channel.Decoder().feed(proto.transport.value())
    assert a == (b"Q", b"AAA")
    assert b[0] == b"Q" and channel.split_queued(b[1]) == ("BBB", envelope)
    ended(proto, signal=9)
    rp.enqueued("CCC")  # no child: found by the next one's scan of the spool
    reactor.advance(0.9)
    assert len(reactor.spawned) == 1
    reactor.advance(0.2)
    assert len(reactor.spawned) == 2
    ended(reactor.spawned[1][0], code=1)
    reactor.advance(1.5)
    assert len(reactor.spawned) == 2  # 2 s the second time
    reactor.advance(0.6)
    assert len(reactor.spawned) == 3


def test_stop_closes_the_childs_stdin_waits_and_kills_one_that_lingers():
    reactor = FakeSpawner()
    rp = RunnerProcess(reactor, ["py"], Dispatch(lambda p: [], lambda f, n: None, lambda e: None),
                       stop_timeout=5, env={})
    rp.privilegedStartService()
    proto = reactor.spawned[0][0]
    d = rp.stopService()
    assert proto.transport.stdin_closed and not d.called
    reactor.advance(5)
    assert proto.transport.signals == ["KILL"]
    ended(proto, signal=9)
    assert d.called
    reactor.advance(100)
    assert len(reactor.spawned) == 1  # stopping: not started again


def test_env_of_the_child_has_no_notify_socket(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    rp = RunnerProcess(task.Clock(), ["py"], Dispatch(lambda p: [], lambda f: None,
                                                          lambda e: None))
    assert "NOTIFY_SOCKET" not in rp.env


# -- the child's side --

class FakeRunner:
    def __init__(self):
        self.ids = []
        self.envelopes = []
        self.active, self.scheduled = 0, 0

    def enqueued(self, qid, envelope=None):
        self.ids.append(qid)
        self.envelopes.append(envelope)

    def counts(self):
        return {"active": self.active, "scheduled": self.scheduled}


class ChildReactor(task.Clock):
    running = True

    def __init__(self):
        super().__init__()
        self.stopped = False
        self.from_thread = []

    def callFromThread(self, f, *args):
        self.from_thread.append((f, args))

    def stop(self):
        self.stopped = True


def test_child_holds_ids_until_the_runner_started_then_takes_them():
    reactor = ChildReactor()
    link = ChildChannel(reactor)
    link.makeConnection(StringTransport())
    b2 = channel.frame(channel.QUEUED, b"B2")
    link.dataReceived(channel.frame(channel.QUEUED, b"A1") + b2[:3])
    runner = FakeRunner()
    assert runner.ids == []
    link.started(runner)
    assert runner.ids == ["A1"]
    link.dataReceived(b2[3:])
    assert runner.ids == ["A1", "B2"]


def test_child_tells_each_delivered_path_once_per_turn_and_counts_when_they_change():
    reactor = ChildReactor()
    link = ChildChannel(reactor)
    out = StringTransport()
    link.makeConnection(out)
    runner = FakeRunner()
    link.started(runner)
    assert out.value() == b""  # 0 0: nothing new
    link.delivered("/m/a", "1.Q1")
    link.delivered("/m/a", "2.Q2")
    link.delivered("/m/b", "3.Q3")
    assert len(reactor.from_thread) == 1  # one wake-up of the reactor for the three
    f, args = reactor.from_thread.pop()
    f(*args)
    reactor.advance(channel.GATHER)
    got = channel.Decoder().feed(out.value())
    assert sorted(channel.split_delivered(p) for k, p in got) == [
        ("/m/a", ["1.Q1", "2.Q2"]), ("/m/b", ["3.Q3"])]
    out.clear()
    runner.active, runner.scheduled = 2, 5
    reactor.advance(0.5)
    reactor.advance(channel.GATHER)
    assert channel.Decoder().feed(out.value()) == [(b"C", b"2 5")]


def test_child_stops_when_the_parent_closes_the_pipe_and_reloads_on_request():
    reactor = ChildReactor()
    link = ChildChannel(reactor)
    link.makeConnection(StringTransport())
    reloads = []
    link.reload = lambda: reloads.append(1)
    link.dataReceived(channel.frame(channel.RELOAD))
    assert reloads == [1]
    link.connectionLost(None)
    assert reactor.stopped


def test_child_looks_at_the_alias_files_before_each_entry_it_is_told_of():
    # A listener that reloaded a changed alias file (a new alias) and accepted mail
    # for it: the runner must route that entry with the new table, not its old one.
    reactor = ChildReactor()
    link = ChildChannel(reactor)
    link.makeConnection(StringTransport())
    runner = FakeRunner()
    link.started(runner)
    order = []
    link.check_aliases = lambda: order.append("check")
    runner.enqueued = lambda qid, envelope=None: order.append(qid)
    link.dataReceived(channel.frame(channel.QUEUED, b"A1") + channel.frame(channel.QUEUED, b"B2"))
    assert order == ["check", "A1", "check", "B2"]


def test_child_sends_what_its_metrics_counted_and_the_parent_adds_it():
    reactor = ChildReactor()
    counted = Registry()
    link = ChildChannel(reactor, registry=counted)
    out = StringTransport()
    link.makeConnection(out)
    counted.inc("mailgateway_deliveries_total", status="deferred")
    reactor.advance(METRICS_INTERVAL)
    reactor.advance(channel.GATHER)
    counted.inc("mailgateway_deliveries_total", status="deferred")
    link.connectionLost(None)  # the last counts go out before the pipe closes
    gateway = Registry()
    pairs = channel.Decoder().feed(out.value())
    assert [k for k, _ in pairs] == [channel.METRICS, channel.METRICS]
    for _, payload in pairs:
        merge_metrics(payload, gateway)
    assert gateway.counters == {("mailgateway_deliveries_total", (("status", "deferred"),)): 2.0}
    with pytest.raises(channel.FrameError):
        merge_metrics(b'{"c": [["x", [], "many"]]}', gateway)


def test_frames_written_close_together_go_out_in_one_write():
    clock = task.Clock()
    writes: list[bytes] = []
    gather = channel.Gatherer(clock, writes.append, delay=0.005)
    gather(channel.frame(channel.LOG, b"{}"))
    clock.advance(0.004)
    gather(channel.frame(channel.DELIVERED, b"/m\0n"))
    assert writes == []
    clock.advance(0.001)
    assert writes == [b"3:L{},5:D/m\x00n,"]
    gather(b"x")
    gather.flush()  # at once (the channel is closing)
    assert writes[-1] == b"x"
    clock.advance(1)
    assert len(writes) == 2
    gather(b"y")
    gather.cancel()  # the other end is gone
    clock.advance(1)
    assert len(writes) == 2


def test_a_small_envelope_travels_with_its_id_so_the_child_reads_no_spool():
    envelope = Envelope("a@example.test", [Recipient("b@example.test")], queue_id="Q1",
                        hops=1, arrived=1000.0)
    reactor = ChildReactor()
    link = ChildChannel(reactor)
    link.makeConnection(StringTransport())
    runner = FakeRunner()
    link.started(runner)
    link.dataReceived(channel.frame(channel.QUEUED, channel.join_queued("Q1", envelope))
                      + channel.frame(channel.QUEUED, b"Q2\0{not json")
                      + channel.frame(channel.QUEUED, b"Q3"))
    assert runner.ids == ["Q1", "Q2", "Q3"]
    assert runner.envelopes == [envelope, None, None]  # None: read from the spool
    big = Envelope("a@example.test", [Recipient(f"r{i}@example.test")
                                      for i in range(3000)], queue_id="Q4")
    assert channel.join_queued("Q4", big) == b"Q4"
