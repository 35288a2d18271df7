"""The queue runner: takes spooled entries to their routes, retries, expires, bounces.

Implements IQueueListener. Sits after queue/spool.py: the SMTP server tells it
about each new entry; at start it picks up every entry left on disk. For each
pending recipient it asks resolve (IRouter) for a route and hands it to the
deliver target of that kind (IDeliveryTarget). Targets that take batches
(IBatchDeliveryTarget: the relay, and local Maildirs) get all routes with the
same batch key (a domain; every local mailbox) at once, up to the target's
max_batch, and different keys in parallel.
Outcomes, per recipient:
  success                  -> recipient done
  MailError, temporary     -> retry with exponential backoff (retry_initial
                              doubling to retry_max), failed after max_age
  MailError, permanent     -> recipient failed
  no target for the kind   -> stays queued (451 4.4.0)
  more than max_hops Received headers -> failed, 554 5.4.6 (a mail loop)
A recipient that expands (IRouter.expand: an alias, aliases(5)) is replaced by
one recipient per final route, stored with its route and saved before any of
them is delivered; each then has its own state, retries and DSN. A
recipient's own sender (an alias's owner-NAME, a list member's VERP address)
is its delivery's envelope sender and receives its DSN.
Failed recipients get one DSN (IBouncer, RFC 3464) to the envelope sender,
never for the null sender; with delay_warning set, still-pending ones get one
"delayed" DSN. The envelope is rewritten as soon as each batch completes (so
a crash never repeats a recipient already recorded as done), and the entry is
removed once no recipient is pending and every DSN due is spooled. Entries
found at start are delivered with recovering=True so targets skip what a
crashed run already delivered. Held entries (`mailgateway queue hold`, see
queue/control.py) are neither attempted nor expired.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import logs
from gateway.config import QueueSettings
from gateway.durable import in_thread
from gateway.envelope import Envelope, Recipient, RecipientState, count_received
from gateway.errors import MailError
from gateway.interfaces import (
    IBatchDeliveryTarget,
    IBouncer,
    IDeliveryTarget,
    IQueueListener,
    IRouter,
    ISpool,
    RecipientResult,
    Route,
)
from gateway.queue import control

log = Logger()

# Route kinds whose target recognises a delivery repeated after a crash (recovering).
IDEMPOTENT = frozenset({"local"})


def backoff(settings: QueueSettings, attempts: int) -> float:
    """Seconds to wait after the attempts-th temporary failure (Postfix-like doubling)."""
    return min(settings.retry_initial * 2 ** max(attempts - 1, 0), settings.retry_max)


@implementer(IQueueListener)
class QueueRunner:
    def __init__(self, *, spool: ISpool, router: IRouter,
                 targets: Mapping[str, IDeliveryTarget], settings: QueueSettings, reactor,
                 run_blocking: Callable[..., defer.Deferred] | None = None,
                 run_unsynced: Callable[..., defer.Deferred] | None = None,
                 bouncer: IBouncer | None = None, control_root: Path | None = None,
                 recover: bool = True):
        self.spool = spool
        # Whether start() repairs the spool (removes half-written files): not in the
        # gateway, which repairs it before it listens (service.py): start() runs
        # while the listeners already write entries.
        self.recover = recover
        self.bouncer = bouncer
        # Where `mailgateway queue ...` drops requests (None: no control path).
        self.control_root = control_root
        self._forced: set[str] = set()
        self._control_call = None
        self.router = router
        self.targets = dict(targets)
        self.settings = settings
        self.reactor = reactor
        self.run_blocking = run_blocking or in_thread(reactor)
        # Calls with nothing to make durable (removing a finished entry): no trip.
        self.run_unsynced = run_unsynced or self.run_blocking
        self.semaphore = defer.DeferredSemaphore(settings.concurrency)
        self._active: set[str] = set()
        # Envelopes handed over by enqueued(): the first attempt needs no read-back.
        self._fresh: dict[str, Envelope] = {}
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
        # Requests made while the gateway was down apply before any delivery.
        d.addCallback(lambda ids: self.poll_control().addCallback(
            lambda _: self.run_blocking(self.spool.queue_ids)))
        d.addCallback(scheduled)
        d.addCallback(lambda _: self._schedule_control())
        return d

    def _recover_and_list(self) -> list[str]:
        if self.recover:
            self.spool.recover()
        return self.spool.queue_ids()

    def counts(self) -> dict[str, int]:
        """Entries by state, for the metrics: being attempted now, and waiting for
        their next attempt (held entries wait for `queue release`, in neither)."""
        return {"active": len(self._active), "scheduled": len(self._timers)}

    def stop(self) -> None:
        self._stopped = True
        if self._control_call is not None and self._control_call.active():
            self._control_call.cancel()
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()
        self._fresh.clear()

    def enqueued(self, queue_id: str, envelope: Envelope | None = None) -> None:
        if envelope is not None:
            self._fresh[queue_id] = envelope
        self.schedule(queue_id, 0, recovering=False)

    def pick_up(self) -> defer.Deferred:
        """Schedule the spool's entries this runner knows nothing of: those an SMTP
        accept worker (gateway/acceptproc) spooled and answered 250 for but died
        before it told of. Entries waiting for a retry or being attempted keep
        their turn (an entry on hold is looked at and left alone)."""
        def found(ids: list[str]) -> None:
            unknown = [q for q in ids if q not in self._timers and q not in self._active]
            if unknown:
                log.info("queue runner picked up {n} entries nobody told of", n=len(unknown))
            for qid in unknown:
                self.schedule(qid, 0, recovering=True)

        return self.run_blocking(self.spool.queue_ids).addCallback(found)

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
        forced = queue_id in self._forced
        self._forced.discard(queue_id)
        envelope = self._fresh.pop(queue_id, None)
        if envelope is not None and envelope.hops >= 0:
            hops = envelope.hops
        else:
            try:
                envelope, hops = yield self.run_blocking(self._load, queue_id)
            except KeyError:
                return  # removed meanwhile, or quarantined (logged by the spool)
        if envelope.held:
            log.info("{queue_id}: on hold, not attempted", queue_id=queue_id)
            return
        message_path = self.spool.message_path(queue_id)
        now = self.reactor.seconds()
        due = [r for r in envelope.pending() if forced or r.next_attempt <= now]
        if due and hops > self.settings.max_hops:
            loop = MailError(554, "5.4.6", f"Too many hops: {hops} Received headers, more "
                             f"than max_hops {self.settings.max_hops} (mail loop)")
            for rcpt in due:
                self._record(envelope, rcpt, RecipientResult(loop), now, "loop")
            due = []
        saver = _Saver(lambda: self._save(envelope))
        groups, expanded = self._groups(envelope, due, now)
        if expanded:
            # An alias's targets are recorded before any is delivered: a crash
            # then repeats none that got done (a program is not asked twice).
            yield saver.save()
        positions = {id(r): i for i, r in enumerate(envelope.recipients)}
        running = [self._deliver_group(envelope, target, pairs, message_path, recovering, now,
                                       saver, positions)
                   for target, pairs in groups]
        if len(running) == 1:  # the usual message: no DeferredList around it
            yield running[0]
        elif running:
            yield defer.gatherResults(running, consumeErrors=True)
        if self._unnotified(envelope) or self._warn_due(envelope, now):
            yield self._notify(envelope, message_path, now)
        if envelope.finished() and not self._unnotified(envelope):
            if saver.unrecorded:
                # Outcomes that must not be repeated were left unrecorded because the
                # entry was done (_deliver_group): its removal, made durable in the
                # run lane's next trip, records them all, one trip instead of a
                # record's trip and then a removal.
                yield saver.run(self.run_blocking, self.spool.remove_durably, queue_id)
            else:
                # Unlinks off the reactor thread (an unlink waits whenever a trip's
                # syncfs holds the file system's journal: measured, a fifth of the
                # reactor's time, bench/RESULTS.md), in a lane with nothing to sync.
                # Every outcome that must not be repeated is durable already (local
                # deliveries are recognised again; batches were saved as they ended).
                yield saver.run(self.run_unsynced, self.spool.remove, queue_id)
            # Postfix's "removed" line: the entry's last word in the log.
            log.info("{queue_id}: removed", queue_id=queue_id, event="removed")
            return
        yield saver.save()
        wakes = [r.next_attempt for r in envelope.pending()]
        if self._unnotified(envelope):  # a DSN could not be spooled: try again later
            wakes.append(now + self.settings.retry_initial)
        self.schedule(queue_id, min(wakes) - self.reactor.seconds(), recovering=False)

    def _load(self, queue_id: str) -> tuple[Envelope, int]:
        """The envelope and the message's Received count (blocking)."""
        envelope = self.spool.load(queue_id)
        if envelope.hops >= 0:
            return envelope, envelope.hops
        try:
            with open(self.spool.message_path(queue_id), "rb") as f:
                hops = count_received(f.read(1 << 20))
        except OSError:
            hops = 0  # the spool quarantines a missing message at the next recover
        return envelope, hops

    def _save(self, envelope: Envelope) -> defer.Deferred:
        envelope.generation += 1  # the records of the last one are folded in
        return self.run_blocking(self.spool.update_steps, snapshot(envelope))

    def _record_outcomes(self, envelope: Envelope, rcpts: list[Recipient],
                         positions: dict[int, int]) -> defer.Deferred:
        """One batch's outcomes, appended beside the envelope (Spool.record_steps)."""
        records = [(positions[id(r)], r.to_json()) for r in rcpts if id(r) in positions]
        return self.run_blocking(self.spool.record_steps, envelope.queue_id,
                                 envelope.generation, records)

    def _groups(self, envelope: Envelope, due: list[Recipient], now: float):
        """Route each due recipient (expanding aliases); group them per target, batch key
        and sender, split to max_batch. Returns the groups and whether any expanded."""
        groups: dict[tuple, list[tuple[Recipient, Route]]] = {}
        expanded = False
        for rcpt in due:
            if rcpt.route is not None:
                pairs = [(rcpt, Route.from_json(rcpt.route))]
            else:
                try:
                    routes = self.router.expand(rcpt.address)
                except MailError as e:
                    self._record(envelope, rcpt, RecipientResult(e), now, "router")
                    continue
                if len(routes) == 1 and not routes[0].original and routes[0].sender is None:
                    route = routes[0]
                    if rcpt.sender is not None:  # a list member's VERP sender
                        route = dataclasses.replace(route, sender=rcpt.sender)
                    pairs = [(rcpt, route)]
                else:
                    pairs = self._adopt(envelope, rcpt, routes)
                    # Recorded first only when there are several and one of them would
                    # be harmed by a second go: with one target nothing can be done
                    # before it, and local copies are recognised after a crash (their
                    # Maildir names; deliver/maildir.py), so a crash re-expands alike.
                    # An alias of 1,000 mailboxes then costs no rewrite of its
                    # envelope and no sync before its first copy (bench/alias_bench.py).
                    expanded = expanded or (len(pairs) > 1 and any(
                        route.kind not in IDEMPOTENT for _, route in pairs))
            for child, route in pairs:
                if route.kind == "error":
                    code, enhanced, text = route.error.split(" ", 2)
                    error = MailError(int(code), enhanced, text)
                    self._record(envelope, child, RecipientResult(error), now, "alias")
                    continue
                target = self.targets.get(route.kind)
                if target is None:
                    error = MailError(451, "4.4.0", f"no delivery for {route.kind} routes yet")
                    self._record(envelope, child, RecipientResult(error), now, route.kind)
                    continue
                key = (route.kind, target.batch_key(route)
                       if IBatchDeliveryTarget.providedBy(target) else "", route.sender)
                groups.setdefault(key, []).append((child, route))
        return [(self.targets[kind], pairs) for (kind, _, _), pairs in groups.items()], expanded

    def _adopt(self, envelope: Envelope, parent: Recipient, routes: list[Route]
               ) -> list[tuple[Recipient, Route]]:
        """Replace an expanded recipient by one recipient per final route (each with
        its own state, retries and DSN), skipping routes the message already has."""
        # The first expansion (the usual case) has nothing to compare with: no
        # encoding of each of an alias's 1,000 routes then.
        have = {json.dumps(r.route, sort_keys=True) for r in envelope.recipients if r.route}
        pairs = []
        for route in routes:
            stored = route.to_json()
            if have and json.dumps(stored, sort_keys=True) in have:
                continue
            child = Recipient(address=route.address, route=stored, original=route.original,
                              sender=route.sender)
            envelope.recipients.append(child)
            pairs.append((child, route))
        parent.state = RecipientState.DONE
        parent.attempts += 1
        log.info("{queue_id}: to=<{to}> expanded to {n} targets: {targets}",
                 queue_id=envelope.queue_id, to=parent.address, n=len(pairs),
                 targets=", ".join(r.describe() for _, r in pairs))
        return pairs

    @defer.inlineCallbacks
    def _deliver_group(self, envelope: Envelope, target, pairs, message_path: str,
                       recovering: bool, now: float, saver: _Saver,
                       positions: dict[int, int]):
        """One target's recipients of one batch key, batch after batch."""
        if not IBatchDeliveryTarget.providedBy(target):
            # One after another, unless the target takes several at once (its
            # `parallel`: an alias's program recipients, up to [program] concurrency).
            slots = defer.DeferredSemaphore(max(1, int(getattr(target, "parallel", 1))))

            def one(rcpt: Recipient, route: Route) -> defer.Deferred:
                d = slots.run(self._deliver_one, target, envelope, route, message_path,
                              recovering)
                d.addCallback(lambda result: self._record(envelope, rcpt, result, now,
                                                          route.kind))
                return d

            yield defer.gatherResults([one(rcpt, route) for rcpt, route in pairs],
                                      consumeErrors=True)
            return
        size = max(1, int(target.max_batch))
        for i in range(0, len(pairs), size):
            chunk = pairs[i:i + size]
            try:
                results = yield target.deliver_batch(
                    envelope, [route for _, route in chunk], message_path, recovering)
            except Exception:
                log.failure("{queue_id}: batch delivery error", queue_id=envelope.queue_id)
                results = [RecipientResult(MailError(451, "4.3.0", "local error in delivery"))
                           ] * len(chunk)
            for (rcpt, route), result in zip(chunk, results, strict=True):
                self._record(envelope, rcpt, result, now, route.kind)
            if target.kind in IDEMPOTENT:
                continue  # a repeat after a crash is recognised (Maildir names): no record
            if envelope.finished() and not self._unnotified(envelope):
                # This batch ended the entry (the usual relayed message: one batch),
                # and nothing can happen before its removal, which attempt() then
                # makes durable: that removal is the record (Spool.remove_durably).
                # Should the entry not be removed after all, its rewrite (saver.save)
                # holds these outcomes.
                saver.unrecorded = True
                continue
            # Durable before anything else happens, even before the entry's removal:
            # a remote server cannot be asked whether it already has the message, so
            # a removal lost in a crash must find these recorded as done. Appended
            # beside the envelope, not a rewrite of it (Spool.record_steps).
            yield saver.run(self._record_outcomes, envelope, [r for r, _ in chunk], positions)

    @defer.inlineCallbacks
    def _deliver_one(self, target: IDeliveryTarget, envelope: Envelope, route: Route,
                     message_path: str, recovering: bool):
        try:
            said = yield target.deliver(envelope, route, message_path, recovering)
        except MailError as e:
            return RecipientResult(e)
        except Exception:
            # An unexpected fault is a local problem: keep the mail, retry later.
            log.failure("{queue_id}: to=<{to}> delivery error", queue_id=envelope.queue_id,
                        to=route.address)
            return RecipientResult(MailError(451, "4.3.0", "local error in delivery"))
        return RecipientResult(detail=said if isinstance(said, str) else "")

    def _record(self, envelope: Envelope, rcpt: Recipient, result: RecipientResult,
                now: float, via: str) -> None:
        """Apply one outcome to the recipient's state (in memory; saved by the caller)."""
        qid = envelope.queue_id
        rcpt.attempts += 1
        rcpt.remote_mta = result.remote_mta
        e = result.error
        relay = result.remote_mta or via

        def logged(dsn: str, status: str, reply: str) -> None:  # Postfix's status= line
            logs.delivery(qid, rcpt.address, relay, envelope.arrived, now,
                          self.reactor.seconds(), dsn, status, reply)

        if e is None:
            rcpt.state = RecipientState.DONE
            rcpt.last_error = ""
            logged("2.0.0", "sent", result.detail or "delivered")
            return
        rcpt.last_error = f"{e.code} {e.enhanced} {e.text}"
        expired = now - envelope.arrived >= self.settings.max_age
        if e.temporary and not expired:
            rcpt.next_attempt = now + backoff(self.settings, rcpt.attempts)
            logged(e.enhanced, "deferred", rcpt.last_error)
            return
        if e.temporary:
            rcpt.last_error = (f"{e.code} {e.enhanced} gave up after "
                               f"{int(now - envelope.arrived)}s: {e.text}")
        rcpt.state = RecipientState.FAILED
        logged(e.enhanced, "expired" if e.temporary else "bounced", rcpt.last_error)

    # --- delivery status notifications (RFC 3464) ---------------------------------

    def _unnotified(self, envelope: Envelope) -> list[Recipient]:
        """Failed recipients whose DSN is due but not yet spooled."""
        return [r for r in envelope.recipients
                if r.state is RecipientState.FAILED and r.dsn != "failed"]

    def _warn_due(self, envelope: Envelope, now: float) -> bool:
        """Whether the entry is old enough for a "delayed" DSN ([queue] delay_warning)."""
        warn = self.settings.delay_warning
        return warn > 0 and now - envelope.arrived >= warn

    @defer.inlineCallbacks
    def _notify(self, envelope: Envelope, message_path: str, now: float):
        failed = self._unnotified(envelope)
        delayed = []
        if self._warn_due(envelope, now):
            delayed = [r for r in envelope.pending() if not r.dsn]
        for action, every in (("failed", failed), ("delayed", delayed)):
            # Each to its own sender: an alias's owner, a list's bounce address.
            by_sender: dict[str, list[Recipient]] = {}
            for r in every:
                by_sender.setdefault(envelope.sender if r.sender is None else r.sender,
                                     []).append(r)
            for sender, rcpts in by_sender.items():
                yield self._notify_one(envelope, sender, rcpts, action, message_path)

    @defer.inlineCallbacks
    def _notify_one(self, envelope: Envelope, sender: str, rcpts: list[Recipient],
                    action: str, message_path: str):
        if sender != envelope.sender:
            envelope = dataclasses.replace(envelope, sender=sender)
        if self.bouncer is None or not envelope.sender:
            # RFC 5321 6.1 / RFC 3464: never a DSN for the null sender (a
            # bounce that bounces is dropped here, and logged).
            for r in rcpts:
                r.dsn = action
            log.warn("{queue_id}: no {action} DSN for sender <{sender}>: {to}",
                     queue_id=envelope.queue_id, action=action, sender=envelope.sender,
                     to=", ".join(r.address for r in rcpts))
            return
        try:
            dsn_id = yield self.bouncer.bounce(envelope, rcpts, message_path, action)
        except Exception:
            log.failure("{queue_id}: could not queue the {action} DSN",
                        queue_id=envelope.queue_id, action=action)
            return
        for r in rcpts:
            r.dsn = action
        if dsn_id:
            log.info("{queue_id}: sender notification ({action}): {dsn_id}",
                     queue_id=envelope.queue_id, action=action, dsn_id=dsn_id)
            self.enqueued(dsn_id)

    # --- administration (`mailgateway queue ...`, see queue/control.py) ------------

    def _schedule_control(self) -> None:
        if self.control_root is None or self._stopped:
            return
        self._control_call = self.reactor.callLater(
            self.settings.control_interval, self._control_tick)

    def _control_tick(self) -> None:
        d = self.poll_control()
        d.addErrback(lambda f: log.failure("queue control requests", f))
        d.addBoth(lambda _: self._schedule_control())

    @defer.inlineCallbacks
    def poll_control(self):
        """Apply the waiting hold/release/delete/retry/flush requests, oldest first.

        A request for an entry being attempted right now waits for the next
        poll, so the attempt's own envelope rewrite cannot undo it.
        """
        if self.control_root is None:
            return
        root = self.control_root
        requests = yield self.run_blocking(control.pending_requests, root)
        for req in requests:
            # An administrator's change is on disk: the next attempt reads it there.
            self._fresh.pop(req.queue_id, None)
            if req.action == "flush":
                ids = yield self.run_blocking(self.spool.queue_ids)
                for qid in ids:
                    if qid not in self._active:
                        self._force(qid)
                log.info("queue flush requested: {n} entries", n=len(ids))
            elif req.queue_id in self._active:
                continue
            elif req.action == "delete":
                self._cancel(req.queue_id)
                yield self.run_blocking(self.spool.remove, req.queue_id)
                log.warn("{queue_id}: deleted by the administrator", queue_id=req.queue_id)
            elif req.action in ("hold", "release"):
                held = req.action == "hold"
                found = yield self.run_blocking(control.set_held, self.spool, req.queue_id,
                                                held)
                if found:
                    log.info("{queue_id}: {action} by the administrator",
                             queue_id=req.queue_id, action="held" if held else "released")
                    if held:
                        self._cancel(req.queue_id)
                    else:
                        self._force(req.queue_id)
            elif req.action == "retry":
                self._force(req.queue_id)
            yield self.run_blocking(control.done, root, req.name)

    def _force(self, queue_id: str) -> None:
        """Attempt every pending recipient now, whatever its next retry time."""
        self._forced.add(queue_id)
        self.schedule(queue_id, 0, recovering=False)

    def _cancel(self, queue_id: str) -> None:
        call = self._timers.pop(queue_id, None)
        if call is not None and call.active():
            call.cancel()


