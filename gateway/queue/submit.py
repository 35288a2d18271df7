"""New messages made inside the gateway (auto-replies, list posts) into the queue.

Implements ISubmit. Everything goes through the queue, so mail made here gets
the same durability, retries and bounces as mail from SMTP: the entry is
stored (durable) and then handed to the runner (IQueueListener).
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from gateway.envelope import Envelope, Recipient, new_queue_id
from gateway.interfaces import IQueueListener, ISpool, ISubmit, Route


@implementer(ISubmit)
class Submitter:
    def __init__(self, spool: ISpool, listener: IQueueListener | None, hostname: str, clock):
        self.spool = spool
        self.listener = listener
        self.hostname = hostname
        self.clock = clock

    def submit(self, sender: str, recipients: list, message: bytes,
               queue_id: str = "") -> defer.Deferred:
        now = self.clock.seconds()
        rcpts = []
        for r in recipients:
            if isinstance(r, Recipient):
                rcpts.append(r)
            elif isinstance(r, Route):
                rcpts.append(Recipient(address=r.address, route=r.to_json(),
                                       original=r.original, sender=r.sender))
            else:
                rcpts.append(Recipient(address=r))
        envelope = Envelope(sender=sender, recipients=rcpts,
                            queue_id=queue_id or new_queue_id(now), arrived=now,
                            helo=self.hostname, protocol="local",
                            body="7BIT" if message.isascii() else "8BITMIME",
                            size=len(message))
        if queue_id and self.spool.has(queue_id):
            return defer.succeed(queue_id)  # made before a crash: scheduled at start
        d = self.spool.store(envelope, message)

        def stored(qid: str) -> str:
            self.listener.enqueued(qid)
            return qid

        return d.addCallback(stored)
