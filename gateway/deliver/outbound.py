"""The outbound SMTP client: one connection to one remote server (RFC 5321, 3207, 2920, 4954).

Used by deliver/relay.py, which picks the server and the TLS policy and keeps
connections for reuse. Twisted's SMTPClient/ESMTPClient is not used: it has
no PIPELINING, no per-domain "may" STARTTLS that falls back, no SIZE/BODY
parameters, and its message loop wants to own the connection; this client
is a LineReceiver that turns replies into Deferreds, one per command, in
order, so pipelined commands (RFC 2920) are just several writes before the
first wait.

  session = yield open_session(protocol, helo=..., host=..., tls=..., tls_options=...)
  replies = yield session.transaction(sender, recipients, data, size=..., eight_bit=...)

A TransactionResult has one Reply per recipient: the RCPT reply when that
refused it, otherwise the reply that ended the transaction (DATA or the final
dot). SessionError means the server did not get as far as judging any
recipient (connect, greeting, EHLO, STARTTLS, AUTH, MAIL, lost connection):
the relay may try the next MX host with the same recipients.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\s+")


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def enhanced(self) -> str:
        """The RFC 3463 code the server gave, or a generic one of the reply's class."""
        m = _ENHANCED.match(self.lines[0]) if self.lines else None
        if m:
            return ".".join(m.groups())
        return f"{self.code // 100}.0.0"

    @property
    def message(self) -> str:
        """The text without the enhanced status code."""
        first = _ENHANCED.sub("", self.lines[0]) if self.lines else ""
        return " ".join((first, *self.lines[1:])).strip()

    def ok(self) -> bool:
        return 200 <= self.code < 300

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class SessionError(Exception):
    """The session failed before any recipient was judged."""

    def __init__(self, reply: Reply | None, text: str, tls_failed: bool = False,
                 status: str = "4.4.2"):
        super().__init__(text)
        self.reply = reply
        self.text = text
        self.tls_failed = tls_failed
        # RFC 3463 code when there is no reply: 4.4.1 no answer, 4.4.2 bad
        # connection, 4.7.4/4.7.5 TLS refused or failed, 4.7.0 AUTH refused.
        self.status = "4.7.5" if tls_failed else status

    @property
    def permanent(self) -> bool:
        return self.reply is not None and self.reply.code >= 500


