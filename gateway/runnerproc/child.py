"""The runner process itself: `python -m gateway.runnerproc --config PATH [--uid N --gid N]`.

Started by parent.py with its stdin and stdout as the channel (channel.py).
It builds the delivery lane exactly as a one-process gateway does
(service.build_runner), takes <state_dir>/run/runner.lock so that two
runners never share a spool, starts its program spawner while still root and
then drops to the given user (as tap.py does for the parent), and runs until
its stdin closes (the parent stopped or died: no orphan) or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any

from twisted.internet import protocol, stdio, task
from twisted.logger import ILogObserver, globalLogBeginner
from twisted.python import threadable
from zope.interface import provider

from gateway import metrics
from gateway.runnerproc import channel

COUNTS_INTERVAL = 0.5  # seconds between looks at the runner's counts (metrics gauges)
METRICS_INTERVAL = 1.0  # seconds between sendings of what the child's metrics counted


class ChildLink(protocol.Protocol):
    """A child's end of its channel (stdin in, stdout out), for both kinds of child:
    frames in go to handle(kind, payload); frames out are gathered (one pipe write
    per GATHER); every log event of the process goes out as an L frame, what its
    metrics counted as an M frame each METRICS_INTERVAL; the pipe's close (the
    parent stopped or died) stops the reactor: no orphan."""

    process = "runner"  # the JSON log's process= field

    def __init__(self, reactor, registry: metrics.Registry = metrics.REGISTRY):
        self.reactor = reactor
        self.registry = registry
        self.decoder = channel.Decoder()
        self._out: list[bytes] = []  # frames written before the pipe is connected
        self._gather: channel.Gatherer | None = None  # frames, one pipe write per GATHER
        self._metrics = task.LoopingCall(self.send_metrics)
        self._metrics.clock = reactor

    def handle(self, kind: bytes, payload: bytes) -> None:
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:
        try:
            pairs = self.decoder.feed(data)
            for kind, payload in pairs:
                self.handle(kind, payload)
        except channel.FrameError:
            self.transport.loseConnection()

    def connectionMade(self) -> None:
        self._gather = channel.Gatherer(self.reactor, self.transport.write)
        out, self._out = self._out, []
        for data in out:
            self._gather(data)
        self._metrics.start(METRICS_INTERVAL, now=False)

    def connectionLost(self, reason=None) -> None:
        # The parent closed the pipe (stopping) or died: stop, whatever is running.
        if self._metrics.running:
            self._metrics.stop()
        if self._gather is not None:
            self.send_metrics()
            self._gather.flush()
        if self.reactor.running:
            self.reactor.stop()

    def _write(self, data: bytes) -> None:
        if self._gather is None:
            self._out.append(data)
        else:
            self._gather(data)

    def send_metrics(self) -> None:
        changes = self.registry.changes()
        if changes is not None:
            self._write(channel.frame(channel.METRICS, json.dumps(changes).encode()))

    def observer(self) -> ILogObserver:
        """The log observer: every event of this process, to the parent's log."""

        @provider(ILogObserver)
        def observe(event) -> None:
            data = channel.frame(channel.LOG, channel.encode_event(event, self.process))
            if threadable.isInIOThread():
                self._write(data)
            else:
                self.reactor.callFromThread(self._write, data)

        return observe


