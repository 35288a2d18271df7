"""The queue runner: takes spooled entries to their routes, retries, expires.

Implements IQueueListener. Sits after queue/spool.py: the SMTP server tells it
about each new entry; at start it picks up every entry left on disk. For each
pending recipient it asks resolve (IRouter) for a route and hands it to the
deliver target of that kind (IDeliveryTarget). Outcomes:
  success                  -> recipient done
  MailError, temporary     -> retry with exponential backoff (retry_initial
                              doubling to retry_max), failed after max_age
  MailError, permanent     -> recipient failed (bounces come with the relay part)
  no target for the kind   -> stays queued (remote mail waits for deliver/relay)
The envelope is rewritten after every round, and the entry removed once no
recipient is pending. Entries found at start are delivered with recovering=True
so targets skip what a crashed run already delivered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet import defer, threads
from twisted.logger import Logger
from zope.interface import implementer

from gateway.config import QueueSettings
from gateway.envelope import Envelope, RecipientState
from gateway.errors import MailError
from gateway.interfaces import IDeliveryTarget, IQueueListener, IRouter, ISpool

log = Logger()


def backoff(settings: QueueSettings, attempts: int) -> float:
    """Seconds to wait after the attempts-th temporary failure (Postfix-like doubling)."""
    return min(settings.retry_initial * 2 ** max(attempts - 1, 0), settings.retry_max)


@implementer(IQueueListener)
class QueueRunner:
    def __init__(self, *, spool: ISpool, router: IRouter,
                 targets: Mapping[str, IDeliveryTarget], settings: QueueSettings, reactor,
                 run_blocking: Callable[..., defer.Deferred] | None = None):
        self.spool = spool
        self.router = router
        self.targets = dict(targets)
        self.settings = settings
        self.reactor = reactor
        self.run_blocking = run_blocking or (
            lambda f, *a: threads.deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self.semaphore = defer.DeferredSemaphore(settings.concurrency)
        self._active: set[str] = set()
        self._timers: dict[str, object] = {}
        self._stopped = False

    # --- scheduling --------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Repair the spool and schedule every entry on disk."""
        def scheduled(ids: list[str]) -> None:
            log.info("queue runner started with {n} entries", n=len(ids))
            for qid in ids:
                self.schedule(qid, 0, recovering=True)

        d = self.run_blocking(self._recover_and_list)
        return d.addCallback(scheduled)

    def _recover_and_list(self) -> list[str]:
        self.spool.recover()
        return self.spool.queue_ids()

    def stop(self) -> None:
        self._stopped = True
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()

    def enqueued(self, queue_id: str) -> None:
        self.schedule(queue_id, 0, recovering=False)

    def schedule(self, queue_id: str, delay: float, recovering: bool) -> None:
        old = self._timers.pop(queue_id, None)
        if old is not None and old.active():
            old.cancel()
        if self._stopped:
            return
        self._timers[queue_id] = self.reactor.callLater(
            max(delay, 0), self._run, queue_id, recovering)

    def _run(self, queue_id: str, recovering: bool) -> defer.Deferred:
        self._timers.pop(queue_id, None)
        if queue_id in self._active:
            return defer.succeed(None)
        self._active.add(queue_id)
        d = self.semaphore.run(self.attempt, queue_id, recovering)
        d.addErrback(lambda f: log.failure("{queue_id}: runner error", f, queue_id=queue_id))
        d.addBoth(lambda _: self._active.discard(queue_id))
        return d

    # --- one attempt at one entry --------------------------------------------------

    @defer.inlineCallbacks
    def attempt(self, queue_id: str, recovering: bool):
        try:
            envelope: Envelope = yield self.run_blocking(self.spool.load, queue_id)
        except KeyError:
            return  # removed meanwhile, or quarantined (logged by the spool)
        message_path = self.spool.message_path(queue_id)
        now = self.reactor.seconds()
        for rcpt in envelope.pending():
            if rcpt.next_attempt > now:
                continue
            yield self._deliver_one(envelope, rcpt, message_path, recovering, now)
        if envelope.finished():
            yield self.run_blocking(self.spool.remove, queue_id)
            log.info("{queue_id}: removed, all recipients done", queue_id=queue_id)
            return
        yield self.run_blocking(self.spool.update, envelope)
        wake = min(r.next_attempt for r in envelope.pending())
        self.schedule(queue_id, wake - self.reactor.seconds(), recovering=False)

    @defer.inlineCallbacks
    def _deliver_one(self, envelope: Envelope, rcpt, message_path: str, recovering: bool,
                     now: float):
        qid = envelope.queue_id
        try:
            route = self.router.route(rcpt.address)
            target = self.targets.get(route.kind)
            if target is None:
                raise MailError(451, "4.4.0", f"no delivery for {route.kind} routes yet",
                                temporary=True)
            yield target.deliver(envelope, route, message_path, recovering)
        except MailError as e:
            rcpt.attempts += 1
            rcpt.last_error = f"{e.code} {e.enhanced} {e.text}"
            expired = now - envelope.arrived >= self.settings.max_age
            if e.temporary and not expired:
                rcpt.next_attempt = now + backoff(self.settings, rcpt.attempts)
                log.info("{queue_id}: to=<{to}> deferred: {error}", queue_id=qid,
                         to=rcpt.address, error=rcpt.last_error)
            else:
                rcpt.state = RecipientState.FAILED
                log.error("{queue_id}: to=<{to}> failed: {error}", queue_id=qid,
                          to=rcpt.address, error=rcpt.last_error)
            return
        except Exception:
            # An unexpected fault is a local problem: keep the mail, retry later.
            log.failure("{queue_id}: to=<{to}> delivery error", queue_id=qid, to=rcpt.address)
            rcpt.attempts += 1
            rcpt.last_error = "451 4.3.0 local error in delivery"
            rcpt.next_attempt = now + backoff(self.settings, rcpt.attempts)
            return
        rcpt.state = RecipientState.DONE
        rcpt.attempts += 1
        rcpt.last_error = ""
        log.info("{queue_id}: to=<{to}> delivered via {kind}", queue_id=qid, to=rcpt.address,
                 kind=route.kind)
