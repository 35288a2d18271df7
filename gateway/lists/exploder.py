"""The list target: mail for a list's addresses, and the explosion of a post.

Implements IDeliveryTarget for kind "list" (resolve/ decided the address is a
list's, through lists/directory.py). By role:
  post      posting.decide: refuse (the error bounces to the poster), hold
            (store.hold, a notice to the moderators, a word to the poster), or
            explode: posting.decorate once, the archive copy, the list domain's
            DKIM signature and ARC seal (sign_post) once, and ONE new queue
            entry from dev-bounces@ to every enabled member, each with its VERP
            sender when the list has verp on, so the queue groups remote
            members per domain and delivers local ones locally, with the same
            retries and bounces as any mail; a list with web_base_url gets
            personal copies instead (each member's own RFC 8058 one-click
            link, which DKIM must cover: so in the message, not added at
            delivery), one queue entry per member;
  request, join, leave   requests.py; its replies are queued;
  owner     forwarded to the owners from dev-bounces@;
  bounces   bounces.py scores the member (VERP names it); notices queued.
Approved held posts (a moderator's reply or `mailgateway list approve`) wait
in the outbox (outbox.py); poll_outbox() explodes them.
The explosion's queue ID is derived from the post's own (queue ID, or held
ID) and ISubmit skips an entry already there: a crash between spooling the
explosion and recording the post as delivered sends no member a second copy.
Everything that touches the store or files runs in a pool thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from email import policy
from email.parser import BytesHeaderParser
from email.utils import getaddresses

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.budget import ByteBudget
from gateway.envelope import Envelope, Recipient
from gateway.errors import MailError
from gateway.interfaces import IDeliveryTarget, IMailStore, ISubmit, Route
from gateway.lists import bounces, outbox, posting, requests
from gateway.lists.addresses import bounces_address, classify, verp_sender
from gateway.lists.notices import Outgoing
from gateway.lists.store import ListStore, MailingList, member_key

log = Logger()


def explosion_id(origin: str, list_address: str) -> str:
    """The queue ID of a post's explosion: its origin's ID and the list (idempotent)."""
    tag = hashlib.sha1(list_address.encode()).hexdigest()[:6].upper()
    return f"{origin[:24]}L{tag}"


def personal_id(explosion: str, member: str) -> str:
    """The queue ID of one member's personal copy of an explosion (idempotent too)."""
    tag = hashlib.sha1(f"{explosion}\n{member_key(member)}".encode()).hexdigest()
    return f"{explosion[:12]}P{tag[:19].upper()}"


# Personal copies handed to the spool at once: enough to fill its group commits.
PERSONAL_BATCH = 256


def _from_address(headers) -> str:
    found = getaddresses([str(v) for v in headers.get_all("From", [])])
    return found[0][1] if found and "@" in found[0][1] else ""


class _Explosion:
    """What a post becomes: the copy, its recipients, where it goes in the queue."""

    def __init__(self, mlist: MailingList, message: bytes, members: list[str], queue_id: str,
                 personal: bool = False):
        self.mlist = mlist
        self.message = message
        self.members = members
        self.queue_id = queue_id
        # Each member gets a copy of their own (lists with web_base_url), made a batch
        # at a time by _submit_personal.
        self.personal = personal

    def sender(self, member: str) -> str:
        return (verp_sender(self.mlist.address, member) if self.mlist.verp
                else bounces_address(self.mlist.address))

    def recipients(self) -> list[Recipient]:
        if not self.mlist.verp:
            return [Recipient(m) for m in self.members]
        return [Recipient(m, sender=verp_sender(self.mlist.address, m)) for m in self.members]


