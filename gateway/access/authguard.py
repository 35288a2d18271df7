"""A password-guessing budget shared by SMTP AUTH, POP3 and IMAP logins.

Wraps the IUserDirectory (access/auth.py) that service.py hands to all three
servers, so a failure on one protocol counts on the others. Failures are
counted per client address and per account over a sliding window
([auth] failure_window): each failure is answered after a delay that doubles
with the larger count (failure_delay up to failure_delay_max); past
max_failures_per_client (or max_failures_per_account) further attempts are
refused at once with AuthThrottled, a temporary error, without hashing the
password (guessing then costs the gateway nothing), until the window has
passed since the last failure. The checks of one client address run one at a
time (answer delays included), so forty parallel connections guessing from
one address hash one password at a time, and a well-behaved client from
another address waits behind at most one of theirs in the auth threads.
Each refusal and each failure is logged with
the client address, in one line a fail2ban filter can match:

    auth failure user=<u> client=<ip> failures=<n>
    auth refused user=<u> client=<ip>: too many failures, retry in <s>s

A per-account refusal lets anyone lock an account out for the window; that
is why its limit is separate and higher (Dovecot's auth_penalty counts per
address only; Postfix's anvil does the same for SMTP AUTH).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from twisted.cred.error import LoginFailed
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config import AuthGuardSettings
from gateway.errors import AuthThrottled
from gateway.interfaces import IUserDirectory

log = Logger()

# Addresses and accounts remembered at most; the oldest are forgotten first.
_MAX_KEYS = 100_000


@implementer(IUserDirectory)
class GuardedDirectory:
    def __init__(self, users: IUserDirectory, settings: AuthGuardSettings, clock: Any) -> None:
        self.users = users
        self.settings = settings
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (n, last)
        self._turns: dict[str, defer.DeferredSemaphore] = {}  # client -> one check at a time

    def exists(self, address: str) -> bool:
        return self.users.exists(address)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.users, name)  # what else the directory offers (requestAvatarId)

    # -- counting --------------------------------------------------------------------

    def _count(self, key: str) -> tuple[int, float]:
        now = self.clock.seconds()
        self._forget(now)
        return self._failures.get(key, (0, now))

    def _forget(self, now: float) -> None:
        window = self.settings.failure_window
        while self._failures:
            key, (_, last) = next(iter(self._failures.items()))
            if now - last < window and len(self._failures) <= _MAX_KEYS:
                break
            del self._failures[key]

    def _fail(self, key: str) -> int:
        n, _ = self._count(key)
        self._failures[key] = (n + 1, self.clock.seconds())
        self._failures.move_to_end(key)
        return n + 1

    def failures(self, client: str = "", address: str = "") -> int:
        """The larger failure count of client and account, within the window."""
        return max(self._count("client " + client)[0] if client else 0,
                   self._count("account " + address.lower())[0] if address else 0)

    # -- IUserDirectory ---------------------------------------------------------------

    def authenticate(self, address: str, password: str, client: str = "") -> defer.Deferred:
        if not client:
            return self._check(address, password, client)
        turn = self._turns.get(client)
        if turn is None:
            turn = self._turns[client] = defer.DeferredSemaphore(1)

        def done(result: object) -> object:
            if turn.tokens == turn.limit and not turn.waiting:
                self._turns.pop(client, None)  # nobody from there is waiting: forget it
            return result

        return turn.run(self._check, address, password, client).addBoth(done)

    def _check(self, address: str, password: str, client: str) -> defer.Deferred:
        s = self.settings
        by_client, client_last = self._count("client " + client) if client else (0, 0.0)
        by_account, account_last = self._count("account " + address.lower())
        if (client and by_client >= s.max_failures_per_client) or \
                by_account >= s.max_failures_per_account:
            last = client_last if by_client >= s.max_failures_per_client else account_last
            wait = max(1, int(last + s.failure_window - self.clock.seconds()))
            log.warn("auth refused user={user} client={client}: too many failures, "
                     "retry in {wait}s", user=address, client=client or "-", wait=wait)
            return defer.fail(AuthThrottled(f"too many failed logins, retry in {wait}s"))
        d = defer.maybeDeferred(self.users.authenticate, address, password)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(client,),
                       errbackArgs=(address, client))
        return d

    def _succeeded(self, canonical: str, client: str) -> str:
        if client:
            self._failures.pop("client " + client, None)  # a typo is forgiven at once
        return canonical

    def _failed(self, failure, address: str, client: str):
        if not failure.check(LoginFailed):
            return failure
        n = self._fail("account " + address.lower())
        if client:
            n = max(n, self._fail("client " + client))
        log.info("auth failure user={user} client={client} failures={n}", user=address,
                 client=client or "-", n=n)
        s = self.settings
        delay = min(s.failure_delay_max, s.failure_delay * 2 ** (n - 1))
        d: defer.Deferred = defer.Deferred()
        self.clock.callLater(delay, d.errback, failure)
        return d
