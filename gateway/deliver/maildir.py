"""Local delivery: a "local" Route's message into the user's Maildir INBOX.

Implements IBatchDeliveryTarget for kind "local", through IMailStore (store/ owns
the files). Adds Return-Path (RFC 5321 4.4) and Delivered-To (the loop marker
Postfix and qmail use). The Maildir file name is derived from the queue ID and
the mailbox, so a delivery repeated after a crash is recognised and skipped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.durable import Steps, lockstep
from gateway.envelope import Envelope
from gateway.errors import MailError
from gateway.interfaces import (
    IBatchDeliveryTarget,
    IMailStore,
    MessageFile,
    RecipientResult,
    Route,
)

log = Logger()


def unique_name(envelope: Envelope, mailbox: str, hostname: str) -> str:
    """The Maildir "time.unique.host" name of this entry's copy for mailbox."""
    tag = hashlib.sha1(mailbox.encode("utf-8")).hexdigest()[:8]
    host = re.sub(r"[^A-Za-z0-9.-]", "_", hostname)
    return f"{int(envelope.arrived)}.Q{envelope.queue_id}_{tag}.{host}"


def delivery_headers(envelope: Envelope, route: Route) -> bytes:
    """Return-Path (RFC 5321 4.4) and Delivered-To, for every local kind of delivery."""
    sender = envelope.sender if route.sender is None else route.sender
    return (f"Return-Path: <{sender}>\r\n"
            f"Delivered-To: {route.address}\r\n").encode()


def check_forwarding_loop(message: bytes, route: Route) -> None:
    """554 5.4.6 when the message already carries our Delivered-To for this address:
    it went out (a forward) and came back. Postfix's local(8) makes the same check."""
    end = message.find(b"\r\n\r\n")
    head = message[:end if end >= 0 else 65536].lower()
    mark = b"\ndelivered-to: " + route.address.lower().encode() + b"\r\n"
    if mark in b"\n" + head + b"\r\n":
        raise MailError(554, "5.4.6", f"mail forwarding loop for <{route.address}>")


# A message up to this size is read whole by the loop check and written from memory;
# a larger one is copied from the spool file in pieces (issue 11).
WHOLE = 65536


def read_start(message_path: str) -> bytes:
    """The start of the spool file local_file needs (the whole of a message up to WHOLE)."""
    with open(message_path, "rb") as f:
        return f.read(WHOLE + 1)


def local_file(envelope: Envelope, route: Route, message_path: str,
               start: bytes | None = None) -> bytes | MessageFile:
    """The message as a local delivery writes it (trace headers first, loops refused),
    without reading a large one whole: the store (or deliver/mbox.py) copies the spool
    file in pieces (issue 11). The loop check reads its start, as program deliveries do;
    a message that fits in it (most) is written from that read, in one write: no second
    open and no copy buffer per copy of an alias's 1,000 (bench/alias_bench.py).
    start: read_start(message_path) when the caller has it (one read for a batch)."""
    if start is None:
        start = read_start(message_path)
    check_forwarding_loop(start, route)
    if len(start) <= WHOLE:
        return delivery_headers(envelope, route) + start
    return MessageFile(delivery_headers(envelope, route), message_path)


@implementer(IBatchDeliveryTarget)
class MaildirDelivery:
    """Copies of one message to several mailboxes (an alias's, a list's local
    members) come as one batch (IBatchDeliveryTarget) and go to the pool as one
    call in steps (durable.lockstep): every copy written, one sync, every copy
    renamed into new/, one sync. An alias of 1,000 mailboxes thus costs two
    syncs and one thread hop, not 16 group-commit trips of two syncs each with a
    Deferred per copy (bench/alias_bench.py, bench/RESULTS.md).

    The runner records no outcomes for these batches: a copy repeated after a
    crash is recognised by its Maildir name (unique_name) and skipped.
    """

    kind = "local"

    def __init__(self, store: IMailStore, hostname: str,
                 run_blocking: Callable[..., defer.Deferred], max_batch: int = 1000):
        self.store = store
        self.hostname = hostname
        self.run_blocking = run_blocking
        # Copies in one call ([queue] local_batch): what one trip writes before its sync.
        self.max_batch = max_batch

    def batch_key(self, route: Route) -> str:
        """Every local copy of a message (of one envelope sender) may share a call."""
        return ""

    def deliver(self, envelope: Envelope, route: Route, message_path: str,
                recovering: bool) -> defer.Deferred:
        return self.run_blocking(self._deliver, envelope, route, message_path, recovering)

    def deliver_batch(self, envelope: Envelope, routes: list[Route], message_path: str,
                      recovering: bool) -> defer.Deferred:
        d = self.run_blocking(self._deliver_batch, envelope, routes, message_path, recovering)
        d.addCallbacks(lambda outcomes: [_result(envelope, route, outcome)
                                         for route, outcome in zip(routes, outcomes,
                                                                   strict=True)],
                       lambda failure: [_result(envelope, route, (False, failure))
                                        for route in routes])
        return d

    def _deliver_batch(self, envelope: Envelope, routes: list[Route], message_path: str,
                       recovering: bool) -> Steps:
        try:
            start = read_start(message_path)  # once for all the copies
        except OSError as e:
            error = MailError(451, "4.3.0", f"queue file unreadable: {e.strerror}")
            return [(False, Failure(error))] * len(routes)
        return (yield from lockstep([(self._deliver, (envelope, route, message_path,
                                                       recovering, start))
                                     for route in routes]))

    def _deliver(self, envelope: Envelope, route: Route, message_path: str,
                 recovering: bool, start: bytes | None = None) -> Steps:
        # A folder the gateway chose (DMARC quarantine) is made when missing; a
        # subaddress's folder (user+tag@) only when it exists.
        folder, make = (envelope.folder, True) if envelope.folder else (route.folder, False)
        try:
            # The copy is handed over, not kept here: the store drops it once written,
            # so a batch holds no more than one copy in memory at a time.
            return (yield from self.store.deliver_steps(
                route.mailbox, local_file(envelope, route, message_path, start),
                unique_name(envelope, route.mailbox, self.hostname), recovering, folder,
                make))
        except ValueError as e:
            raise MailError(550, "5.1.3", str(e)) from e
        except OSError as e:
            raise MailError(451, "4.3.0", f"mailbox write failed: {e.strerror}") from e


def _result(envelope: Envelope, route: Route, outcome: tuple[bool, Any]) -> RecipientResult:
    """One copy's outcome in a batch, as the runner's _deliver_one makes it of a single
    delivery's: a MailError is the answer, anything else a local fault (logged, 451)."""
    ok, value = outcome
    if ok:
        return RecipientResult()
    if value.check(MailError):
        return RecipientResult(value.value)
    if value.check(OSError):
        return RecipientResult(MailError(451, "4.3.0",
                                         f"mailbox write failed: {value.value.strerror}"))
    log.failure("{queue_id}: to=<{to}> delivery error", value, queue_id=envelope.queue_id,
                to=route.address)
    return RecipientResult(MailError(451, "4.3.0", "local error in delivery"))
