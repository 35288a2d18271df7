"""Outbound relay: "remote" routes leave by SMTP. Implements IBatchDeliveryTarget (kind "remote").

Sits at the end of the flow for mail to other domains: the queue runner hands
it all recipients of one domain of one message (up to
recipients_per_transaction); it asks the transport map (ITransportMap,
resolve/transport.py) for the next hop and TLS policy, resolves it
(deliver/mx.py), and runs one SMTP transaction (deliver/outbound.py).

  - Hosts are tried in MX order, at most max_addresses addresses; a host that
    fails before judging any recipient (refused connection, 4xx/5xx greeting,
    TLS trouble, 4xx to MAIL, lost connection) sends us to the next one
    (RFC 5321 5.1). Once a server has answered RCPT, its answers are final.
  - Each recipient's own reply decides its fate: 2xx done, 4xx retry, 5xx
    failed (unlike Twisted's relay, which bounces on any non-2xx).
  - Policy "may" falls back to plaintext on the same host when the TLS
    handshake fails (RFC 7435 opportunistic security); "encrypt"/"verify"
    defer (4.7.x) instead.
  - A connection that ends a transaction cleanly is kept connection_cache_time
    seconds for the next message to the same destination.
  - Concurrency: destination_concurrency transactions per next hop, and
    concurrency in all; a destination slot is taken before a global one, so
    a busy destination never holds global slots while it waits.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from twisted.internet import defer, endpoints, error
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from gateway.budget import ByteBudget
from gateway.config import RelaySettings
from gateway.deliver.mx import MXResolver
from gateway.deliver.outbound import (
    ClientProtocol,
    Reply,
    Session,
    SessionError,
    open_session,
)
from gateway.deliver.streaming import SpoolStream, read_small
from gateway.envelope import Envelope
from gateway.errors import MailError
from gateway.interfaces import IBatchDeliveryTarget, ITransportMap, NextHop, RecipientResult, Route

log = Logger()


def signature_fields(message_path: str, sign: Callable[[bytes], bytes]) -> bytes:
    """The header fields sign (DKIM, ARC) prepends to the spooled message, without the
    message: DATA then streams the spool file after them (deliver/streaming.py). The
    whole message is read for dkimpy, and let go when this returns (blocking: run in
    a thread, within [queue] whole_message_memory)."""
    with open(message_path, "rb") as f:
        message = f.read()
    signed = sign(message)
    if not signed.endswith(message):
        raise ValueError("a signer changed the message instead of prepending fields")
    return signed[:len(signed) - len(message)]


def _result(reply: Reply, session: Session) -> RecipientResult:
    if reply.ok():
        return RecipientResult(None, remote_mta=session.host)
    error = MailError(reply.code, reply.enhanced, reply.message or "(no text)",
                      temporary=reply.code < 500)
    return RecipientResult(error, remote_mta=session.host)


def _session_failure(e: SessionError) -> MailError:
    if e.reply is not None and e.reply.code >= 500:
        return MailError(e.reply.code, e.reply.enhanced, e.text, temporary=False)
    if e.reply is not None and e.reply.code >= 400:
        return MailError(e.reply.code, e.reply.enhanced, e.text, temporary=True)
    return MailError(451, e.status, e.text, temporary=True)


@implementer(IBatchDeliveryTarget)
class RelayTarget:
    kind = "remote"

    def __init__(self, *, settings: RelaySettings, helo: str, transport: ITransportMap,
                 mx: MXResolver, tls_options: Callable, reactor,
                 run_blocking: Callable[..., defer.Deferred], password: str = "",
                 connect: Callable[[str, int], defer.Deferred] | None = None,
                 sign: Callable[[Envelope, bytes], bytes] | None = None,
                 sign_wanted: Callable[[Envelope], bool] | None = None,
                 memory: ByteBudget | None = None,
                 read_blocking: Callable[..., defer.Deferred] | None = None,
                 measure_blocking: Callable[..., defer.Deferred] | None = None):
        self.settings = settings
        self.helo = helo
        self.transport = transport
        self.mx = mx
        self.tls_options = tls_options
        self.reactor = reactor
        self.run_blocking = run_blocking
        # Reads of the spool file while DATA streams: a hop per piece, in threads of
        # their own (service.py: the reactor's pool), not in the runner's one-thread
        # lane, where eight 34 MB messages' pieces delayed local deliveries.
        self.read_blocking = read_blocking or run_blocking
        # Each transaction's first look at its message (_measure): small work, one per
        # message, so gathered (service.py: a batcher with nothing to sync) rather
        # than a thread hop each.
        self.measure_blocking = measure_blocking or self.read_blocking
        self.password = password
        self.connect = connect or self._connect_tcp
        # DKIM (gateway/sign/, wired by service.py): (envelope, message) -> message with
        # fields prepended; sign_wanted(envelope) says whether it would add any, so
        # mail that is not signed is never read whole.
        self.sign = sign
        self.sign_wanted = sign_wanted
        # [queue] whole_message_memory, shared with the list exploder (service.py).
        self.memory = memory or ByteBudget(64 * 1024 * 1024)
        self.max_batch = settings.recipients_per_transaction
        self.global_slots = defer.DeferredSemaphore(settings.concurrency)
        self.destination_slots: dict[tuple, defer.DeferredSemaphore] = {}
        self.idle: dict[tuple, list[Session]] = {}
        self._idle_timers: dict[int, object] = {}
        self._closing = False

    # --- IBatchDeliveryTarget --------------------------------------------------------

    def batch_key(self, route: Route) -> str:
        return route.domain

    def deliver(self, envelope: Envelope, route: Route, message_path: str,
                recovering: bool) -> defer.Deferred:
        def one(results: list[RecipientResult]) -> None:
            if results[0].error is not None:
                raise results[0].error

        d = self.deliver_batch(envelope, [route], message_path, recovering)
        return d.addCallback(one)

    def deliver_batch(self, envelope: Envelope, routes: list[Route], message_path: str,
                      recovering: bool) -> defer.Deferred:
        # recovering: SMTP offers no way to ask a server whether it already has
        # the message; the runner's per-batch state write keeps that window small.
        hop = self.transport.next_hop(routes[0].domain)
        key = (hop.host, hop.port, hop.mx)
        slot = self.destination_slots.get(key)
        if slot is None:
            slot = defer.DeferredSemaphore(self.settings.destination_concurrency)
            self.destination_slots[key] = slot
        d = slot.run(self.global_slots.run, self._deliver, envelope, routes, message_path,
                     hop, key)

        def unexpected(failure):
            log.failure("{queue_id}: relay error", failure, queue_id=envelope.queue_id)
            error = MailError(451, "4.3.0", "local error in relay")
            return [RecipientResult(error)] * len(routes)

        def tidy(result):
            if slot.tokens == slot.limit and not slot.waiting:
                self.destination_slots.pop(key, None)
            return result

        return d.addErrback(unexpected).addBoth(tidy)

    # --- one transaction -------------------------------------------------------------

    @defer.inlineCallbacks
    def _deliver(self, envelope: Envelope, routes: list[Route], message_path: str,
                 hop: NextHop, key: tuple):
        qid = envelope.queue_id
        # In the pool: the size is a stat, and the signer's key ring may reload from disk;
        # a small message is read whole in the same hop.
        size, wanted, content = yield self.measure_blocking(self._measure, envelope,
                                                            message_path)
        prefix = b""
        if wanted:
            prefix = yield self.memory.run(size, self.run_blocking, signature_fields,
                                                message_path, partial(self.sign, envelope))
        # DATA streams the spool file (issue 11): a buffer per connection, not a message.
        body = SpoolStream(message_path, prefix, self.read_blocking, content=content)
        size += len(prefix)
        rcpts = [r.address for r in routes]
        # The runner batches routes of one sender only (owner-NAME, VERP: Route.sender).
        sender = envelope.sender if routes[0].sender is None else routes[0].sender
        args = (sender, rcpts, body)
        kwargs = {"size": size, "eight_bit": envelope.body.upper() == "8BITMIME"}

        # A cached connection first; a stale one (the server hung up) costs nothing.
        while (session := self._take_idle(key)) is not None:
            try:
                replies = yield session.transaction(*args, **kwargs)
            except SessionError:
                session.protocol.close()
                continue
            # No line of its own: the recipient's status= line names the relay, and
            # this connection's was logged when it was opened (a line per message
            # was a tenth of the runner's work, bench/RESULTS.md 2026-11-27).
            self._release(key, session)
            return [_result(r, session) for r in replies]

        try:
            if hop.mx:
                hosts = yield self.mx.hosts_for_domain(hop.host)
            else:
                hosts = yield self.mx.hosts_for_name(hop.host)
        except MailError as e:
            log.info("{queue_id}: {domain}: {error}", queue_id=qid, domain=hop.host, error=e)
            return [RecipientResult(e)] * len(routes)

        last: SessionError | None = None
        candidates = [(h.name, a) for h in hosts for a in h.addresses]
        for name, address in candidates[:self.settings.max_addresses]:
            policy = hop.tls
            while True:
                try:
                    session = yield self._open(name, address, hop, policy)
                except SessionError as e:
                    last = e
                    log.info("{queue_id}: {error}", queue_id=qid, error=e.text)
                    if e.tls_failed and policy == "may":
                        policy = "none"  # RFC 7435: opportunistic, so plaintext it is
                        continue
                    break
                try:
                    replies = yield session.transaction(*args, **kwargs)
                except SessionError as e:
                    last = e
                    log.info("{queue_id}: {error}", queue_id=qid, error=e.text)
                    session.protocol.close()
                    break
                log.info("{queue_id}: relay {remote}{tls}", queue_id=qid,
                         remote=session.remote, tls=" with TLS" if session.tls else "")
                self._release(key, session)
                return [_result(r, session) for r in replies]
        if last is None:
            failure = MailError(451, "4.4.4", f"no address to try for {hop.host}")
        else:
            failure = _session_failure(last)
        return [RecipientResult(failure)] * len(routes)

    def _measure(self, envelope: Envelope, message_path: str
                 ) -> tuple[int, bool, bytes | None]:
        """Size, whether the signer adds fields, and the message when it is small."""
        wanted = self.sign is not None and (self.sign_wanted is None
                                            or self.sign_wanted(envelope))
        size, content = read_small(message_path)
        return size, wanted, content

    @defer.inlineCallbacks
    def _open(self, name: str, address: str, hop: NextHop, policy: str):
        try:
            protocol = yield self.connect(address, hop.port)
        except (error.ConnectError, error.ConnectionLost, OSError) as e:
            raise SessionError(None, f"connect to {name}[{address}]:{hop.port}: {e}",
                               status="4.4.1") from e
        auth = (self.settings.smarthost_user, self.password) if hop.auth else None
        try:
            session = yield open_session(protocol, host=name, address=address, helo=self.helo,
                                         tls=policy, tls_options=self.tls_options, auth=auth)
        except SessionError:
            protocol.close()
            raise
        return session

    def _connect_tcp(self, address: str, port: int) -> defer.Deferred:
        kind = endpoints.TCP6ClientEndpoint if ":" in address else endpoints.TCP4ClientEndpoint
        endpoint = kind(self.reactor, address, port, timeout=self.settings.connect_timeout)
        protocol = ClientProtocol(self.reactor, self.settings.command_timeout,
                                  self.settings.data_timeout)
        return endpoint.connect(_Quiet(protocol))

    # --- the connection cache ------------------------------------------------------

    def _take_idle(self, key: tuple) -> Session | None:
        sessions = self.idle.get(key)
        while sessions:
            session = sessions.pop()
            timer = self._idle_timers.pop(id(session), None)
            if timer is not None and timer.active():
                timer.cancel()
            if session.usable():
                return session
        self.idle.pop(key, None)
        return None

    def _release(self, key: tuple, session: Session) -> None:
        if self._closing or not session.usable() or self.settings.connection_cache_time <= 0:
            session.protocol.close()
            return
        self.idle.setdefault(key, []).append(session)
        self._idle_timers[id(session)] = self.reactor.callLater(
            self.settings.connection_cache_time, self._expire, key, session)

    def _expire(self, key: tuple, session: Session) -> None:
        self._idle_timers.pop(id(session), None)
        sessions = self.idle.get(key, [])
        if session in sessions:
            sessions.remove(session)
            if not sessions:
                self.idle.pop(key, None)
        session.protocol.close()

    def close(self) -> None:
        """QUIT every cached connection (at shutdown)."""
        self._closing = True
        for key in list(self.idle):
            while (session := self._take_idle(key)) is not None:
                session.protocol.close()


class _Quiet(Factory):
    """connectProtocol's one-shot factory without its "Starting/Stopping factory" log
    lines: two per outbound connection, a measurable share of a relayed message."""

    noisy = False

    def __init__(self, protocol):
        self.protocol_instance = protocol

    def buildProtocol(self, addr):
        return self.protocol_instance
