"""The ESMTP server (RFC 5321): wire events become policy and spool calls.

First stage of the flow: client -> here -> queue/spool. Built on
twisted.mail.smtp.ESMTP (reply formatting, command lookup, EHLO extension list,
TimeoutMixin), with the gaps of DESIGN.md's "Known traps" filled here:

- input is read by our own loop that stops while a command's answer is
  pending (AUTH, the spool write), so PIPELINING (RFC 2920) answers in order;
  meanwhile, and while the client leaves its replies unread, the client is
  not read at all (gateway/flow.py), and lines are cut off the front of one
  buffer, so a megabyte of pipelined commands costs linear time;
- MAIL/RCPT parameters are parsed (SIZE RFC 1870, BODY RFC 6152) and refused
  when unknown (555 5.5.4);
- DATA is read in bulk by accept/data.py with its own limits: an overlong
  line never ends DATA, so the rest of a body is never run as commands, and
  the end of data is only CRLF.CRLF (SMTP smuggling);
- DATA streams to the spool as it arrives (ISpool.receive): the session holds
  [smtp] data_buffer_size bytes of a message, not the message, and stops
  reading its client while the disk is behind (Postfix's cleanup does the
  same); the 250 follows the commit, so a message that got one is on disk;
- STARTTLS discards input pipelined after it and resets the session
  (RFC 3207 4.2, CVE-2011-0411);
- AUTH (RFC 4954) is offered only on TLS, or on loopback when configured.

No policy lives here: accept/policy.py decides, MailError becomes the reply.
"""

from __future__ import annotations

import re

from twisted.internet import defer, protocol
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import Logger
from twisted.mail.smtp import ESMTP

from gateway import connection, flow, logs, proxyproto
from gateway.accept.data import BodyReader
from gateway.accept.policy import RelayPolicy, Session
from gateway.accept.received import protocol_keyword, received_header
from gateway.accept.smtp_auth import SMTPAuth
from gateway.config import SmtpSettings
from gateway.connection import ConnectionCounter
from gateway.envelope import (
    Envelope,
    Recipient,
    count_received,
    new_queue_id,
    parse_address,
)
from gateway.errors import MailError, SpoolError
from gateway.interfaces import IIncomingMessage, IQueueListener, ISpool, IUserDirectory
from gateway.verify.checker import AuthFacts

log = Logger()

_PATH_RE = re.compile(rb"^(?P<kw>FROM|TO):\s*(?P<path><[^>]*>|[^\s<>]+)(?:\s+(?P<params>.*))?$",
                      re.IGNORECASE | re.DOTALL)
_SOURCE_ROUTE = re.compile(r"^@[^:]+:")
_HELP = ("Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT STARTTLS AUTH\n"
         "See RFC 5321")


def tls_description(transport) -> str:
    """"TLSv1.3 with cipher X" for a TLS transport, "" otherwise.

    Behind tlsfront the TLS is the client's with the front, told by the PROXY v2 header.
    """
    proxied = proxyproto.proxied_tls(transport)
    if proxied is not None:
        return proxied.description()
    try:
        conn = transport.getHandle()
        version = conn.get_protocol_version_name()
        cipher = conn.get_cipher_name()
    except AttributeError:
        return ""
    return f"{version} with cipher {cipher}" if version and cipher else ""