class ClientProtocol(LineReceiver):
    """Replies in, Deferreds out; a reply that takes longer than its timeout aborts."""

    delimiter = b"\r\n"
    MAX_LENGTH = 65536
    # RFC 5321 4.5.3.1.5: reply lines are at most 512 octets; replies of
    # thousands of lines are an attack, not an answer.
    MAX_REPLY_LINES = 1000

    def __init__(self, clock, command_timeout: float, data_timeout: float):
        self.clock = clock
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self._waiters: deque[tuple[defer.Deferred, float]] = deque()
        self._lines: list[str] = []
        self._timer = None
        self.connected_ = False
        self.lost_reason: Failure | None = None
        self.timed_out = False
        self.tls_started = False
        self.tls_done = False
        self.closed = defer.Deferred()
        self.greeting = self._expect(command_timeout)

    # --- replies ---------------------------------------------------------------

    def connectionMade(self) -> None:
        self.connected_ = True
        self._arm()

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        code, sep = text[:3], text[3:4]
        if not code.isdigit() or sep not in ("-", " ", "") or not self._waiters:
            self._abort()  # garbage, or a reply nobody asked for: the session is unsafe
            return
        self._lines.append(text[4:])
        if len(self._lines) > self.MAX_REPLY_LINES:
            self._abort()
            return
        if sep == "-":
            return
        reply = Reply(int(code), tuple(self._lines))
        self._lines = []
        waiter, _ = self._waiters.popleft()
        self._arm()
        waiter.callback(reply)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._abort()

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:
        self.connected_ = False
        self.lost_reason = reason
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        waiters, self._waiters = self._waiters, deque()
        for waiter, _ in waiters:
            waiter.errback(Failure(error.ConnectionLost(self.describe_loss())))
        self.closed.callback(None)

    def describe_loss(self) -> str:
        if self.timed_out:
            return "timed out waiting for the reply"
        if self.lost_reason is None:
            return "connection lost"
        value = self.lost_reason.value
        if self.tls_started and not self.tls_done:
            return f"TLS handshake failed: {type(value).__name__}: {value}"
        if isinstance(value, error.ConnectionDone):
            return "connection closed by the server"
        return f"connection lost: {value}"

    # --- commands ---------------------------------------------------------------

    def send(self, *lines: bytes, timeout: float | None = None) -> list[defer.Deferred]:
        """Write lines at once (a pipelined group) and return one Deferred per reply."""
        if not self.connected_:
            return [defer.fail(error.ConnectionLost(self.describe_loss())) for _ in lines]
        ds = [self._expect(timeout or self.command_timeout) for _ in lines]
        self.transport.write(b"".join(line + b"\r\n" for line in lines))
        return ds

    def command(self, line: bytes, timeout: float | None = None) -> defer.Deferred:
        return self.send(line, timeout=timeout)[0]

    def send_data(self, body: Body) -> defer.Deferred:
        """Write the message (bytes already dot-stuffed, or a Body that streams itself)
        and its final dot; Deferred of the reply."""
        if not self.connected_:
            return defer.fail(error.ConnectionLost(self.describe_loss()))
        d = self._expect(self.data_timeout)
        if isinstance(body, bytes):
            self.transport.write(body)
            self.transport.write(b".\r\n")
            return d

        def written(_):
            if self.connected_:
                self.transport.write(b".\r\n")

        def failed(failure):
            # The reply's Deferred reports a lost connection; anything else (the
            # spool file unreadable) leaves the server waiting for the dot: drop it.
            if not failure.check(error.ConnectionLost, error.ConnectionDone):
                self._abort()
            return None

        body(self.transport).addCallbacks(written, failed)
        return d

    def _expect(self, timeout: float) -> defer.Deferred:
        d = defer.Deferred()
        self._waiters.append((d, timeout))
        if len(self._waiters) == 1 and self.connected_:
            self._arm()
        return d

    def _arm(self) -> None:
        """One timer, for the oldest outstanding reply (replies come in order)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._waiters and self.connected_:
            self._timer = self.clock.callLater(self._waiters[0][1], self._timeout)

    def _timeout(self) -> None:
        self.timed_out = True
        self._abort()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def close(self) -> None:
        """QUIT politely, then drop the connection whatever the answer."""
        if not self.connected_:
            return
        d = self.command(b"QUIT", timeout=min(self.command_timeout, 30))
        d.addBoth(lambda _: self.transport.loseConnection() if self.connected_ else None)


class DotStuffer:
    """RFC 5321 4.5.2 transparency over a message given in pieces: a line that starts
    with "." gets one more, wherever the piece borders fall (a border between "\n"
    and "." included); end() adds the CRLF a message must end with before the dot."""

    def __init__(self) -> None:
        self._tail = b"\n"  # the last two bytes seen; "\n": the next byte starts a line

    def feed(self, piece: bytes) -> bytes:
        if not piece:
            return piece
        out = piece.replace(b"\n.", b"\n..")
        if piece.startswith(b".") and self._tail.endswith(b"\n"):
            out = b"." + out
        self._tail = (self._tail + piece)[-2:]
        return out

    def end(self) -> bytes:
        return b"" if self._tail == b"\r\n" else b"\r\n"


def dot_stuff(message: bytes) -> bytes:
    """RFC 5321 4.5.2 transparency, CRLF-terminated, without the final dot."""
    stuffer = DotStuffer()
    return stuffer.feed(message) + stuffer.end()


# What DATA sends: the dot-stuffed bytes, or a callable that writes the dot-stuffed
# message to a transport (with back-pressure, deliver/streaming.py) and fires once
# it is all written.
Body = bytes | Callable[[Any], defer.Deferred]


@dataclass
class Session:
    """An open connection, greeted, EHLO'd, maybe encrypted and authenticated."""

    protocol: ClientProtocol
    host: str
    address: str
    extensions: dict[str, str] = field(default_factory=dict)
    tls: bool = False
    needs_reset: bool = False

    @property
    def remote(self) -> str:
        return f"{self.host}[{self.address}]"

    def usable(self) -> bool:
        return self.protocol.connected_

    @defer.inlineCallbacks
    def reset(self):
        """RSET after an unfinished transaction; False when the session is no good."""
        try:
            reply = yield self.protocol.command(b"RSET")
        except error.ConnectionLost:
            return False
        self.needs_reset = not reply.ok()
        return reply.ok()

    @defer.inlineCallbacks
    def transaction(self, sender: str, recipients: list[str], stuffed: Body, *,
                    size: int, eight_bit: bool):
        """One mail transaction; a list of one Reply per recipient. Raises SessionError."""
        if self.needs_reset:
            ok = yield self.reset()
            if not ok:
                raise SessionError(None, f"{self.remote}: RSET failed")
        limit = self.extensions.get("SIZE", "")
        if limit.isdigit() and int(limit) and size > int(limit):
            refusal = Reply(552, (f"5.3.4 Message size {size} exceeds the server's "
                                  f"limit of {limit} (RFC 1870)",))
            return [refusal] * len(recipients)
        params = ""
        if "SIZE" in self.extensions:
            params += f" SIZE={size}"
        if eight_bit and "8BITMIME" in self.extensions:
            params += " BODY=8BITMIME"
        mail = f"MAIL FROM:<{sender}>{params}".encode()
        rcpts = [f"RCPT TO:<{r}>".encode() for r in recipients]
        self.needs_reset = True
        try:
            if "PIPELINING" in self.extensions:
                replies = yield self._pipelined(mail, rcpts)
            else:
                replies = yield self._lockstep(mail, rcpts)
        except error.ConnectionLost as e:
            raise SessionError(None, f"{self.remote}: {e} (in MAIL/RCPT)") from e
        mail_reply, rcpt_replies, data_reply = replies
        if not mail_reply.ok():
            if mail_reply.code >= 500 or mail_reply.code < 400:
                return [mail_reply] * len(recipients)
            raise SessionError(mail_reply, f"{self.remote} said: {mail_reply} (MAIL FROM)")
        accepted = [i for i, r in enumerate(rcpt_replies) if r.ok()]
        results = list(rcpt_replies)
        if data_reply is None:
            return results  # nobody accepted, DATA never sent
        if data_reply.code != 354:
            for i in accepted:
                results[i] = data_reply
            return results
        if not accepted:
            # A server that answers 354 with no valid recipient (RFC 2920 3.1
            # forbids it): end the empty message at once.
            final = yield self.protocol.send_data(b"")
            self.needs_reset = not final.ok()
            return results
        try:
            final = yield self.protocol.send_data(stuffed)
        except error.ConnectionLost as e:
            # Lost during DATA: nothing was confirmed, every accepted recipient waits.
            lost = Reply(451, (f"4.4.2 {self.remote}: {e} (during DATA)",))
            for i in accepted:
                results[i] = lost
            return results
        self.needs_reset = False
        for i in accepted:
            results[i] = final
        return results

    @defer.inlineCallbacks
    def _pipelined(self, mail: bytes, rcpts: list[bytes]):
        ds = self.protocol.send(mail, *rcpts, b"DATA")
        replies = []
        failure = None
        for d in ds:  # collect all, so no Deferred is left with an unhandled error
            try:
                replies.append((yield d))
            except error.ConnectionLost as e:
                failure = failure or e
        if failure is not None:
            raise failure
        mail_reply, data_reply = replies[0], replies[-1]
        rcpt_replies = replies[1:-1]
        if not any(r.ok() for r in rcpt_replies) and data_reply.code == 354:
            return mail_reply, rcpt_replies, data_reply  # handled by the caller
        if not any(r.ok() for r in rcpt_replies):
            data_reply = None
        return mail_reply, rcpt_replies, data_reply

    @defer.inlineCallbacks
    def _lockstep(self, mail: bytes, rcpts: list[bytes]):
        mail_reply = yield self.protocol.command(mail)
        if not mail_reply.ok():
            return mail_reply, [], None
        rcpt_replies = []
        for line in rcpts:
            rcpt_replies.append((yield self.protocol.command(line)))
        if not any(r.ok() for r in rcpt_replies):
            return mail_reply, rcpt_replies, None
        data_reply = yield self.protocol.command(b"DATA")
        return mail_reply, rcpt_replies, data_reply


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """EHLO keywords (upper case) -> their parameters (RFC 5321 4.1.1.1)."""
    extensions = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params.strip()
    return extensions


