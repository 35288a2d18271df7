"""SMTP accept workers (gateway/acceptproc): what each side does with a frame, the
connection count across workers, the workers' lives, and the runner's pick-up of
entries nobody told of. No process, no socket: StringTransport and task.Clock."""

from __future__ import annotations

import pytest
from test_queue import Router, Target, make_envelope, make_runner
from test_runnerproc_channel import ChildReactor, FakeRunner, FakeSpawner, ended
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.internet.testing import StringTransport

from gateway import config
from gateway.acceptproc.parent import AcceptWorkers, ConnectionBook, WorkerDispatch
from gateway.acceptproc.worker import RemoteDirectory, SharedCounter, WorkerLink
from gateway.envelope import Envelope, Recipient
from gateway.errors import AuthThrottled, ConfigError
from gateway.runnerproc import channel
from gateway.runnerproc.child import ChildChannel
from gateway.runnerproc.parent import Dispatch, RunnerProcess

assert Router and Target  # test_queue's helpers, imported for make_runner


def sent(transport: StringTransport) -> list[tuple[bytes, bytes]]:
    pairs = channel.Decoder().feed(transport.value())
    transport.clear()
    return pairs


def test_fields_travel_whatever_they_hold():
    odd = ["1", "192.0.2.1", "a@b.test", "pa\0ss\u00e9,:\n"]
    assert channel.split_fields(channel.join_fields(*odd), 4) == odd
    for bad in (b"[1,2,3]", b"{}", b"not json", b'["a","b"]', b"\xff"):
        with pytest.raises(channel.FrameError):
            channel.split_fields(bad, 3)


# -- the worker's side --

def worker(number=2) -> tuple[WorkerLink, StringTransport, ChildReactor]:
    reactor = ChildReactor()
    link = WorkerLink(reactor, number)
    out = StringTransport()
    link.makeConnection(out)
    return link, out, reactor


def test_a_spooled_entry_is_told_with_its_envelope_and_logs_name_the_worker():
    link, out, reactor = worker(2)
    envelope = Envelope("a@remote.test", [Recipient("b@example.test")], queue_id="Q1")
    link.enqueued("Q1", envelope)
    reactor.advance(channel.GATHER)
    [(kind, payload)] = sent(out)
    assert kind == channel.QUEUED and channel.split_queued(payload) == ("Q1", envelope)
    assert link.process == "accept2"


def test_auth_is_asked_of_the_gateway_and_each_answer_comes_back_as_its_error():
    link, out, reactor = worker()
    users = RemoteDirectory(local=type("L", (), {"exists": lambda self, a: a == "x@y"})(),
                            link=link)
    assert users.exists("x@y") and not users.exists("z@y")
    asks = [users.authenticate("x@y", f"pw{i}", client="192.0.2.7") for i in range(4)]
    reactor.advance(channel.GATHER)
    frames = sent(out)
    assert [k for k, _ in frames] == [channel.AUTH] * 4
    ids = [channel.split_fields(p, 4)[0] for _, p in frames]
    assert channel.split_fields(frames[0][1], 4)[1:] == ["192.0.2.7", "x@y", "pw0"]
    results = []
    for d in asks:
        d.addBoth(results.append)
    answers = [(channel.AUTH_OK, "x@y"), (channel.AUTH_FAILED, "no"),
               (channel.AUTH_THROTTLED, "wait"), (channel.AUTH_ERROR, "disk")]
    for ask, (verdict, text) in zip(ids, answers, strict=True):
        link.dataReceived(channel.frame(channel.AUTHED, channel.join_fields(ask, verdict, text)))
    link.dataReceived(channel.frame(channel.AUTHED, channel.join_fields("99", "ok", "x")))
    assert results[0] == "x@y"
    assert results[1].check(UnauthorizedLogin)
    assert results[2].check(AuthThrottled)
    assert results[3].check(RuntimeError)


def test_a_closed_pipe_fails_the_waiting_auth_and_stops_the_worker():
    link, out, reactor = worker()
    d = link.authenticate("x@y", "pw", "192.0.2.7")
    failures = []
    d.addErrback(failures.append)
    link.connectionLost()
    assert failures and reactor.stopped


