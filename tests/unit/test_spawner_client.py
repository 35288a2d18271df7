"""deliver/spawner.py: the gateway's end of the helper, with a fake reactor (no processes)."""

from __future__ import annotations

import json
import signal
import struct

from twisted.internet import task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.deliver.spawner import KILL_GRACE, LOST, UNPRIVILEGED, Job, Outcome, Spawner

FRAME = struct.Struct(">I")


class HelperTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.stdin_closed = False
        self.signals = []

    def signalProcess(self, name):
        self.signals.append(name)

    def closeStdin(self):
        self.stdin_closed = True

    def frames(self) -> list[dict]:
        data, out = self.value(), []
        while data:
            (size,) = FRAME.unpack_from(data)
            out.append(json.loads(data[FRAME.size:FRAME.size + size]))
            data = data[FRAME.size + size:]
        return out


class Reactor(task.Clock):
    """A clock with spawnProcess: each helper started is recorded with its protocol."""

    def __init__(self):
        super().__init__()
        self.helpers = []

    def spawnProcess(self, proto, executable, argv, env, path):
        transport = HelperTransport()
        self.helpers.append({"proto": proto, "argv": argv, "env": env, "path": path,
                             "transport": transport})
        proto.makeConnection(transport)
        return transport


def reply(helper, **obj) -> None:
    data = json.dumps(obj).encode()
    wire = FRAME.pack(len(data)) + data
    for i in range(len(wire)):  # byte by byte: frames are reassembled
        helper["proto"].outReceived(wire[i:i + 1])


def job(path="/spool/m.msg") -> Job:
    return Job(argv=["/usr/bin/prog", "a"], env={"SENDER": "s@x"},
               head=b"Return-Path: <s\xe9@x>\r\n", message_path=path,
               output_limit=4096, reply_limit=0)


def results(d) -> list:
    got = []
    d.addBoth(got.append)
    return got


def test_one_helper_serves_every_run_and_each_gets_its_own_outcome():
    reactor = Reactor()
    spawner = Spawner(reactor, 65534, 65533, "/srv")
    first, second = job(), job()
    d1, d2 = results(spawner.run(first)), results(spawner.run(second))
    (helper,) = reactor.helpers  # started once, on first use, with nothing inherited
    # The program identity and directory, taken once by the helper; nothing inherited.
    assert helper["env"] == {} and helper["argv"][-4].endswith("spawnhelper.py")
    assert helper["argv"][-3:] == ["65534", "65533", "/srv"]
    assert [f["id"] for f in helper["transport"].frames()] == [first.id, second.id]
    request = helper["transport"].frames()[0]
    assert request["argv"] == ["/usr/bin/prog", "a"] and request["env"] == {"SENDER": "s@x"}
    assert request["head"].encode("latin-1") == b"Return-Path: <s\xe9@x>\r\n"
    reply(helper, id=second.id, pid=101)
    reply(helper, id=second.id, exit=75, signal=None, output="busy\xff", stdout="")
    assert d2 == [Outcome(75, None, b"busy\xff", b"")] and d1 == []
    reply(helper, id=first.id, error="FileNotFoundError: prog")
    assert d1 == [Outcome(error="FileNotFoundError: prog")]


def test_kill_asks_the_helper_and_only_for_a_running_job():
    reactor = Reactor()
    spawner = Spawner(reactor, 65534, 65533, "/srv")
    running = job()
    spawner.run(running)
    spawner.kill(running)
    helper = reactor.helpers[0]
    assert helper["transport"].frames()[-1] == {"id": running.id, "kill": True}
    reply(helper, id=running.id, exit=None, signal=9, output="", stdout="")
    helper["transport"].clear()
    spawner.kill(running)  # ended: its process group may belong to someone else now
    assert helper["transport"].value() == b""


def test_a_helper_that_died_is_started_again_and_its_programs_are_killed_not_lost():
    reactor = Reactor()
    killed = []
    spawner = Spawner(reactor, 65534, 65533, "/srv",
                      killpg=lambda pid, sig: killed.append((pid, sig)))
    started, waiting = job(), job()
    d1, d2 = results(spawner.run(started)), results(spawner.run(waiting))
    reply(reactor.helpers[0], id=started.id, pid=4242)
    reactor.helpers[0]["proto"].processEnded(Failure(Exception("killed by signal 9")))
    # The running program cannot report any more: killed, its delivery tried again.
    assert killed == [(4242, signal.SIGKILL)]
    assert d1 == [Outcome(error=LOST)]
    assert d2 == [Outcome(error=LOST)]  # never started
    again = job()
    d3 = results(spawner.run(again))
    assert len(reactor.helpers) == 2 and spawner.starts == 2
    assert [f["id"] for f in reactor.helpers[1]["transport"].frames()] == [again.id]
    reply(reactor.helpers[1], id=again.id, pid=5000)
    reply(reactor.helpers[1], id=again.id, exit=0, signal=None, output="", stdout="")
    assert d3 == [Outcome(0, None, b"", b"")]  # once: the dead helper's jobs are gone
    assert d1 == [Outcome(error=LOST)]


def test_stop_closes_the_helpers_input():
    reactor = Reactor()
    spawner = Spawner(reactor, 65534, 65533, "/srv")
    spawner.stop()  # no helper yet: nothing to do
    spawner.run(job())
    spawner.stop()
    assert reactor.helpers[0]["transport"].stdin_closed