class SMTPServer(SMTPAuth, ESMTP):
    """One SMTP session. Settings and collaborators come from the factory."""

    def __init__(self, factory: SMTPFactory):
        super().__init__(contextFactory=factory.tls_options)
        self.factory = factory
        self.settings: SmtpSettings = factory.settings
        self.host = factory.hostname.encode("ascii")
        self.timeout = self.settings.idle_timeout
        self.callLater = factory.reactor.callLater  # TimeoutMixin's clock, injectable
        self._buffer = bytearray()
        self._processing = False
        self._data_deadline = flow.Deadline(factory.reactor)
        self._closing = False
        self._skip_line = False
        self._bad_commands = 0
        self._esmtp = False
        self._helo_name = ""
        self._incoming: IIncomingMessage | None = None  # the message DATA is writing
        self._envelope: Envelope | None = None
        self._received = b""  # its Received header
        self.session: Session | None = None
        self._reset_transaction()

    # --- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        connection.no_delay(self.transport)
        self.session = Session(client_address=self.client_host())
        self._gate = flow.transport_gate(self.transport, self._process)
        self.transport.registerProducer(self._gate, True)
        self.canStartTLS = ITLSTransport.providedBy(self.transport) and self.ctx is not None
        if self.is_tls():  # behind tlsfront: TLS already, so no STARTTLS, and AUTH is allowed
            self.startedTLS = True
            self.session.tls = "TLS"
        logs.connect(self.service(), self.session.client_address)
        if not self.factory.connections.opened(self.session.client_address):
            logs.reject("CONNECT", self.session.client_address, 421, "4.7.0",
                        "Too many connections from your address", service=self.service())
            self.reply(421, "4.7.0", f"{self.factory.hostname} Too many connections from your "
                       "address, try again later")
            self._close()
            return
        self._opened = self.factory.reactor.seconds()
        self._queued_count = 0
        self.sendCode(220, self.host + b" ESMTP mailgateway")
        self.setTimeout(self.timeout)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.setTimeout(None)
        self._data_deadline.cancel()
        self._abort_data()
        if self.session is not None:
            self.factory.connections.closed(self.session.client_address)
            if hasattr(self, "_opened"):
                # Connect and disconnect lines (issue 14), though logging is a
                # measurable share of the cost of a message (bench/RESULTS.md).
                logs.disconnect(self.service(), self.session.client_address,
                                queued=self._queued_count, errors=self._bad_commands,
                                seconds=round(self.factory.reactor.seconds() - self._opened, 1))

    def client_host(self) -> str:
        """The client's address; behind a PROXY header (gateway/proxyproto.py) getPeer()
        already says the real one, before connectionMade."""
        return connection.client_host(self.transport)

    def service(self) -> str:
        """The name in log lines: "submission" on a port that requires AUTH, else "smtp"."""
        return "submission" if getattr(self.factory.policy, "submission", False) else "smtp"

    def is_tls(self) -> bool:
        """STARTTLS done, or the client spoke TLS to tlsfront (PROXY v2 PP2_TYPE_SSL)."""
        return self.startedTLS or proxyproto.proxied_tls(self.transport) is not None

    def timeoutConnection(self) -> None:
        self.reply(421, "4.4.2", f"{self.factory.hostname} Idle timeout, closing connection")
        self._close()

    def reply(self, code: int, enhanced: str, text: str) -> None:
        """A reply with an RFC 3463 enhanced status code (RFC 2034) on every line."""
        if "\n" not in text:
            self._send(f"{code} {enhanced} {text}\r\n".encode("utf-8", "replace"))
            return
        lines = text.split("\n")
        out = [f"{code}-{enhanced} {line}\r\n" for line in lines[:-1]]
        out.append(f"{code} {enhanced} {lines[-1]}\r\n")
        self._send("".join(out).encode("utf-8", "replace"))

    def sendCode(self, code: int, message: bytes = b"") -> None:
        """twisted.mail.smtp's sendCode (RFC 5321 4.2.1 multiline form), as one write."""
        lines = message.splitlines() or [b""]
        prefix = b"%03d" % code
        out = [prefix + b"-" + line + b"\r\n" for line in lines[:-1]]
        out.append(prefix + b" " + lines[-1] + b"\r\n")
        self._send(b"".join(out))

    def sendLine(self, line: bytes) -> None:
        self._send(line + b"\r\n")

    def _send(self, data: bytes) -> None:
        """One reply: sent at once when nothing waits before it (gateway/flow.py)."""
        flow.write_now(self.transport, data)

    def reply_error(self, e: MailError) -> None:
        self.reply(e.code, e.enhanced, e.text)

    def _close(self) -> None:
        self._closing = True
        self._buffer.clear()
        flow.lose(self.transport)

    # --- input loop ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        if not self._gate.open:
            self._gate.arrived()
        if not self._gate.open and len(self._buffer) > self.settings.max_pending_input:
            # Only a transport that ignored pauseProducing gets here.
            log.warn("{client}: too much pipelined input, dropped",
                     client=self.session.client_address)
            self.reply(421, "4.7.0", f"{self.factory.hostname} Too much pipelined input")
            self._closing = True
            self._buffer.clear()
            self.transport.abortConnection()
            return
        self._process()

    def _process(self) -> None:
        if self._processing:
            return  # a command answered at once, inside the loop below: it goes on
        self._processing = True
        try:
            while self._gate.open and not self._closing:
                if self.mode == "DATA":
                    if not self._data_step():
                        return
                    continue
                if not self._line_step():
                    return
        finally:
            self._processing = False

    def _line_step(self) -> bool:
        buf = self._buffer
        limit = self.settings.max_command_length
        if self._skip_line:  # the tail of a line already refused as too long
            nl = buf.find(b"\n")
            if nl < 0:
                buf.clear()
                return False
            del buf[:nl + 1]
            self._skip_line = False
            return True
        # Only as far as the longest allowed line: never rescan a long buffer per line.
        end = buf.find(b"\n", 0, limit + 2)
        if end < 0:
            if len(buf) <= limit + 1:
                return False  # the line is not complete yet
            self._skip_line = True
            self._bad(500, "5.5.6", f"Line too long (limit {limit} octets)")
            return True
        line = bytes(buf[:end])
        del buf[:end + 1]  # cheap: a bytearray drops its front without copying the rest
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > limit:
            self._bad(500, "5.5.6", f"Line too long (limit {limit} octets)")
            return True
        self.resetTimeout()
        self._gate.spend(self.factory.reactor)
        result = self.lineReceived(line)
        if isinstance(result, defer.Deferred):
            self._gate.hold(flow.BUSY)
            result.addErrback(self._internal_error)
            result.addBoth(self._resume)
        return True

    def _resume(self, _=None) -> None:
        self._gate.release(flow.BUSY)

    def _internal_error(self, failure) -> None:
        log.failure("internal error for {client}", failure, client=self.session.client_address)
        self.reply(451, "4.3.0", "Local error in processing, try again later")

    def _bad(self, code: int, enhanced: str, text: str) -> None:
        """An error that counts towards max_bad_commands (RFC 5321 4.5.3.2: 421 past it)."""
        self._bad_commands += 1
        if self._bad_commands > self.settings.max_bad_commands:
            log.info("too many errors from {client}", client=self.session.client_address)
            self.reply(421, "4.7.0", f"{self.factory.hostname} Too many errors, closing")
            self._close()
            return
        self.reply(code, enhanced, text)

    def lineReceived(self, line: bytes):
        if self.mode == "AUTH":
            try:
                return self._auth_response(line)
            except MailError as e:
                return self.reply_error(e)
        verb, _, rest = line.strip().partition(b" ")
        if not verb:
            return self._bad(500, "5.5.2", "Error: bad syntax")
        try:
            method = self.lookupMethod(verb)
        except UnicodeDecodeError:
            method = None
        if method is None:
            return self._bad(502, "5.5.2", "Error: command not recognized")
        try:
            return method(rest.strip())
        except MailError as e:
            if e.code >= 500:
                self._bad_commands += 1
            self._log_reject(verb, rest, e)
            self.reply_error(e)

    def _log_reject(self, verb: bytes, rest: bytes, e: MailError) -> None:
        """Postfix's "reject:" line: the command, the client, the reply, the envelope."""
        command = verb.decode("ascii", "replace").upper()
        address = rest.partition(b":")[2].strip().partition(b" ")[0].strip(b"<>")
        address_text = address.decode("utf-8", "replace")
        sender = address_text if command == "MAIL" else self._sender
        recipient = address_text if command == "RCPT" else None
        logs.reject(command, self.session.client_address, e.code, e.enhanced, e.text,
                    sender=sender, recipient=recipient, helo=self._helo_name,
                    service=self.service())

    # --- greeting commands ---------------------------------------------------

    def extensions(self) -> dict:
        ext: dict = {b"PIPELINING": None, b"SIZE": [b"%d" % self.settings.max_message_size],
                     b"8BITMIME": None, b"ENHANCEDSTATUSCODES": None}
        if self.canStartTLS and not self.startedTLS:
            ext[b"STARTTLS"] = None
        if self._auth_allowed():
            ext[b"AUTH"] = [b"PLAIN", b"LOGIN"]
        return ext

    def _greet(self, rest: bytes, esmtp: bool) -> None:
        name = rest.split()[0] if rest else b""
        if not name or len(name) > 255 or any(c < 0x21 or c > 0x7E for c in name):
            # RFC 5321 4.1.1.1: a domain or an address literal; never echo control bytes.
            raise MailError(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
        self._helo_name = name.decode("ascii")
        self._esmtp = esmtp
        self._reset_transaction()
        hello = f"{self.factory.hostname} Hello {self._helo_name} [{self.session.client_address}]"
        if esmtp:
            self.sendCode(250, hello.encode("ascii", "replace") + b"\n" + self.listExtensions())
        else:
            self.sendCode(250, hello.encode("ascii", "replace"))

    def do_EHLO(self, rest: bytes) -> None:
        self._greet(rest, esmtp=True)

    def do_HELO(self, rest: bytes) -> None:
        self._greet(rest, esmtp=False)

    def do_NOOP(self, rest: bytes) -> None:
        self.reply(250, "2.0.0", "Ok")

    def do_RSET(self, rest: bytes) -> None:
        self._reset_transaction()
        self.reply(250, "2.0.0", "Ok")

    def do_HELP(self, rest: bytes) -> None:
        self.reply(214, "2.0.0", _HELP)

    def do_QUIT(self, rest: bytes) -> None:
        self.reply(221, "2.0.0", f"{self.factory.hostname} Bye")
        self._close()

    def do_VRFY(self, rest: bytes) -> None:
        address = rest.decode("utf-8", "replace").strip("<> ")
        if not self.settings.vrfy or "@" not in address:
            # RFC 5321 3.5.3: 252 when the server will not say.
            return self.reply(252, "2.5.2", "Cannot VRFY user, but will accept message "
                              "and attempt delivery")
        route = self.factory.policy.router.route(address)
        self.reply(250, "2.1.5", f"<{route.address}>")

    def ext_STARTTLS(self, rest: bytes) -> None:
        if self.startedTLS:
            raise MailError(503, "5.5.1", "TLS already active")
        if not self.canStartTLS:
            raise MailError(454, "4.7.0", "TLS not available")
        if rest:
            raise MailError(501, "5.5.4", "Syntax: STARTTLS")
        self.reply(220, "2.0.0", "Ready to start TLS")
        # RFC 3207 4.2: forget everything, including commands the client
        # pipelined after STARTTLS in the clear (CVE-2011-0411).
        self._buffer.clear()
        self._helo_name = ""
        self._reset_transaction()
        self.transport.startTLS(self.ctx)
        self.startedTLS = True
        self.session.tls = "TLS"

    # --- the mail transaction ----------------------------------------------------

    def _reset_transaction(self) -> None:
        self._sender: str | None = None
        self._spf = None  # the SPF result of this transaction's MAIL FROM, if checked
        self._recipients: list[str] = []
        self._body_type = "7BIT"

    def _path(self, rest: bytes, keyword: bytes) -> tuple[str, dict[str, str]]:
        m = _PATH_RE.match(rest)
        if not m or m.group("kw").upper() != keyword:
            raise MailError(501, "5.5.4", f"Syntax: {keyword.decode()}:<address>")
        try:
            path = m.group("path").decode("utf-8").strip("<>")
            params_text = (m.group("params") or b"").decode("ascii")
        except UnicodeDecodeError:
            raise MailError(501, "5.5.4", "Non-ASCII in address (SMTPUTF8 not offered)") from None
        path = _SOURCE_ROUTE.sub("", path)  # RFC 5321 4.1.1.3: ignore source routes
        params = {}
        for item in params_text.split():
            key, _, value = item.partition("=")
            params[key.upper()] = value
        return path, params

    def do_MAIL(self, rest: bytes) -> None:
        if not self._helo_name:
            raise MailError(503, "5.5.1", "Send HELO/EHLO first")
        if self._sender is not None:
            raise MailError(503, "5.5.1", "Nested MAIL command")
        sender, params = self._path(rest, b"FROM")
        body = "7BIT"
        for key, value in params.items():
            if key == "SIZE" and self._esmtp:
                if not value.isdigit():
                    raise MailError(501, "5.5.4", "Bad SIZE parameter")
                if int(value) > self.settings.max_message_size:
                    raise MailError(552, "5.3.4", "Message size exceeds fixed maximum "
                                    f"message size ({self.settings.max_message_size})")
            elif key == "BODY" and self._esmtp and value.upper() in ("7BIT", "8BITMIME"):
                body = value.upper()
            elif key == "AUTH" and self._esmtp:
                pass  # RFC 4954 5: accepted and not passed on
            else:
                raise MailError(555, "5.5.4", f"Unsupported MAIL parameter {key}")
        self.factory.policy.check_sender(self.session, sender)
        authcheck = self.factory.authcheck
        if authcheck is not None and self.factory.policy.checks_sender(self.session):
            # SPF now, off the reactor (RFC 7208 2.4): a fail is refused before DATA.
            # The session reads no further command until the answer (a Deferred).
            facts = AuthFacts(self.session.client_address, self._helo_name, sender)
            return authcheck.check_sender(facts).addCallback(
                self._sender_checked, authcheck, rest, sender, body)
        self._mail_accepted(sender, body)
        return None

    def _sender_checked(self, spf, authcheck, rest: bytes, sender: str, body: str) -> None:
        refusal = authcheck.spf_refusal(spf)
        if refusal is not None:
            self._bad_commands += 1
            self._log_reject(b"MAIL", rest, refusal)
            self.reply_error(refusal)
            return
        self._mail_accepted(sender, body, spf)

    def _mail_accepted(self, sender: str, body: str, spf=None) -> None:
        self._sender = sender
        self._body_type = body
        self._spf = spf  # reused at the dot: Received-SPF, Authentication-Results, DMARC
        self.reply(250, "2.1.0", "Ok")

    def do_RCPT(self, rest: bytes) -> None:
        if self._sender is None:
            raise MailError(503, "5.5.1", "Need MAIL command")
        address, params = self._path(rest, b"TO")
        if params:
            raise MailError(555, "5.5.4", f"Unsupported RCPT parameter {next(iter(params))}")
        if "@" not in address and address.lower() == "postmaster":
            address = f"postmaster@{self.factory.domains[0]}"  # RFC 5321 4.5.1
        if len(self._recipients) >= self.settings.max_recipients:
            raise MailError(452, "4.5.3", "Too many recipients")
        route = self.factory.policy.check_recipient(self.session, address)
        local, domain = parse_address(address)
        canonical = route.address or f"{local}@{domain}"
        if canonical not in self._recipients:
            self._recipients.append(canonical)
        self.reply(250, "2.1.5", "Ok")

    def do_DATA(self, rest: bytes) -> None:
        if self._sender is None:
            raise MailError(503, "5.5.1", "Need MAIL command")
        if not self._recipients:
            raise MailError(554, "5.5.1", "No valid recipients")
        # Queue ID and Received header now: they go first into the spool file.
        now = self.factory.reactor.seconds()
        client = self.session.client_address
        tls = tls_description(self.transport) if self.startedTLS else ""
        recipients = self._recipients
        envelope = self._envelope = Envelope(
            sender=self._sender, recipients=[Recipient(r) for r in recipients],
            queue_id=new_queue_id(now), arrived=now, client_address=client,
            helo=self._helo_name, authenticated=self.session.authenticated, tls=tls,
            protocol=protocol_keyword(self._esmtp, self.startedTLS,
                                      bool(self.session.authenticated)),
            body=self._body_type)
        self._received = received_header(
            helo=self._helo_name, client_address=client, hostname=self.factory.hostname,
            protocol=envelope.protocol, queue_id=envelope.queue_id, tls=tls,
            recipient=recipients[0] if len(recipients) == 1 else "", now=now)
        self._incoming = self.factory.spool.receive(envelope.queue_id,
                                                    self.settings.data_buffer_size)
        self._incoming.write(self._received)
        self.mode = "DATA"
        self._body = BodyReader(self.settings, self._incoming.write)
        # The idle timer restarts on every byte; this does not (a byte every 2 s).
        self._data_deadline.start(self.settings.data_timeout, self._data_expired)
        self.sendCode(354, b"End data with <CR><LF>.<CR><LF>")

    def _data_expired(self) -> None:
        log.info("{client} DATA not completed in {seconds} seconds",
                 client=self.session.client_address, seconds=self.settings.data_timeout)
        self.reply(421, "4.4.2", f"{self.factory.hostname} Message not received within "
                   f"{self.settings.data_timeout:g} seconds, closing connection")
        self._body = None
        self._abort_data()
        self._close()

    def _abort_data(self) -> None:
        """The message being received is not to be (a refused body, a timeout, a lost
        connection): its spool file goes."""
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.abort()

    def _data_step(self) -> bool:
        """Feed input to the body reader; False when more input is needed."""
        rest, finished = self._body.consume(self._buffer)
        self._buffer = rest if isinstance(rest, bytearray) else bytearray(rest)
        self.resetTimeout()
        if self._body.fault is not None:
            self._abort_data()  # refused: nothing more is written, the rest only read
        if not finished:
            if self._incoming is not None and self._incoming.full:
                # The disk is behind the client: stop reading it until there is room.
                self._gate.hold(flow.DISK)
                self._incoming.room().addCallback(lambda _: self._gate.release(flow.DISK))
            return False
        self.mode = "COMMAND"
        self._data_deadline.cancel()
        self._gate.hold(flow.BUSY)
        self._end_of_data().addBoth(self._resume)
        return True

    def _end_of_data(self) -> defer.Deferred:
        sender, recipients, spf = self._sender, self._recipients, self._spf
        body, self._body = self._body, None
        envelope, self._envelope = self._envelope, None
        incoming, self._incoming = self._incoming, None
        fault = body.fault
        self._reset_transaction()
        if fault is not None:
            logs.reject("DATA", self.session.client_address, fault.code, fault.enhanced,
                        fault.text, sender=sender, recipient=",".join(recipients),
                        helo=self._helo_name, service=self.service())
            self.reply_error(fault)
            return defer.succeed(None)
        # The message is on its way to disk; what is read of it here is its start.
        received = self._received
        head = received + body.head
        envelope.size = incoming.size
        envelope.hops = count_received(head)
        message_id = logs.message_id(head)
        authcheck = self.factory.authcheck
        if authcheck is None:
            return self._commit(incoming.commit(envelope), envelope, message_id)
        # Sender authentication (gateway/verify/), before the commit: its verdict adds
        # Authentication-Results, drops forged ones, may refuse or send to Junk. It
        # reads the message in its own thread (from the spool file, or memory for a
        # small one), and only up to max_verify_size: memory stays bounded.
        facts = AuthFacts(envelope.client_address, envelope.helo, envelope.sender, spf)
        if not self.factory.policy.checks_sender(self.session):
            d = authcheck.check(facts, b"", skip=True)
        elif incoming.size - len(received) <= authcheck.settings.max_verify_size:
            d = incoming.reader(len(received))
            d.addCallback(lambda read: authcheck.check(facts, read))
        else:
            d = authcheck.check(facts, body.head, whole=False)
        d.addCallback(self._authenticated, envelope, incoming, received, body.head,
                      message_id)

        def unexpected(failure):  # a bug, not the client's fault: its tmp file goes
            incoming.abort()
            return failure
        return d.addErrback(unexpected)

    def _authenticated(self, verdict, envelope: Envelope, incoming: IIncomingMessage,
                       received: bytes, body_head: bytes, message_id: str):
        if verdict.refusal is not None:
            incoming.abort()
            e = verdict.refusal
            logs.reject("DATA", envelope.client_address, e.code, e.enhanced, e.text,
                        sender=envelope.sender,
                        recipient=",".join(r.address for r in envelope.recipients),
                        helo=envelope.helo, service=self.service())
            self.reply_error(e)
            return None
        envelope.folder = verdict.folder
        block = verdict.header_block(received, body_head)
        if block is None:
            return self._commit(incoming.commit(envelope), envelope, message_id)
        head, skip = block
        envelope.size += len(head) - skip
        return self._commit(incoming.commit(envelope, head, skip), envelope, message_id)

    def _commit(self, d: defer.Deferred, envelope: Envelope, message_id: str):
        d.addCallbacks(self._queued, self._spool_failed,
                       callbackArgs=(envelope, message_id),
                       errbackArgs=(envelope,))
        return d

    def _queued(self, queue_id: str, envelope: Envelope, message_id: str = "") -> None:
        logs.queued(queue_id, envelope.sender, envelope.size, len(envelope.recipients),
                    message_id, envelope.client_address)
        self.reply(250, "2.0.0", f"Ok: queued as {queue_id}")
        self._queued_count += 1
        self.factory.listener.enqueued(queue_id, envelope)

    def _spool_failed(self, failure, envelope: Envelope) -> None:
        failure.trap(SpoolError)
        log.error("{client} spool write failed: {error}", client=envelope.client_address,
                  error=failure.value)
        full = "No space" in str(failure.value)
        if full:
            self.reply(452, "4.3.1", "Insufficient system storage, try again later")
        else:
            self.reply(451, "4.3.0", "Local error in processing, try again later")


class SMTPFactory(protocol.ServerFactory):
    """Holds what every session of one listener shares, and counts connections per client."""

    def __init__(self, *, hostname: str, domains: tuple[str, ...], settings: SmtpSettings,
                 policy: RelayPolicy, spool: ISpool, listener: IQueueListener,
                 users: IUserDirectory, tls_options, plaintext_from_loopback: bool, reactor,
                 authcheck=None):
        self.hostname = hostname
        self.domains = domains
        self.settings = settings
        self.policy = policy
        self.spool = spool
        self.listener = listener
        self.users = users
        self.tls_options = tls_options
        self.plaintext_from_loopback = plaintext_from_loopback
        self.reactor = reactor
        # gateway/verify/checker.InboundAuth on the smtp listener; None: no checks.
        self.authcheck = authcheck
        self.connections = ConnectionCounter(settings.max_connections_per_client)

    def buildProtocol(self, addr) -> SMTPServer:
        return SMTPServer(self)