class ChildChannel(ChildLink):
    """The runner's end: queue IDs in; deliveries, counts and log events out."""

    def __init__(self, reactor, registry: metrics.Registry = metrics.REGISTRY):
        super().__init__(reactor, registry)
        self.runner: Any = None  # IQueueListener, set once the runner has started
        self.reload: Any = None  # () -> None: reload the alias table
        # () -> None: reload the alias table if its files changed. Asked before each
        # entry the listeners tell of: a listener that accepted it with a table it
        # had just reloaded (a new alias) must not have it routed with the old one.
        self.check_aliases: Any = None
        self._waiting: list[tuple[str, Any]] = []  # IDs told before the runner started
        self._lock = threading.Lock()
        self._paths: dict[str, list[str]] = {}
        self._counts = (0, 0)
        self._loop: task.LoopingCall | None = None

    # -- in --

    def handle(self, kind: bytes, payload: bytes) -> None:
        if kind == channel.QUEUED:
            qid, envelope = channel.split_queued(payload)
            if self.check_aliases is not None:
                self.check_aliases()  # a stat per alias file
            if self.runner is None:
                self._waiting.append((qid, envelope))
            else:
                self.runner.enqueued(qid, envelope)
        elif kind == channel.RELOAD and self.reload is not None:
            self.reload()
        elif kind == channel.SCAN and self.runner is not None:
            self.runner.pick_up()  # before the runner started: its start-up scan does it

    def started(self, runner: Any) -> None:
        """The runner has read the spool: IDs told meanwhile go to it now (an entry
        found by the scan and told again is one entry: the runner keeps one timer)."""
        self.runner = runner
        waiting, self._waiting = self._waiting, []
        for qid, envelope in waiting:
            runner.enqueued(qid, envelope)
        self._loop = task.LoopingCall(self._send_counts)
        self._loop.clock = self.reactor
        self._loop.start(COUNTS_INTERVAL, now=True)

    def connectionLost(self, reason=None) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        super().connectionLost(reason)

    # -- out --

    def delivered(self, path: str, name: str) -> None:
        """A delivery renamed name into path's new/ (any thread): the parent hears of
        all of one reactor turn's at once, one frame per Maildir."""
        with self._lock:
            first = not self._paths
            self._paths.setdefault(path, []).append(name)
        if first:
            self.reactor.callFromThread(self._send_delivered)

    def _send_delivered(self) -> None:
        with self._lock:
            paths, self._paths = self._paths, {}
        self._write(channel.frames(channel.DELIVERED, [
            channel.join_delivered(path, names) for path, names in paths.items()]))

    def _send_counts(self) -> None:
        counts = self.runner.counts()
        now = (counts["active"], counts["scheduled"])
        if now != self._counts:
            self._counts = now
            self._write(channel.frame(channel.COUNTS, b"%d %d" % now))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.runnerproc")
    parser.add_argument("--config", required=True)
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--lock-wait", type=float, default=60.0,
                        help="seconds to wait for another runner on the spool to end")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    from gateway import service

    return serve(ChildChannel(reactor), args, lambda settings, link: service.build_runner(
        settings, reactor, link, lock_wait=args.lock_wait))


def serve(link: ChildLink, args: argparse.Namespace, build) -> int:
    """A child's life: its log and stdio on the channel, the config loaded, its
    services built by build(settings, link) as [server] user (args.uid/gid, when
    started as root), started, and run until the channel closes or SIGTERM.
    Serves the runner process and the accept workers (gateway/acceptproc)."""
    from twisted.internet import reactor

    from gateway import config, privileges, startup
    from gateway.errors import ConfigError, StartupError

    threadable.registerAsIOThread()
    globalLogBeginner.beginLoggingTo([link.observer()], redirectStandardIO=True)
    # stdout is the channel: nothing else may write to it (print goes to the log above).
    stdio.StandardIO(link, stdin=0, stdout=1, reactor=reactor)
    os.umask(0o077)
    try:
        settings = config.load(args.config)
        who = None
        if args.uid is not None and os.geteuid() == 0:
            who = privileges.identity(args.uid, args.gid)
        with privileges.acting_as(who):
            top = build(settings, link)
        guard = startup.Guard(drop_to=who, serving=who)
        top.setServiceParent(guard)
        guard.privilegedStartService()
    except (ConfigError, StartupError, OSError, SystemExit) as e:
        # The reactor never ran: the channel would never carry this; stderr does.
        text = "; ".join(e.lines()) if isinstance(e, ConfigError) else str(e)
        print(f"cannot start: {text}", file=sys.__stderr__, flush=True)
        return 1
    reactor.callWhenRunning(guard.startService)
    reactor.addSystemEventTrigger("before", "shutdown", guard.stopService)
    reactor.run()
    return 0