def snapshot(envelope: Envelope) -> Envelope:
    """A copy to write while other batches change the live envelope.

    Each Recipient is copied, not deep-copied: its fields are values, and its
    route dict is replaced, never changed in place. copy.deepcopy cost four
    times as much, on the reactor thread, at every save of a list explosion's
    10,000 recipients (bench/list_bench.py).
    """
    return dataclasses.replace(envelope, recipients=[copy.copy(r) for r in envelope.recipients])


class _Saver:
    """Saves of one entry's envelope, coalesced (group commit, as in gateway/durable.py).

    save() fires once a write that began after the call is durable. Calls made
    while a write runs share the next write, so a list's explosion that finishes
    thousands of batches costs a few rewrites of its envelope, not one each.
    run(f) waits for every write asked for before it, then runs f (the removal).
    """

    def __init__(self, write: Callable[[], defer.Deferred]):
        self.write = write
        self._lock = defer.DeferredLock()
        self._next: defer.Deferred | None = None
        # Outcomes left unrecorded for the entry's durable removal (QueueRunner).
        self.unrecorded = False

    def save(self) -> defer.Deferred:
        waiter: defer.Deferred = defer.Deferred()
        if self._next is None:
            self._next = defer.Deferred()
            self._next.addBoth(_pass_on, waiter)
            self._lock.run(self._write_now)  # may write at once, when no write runs
        else:
            self._next.addBoth(_pass_on, waiter)
        return waiter

    def _write_now(self) -> defer.Deferred:
        done, self._next = self._next, None  # later callers wait for the next write
        d = self.write()
        d.addBoth(_fire, done)
        return d

    def run(self, f: Callable[..., object], *args: object) -> defer.Deferred:
        return self._lock.run(f, *args)


def _fire(result, d: defer.Deferred):
    d.callback(result) if not isinstance(result, Failure) else d.errback(result)
    return None


def _pass_on(result, waiter: defer.Deferred):
    if isinstance(result, Failure):
        waiter.errback(result)
    else:
        waiter.callback(result)
    return result