def test_a_helper_that_leaves_a_kill_unanswered_is_killed_and_started_again():
    reactor = Reactor()
    killed = []
    spawner = Spawner(reactor, 65534, 65533, "/srv", killpg=lambda pid, sig: killed.append(pid))
    hung = job()
    done = results(spawner.run(hung))
    helper = reactor.helpers[0]
    reply(helper, id=hung.id, pid=77)
    spawner.kill(hung)  # the timeout; a stopped helper never answers it
    reactor.advance(KILL_GRACE - 0.1)
    assert helper["transport"].signals == []
    reactor.advance(0.1)
    assert helper["transport"].signals == ["KILL"]
    helper["proto"].processEnded(Failure(Exception("killed by signal 9")))
    assert killed == [77] and done == [Outcome(error=LOST)]
    spawner.run(job())
    assert len(reactor.helpers) == 2


def test_a_kill_answered_in_time_leaves_the_helper_alone():
    reactor = Reactor()
    spawner = Spawner(reactor, 65534, 65533, "/srv")
    running = job()
    spawner.run(running)
    spawner.kill(running)
    helper = reactor.helpers[0]
    reply(helper, id=running.id, exit=None, signal=9, output="", stdout="")
    reactor.advance(KILL_GRACE)
    assert helper["transport"].signals == []


def test_a_helper_silent_to_a_ping_is_killed_and_its_deliveries_retried():
    # A process of the program user may SIGSTOP the helper (its real uid is theirs):
    # the deliveries it holds come back as 451 after ping_timeout, not [program] timeout.
    reactor = Reactor()
    spawner = Spawner(reactor, 65534, 65533, "/srv", killpg=lambda pid, sig: None,
                      ping_interval=5.0, ping_timeout=2.0)
    stuck = job()
    done = results(spawner.run(stuck))
    helper = reactor.helpers[0]
    reactor.advance(5.0)
    assert helper["transport"].frames()[-1] == {"ping": 1}
    reactor.advance(1.9)
    assert helper["transport"].signals == []
    reactor.advance(0.1)
    assert helper["transport"].signals == ["KILL"]
    helper["proto"].processEnded(Failure(Exception("killed by signal 9")))
    assert done == [Outcome(error=LOST)]
    spawner.run(job())
    assert len(reactor.helpers) == 2


def test_a_helper_that_answers_pings_is_left_alone_and_idle_it_is_not_pinged():
    reactor = Reactor()
    spawner = Spawner(reactor, 65534, 65533, "/srv", ping_interval=5.0, ping_timeout=2.0)
    running = job()
    done = results(spawner.run(running))
    helper = reactor.helpers[0]
    for seq in (1, 2, 3):
        reactor.advance(5.0)
        assert helper["transport"].frames()[-1] == {"ping": seq}
        reactor.advance(1.0)
        reply(helper, pong=seq)
    reactor.advance(10.0)
    assert helper["transport"].signals == []
    reply(helper, id=running.id, exit=0, signal=None, output="", stdout="")
    assert done == [Outcome(0, None, b"", b"")]
    helper["transport"].clear()
    reactor.advance(60.0)  # nothing running: no pings, no timers left behind
    assert helper["transport"].value() == b"" and reactor.getDelayedCalls() == []


def test_start_spawns_the_helper_at_once_and_without_root_none_is_started_again():
    # Started while root (privilegedStartService); once root is dropped a new helper
    # could not give programs [program] user: deliveries wait, never run as the gateway.
    reactor = Reactor()
    euid = [0]
    spawner = Spawner(reactor, 65534, 65533, "/srv", killpg=lambda pid, sig: None,
                      geteuid=lambda: euid[0])
    spawner.start()
    assert len(reactor.helpers) == 1
    euid[0] = 1000  # root dropped
    first = job()
    d1 = results(spawner.run(first))
    assert [f["id"] for f in reactor.helpers[0]["transport"].frames()] == [first.id]
    reactor.helpers[0]["proto"].processEnded(Failure(Exception("killed by signal 9")))
    assert d1 == [Outcome(error=LOST)]
    assert results(spawner.run(job())) == [Outcome(error=UNPRIVILEGED)]
    assert len(reactor.helpers) == 1
    # The gateway's own user (uid None: no switch) starts its helper again whenever.
    mine = Spawner(reactor, None, None, "/srv", geteuid=lambda: 1000)
    mine.run(job())
    assert len(reactor.helpers) == 2


def test_a_silent_helper_that_may_not_be_killed_is_continued_and_asked_again():
    class Unkillable(HelperTransport):
        def signalProcess(self, name):
            if name == "KILL":
                raise PermissionError(1, "Operation not permitted")
            self.signals.append(name)

    reactor = Reactor()
    spawner = Spawner(reactor, 65534, 65533, "/srv", ping_interval=5.0, ping_timeout=2.0)
    spawner.run(job())
    helper = reactor.helpers[0]
    helper["proto"].transport = transport = Unkillable()
    reactor.advance(5.0)
    reactor.advance(2.0)
    assert transport.signals == ["CONT"]
    reactor.advance(5.0)  # pinged again
    assert transport.frames()[-1] == {"ping": 2}
