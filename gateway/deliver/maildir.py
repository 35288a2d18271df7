"""Local delivery: a "local" Route's message into the user's Maildir INBOX.

Implements IDeliveryTarget for kind "local", through IMailStore (store/ owns
the files). Adds Return-Path (RFC 5321 4.4) and Delivered-To (the loop marker
Postfix and qmail use). The Maildir file name is derived from the queue ID and
the mailbox, so a delivery repeated after a crash is recognised and skipped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from twisted.internet import defer
from zope.interface import implementer

from gateway.durable import Steps
from gateway.envelope import Envelope
from gateway.errors import MailError
from gateway.interfaces import IDeliveryTarget, IMailStore, MessageFile, Route


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


def local_file(envelope: Envelope, route: Route, message_path: str) -> bytes | MessageFile:
    """The message as a local delivery writes it (trace headers first, loops refused),
    without reading a large one whole: the store (or deliver/mbox.py) copies the spool
    file in pieces (issue 11). The loop check reads its start, as program deliveries do;
    a message that fits in it (most) is written from that read, in one write: no second
    open and no copy buffer per copy of an alias's 1,000 (bench/alias_bench.py)."""
    with open(message_path, "rb") as f:
        start = f.read(WHOLE + 1)
    check_forwarding_loop(start, route)
    if len(start) <= WHOLE:
        return delivery_headers(envelope, route) + start
    return MessageFile(delivery_headers(envelope, route), message_path)


@implementer(IDeliveryTarget)
class MaildirDelivery:
    kind = "local"
    # Copies of one message (an alias's mailboxes) handed over at once: two trips'
    # worth of the group commit (gateway/durable.py, 64 calls a trip), one being
    # synced while the next fills, so 1,000 copies cost a few dozen syncs.
    parallel = 128

    def __init__(self, store: IMailStore, hostname: str,
                 run_blocking: Callable[..., defer.Deferred]):
        self.store = store
        self.hostname = hostname
        self.run_blocking = run_blocking

    def deliver(self, envelope: Envelope, route: Route, message_path: str,
                recovering: bool) -> defer.Deferred:
        return self.run_blocking(self._deliver, envelope, route, message_path, recovering)

    def _deliver(self, envelope: Envelope, route: Route, message_path: str,
                 recovering: bool) -> Steps:
        message = local_file(envelope, route, message_path)
        # A folder the gateway chose (DMARC quarantine) is made when missing; a
        # subaddress's folder (user+tag@) only when it exists.
        folder, make = (envelope.folder, True) if envelope.folder else (route.folder, False)
        try:
            return (yield from self.store.deliver_steps(
                route.mailbox, message, unique_name(envelope, route.mailbox, self.hostname),
                recovering, folder, make))
        except ValueError as e:
            raise MailError(550, "5.1.3", str(e)) from e
        except OSError as e:
            raise MailError(451, "4.3.0", f"mailbox write failed: {e.strerror}") from e
