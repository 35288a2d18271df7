"""The listeners' side of the runner process: starts it, feeds it queue IDs, hears back.

RunnerProcess is the SMTP factories' and the submission's IQueueListener in
the parent: each newly spooled entry's ID goes down the child's stdin (one
frame; Twisted's transport writes what a reactor turn gathered in one
write). The child's stdout carries the Maildirs it delivered into, its
runner's counts and its log events; its stderr (a crash before its log is
set up) is logged line by line.

Lifecycle: started in privilegedStartService, so a gateway started as root
starts it as root and it starts its program spawner before dropping to
[server] user itself, as the parent does. When it dies it is started again
after a backoff (1 s doubling to 60 s, back to 1 s after a minute of life);
a child started again after the parent dropped root cannot give programs
[program] user: the spawner says so and those deliveries wait in the queue.
Stopping closes its stdin: it stops taking work, lets running deliveries
finish and exits; after stop_timeout seconds it is killed. Nothing is lost
either way: the spool is the truth and the next runner reads it at start.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger, globalLogPublisher
from zope.interface import implementer

from gateway import metrics
from gateway.interfaces import IQueueListener
from gateway.runnerproc import channel

log = Logger()

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
STABLE_AFTER = 60.0  # a child that lived this long restarts after BACKOFF_FIRST again


def child_argv(config_path: str, uid: int | None = None, gid: int | None = None) -> list[str]:
    """The command line of the runner process (gateway/runnerproc/__main__.py)."""
    argv = [sys.executable, "-m", "gateway.runnerproc", "--config", config_path]
    if uid is not None:
        argv += ["--uid", str(uid), "--gid", str(gid if gid is not None else uid)]
    return argv


class Dispatch:
    """What the child says, applied in the parent (no process here: unit-tested).

    folders(path) -> the open Folders of that Maildir (mail and list archives);
    learn(folder, names) runs folder.arrived_elsewhere(names) off the reactor
    thread: the names the child renamed into new/ are indexed without listing
    the folder (a listing per delivery into a big INBOX is O(its size)). One
    learn per folder at a time; names told meanwhile go in the next, `spacing`
    seconds after (each learn is one index commit).
    """

    def __init__(self, folders: Callable[[str], Iterable[Any]],
                 learn: Callable[[Any, list[str]], defer.Deferred],
                 publish: Callable[[dict], None], clock: Any = None, spacing: float = 0.02):
        self.folders = folders
        self.learn = learn
        self.publish = publish
        self.clock = clock
        self.spacing = spacing
        self.counts = {"active": 0, "scheduled": 0}
        self._waiting: dict[int, list[str]] = {}  # id(folder) -> names for the next learn
        self._busy: set[int] = set()
        self._seen: dict[int, Any] = {}  # folders told of, for relist() after a death

    def frames(self, pairs: list[tuple[bytes, bytes]]) -> None:
        for kind, payload in pairs:
            if kind == channel.LOG:
                self.publish(channel.decode_event(payload))
            elif kind == channel.DELIVERED:
                path, names = channel.split_delivered(payload)
                for folder in self.folders(path):
                    self._told(folder, names)
            elif kind == channel.METRICS:
                merge_metrics(payload)
            elif kind == channel.COUNTS:
                active, _, scheduled = payload.partition(b" ")
                self.counts = {"active": int(active), "scheduled": int(scheduled)}
            else:
                log.warn("runner process: unknown message {kind!r}", kind=kind)

    def child_ended(self) -> None:
        """A child that died may have renamed files it never told of: the folders
        it delivered into list their directories at their next sync."""
        seen, self._seen = self._seen, {}
        for folder in seen.values():
            folder.relist()
        self.counts = {"active": 0, "scheduled": 0}

    def _told(self, folder: Any, names: list[str]) -> None:
        key = id(folder)
        self._seen[key] = folder
        self._waiting.setdefault(key, []).extend(names)
        if key not in self._busy:
            self._run(folder)

    def _run(self, folder: Any) -> None:
        key = id(folder)
        names = self._waiting.pop(key, None)
        if not names:
            self._busy.discard(key)
            return
        self._busy.add(key)
        d = self.learn(folder, names)
        d.addErrback(lambda f: log.failure("runner process: indexing deliveries", f))
        if self.clock is None:
            d.addBoth(lambda _: self._run(folder))
        else:
            d.addBoth(lambda _: self.clock.callLater(self.spacing, self._run, folder))


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, owner: ChildProcess):
        self.owner = owner
        self.decoder = channel.Decoder()
        self._err = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.gather: channel.Gatherer | None = None  # frames down, one write per GATHER

    def connectionMade(self) -> None:
        self.gather = channel.Gatherer(self.owner.reactor, self.transport.write)

    def send(self, data: bytes) -> None:
        if self.gather is not None:
            self.gather(data)

    def childDataReceived(self, fd: int, data: bytes) -> None:
        label = self.owner.label
        if fd == 1:
            try:
                pairs = self.decoder.feed(data)
            except channel.FrameError as e:
                log.error("{label}: bad message ({why}); stopping it", label=label, why=str(e))
                self.transport.signalProcess("KILL")
                return
            try:
                self.owner.dispatch.frames(pairs)
            except channel.FrameError as e:
                log.error("{label}: bad message ({why}); stopping it", label=label, why=str(e))
                self.transport.signalProcess("KILL")
        else:
            self._err += data
            *lines, self._err = self._err.split(b"\n")
            for line in lines:
                if line.strip():
                    log.error("{label}: {line}", label=label,
                              line=line.decode("utf-8", "replace"))

    def processEnded(self, reason) -> None:
        if self.gather is not None:
            self.gather.cancel()  # an ID not sent is found by the next child's scan
            self.gather = None
        if self._err.strip():
            log.error("{label}: {line}", label=self.owner.label,
                      line=self._err.decode("utf-8", "replace"))
        self.owner._ended(self, reason)
        self.ended.callback(None)


class ChildProcess(service.Service):
    """One child process of the gateway on a channel (channel.py): started in
    privilegedStartService, started again after a backoff when it dies, stopped by
    closing its stdin (killed after stop_timeout). What it says goes to
    dispatch.frames(pairs); dispatch.child_ended() hears of each end. Serves the
    runner process (RunnerProcess) and the SMTP accept workers (gateway/acceptproc).

    fds: the gateway's descriptors the child gets beside its pipes, {child fd:
    parent fd} (an accept worker's listening sockets)."""

    def __init__(self, reactor, argv: list[str], dispatch: Any, stop_timeout: float = 30.0,
                 env: dict[str, str] | None = None, label: str = "runner process",
                 fds: dict[int, int] | None = None):
        self.reactor = reactor
        self.argv = argv
        self.dispatch = dispatch
        self.stop_timeout = stop_timeout
        self.label = label
        self.fds = dict(fds or {})
        # NOTIFY_SOCKET is the parent's: systemd hears READY=1 from the main PID only.
        self.env = env if env is not None else {
            k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.child: _ChildProtocol | None = None
        self.starts = 0
        self._backoff = BACKOFF_FIRST
        self._started_at = 0.0
        self._restart = None
        self._stopping = False

    def send(self, data: bytes) -> None:
        """Frames to the child; without one (between a death and the restart) they are
        dropped: what they said is found again (the spool, the alias file)."""
        child = self.child
        if child is not None:
            child.send(data)

    def pid(self) -> int | None:
        child = self.child
        return child.transport.pid if child is not None and child.transport else None

    # -- the process --

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._spawn()

    def _spawn(self) -> None:
        self._restart = None
        if self._stopping:
            return
        self.child = _ChildProtocol(self)
        self.starts += 1
        self._started_at = self.reactor.seconds()
        self.reactor.spawnProcess(self.child, self.argv[0], self.argv, env=self.env,
                                  childFDs={0: "w", 1: "r", 2: "r", **self.fds})
        log.info("{label} started (pid {pid})", label=self.label,
                 pid=self.child.transport.pid)
        started = getattr(self.dispatch, "child_started", None)
        if started is not None:
            started()  # what the new child must know first (accept workers: full clients)

    def _ended(self, child: _ChildProtocol, reason) -> None:
        if child is self.child:
            self.child = None
        self.dispatch.child_ended()
        if self._stopping:
            return
        if self.reactor.seconds() - self._started_at >= STABLE_AFTER:
            self._backoff = BACKOFF_FIRST
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        log.error("{label} ended ({how}); starting it again in {delay:.0f} s",
                  label=self.label, how=f"signal {sig}" if sig else f"exit status {code}",
                  delay=self._backoff)
        self._restart = self.reactor.callLater(self._backoff, self._spawn)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def stopService(self):
        super().stopService()
        self._stopping = True
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        child = self.child
        if child is None or child.transport is None:
            return None
        if child.gather is not None:
            child.gather.flush()
            child.gather = None  # no more writes to a closed stdin
        child.transport.closeStdin()  # the child's cue: finish and exit
        timer = self.reactor.callLater(self.stop_timeout, self._kill, child)
        child.ended.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return child.ended

    def _kill(self, child: _ChildProtocol) -> None:
        log.warn("{label} did not stop in time: killed", label=self.label)
        try:
            child.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass


@implementer(IQueueListener)
class RunnerProcess(ChildProcess):
    """The runner process: the parent's IQueueListener (queue IDs down the pipe)."""

    # -- IQueueListener --

    def enqueued(self, queue_id: str, envelope: Any = None) -> None:
        # Without a child (between a death and the restart) the ID is simply not
        # sent: the next child's start-up scan of the spool finds the entry.
        self.send(channel.frame(channel.QUEUED, channel.join_queued(queue_id, envelope)))

    def counts(self) -> dict[str, int]:
        return self.dispatch.counts

    def reload(self) -> None:
        """SIGHUP: the child reloads its alias table as the parent does."""
        self.send(channel.frame(channel.RELOAD))

    def pick_up(self) -> None:
        """An accept worker died: IDs it spooled but never told of are in the spool
        only; the runner looks (QueueRunner.pick_up)."""
        self.send(channel.frame(channel.SCAN))


def folder_finder(*stores: Any) -> Callable[[str], list[Any]]:
    """path -> the Folders open on it in any of stores (MaildirStore.opened)."""
    def find(path: str) -> list[Any]:
        found = []
        for store in stores:
            folder = store.opened(path)
            if folder is not None:
                found.append(folder)
        return found
    return find


def merge_metrics(payload: bytes, registry: metrics.Registry = metrics.REGISTRY) -> None:
    """A child's M frame into the gateway's metrics (/metrics, `mailgateway status`)."""
    try:
        registry.merge(channel.decode_metrics(payload))
    except (TypeError, ValueError) as e:  # a well-formed frame with ill-formed counts
        raise channel.FrameError(f"bad metrics ({e})") from None


def publish_event(event: dict) -> None:
    """A child's log event into the parent's log, as if logged here."""
    globalLogPublisher(event)


def config_path(source: str) -> str:
    return str(Path(source).absolute())
