"""A run_blocking whose calls wait in a list until the test runs them (in order, as a
thread pool does), to look at a session between a call's dispatch and its end."""

from __future__ import annotations

from twisted.internet import defer

from gateway.durable import complete


class Held:
    """Calls run at once until `holding` is set (a login, say), then wait in `calls`."""

    def __init__(self, holding: bool = False) -> None:
        self.calls: list[tuple[object, tuple, defer.Deferred]] = []
        self.holding = holding

    def __call__(self, f, *args) -> defer.Deferred:
        if not self.holding:
            return defer.maybeDeferred(complete, f, *args)
        d: defer.Deferred = defer.Deferred()
        self.calls.append((f, args, d))
        return d

    def names(self) -> list[str]:
        return [getattr(f, "__name__", repr(f)) for f, _, _ in self.calls]

    def run_next(self) -> None:
        f, args, d = self.calls.pop(0)
        defer.maybeDeferred(complete, f, *args).chainDeferred(d)

    def run_all(self) -> None:
        while self.calls:
            self.run_next()