@defer.inlineCallbacks
def open_session(protocol: ClientProtocol, *, host: str, address: str, helo: str,
                 tls: str, tls_options, auth: tuple[str, str] | None = None):
    """Greeting, EHLO (HELO if refused), STARTTLS by policy, AUTH; a Session or SessionError.

    tls is the policy: "none", "may", "encrypt" or "verify"; tls_options is
    called with the host name for the connection creator to use.
    """
    session = Session(protocol, host, address)
    remote = session.remote
    try:
        greeting = yield protocol.greeting
        if greeting.code != 220:
            raise SessionError(greeting, f"{remote} greeted: {greeting}")
        session.extensions = yield _hello(protocol, helo, remote)
        if tls != "none" and "STARTTLS" in session.extensions:
            reply = yield protocol.command(b"STARTTLS")
            if reply.code == 220:
                # Whatever the server sent after 220 in plaintext must not be
                # read as if it came inside TLS (CVE-2011-0411 class).
                protocol.clearLineBuffer()
                protocol.tls_started = True
                protocol.transport.startTLS(tls_options(tls, host))
                # RFC 3207 4.2: forget everything learnt before TLS; EHLO again.
                session.extensions = yield _hello(protocol, helo, remote)
                protocol.tls_done = True
                session.tls = True
            elif tls in ("encrypt", "verify"):
                raise SessionError(None, f"{remote} refused STARTTLS: {reply}",
                                   status="4.7.4")
        elif tls in ("encrypt", "verify"):
            raise SessionError(None, f"TLS is required, but {remote} did not offer STARTTLS",
                               status="4.7.4")
        if auth is not None:
            if not session.tls:
                raise SessionError(None, f"{remote}: no AUTH without TLS", status="4.7.4")
            user, password = auth
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            reply = yield protocol.command(f"AUTH PLAIN {token}".encode())
            if reply.code != 235:
                # Soft: a credentials problem is fixed by the admin, not by bouncing.
                raise SessionError(None, f"{remote} refused AUTH: {reply}", status="4.7.0")
    except error.ConnectionLost as e:
        raise SessionError(None, f"{remote}: {e}",
                           tls_failed=protocol.tls_started and not protocol.tls_done) from e
    return session


@defer.inlineCallbacks
def _hello(protocol: ClientProtocol, helo: str, remote: str):
    reply = yield protocol.command(f"EHLO {helo}".encode())
    if reply.ok():
        return parse_ehlo(reply)
    if reply.code >= 500:  # RFC 5321 3.2: an old server; HELO it is
        reply = yield protocol.command(f"HELO {helo}".encode())
        if reply.ok():
            return {}
    raise SessionError(reply, f"{remote} refused EHLO/HELO: {reply}")
