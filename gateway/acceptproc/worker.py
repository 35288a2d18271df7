"""One SMTP accept worker: `python -m gateway.acceptproc --config PATH --number N
--listen SETTING=FD ... [--uid N --gid N]`.

Started by parent.py with its stdin and stdout as the channel (runnerproc's
channel.py) and the gateway's listening sockets as descriptors 3 and up. It
builds the SMTP listeners as one process does (service.build_worker), drops
to the given user before building anything (it binds nothing itself), and
runs until its stdin closes (the gateway stopped or died: no orphan) or
SIGTERM (runnerproc.child.serve).
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from zope.interface import implementer

from gateway.connection import ConnectionCounter
from gateway.errors import AuthThrottled
from gateway.interfaces import IQueueListener, IUserDirectory
from gateway.runnerproc import channel
from gateway.runnerproc.child import ChildLink, serve


@implementer(IQueueListener)
class WorkerLink(ChildLink):
    """The worker's end: each spooled entry's ID out (the gateway tells its runner),
    AUTH checks out and their answers in, SIGHUP's alias reload in."""

    def __init__(self, reactor, number: int = 1):
        super().__init__(reactor)
        self.process = f"accept{number}"
        self.reload: Any = None  # () -> None: reload the alias table
        self._asked: dict[str, defer.Deferred] = {}
        self._ids = itertools.count(1)
        # (listener, client) at max_connections_per_client across all workers (F).
        self.full: set[tuple[str, str]] = set()

    # -- IQueueListener: the entry is durable and answered 250 --

    def enqueued(self, queue_id: str, envelope: Any = None) -> None:
        self._write(channel.frame(channel.QUEUED, channel.join_queued(queue_id, envelope)))

    def counts(self) -> dict[str, int]:
        return {"active": 0, "scheduled": 0}

    # -- AUTH, checked by the gateway --

    def authenticate(self, address: str, password: str, client: str = "") -> defer.Deferred:
        ask = str(next(self._ids))
        d = self._asked[ask] = defer.Deferred()
        self._write(channel.frame(channel.AUTH,
                                  channel.join_fields(ask, client, address, password)))
        return d

    def handle(self, kind: bytes, payload: bytes) -> None:
        if kind == channel.AUTHED:
            ask, verdict, text = channel.split_fields(payload, 3)
            d = self._asked.pop(ask, None)
            if d is None:
                return  # asked by the worker before this one (a restart)
            if verdict == channel.AUTH_OK:
                d.callback(text)
            elif verdict == channel.AUTH_FAILED:
                d.errback(UnauthorizedLogin(text))
            elif verdict == channel.AUTH_THROTTLED:
                d.errback(AuthThrottled(text))
            else:
                d.errback(RuntimeError(text))
        elif kind == channel.FULL:
            flag, name, client = channel.split_fields(payload, 3)
            if flag == "1":
                self.full.add((name, client))
            else:
                self.full.discard((name, client))
        elif kind == channel.RELOAD and self.reload is not None:
            self.reload()

    def counted(self, name: str, client: str, delta: str) -> None:
        """A connection of client on listener name opened ("+") or closed ("-")."""
        self._write(channel.frame(channel.COUNTED, channel.join_fields(delta, name, client)))

    def connectionLost(self, reason=None) -> None:
        asked, self._asked = self._asked, {}
        for d in asked.values():
            d.errback(RuntimeError("the gateway is gone"))
        super().connectionLost(reason)


@implementer(IUserDirectory)
class RemoteDirectory:
    """The worker's user directory: the local one (exists(), for routing), but
    authenticate() asks the gateway, whose guessing budget (access/authguard.py)
    counts SMTP, IMAP and POP3 failures of all workers together."""

    def __init__(self, local: Any, link: WorkerLink):
        self.local = local
        self.link = link

    def exists(self, address: str) -> bool:
        return self.local.exists(address)

    def authenticate(self, address: str, password: str, client: str = "") -> defer.Deferred:
        return self.link.authenticate(address, password, client)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)


class SharedCounter(ConnectionCounter):
    """One listener's connections per client in a worker ([smtp]
    max_connections_per_client): counted here as in one process, and told to the
    gateway, which adds up every worker's and says which clients are at the limit
    (link.full); a connection from one of those is refused as one over the limit
    here would be. Between the connection that reaches the limit and the word of
    it (a pipe write away, milliseconds) another worker may still admit one."""

    def __init__(self, limit: int, link: WorkerLink, name: str):
        super().__init__(limit)
        self.link = link
        self.name = name

    def opened(self, client: str) -> bool:
        ok = super().opened(client)
        self.link.counted(self.name, client, "+")
        return ok and (self.name, client) not in self.link.full

    def closed(self, client: str) -> None:
        super().closed(client)
        self.link.counted(self.name, client, "-")


def parse_listen(values: list[str]) -> dict[str, int]:
    """--listen SETTING=FD ... -> {setting: fd}."""
    out = {}
    for value in values:
        setting, _, fd = value.rpartition("=")
        out[setting] = int(fd)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.acceptproc")
    parser.add_argument("--config", required=True)
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--number", type=int, default=1, help="this worker's number (logs)")
    parser.add_argument("--listen", action="append", default=[], metavar="SETTING=FD")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    from gateway import service

    sockets = parse_listen(args.listen)
    return serve(WorkerLink(reactor, args.number), args, lambda settings, link:
                 service.build_worker(settings, reactor, link, sockets))