def test_the_count_is_told_and_a_client_full_elsewhere_is_refused_here():
    link, out, reactor = worker()
    counter = SharedCounter(50, link, "smtp")
    assert counter.opened("192.0.2.7")
    link.dataReceived(channel.frame(channel.FULL, channel.join_fields("1", "smtp", "192.0.2.7")))
    assert not counter.opened("192.0.2.7")  # the other workers hold its 50
    assert counter.opened("192.0.2.8")
    counter.closed("192.0.2.7")
    link.dataReceived(channel.frame(channel.FULL, channel.join_fields("0", "smtp", "192.0.2.7")))
    assert counter.opened("192.0.2.7")
    reactor.advance(channel.GATHER)
    told = [channel.split_fields(p, 3) for k, p in sent(out) if k == channel.COUNTED]
    assert told == [["+", "smtp", "192.0.2.7"], ["+", "smtp", "192.0.2.7"],
                    ["+", "smtp", "192.0.2.8"], ["-", "smtp", "192.0.2.7"],
                    ["+", "smtp", "192.0.2.7"]]


def test_reload_reaches_the_workers_alias_table():
    link, out, reactor = worker()
    reloads = []
    link.reload = lambda: reloads.append(1)
    link.dataReceived(channel.frame(channel.RELOAD))
    assert reloads == [1]


# -- the gateway's side --

def test_the_book_says_when_a_client_reaches_the_limit_across_workers_and_leaves_it():
    out = []
    book = ConnectionBook(3, out.append)
    for w in (1, 2, 1):
        book.counted(w, "+", "smtp", "192.0.2.7")
    book.counted(2, "+", "submission", "192.0.2.7")  # another listener, its own count
    assert [channel.Decoder().feed(f) for f in out] == [
        [(channel.FULL, channel.join_fields("1", "smtp", "192.0.2.7"))]]
    assert book.full() == out
    book.counted(2, "+", "smtp", "192.0.2.7")  # one that slipped by: still full
    book.counted(2, "-", "smtp", "192.0.2.7")
    assert len(out) == 1
    book.ended(2)  # its connections went with it: 2 left of 3
    assert channel.Decoder().feed(out[1]) == [
        (channel.FULL, channel.join_fields("0", "smtp", "192.0.2.7"))]
    book.counted(3, "-", "smtp", "192.0.2.7")  # a close never counted: ignored
    assert book.total == {("smtp", "192.0.2.7"): 2}


class Users:
    def __init__(self):
        self.asked = []

    def authenticate(self, address, password, client=""):
        self.asked.append((address, password, client))
        if password == "right":
            return defer.succeed(address.lower())
        if password == "many":
            return defer.fail(AuthThrottled("too many"))
        return defer.fail(UnauthorizedLogin("bad"))


def test_the_gateway_tells_its_runner_checks_auth_in_its_guard_and_logs():
    runner, users, published, replies = FakeRunner(), Users(), [], []
    book = ConnectionBook(5, lambda data: None)
    d = WorkerDispatch(runner, users, published.append, replies.append, lambda: None, book, 1)
    envelope = Envelope("a@remote.test", [Recipient("b@example.test")], queue_id="Q7")
    d.frames([(channel.QUEUED, channel.join_queued("Q7", envelope)),
              (channel.AUTH, channel.join_fields("1", "192.0.2.7", "A@Y", "right")),
              (channel.AUTH, channel.join_fields("2", "192.0.2.7", "a@y", "wrong")),
              (channel.AUTH, channel.join_fields("3", "192.0.2.7", "a@y", "many")),
              (channel.COUNTED, channel.join_fields("+", "smtp", "192.0.2.7")),
              (channel.LOG, b'{"log_text": "Q7: queued", "queue_id": "Q7"}')])
    assert runner.ids == ["Q7"] and runner.envelopes == [envelope]
    assert users.asked[0] == ("A@Y", "right", "192.0.2.7")
    answers = [channel.split_fields(channel.Decoder().feed(r)[0][1], 3) for r in replies]
    assert answers == [["1", "ok", "a@y"], ["2", "failed", "bad"], ["3", "throttled", "too many"]]
    assert book.total == {("smtp", "192.0.2.7"): 1}
    assert published[0]["queue_id"] == "Q7"
    with pytest.raises(channel.FrameError):
        d.frames([(channel.AUTH, channel.join_fields("1", "x"))])


class FakeHeld:
    def __init__(self, setting, fd):
        self.setting, self.fd = setting, fd

    def fileno(self):
        return self.fd


class PickingRunner(FakeRunner):
    def __init__(self):
        super().__init__()
        self.picked = 0

    def pick_up(self):
        self.picked += 1


