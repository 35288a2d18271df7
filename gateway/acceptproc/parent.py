"""The gateway's side of the SMTP accept workers: holds their sockets, starts them, hears them.

AcceptWorkers starts [smtp] accept_workers processes (worker.py) on the SMTP
listening sockets the gateway bound (listeners.HeldListener), each a
runnerproc ChildProcess (started as the gateway is, as root when it is, then
dropping to [server] user; restarted after a backoff when it dies; its stdin
closed at stop, killed after a timeout). WorkerDispatch applies what a worker
says: its queue IDs to the runner, its AUTH checks to the gateway's guarded
user directory (the one guessing budget), its log events to the one log.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from gateway.errors import AuthThrottled
from gateway.runnerproc import channel
from gateway.runnerproc.parent import ChildProcess, merge_metrics

log = Logger()

FIRST_FD = 3  # the workers' inherited sockets: 0-2 are the channel and stderr


def worker_argv(config_path: str, number: int, sockets: dict[str, int],
                uid: int | None = None, gid: int | None = None) -> list[str]:
    """The command line of one worker; sockets: {setting: the fd it has in the worker}."""
    argv = [sys.executable, "-m", "gateway.acceptproc", "--config", config_path,
            "--number", str(number)]
    for setting, fd in sockets.items():
        argv += ["--listen", f"{setting}={fd}"]
    if uid is not None:
        argv += ["--uid", str(uid), "--gid", str(gid if gid is not None else uid)]
    return argv


def verdict(failure) -> tuple[str, str]:
    """A failed check of the guarded directory -> (the R frame's verdict, its text)."""
    from twisted.cred.error import LoginFailed

    if failure.check(AuthThrottled):
        return channel.AUTH_THROTTLED, str(failure.value)
    if failure.check(LoginFailed):
        return channel.AUTH_FAILED, str(failure.value)
    log.failure("accept worker: AUTH check", failure)
    return channel.AUTH_ERROR, "the user directory failed"


class ConnectionBook:
    """Every worker's open connections per (listener, client), against [smtp]
    max_connections_per_client: when a client reaches the limit across all
    workers, each worker hears it (F "1": refuse the next), and again when it
    is below (F "0"). A worker that ends takes its connections with it.
    broadcast(data): a frame to every worker."""

    def __init__(self, limit: int, broadcast: Callable[[bytes], None]):
        self.limit = limit
        self.broadcast = broadcast
        self.total: dict[tuple[str, str], int] = {}
        self.by_worker: dict[int, dict[tuple[str, str], int]] = {}

    def counted(self, worker: int, delta: str, name: str, client: str) -> None:
        step = 1 if delta == "+" else -1
        mine = self.by_worker.setdefault(worker, {})
        key = (name, client)
        if step < 0 and mine.get(key, 0) <= 0:
            return  # opened before the gateway knew this worker: nothing to take back
        mine[key] = mine.get(key, 0) + step
        if not mine[key]:
            del mine[key]
        self._add(key, step)

    def ended(self, worker: int) -> None:
        for key, n in self.by_worker.pop(worker, {}).items():
            self._add(key, -n)

    def full(self) -> list[bytes]:
        """The F frames a worker that just started needs."""
        return [channel.frame(channel.FULL, channel.join_fields("1", *key))
                for key, n in self.total.items() if n >= self.limit]

    def _add(self, key: tuple[str, str], step: int) -> None:
        before = self.total.get(key, 0)
        after = before + step
        if after > 0:
            self.total[key] = after
        else:
            self.total.pop(key, None)
        if (before >= self.limit) != (after >= self.limit):
            self.broadcast(channel.frame(channel.FULL, channel.join_fields(
                "1" if after >= self.limit else "0", *key)))


class WorkerDispatch:
    """What one worker says, applied in the gateway (no process here: unit-tested).

    listener: the runner (IQueueListener); users: the guarded directory;
    book: the connections of all workers; number: this worker's;
    send(data): frames back to this worker; ended(): the worker is gone."""

    def __init__(self, listener: Any, users: Any, publish: Callable[[dict], None],
                 send: Callable[[bytes], None], ended: Callable[[], None],
                 book: ConnectionBook, number: int):
        self.listener = listener
        self.users = users
        self.publish = publish
        self.send = send
        self.ended = ended
        self.book = book
        self.number = number

    def frames(self, pairs: list[tuple[bytes, bytes]]) -> None:
        for kind, payload in pairs:
            if kind == channel.QUEUED:
                self.listener.enqueued(*channel.split_queued(payload))
            elif kind == channel.LOG:
                self.publish(channel.decode_event(payload))
            elif kind == channel.METRICS:
                merge_metrics(payload)
            elif kind == channel.COUNTED:
                self.book.counted(self.number, *channel.split_fields(payload, 3))
            elif kind == channel.AUTH:
                self._authenticate(*channel.split_fields(payload, 4))
            else:
                log.warn("accept worker: unknown message {kind!r}", kind=kind)

    def _authenticate(self, ask: str, client: str, address: str, password: str) -> None:
        d = defer.maybeDeferred(self.users.authenticate, address, password, client=client)
        d.addCallbacks(lambda canonical: (channel.AUTH_OK, canonical), verdict)
        d.addCallback(lambda answer: self.send(
            channel.frame(channel.AUTHED, channel.join_fields(ask, *answer))))

    def child_started(self) -> None:
        for data in self.book.full():
            self.send(data)

    def child_ended(self) -> None:
        self.book.ended(self.number)
        self.ended()


class AcceptWorkers(service.MultiService):
    """count workers on the held listeners (HeldListener, already bound: they are
    started before this service); tells listener.pick_up() when one ends."""

    def __init__(self, reactor, count: int, held: list[Any], config_path: str,
                 listener: Any, users: Any, publish: Callable[[dict], None],
                 max_connections_per_client: int, uid: int | None = None,
                 gid: int | None = None, stop_timeout: float = 30.0):
        super().__init__()
        self.reactor = reactor
        self.count = count
        self.held = held
        self.config_path = config_path
        self.listener = listener
        self.users = users
        self.publish = publish
        self.uid, self.gid = uid, gid
        self.stop_timeout = stop_timeout
        self.workers: list[ChildProcess] = []
        self.book = ConnectionBook(max_connections_per_client, self.broadcast)

    def privilegedStartService(self) -> None:
        # The sockets exist now (the held listeners started before): fd 3 and up.
        sockets = {h.setting: FIRST_FD + i for i, h in enumerate(self.held)}
        fds = {FIRST_FD + i: h.fileno() for i, h in enumerate(self.held)}
        for number in range(1, self.count + 1):
            argv = worker_argv(self.config_path, number, sockets, self.uid, self.gid)
            worker = ChildProcess(self.reactor, argv, None, stop_timeout=self.stop_timeout,
                                  label=f"accept worker {number}", fds=fds)
            worker.dispatch = WorkerDispatch(self.listener, self.users, self.publish,
                                             worker.send, self._ended, self.book, number)
            worker.setServiceParent(self)
            self.workers.append(worker)
        super().privilegedStartService()

    def broadcast(self, data: bytes) -> None:
        for worker in self.workers:
            worker.send(data)

    def reload(self) -> None:
        """SIGHUP: each worker reloads its alias table (it routes recipients)."""
        self.broadcast(channel.frame(channel.RELOAD))

    def pids(self) -> list[int]:
        return [pid for pid in (w.pid() for w in self.workers) if pid is not None]

    def _ended(self) -> None:
        if not self.running:
            return  # stopping: the next start's runner scans the spool
        d = defer.maybeDeferred(self.listener.pick_up)
        d.addErrback(lambda f: log.failure("queue runner: picking up a worker's entries", f))
