"""POP3 server. access: mail clients read the Maildirs deliver/maildir wrote.

A client connects (plaintext, after STLS, or through tlsfront), logs in
against the IUserDirectory, and reads its INBOX through a store Maildrop.
Follows RFC 1939 (POP3), RFC 2449 (CAPA, response codes), RFC 3206
(AUTH-RESP-CODE, SYS/TEMP), RFC 2595 (STLS), RFC 5034 and RFC 4616 (AUTH PLAIN).

Built on twisted.mail.pop3.POP3: its replies, state dispatch (lineReceived ->
state_COMMAND / state_AUTH), CAPA framing, RSET, NOOP and TimeoutMixin are
reused. Overridden, with the reason next to each override: Twisted's class has
no STLS, advertises joke capabilities, counts deleted messages in STAT/LIST,
turns CRLF into CR CR LF in RETR and misses dot-stuffing across chunks, takes
"DELE 0" as "delete the last message", queues pipelined commands without
bound and stops the idle timer while a message is sent (a client that stops
reading would hold the maildrop lock forever). The client is not read
while a command is busy or while it leaves its replies unread (gateway/flow.py).

The TRANSACTION-state commands that read the maildrop (STAT, LIST, UIDL,
DELE, RETR, TOP) and the streaming sender live in access/pop3_transfer.py.
Every limit (command length, pipelined input, bad commands, login failures and
their delay, idle timeout, connections per client address) is a [pop3]
setting, config.PopSettings, handed in through POP3Factory.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.cred.error import LoginFailed
from twisted.internet import defer
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import pop3
from twisted.python.failure import Failure

from gateway import connection, flow, logs, sasl
from gateway.access.pop3_transfer import MessageSender, TransactionCommands
from gateway.access.session import AccessSession
from gateway.config import PopSettings
from gateway.connection import ConnectionCounter
from gateway.errors import AuthThrottled
from gateway.interfaces import IMailStore, IUserDirectory
from gateway.store.maildrop import Maildrop, MaildropInUse

_log = Logger()

_AUTHORIZATION = frozenset({b"CAPA", b"USER", b"PASS", b"AUTH", b"STLS", b"QUIT"})
_TRANSACTION = frozenset({b"CAPA", b"STAT", b"LIST", b"UIDL", b"TOP", b"RETR", b"DELE",
                          b"RSET", b"NOOP", b"QUIT"})
# (fewest, most) arguments; PASS takes the rest of the line, spaces and all.
_ARITY = {b"CAPA": (0, 0), b"USER": (1, 1), b"AUTH": (0, 2), b"STLS": (0, 0), b"QUIT": (0, 0),
          b"STAT": (0, 0), b"LIST": (0, 1), b"UIDL": (0, 1), b"TOP": (2, 2), b"RETR": (1, 1),
          b"DELE": (1, 1), b"RSET": (0, 0), b"NOOP": (0, 0)}


class POP3Server(TransactionCommands, AccessSession, pop3.POP3):
    """One POP3 session. Talks only through IUserDirectory and the store's Maildrop."""

    factory: POP3Factory
    settings: PopSettings  # the factory's [pop3] limits, from connectionMade on

    def __init__(self) -> None:
        self._counted_as: str | None = None  # the key factory.connections counts us under
        self._lines: deque[bytes] = deque()
        self._partial = b""
        self._pending = 0
        self._busy = self._draining = self._gone = False
        self._tls_started = False
        self._user: bytes | None = None
        self._address = ""
        self._bad = self._auth_failures = 0
        self._delayed: Any = None
        self._sender: MessageSender | None = None
        self.mbox: Maildrop | None = None

    # -- connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        # Not Twisted's: its greeting carries an APOP timestamp, and APOP needs
        # plaintext passwords we do not keep. Timeouts use the injected reactor.
        connection.no_delay(self.transport)
        self.settings = self.factory.settings
        self._gate = flow.transport_gate(self.transport, self._drain)
        self.transport.registerProducer(self._gate, True)
        self._login_deadline = flow.Deadline(self.factory.reactor)
        self.callLater = self.factory.reactor.callLater
        self.timeOut = self.settings.idle_timeout
        self._counted_as = self.client_host()
        if not self.factory.connections.opened(self._counted_as):
            # RFC 3206 4: SYS/TEMP, a problem that goes away; clients retry later.
            logs.reject("CONNECT", self._counted_as, 421, "4.7.0",
                        "Too many connections from your address", service="pop3")
            self.failResponse(b"[SYS/TEMP] Too many connections from your address, "
                              b"try again later")
            self._gone = True  # nothing more is read from this client
            flow.lose(self.transport)
            return
        self.successResponse(f"{self.factory.hostname} POP3 server ready")
        self.setTimeout(self.timeOut)
        self._login_deadline.start(self.settings.login_timeout, self._login_expired)
        logs.connect("pop3", self.client_host())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._gone = True
        self._lines.clear()
        self.setTimeout(None)
        self._login_deadline.cancel()
        if self._counted_as is not None:
            self.factory.connections.closed(self._counted_as)
            self._counted_as = None
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        if self._sender is not None:
            self._sender.stopProducing()
        if self.mbox is not None:
            self.mbox.close()  # no UPDATE state: nothing is deleted
            _log.info("pop3 {user} from {client} dropped without QUIT",
                      user=self._address, client=self.client_host())
            self.mbox = None

    def _login_expired(self) -> None:
        _log.info("pop3 login timeout for {client}", client=self.client_host())
        self.failResponse(b"No login within %d seconds, closing connection"
                          % self.settings.login_timeout)
        flow.lose(self.transport)

    def timeoutConnection(self) -> None:
        _log.info("pop3 idle timeout for {client} user={user}",
                  client=self.client_host(), user=self._address or "-")
        if self._sender is not None:
            self.transport.abortConnection()  # mid-message and not reading: cannot say more
            return
        self.failResponse(b"Idle timeout, closing connection")
        flow.lose(self.transport)

    def successResponse(self, message: Any = b"") -> None:
        # Twisted always writes "+OK " with a space, even with no text.
        if not isinstance(message, bytes):
            message = str(message).encode("utf-8")
        self.transport.write(b"+OK " + message + b"\r\n" if message else b"+OK\r\n")

    # -- input: lines, pipelining, STLS hygiene -----------------------------

    def dataReceived(self, data: bytes) -> None:
        # Replaces LineOnlyReceiver's loop, which cannot be told to drop the
        # rest of a packet (needed at STLS) or to wait for a busy command.
        if not self._gate.open:
            self._gate.arrived()
        pieces = (self._partial + data).split(b"\n")
        self._partial = pieces.pop()
        for line in pieces:
            line = line[:-1] if line.endswith(b"\r") else line
            self._lines.append(line)
            self._pending += len(line)  # the same length _drain subtracts
        if len(self._partial) > self.settings.max_command_length:
            self.lineLengthExceeded(self._partial)
        elif self._pending > self.settings.max_pending_input:
            _log.warn("pop3 {client}: too much pipelined input", client=self.client_host())
            self.transport.abortConnection()
        else:
            self._drain()

    def _drain(self) -> None:
        if self._draining:
            return  # a command finished synchronously inside the loop below
        self._draining = True
        try:
            while (self._lines and not self._busy and not self._gone and self._gate.open
                   and not getattr(self.transport, "disconnecting", False)):
                line = self._lines.popleft()
                self._pending -= len(line)
                self._gate.spend(self.factory.reactor)
                if len(line) > self.settings.max_command_length:
                    self.lineLengthExceeded(line)
                    break
                self.lineReceived(line)  # Twisted's: resets the timer, dispatches by state
        finally:
            self._draining = False

    def sending(self, sender: MessageSender) -> None:
        """RETR/TOP: the sender is the transport's (pull) producer while the message goes
        out; the gate takes its place again after."""
        self.transport.unregisterProducer()
        self.transport.registerProducer(sender, False)

        def sent(finished: bool) -> bool:
            if finished and not self._gone:  # the sender unregistered itself
                self.transport.registerProducer(self._gate, True)
                self._gate.release(flow.OUTPUT)  # the transport pauses it again if still full
            return finished

        sender.deferred.addCallback(sent)

    def _wait(self, d: defer.Deferred) -> None:
        """Hold further commands until d fires (PIPELINING, RFC 2449 6.6)."""
        self._busy = True
        self._gate.hold(flow.BUSY)

        def done(_: object) -> None:
            self._busy = False
            self._sender = None
            if not self._gone:
                self._gate.release(flow.BUSY)  # goes on with what is pending

        d.addErrback(self._internal_error).addBoth(done)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._lines.clear()
        if self._busy:
            self.transport.abortConnection()
            return
        self.failResponse(b"Line too long")
        flow.lose(self.transport)

    def state_COMMAND(self, line: bytes) -> None:
        # Twisted's answers unknown commands with exception class names and
        # logs a traceback per typo; this checks state and arity first.
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        if verb not in _ARITY and verb != b"PASS":
            return self._bad_command(b"Unknown command")
        if verb not in (_TRANSACTION if self.mbox is not None else _AUTHORIZATION):
            return self._bad_command(b"Command not valid in this state")
        if verb == b"PASS":
            args: list[bytes] = [rest]
        else:
            args = rest.split()
            fewest, most = _ARITY[verb]
            if not fewest <= len(args) <= most:
                return self._bad_command(b"Syntax error")
        try:
            getattr(self, "do_" + verb.decode("ascii"))(*args)
        except Exception:
            self._internal_error(Failure())

    def _bad_command(self, text: bytes) -> None:
        self._bad += 1
        if self._bad >= self.settings.max_bad_commands:
            self.failResponse(b"Too many bad commands, closing connection")
            flow.lose(self.transport)
        else:
            self.failResponse(text)

    def _internal_error(self, failure: Failure) -> None:
        _log.failure("pop3 internal error, client {client} user {user}", failure,
                     client=self.client_host(), user=self._address or "-")
        if not self._gone and self._sender is None:
            self.failResponse(b"[SYS/TEMP] Internal server error")

    # -- AUTHORIZATION state ------------------------------------------------

    def listCapabilities(self) -> list[bytes]:
        # Twisted's lists PIPELINE (sic), CELERITY, AUSPEX and POTENCE.
        caps = [b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING"]
        if self.login_allowed():
            caps += [b"USER", b"SASL PLAIN"]
        if self.factory.tls_options is not None and not self.is_tls():
            caps.append(b"STLS")
        return caps + [b"IMPLEMENTATION mailgateway"]

    def do_STLS(self) -> None:
        # RFC 2595 4; Twisted has no STLS at all.
        if self.factory.tls_options is None:
            return self.failResponse(b"STLS not available")
        if self.is_tls():
            return self.failResponse(b"Already using TLS")
        self.successResponse(b"Begin TLS negotiation")
        # Whatever was pipelined after STLS came in plaintext: answering it
        # inside TLS would be command injection (CVE-2011-0411).
        self._lines.clear()
        self._partial, self._pending, self._user = b"", 0, None
        self.transport.startTLS(self.factory.tls_options)
        self._tls_started = True

    def _refuse_plaintext(self) -> None:
        if self.factory.tls_options is not None:
            self.failResponse(b"[AUTH] TLS required: use STLS")
        else:
            self.failResponse(b"[AUTH] Login not allowed on this connection")

    def do_USER(self, user: bytes) -> None:
        if not self.login_allowed():
            return self._refuse_plaintext()
        self._user = user
        self.successResponse(b"Send PASS")  # says nothing about whether the user exists

    def do_PASS(self, password: bytes) -> None:
        user, self._user = self._user, None
        if user is None:
            return self.failResponse(b"USER first")
        self._login(user, password, "USER")

    def do_AUTH(self, mechanism: bytes | None = None, initial: bytes | None = None) -> None:
        # Twisted's AUTH speaks CRAM-style "user response" lines, not PLAIN,
        # and has no initial response (RFC 5034 4).
        if not self.login_allowed():
            return self._refuse_plaintext()
        if mechanism is None:
            return self.transport.write(b"+OK\r\nPLAIN\r\n.\r\n")
        if mechanism.upper() != b"PLAIN":
            return self.failResponse(b"Unsupported SASL mechanism")
        if initial is None:
            self.state = "AUTH"
            self.sendLine(b"+ ")
        else:
            self._auth_plain(initial)

    def state_AUTH(self, line: bytes) -> None:
        self.state = "COMMAND"
        if line == b"*":
            return self.failResponse(b"Authentication cancelled")
        self._auth_plain(line)

    def _auth_plain(self, data: bytes) -> None:
        try:
            raw = sasl.decode_response(data)
        except sasl.SASLError:
            return self.failResponse(b"Invalid base64 data")
        try:
            user, password = sasl.parse_plain(raw)
        except sasl.SASLError:
            return self.failResponse(b"[AUTH] Malformed PLAIN response")
        self._login(user, password, "PLAIN")

    def _login(self, user: bytes, password: bytes, mechanism: str) -> None:
        address = user.decode("utf-8", "replace")
        try:
            pw = password.decode("utf-8")
            d = defer.maybeDeferred(self.factory.users.authenticate, address, pw,
                                    client=self.client_host())
        except UnicodeDecodeError:
            d = defer.fail(LoginFailed("password is not UTF-8"))
        d.addCallbacks(self._logged_in, self._login_failed,
                       callbackArgs=(mechanism,), errbackArgs=(address, mechanism))
        self._wait(d)

    def _logged_in(self, address: str, mechanism: str) -> defer.Deferred:
        if self._gone:
            return defer.succeed(None)
        # Listing a large Maildir is disk work: off the reactor thread.
        d = defer.maybeDeferred(self.factory.store.open_maildrop, address)
        d.addCallback(lambda maildrop: self.factory.run_blocking(maildrop.open)
                      .addCallback(lambda _: maildrop))
        return d.addBoth(self._opened, address, mechanism)

    def _opened(self, result: Any, address: str, mechanism: str) -> None:
        client = self.client_host()
        if self._gone:  # the client left while the maildrop was being opened
            if not isinstance(result, Failure):
                result.close()
            return None
        try:
            if isinstance(result, Failure):
                result.raiseException()
            maildrop = result
        except MaildropInUse:
            _log.info("pop3 login {user} from {client}: mailbox in use", user=address,
                      client=client)
            return self.failResponse(b"[IN-USE] Mailbox is in use by another session")
        except (OSError, ValueError):
            _log.failure("pop3 login {user} from {client}: cannot open mailbox",
                         user=address, client=client)
            return self.failResponse(b"[SYS/TEMP] Cannot open the mailbox")
        self.mbox, self._address = maildrop, address
        self._login_deadline.cancel()
        sizes = self.mbox.listMessages()
        logs.auth(True, "pop3", client, mechanism, address, self.is_tls())
        self.successResponse(b"Logged in, %d messages (%d octets)" % (len(sizes), sum(sizes)))

    def _login_failed(self, failure: Failure, address: str, mechanism: str) -> Any:
        if failure.check(AuthThrottled):  # too many failures: logged by access/authguard.py
            self._auth_failures += 1
            return self.failResponse(b"[SYS/TEMP] Too many failed logins, try again later")
        if not failure.check(LoginFailed):  # UnauthorizedLogin is a LoginFailed
            _log.failure("pop3 authentication error for {user}", failure, user=address)
            return self.failResponse(b"[SYS/TEMP] Authentication temporarily unavailable")
        self._auth_failures += 1
        logs.auth(False, "pop3", self.client_host(), mechanism, address, self.is_tls())
        # The delay slows password guessing; commands wait behind it (_wait).
        d: defer.Deferred[None] = defer.Deferred()
        self._delayed = self.factory.reactor.callLater(self.settings.auth_failure_delay,
                                                       d.callback, None)

        def answer(_: object) -> None:
            self.failResponse(b"[AUTH] Authentication failed")
            if self._auth_failures >= self.settings.max_auth_failures:
                flow.lose(self.transport)

        return d.addCallback(answer)

    def do_QUIT(self) -> None:
        # Twisted's QUIT answers +OK even when deletions fail (RFC 1939 6).
        if self.mbox is None:
            self.successResponse(b"Bye")
            return flow.lose(self.transport)
        mbox, self.mbox = self.mbox, None
        # Deleting and renaming files, with fsyncs: off the reactor thread (RFC 1939 6).
        d = self.factory.run_blocking(mbox.sync)
        d.addBoth(self._updated, mbox)
        self._wait(d)

    def _updated(self, failed: Any, mbox: Maildrop) -> None:
        mbox.close()  # before the reply: a quick reconnect is not IN-USE
        if isinstance(failed, Failure):
            _log.failure("pop3 update for {user} failed", failed, user=self._address)
            failed = list(mbox.deleted)
        _log.info("pop3 logout {user} from {client}: {deleted} deleted, {failed} failed",
                  user=self._address, client=self.client_host(),
                  deleted=len(mbox.deleted) - len(failed), failed=len(failed))
        if failed:
            self.failResponse(b"[SYS/TEMP] Some deleted messages not removed")
        else:
            self.successResponse(b"Bye")
        flow.lose(self.transport)


class POP3Factory(ServerFactory):
    """Builds POP3Server sessions; holds what every session shares, counts connections."""

    protocol = POP3Server
    # Set True on a listener where every client spoke TLS to something in front of it
    # that says nothing; behind tlsfront each PROXY v2 header says it (is_tls), so the
    # proxied listener leaves this False and a v1 or LOCAL header stays plaintext.
    implicit_tls = False

    def __init__(self, *, hostname: str, users: IUserDirectory, store: IMailStore, tls_options: Any,
                 plaintext_from_loopback: bool, settings: PopSettings, reactor: Any,
                 run_blocking: Any = None) -> None:
        self.hostname = hostname
        self.users = users
        self.store = store
        self.tls_options = tls_options
        self.plaintext_from_loopback = plaintext_from_loopback
        self.settings = settings  # the [pop3] limits
        self.reactor = reactor
        # Maildrop work (listing, QUIT's deletions); inline when not given (unit tests).
        self.run_blocking = run_blocking or defer.maybeDeferred
        self.connections = ConnectionCounter(settings.max_connections_per_client)
