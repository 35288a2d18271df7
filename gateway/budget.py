"""A memory budget for work that must hold a whole message (issue 11).

Everything after the 250 streams from the spool file in pieces except two
steps, which share one budget ([queue] whole_message_memory, made in
service.py):
  - DKIM signing and ARC sealing (deliver/relay.py): dkimpy takes the message
    as one bytes object (DKIM.sign/ARC.sign canonicalize and hash the body
    inside; it offers no public way to feed the body hash piece by piece, and
    re-implementing relaxed body canonicalization ourselves is the subtle code
    gateway/sign/ leaves to dkimpy), so signing is bounded instead;
  - list posts (lists/exploder.py): decorating rewrites headers and may wrap
    the body, and every personal copy is a message of its own.
A job takes its cost from the budget before it reads, and waits its turn when
the budget is spent. A job larger than the whole budget runs alone, so no
message is refused for it: the gateway's peak is then that one job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer


class ByteBudget:
    """At most `limit` bytes of jobs in flight; FIFO, so a large job is not starved."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._waiting: deque[tuple[int, defer.Deferred]] = deque()

    def acquire(self, size: int) -> defer.Deferred:
        """Fires with the amount taken (size, or the whole limit for a larger job)."""
        amount = min(size, self.limit)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((amount, d))
        self._grant()
        return d

    def release(self, amount: int) -> None:
        self.in_use -= amount
        self._grant()

    def run(self, size: int, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        """f(*args) (a Deferred or a value) once size bytes are free; released after."""
        def start(amount: int) -> defer.Deferred:
            d = defer.maybeDeferred(f, *args)

            def done(result):
                self.release(amount)
                return result
            return d.addBoth(done)
        return self.acquire(size).addCallback(start)

    def _grant(self) -> None:
        while self._waiting and self.in_use + self._waiting[0][0] <= self.limit:
            amount, d = self._waiting.popleft()
            self.in_use += amount
            self.peak = max(self.peak, self.in_use)
            d.callback(amount)