@implementer(IDeliveryTarget)
class ListTarget:
    kind = "list"

    def __init__(self, store: ListStore, submit: ISubmit, clock,
                 run_blocking: Callable[..., defer.Deferred], *,
                 archive: IMailStore | None = None,
                 dmarc_policy: Callable[[str], defer.Deferred] | None = None,
                 sign_post: Callable[[str, bytes, bytes, str], bytes] | None = None,
                 memory: ByteBudget | None = None):
        self.store = store
        self.submit = submit
        self.clock = clock
        self.run_blocking = run_blocking
        self.archive = archive
        # domain -> Deferred firing with the DMARC policy that applies to its mail
        # ("none", "quarantine", "reject"; "none" when DNS fails: a post is never
        # held up). service.py passes gateway/verify/dmarc's, the one the inbound
        # checks use: lists/ may not import verify/ (pyproject's contracts).
        self.dmarc_policy = dmarc_policy
        # (list domain, post as it arrived, the list's copy, queue ID) -> the copy
        # DKIM-signed and ARC-sealed by the list's domain (gateway/sign/arc.py,
        # PostSigner). Blocking: called in the pool thread, once per post.
        self.sign_post = sign_post
        # One outbox pass at a time: the timer (OutboxService) and a moderator's
        # approval by mail both start one, and two passes at once exploded the same
        # approved post twice at once (its archive copy's rename then failed).
        self._outbox_lock = defer.DeferredLock()
        # [queue] whole_message_memory, shared with the relay's signing (service.py): a
        # post is worked on whole (read, decorated, signed), so posts wait their turn.
        self.memory = memory or ByteBudget(64 * 1024 * 1024)

    # --- IDeliveryTarget -----------------------------------------------------------

    @defer.inlineCallbacks
    def deliver(self, envelope: Envelope, route: Route, message_path: str, recovering: bool):
        # The router found the list (route.mailbox); classify again only for the role
        # and a VERP member, against that one name: no read of every list's name.
        local, _, domain = route.address.rpartition("@")
        where = classify(local, domain, {route.mailbox})
        if where is None:
            raise MailError(550, "5.1.1", f"<{route.address}>: no such list (deleted?)")
        mlist = yield self.run_blocking(self.store.get, where.list)
        if mlist is None:
            raise MailError(550, "5.1.1", f"<{where.list}>: no such list (deleted?)")
        size = yield self.run_blocking(os.path.getsize, message_path)
        # The list's own limit, checked before the message is read (issue 11): every
        # role reads it whole, so max_size bounds what one list message can cost.
        refusal = posting.too_big(mlist, size)
        if refusal is not None:
            raise refusal.error
        yield self.memory.run(self._cost(mlist, size), self._handle, envelope, where, mlist,
                              message_path)

    @defer.inlineCallbacks
    def _handle(self, envelope: Envelope, where, mlist: MailingList, message_path: str):
        message = yield self.run_blocking(_read, message_path)
        now = self.clock.seconds()
        sender = envelope.sender
        qid = envelope.queue_id
        if where.role == "post":
            yield self._post(mlist, sender, message, qid, now)
            return
        if where.role == "owner":
            yield self._queue([Outgoing(bounces_address(mlist.address), mlist.owners, message)],
                              qid)
            return
        if where.role == "bounces":
            notices = yield self.run_blocking(bounces.process, self.store, mlist,
                                              where.member, message, now)
            yield self._queue(notices, qid)
            return
        handler = {"request": requests.handle, "join": requests.join,
                   "leave": requests.leave}[where.role]
        result = yield self.run_blocking(handler, self.store, mlist, sender, message, now)
        yield self._queue(result.replies, qid)
        if result.release:
            yield self.poll_outbox()

    # --- posting ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def _post(self, mlist: MailingList, sender: str, message: bytes, qid: str, now: float):
        headers = BytesHeaderParser(policy=policy.SMTP).parsebytes(message)
        author = _from_address(headers)
        member = yield self.run_blocking(self._member_of, mlist, sender, author)
        decision = posting.decide(mlist, member or sender, bool(member), headers, len(message))
        log.info("{queue_id}: list {list}: post from <{sender}>: {action}{reason}",
                 queue_id=qid, list=mlist.address, sender=sender, action=decision.action,
                 reason=f" ({decision.reason})" if decision.reason else "")
        if decision.action == "reject":
            raise decision.error
        if decision.action == "hold":
            held_id = yield self.run_blocking(self.store.hold, mlist.address, sender, message,
                                              decision.reason, now)
            notes = [requests.hold_notice(mlist, held_id, sender, message, decision.reason, now),
                     requests.held_ack(mlist, sender, decision.reason, now)]
            yield self._queue([n for n in notes if n is not None], qid)
            return
        yield self.explode(mlist, author or sender, message, explosion_id(qid, mlist.address))

    def _member_of(self, mlist: MailingList, sender: str, author: str) -> str:
        """The address under which the poster is a member ("" if none)."""
        for address in (sender, author):
            if address and self.store.is_member(mlist.address, address):
                return address
        return ""

    @defer.inlineCallbacks
    def explode(self, mlist: MailingList, author: str, message: bytes, queue_id: str):
        """Decorate, archive and queue one accepted post for every enabled member."""
        strict = False
        if mlist.dmarc == "munge_from" and author and self.dmarc_policy is not None:
            policy = yield self.dmarc_policy(author.rpartition("@")[2])
            strict = policy in ("reject", "quarantine")
        explosion = yield self.run_blocking(self._prepare, mlist, message, strict, queue_id)
        if not explosion.members:
            log.info("list {list}: post {queue_id} has no enabled member to go to",
                     list=mlist.address, queue_id=queue_id)
            return
        if explosion.personal:
            yield self._submit_personal(explosion, message, strict)
            log.info("{queue_id}: list {list}: exploded to {n} members (personal copies)",
                     queue_id=queue_id, list=mlist.address, n=len(explosion.members))
            return
        qid = yield self.submit.submit(bounces_address(mlist.address), explosion.recipients(),
                                       explosion.message, queue_id=queue_id)
        log.info("{queue_id}: list {list}: exploded to {n} members", queue_id=qid,
                 list=mlist.address, n=len(explosion.members))

    def _batch(self, size: int) -> int:
        """Personal copies made and handed to the spool at once: a whole batch for the
        spool's group commit when posts are small, fewer (at least one) when a batch of
        copies would not fit a quarter of the memory budget."""
        return max(1, min(PERSONAL_BATCH, self.memory.limit // max(1, 4 * size)))

    def _cost(self, mlist: MailingList, size: int) -> int:
        """What one post holds at once: the post, its decorated and its signed copy, and
        a batch of personal copies (lists with web_base_url)."""
        return size * (3 + (self._batch(size) if mlist.web_base_url else 0))

    @defer.inlineCallbacks
    def _submit_personal(self, explosion: _Explosion, message: bytes, strict: bool):
        """One queue entry per member, a batch at a time (the spool's group commit
        syncs a batch together; issue 11: only a batch of copies is ever in memory);
        each ID is derived, so a repeat skips those made."""
        members = explosion.members
        batch = self._batch(len(message))
        for start in range(0, len(members), batch):
            group = members[start:start + batch]
            copies = yield self.run_blocking(self._personal, explosion, message, strict, group)
            yield defer.gatherResults([
                self.submit.submit(explosion.sender(member), [Recipient(member)], copy,
                                   queue_id=personal_id(explosion.queue_id, member))
                for member, copy in zip(group, copies, strict=True)], consumeErrors=True
            ).addErrback(_first_error)

    def _personal(self, explosion: _Explosion, message: bytes, strict: bool,
                  members: list[str]) -> list[bytes]:
        # Each copy names its member (RFC 8058), so each is signed and sealed on its
        # own: DKIM must cover List-Unsubscribe and List-Unsubscribe-Post.
        mlist = explosion.mlist
        return [self._signed(mlist, message, posting.decorate(message, mlist, strict, member),
                             explosion.queue_id)
                for member in members]

    def _prepare(self, mlist: MailingList, message: bytes, strict: bool, queue_id: str
                 ) -> _Explosion:
        copy = posting.decorate(message, mlist, strict)
        if mlist.archive and self.archive is not None:
            # Named after the explosion: a repeat after a crash finds the first copy.
            self.archive.deliver(mlist.address, copy, f"{queue_id}.archive", True)
        members = self.store.members(mlist.address)
        if mlist.web_base_url:  # personal copies, made a batch at a time
            return _Explosion(mlist, b"", members, queue_id, personal=True)
        # Otherwise once for every member: VERP changes only the envelope sender.
        copy = self._signed(mlist, message, copy, queue_id)
        return _Explosion(mlist, copy, members, queue_id)

    def _signed(self, mlist: MailingList, message: bytes, copy: bytes, queue_id: str) -> bytes:
        if self.sign_post is None:
            return copy
        return self.sign_post(mlist.domain, message, copy, queue_id)

    # --- approved posts ----------------------------------------------------------------

    def poll_outbox(self) -> defer.Deferred:
        """Explode every approved post waiting in the outbox, then forget it; a pass
        asked for while one runs starts after it (and finds what it left)."""
        return self._outbox_lock.run(self._poll_outbox)

    @defer.inlineCallbacks
    def _poll_outbox(self):
        posts = yield self.run_blocking(outbox.pending, self.store.root)
        for post in posts:
            mlist = yield self.run_blocking(self.store.get, post.list)
            if mlist is None:
                log.warn("list {list} gone: approved post {id} dropped", list=post.list,
                         id=post.held_id)
            else:
                # Read within the budget, as a list message from the queue (issue 11).
                yield self.memory.run(self._cost(mlist, post.size), self._explode_approved,
                                      mlist, post)
            yield self.run_blocking(outbox.done, post)

    @defer.inlineCallbacks
    def _explode_approved(self, mlist: MailingList, post: outbox.OutboxPost):
        message = yield self.run_blocking(outbox.read, post)
        yield self.explode(mlist, post.sender, message, "H" + post.held_id.upper()[:31])

    # --- queueing what the list says ----------------------------------------------------

    @defer.inlineCallbacks
    def _queue(self, messages: list[Outgoing], origin: str):
        for out in messages:
            qid = yield self.submit.submit(out.sender, list(out.recipients), out.message)
            log.info("{origin}: list message to {to} queued as {queue_id}", origin=origin,
                     to=", ".join(out.recipients), queue_id=qid)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _first_error(failure):
    """The error itself, not gatherResults' FirstError wrapper (the runner reads MailError)."""
    return failure.value.subFailure if failure.check(defer.FirstError) else failure