def test_workers_get_the_held_sockets_are_restarted_and_the_runner_picks_up_after_a_death():
    reactor = FakeSpawner()
    runner = PickingRunner()
    workers = AcceptWorkers(reactor, 2, [FakeHeld("listen.smtp", 11),
                                         FakeHeld("proxied.submission", 12)],
                            "/etc/m.toml", runner, Users(), lambda e: None, 50, uid=8, gid=9)
    workers.privilegedStartService()
    workers.startService()
    assert len(reactor.spawned) == 2
    proto, args, env, fds = reactor.spawned[1]
    assert fds == {0: "w", 1: "r", 2: "r", 3: 11, 4: 12}
    assert args[1:] == ["-m", "gateway.acceptproc", "--config", "/etc/m.toml", "--number", "2",
                        "--listen", "listen.smtp=3",
                        "--listen", "proxied.submission=4", "--uid", "8", "--gid", "9"]
    workers.book.counted(1, "+", "smtp", "192.0.2.7")
    ended(reactor.spawned[0][0], signal=9)
    assert runner.picked == 1 and workers.book.total == {}
    reactor.advance(1.0)
    assert len(reactor.spawned) == 3  # worker 1 again
    assert sorted(workers.pids()) == [4242, 4242]
    workers.reload()
    reactor.advance(channel.GATHER)
    assert channel.Decoder().feed(reactor.spawned[2][0].transport.value()) == [
        (channel.RELOAD, b"")]
    d = workers.stopService()
    for proto, *_ in reactor.spawned[1:]:
        assert proto.transport.stdin_closed
        ended(proto)
    assert d.called and runner.picked == 1  # stopping: nothing to pick up
    reactor.advance(100)
    assert len(reactor.spawned) == 3


def test_a_new_worker_hears_first_which_clients_are_full():
    reactor = FakeSpawner()
    workers = AcceptWorkers(reactor, 1, [FakeHeld("listen.smtp", 11)], "/m.toml",
                            PickingRunner(), Users(), lambda e: None, 1)
    workers.book.counted(7, "+", "smtp", "192.0.2.7")  # one of a worker running already
    workers.privilegedStartService()
    reactor.advance(channel.GATHER)
    assert channel.Decoder().feed(reactor.spawned[0][0].transport.value()) == [
        (channel.FULL, channel.join_fields("1", "smtp", "192.0.2.7"))]


# -- the runner picks up what a dead worker never told of --

def test_the_runner_picks_up_only_entries_it_does_not_know(tmp_path):
    target = Target([None, None])
    runner, spool, clock = make_runner(tmp_path, target)
    told, untold = make_envelope("alice@example.test"), make_envelope("bob@example.test")
    spool.store_blocking(told, b"m")
    spool.store_blocking(untold, b"m")
    runner.enqueued(told.queue_id)
    runner.pick_up()
    assert sorted(runner._timers) == sorted([told.queue_id, untold.queue_id])
    clock.advance(0)
    assert sorted(a for a, _ in target.calls) == ["alice@example.test", "bob@example.test"]
    assert spool.queue_ids() == []


def test_the_runner_process_is_asked_to_pick_up_and_does():
    reactor = FakeSpawner()
    rp = RunnerProcess(reactor, ["py"], Dispatch(lambda p: [], lambda f, n: None,
                                                 lambda e: None), env={})
    rp.privilegedStartService()
    rp.pick_up()
    reactor.advance(channel.GATHER)
    assert channel.Decoder().feed(reactor.spawned[0][0].transport.value()) == [
        (channel.SCAN, b"")]
    link = ChildChannel(ChildReactor())
    link.makeConnection(StringTransport())
    runner = PickingRunner()
    link.dataReceived(channel.frame(channel.SCAN))  # before the runner started: its scan
    link.started(runner)
    link.dataReceived(channel.frame(channel.SCAN))
    assert runner.picked == 1


@pytest.mark.parametrize("value,why", [(-1, "must be 0 to 64, not -1"),
                                       (65, "must be 0 to 64, not 65"),
                                       ('"2"', "must be int, not str")])
def test_accept_workers_faults_name_file_and_key(tmp_path, value, why):
    path = tmp_path / "m.toml"
    path.write_text(f'[server]\ndomains = ["x.test"]\n[smtp]\naccept_workers = {value}\n')
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert e.value.problems == [(str(path), "smtp.accept_workers", why)]


def test_accept_workers_default_to_none():
    assert config.load().smtp.accept_workers == 0
