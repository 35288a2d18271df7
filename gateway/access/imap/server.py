"""IMAP4rev1 server (RFC 3501), IMAP4rev2 (RFC 9051) for a session that enables it
(commands.py do_ENABLE). access: mail clients read and file the Maildirs.

A client connects (plaintext, after STARTTLS, or through tlsfront), logs in
against the IUserDirectory, and works on its folders through account.py
(store/folders.py) and mailbox.py (store/folder.py). The command modules
are mixins: commands.py (authenticated state), selected.py (selected state).

Built on twisted.mail.imap4.IMAP4Server: its LineReceiver/TimeoutMixin
plumbing, greeting, CAPABILITY, response writers (sendPositiveResponse ...)
and the "unauth/auth/select" state names are reused. Its command reader is
not: it parses arguments while reading, so it cannot refuse a literal by
size before reading it (RFC 7888 LITERAL+ not at all), has no escapes in
quoted strings, handles IDLE/STARTTLS/pipelining unsafely (any line ends
IDLE; input pipelined after STARTTLS is answered inside TLS, CVE-2011-0411)
and answers ID, ENABLE, MOVE, UID EXPUNGE with BAD. Here whole commands are
gathered (lines + literals, sized before they are read), tokenised by
wire.py and dispatched by name; one command runs at a time, later input
waits (the transport is paused) until it is answered; and a client that
does not read its replies is not read either (gateway/flow.py).
"""

from __future__ import annotations

import os
import re
import zlib
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, ITLSTransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail import imap4
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway import connection, deflate, flow, logs
from gateway.access.imap import wire
from gateway.access.imap.commands import AuthenticatedCommands
from gateway.access.imap.login import LoginCommands
from gateway.access.imap.selected import SelectedCommands
from gateway.access.imap.wire import LITERAL_AT_END, Atom, Bad, No, Upload
from gateway.access.session import AccessSession
from gateway.config import ImapSettings
from gateway.connection import ConnectionCounter
from gateway.deflate import DeflateTransport, Inflater
from gateway.interfaces import IMailStore, ISharedFolders, IUserDirectory

_log = Logger()

ANY, UNAUTH, AUTH, SELECTED = ("unauth", "auth", "select"), ("unauth",), ("auth", "select"), (
    "select",)
# command -> states it is valid in (RFC 3501 6). UID takes FETCH, STORE, SEARCH,
# COPY, MOVE (RFC 6851) and EXPUNGE (RFC 4315).
COMMANDS = {
    b"CAPABILITY": ANY, b"NOOP": ANY, b"LOGOUT": ANY, b"ID": ANY,
    b"STARTTLS": UNAUTH, b"LOGIN": UNAUTH, b"AUTHENTICATE": UNAUTH,
    b"SELECT": AUTH, b"EXAMINE": AUTH, b"CREATE": AUTH, b"DELETE": AUTH, b"RENAME": AUTH,
    b"SUBSCRIBE": AUTH, b"UNSUBSCRIBE": AUTH, b"LIST": AUTH, b"LSUB": AUTH, b"STATUS": AUTH,
    b"APPEND": AUTH, b"NAMESPACE": AUTH, b"IDLE": AUTH, b"ENABLE": ("auth",),
    b"CHECK": SELECTED, b"CLOSE": SELECTED, b"UNSELECT": SELECTED, b"EXPUNGE": SELECTED,
    b"SEARCH": SELECTED, b"FETCH": SELECTED, b"STORE": SELECTED, b"COPY": SELECTED,
    b"MOVE": SELECTED, b"SORT": SELECTED, b"THREAD": SELECTED,
    b"GETQUOTAROOT": AUTH, b"GETQUOTA": AUTH, b"SETQUOTA": AUTH,
    b"COMPRESS": AUTH,  # RFC 4978 3: after authentication only
}
UID_COMMANDS = {b"FETCH", b"STORE", b"SEARCH", b"COPY", b"MOVE", b"EXPUNGE", b"SORT",
                b"THREAD"}
# RFC 3501 7.4.1: no EXPUNGE responses while answering these (the UID forms may).
_NO_EXPUNGE_DURING = {b"FETCH", b"STORE", b"SEARCH", b"SORT", b"THREAD"}
MAX_LITERALS = 64  # literals in one command


@implementer(IPushProducer)
class Pacer(flow.ReadGate):
    """Flow control: input is read only while no command is busy and the client reads
    its replies (flow.ReadGate); FETCH waits for the client to read before writing more."""

    def __init__(self, pause, resume, hold_lazily=None) -> None:
        super().__init__(pause, resume, hold_lazily)
        self._waiting: list[defer.Deferred] = []

    @property
    def paused(self) -> bool:
        return self.held(flow.OUTPUT)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self._wake()

    def stopProducing(self) -> None:
        super().stopProducing()
        self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    @property
    def ready(self) -> bool:
        """The client has read what was written (or is gone): wait() need not wait."""
        return not self.paused or self.stopped

    def wait(self) -> defer.Deferred:
        if self.ready:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d


class IMAPServer(SelectedCommands, AuthenticatedCommands, LoginCommands, AccessSession,
                 imap4.IMAP4Server):
    """One IMAP session."""

    IDENT = b"mailgateway IMAP4rev1 ready"
    factory: IMAPFactory

    def __init__(self) -> None:
        imap4.IMAP4Server.__init__(self, chal={}, contextFactory=None)
        self._counted_as: str | None = None  # the key factory.connections counts us under
        self._pieces: list[Any] = []  # the command being gathered: text, literal, text ...
        self._sink: Any = None  # bytearray or open file of the literal being read
        self._left = 0  # octets of that literal still to come
        self._sink_binary = False  # that literal is a literal8 (RFC 3516)
        self._sink_nul = False  # that literal (not a literal8) held a NUL: refused at its end
        self._discard = 0  # octets of a refused LITERAL+ still to skip
        self._refused: bytes | None = None  # reply for a command whose literal was refused
        self._busy = self._gone = False
        self._tls_started = False
        self._bad = self._auth_failures = 0
        self._idle_tag: bytes | None = None
        self._idle_poll: Any = None
        self._delayed: Any = None
        # APPEND messages of this session not yet adopted or removed: path -> the
        # Deferred of their staging (Account.stage) in the thread pool, if begun.
        self._uploads: dict[str, defer.Deferred | None] = {}
        self._upload_path: Any = None  # where the literal being read goes (APPEND's)
        self.address = ""
        self.account: Any = None
        self.view: Any = None
        self.condstore = self.qresync = False  # RFC 7162, once enabled (commands.py)
        self.rev2 = False  # RFC 9051, once ENABLE IMAP4rev2 (commands.py)
        self._inflater: Inflater | None = None  # RFC 4978, once COMPRESS DEFLATE is on
        # Reading pauses through LineReceiver's own pause (input already read waits).
        self.pacer = Pacer(self._read_paused, self._read_resumed, self._lines_held)

    @property
    def settings(self) -> ImapSettings:
        return self.factory.settings

    # -- client facts: AccessSession (gateway/access/session.py) -------------

    def can_starttls(self) -> bool:
        return (self.factory.tls_options is not None and not self.is_tls()
                and ITLSTransport.providedBy(self.transport))

    def listCapabilities(self) -> list[bytes]:
        # Only what works (Twisted's advertises AUTH=LOGIN/PLAIN only after STARTTLS
        # and nothing of the extensions below).
        # IMAP4rev2 (RFC 9051) beside IMAP4rev1: rev1 until the client enables rev2.
        # No LITERAL-: LITERAL+ allows more, and RFC 7888 5 forbids advertising both.
        caps = [b"IMAP4rev1", b"IMAP4rev2", b"LITERAL+", b"SASL-IR", b"ID", b"ENABLE",
                b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT", b"CHILDREN",
                b"SPECIAL-USE", b"CONDSTORE",
                b"QRESYNC", b"QUOTA", b"QUOTA=RES-STORAGE", b"STATUS=SIZE",
                *([b"COMPRESS=DEFLATE"] if self.settings.compress_level else []),
                b"BINARY", b"ESEARCH", b"SEARCHRES", b"SORT", b"THREAD=ORDEREDSUBJECT",
                b"THREAD=REFERENCES", b"LIST-EXTENDED", b"LIST-STATUS"]
        if self.state == "unauth":
            if self.can_starttls():
                caps.append(b"STARTTLS")
            caps.append(b"AUTH=PLAIN" if self.login_allowed() else b"LOGINDISABLED")
        return caps

    # -- connection ---------------------------------------------------------------

    def sendLine(self, line: bytes) -> None:
        """A tagged answer or a continuation request (what the client waits for) goes
        out at once when nothing is queued before it (flow.write_now), not on the
        reactor's next turn. Untagged lines are queued as before, and so is a tagged
        answer behind them: one send for both. Two small sends in a row would meet
        Nagle's algorithm and the client's delayed ACK: 40 ms (STATUS measured it)."""
        if line.startswith(b"* "):
            self.transport.write(line + self.delimiter)
        else:
            flow.write_now(self.transport, line + self.delimiter)

    def connectionMade(self) -> None:
        connection.no_delay(self.transport)
        self.callLater = self.factory.reactor.callLater  # TimeoutMixin on the injected clock
        self.MAX_LENGTH = self.settings.max_command_length
        self.tags = {}
        self.login_deadline = flow.Deadline(self.factory.reactor)
        self._literal_deadline = flow.Deadline(self.factory.reactor)
        self.transport.registerProducer(self.pacer, True)
        self._counted_as = self.client_host()
        if not self.factory.connections.opened(self._counted_as):
            logs.reject("CONNECT", self._counted_as, 421, "4.7.0",
                        "Too many connections from your address", service="imap")
            self.transport.write(b"* BYE [UNAVAILABLE] Too many connections from your "
                                 b"address, try again later\r\n")
            flow.lose(self.transport)
            return
        # Idle timer and a total deadline: commands restart the one, not the other.
        self.setTimeout(self.settings.login_timeout)
        self.login_deadline.start(self.settings.login_timeout, self._login_expired)
        self.sendServerGreeting()
        logs.connect("imap", self.client_host())

    def _read_paused(self) -> None:
        if not flow.closing(self.transport):
            imap4.IMAP4Server.pauseProducing(self)

    def _lines_held(self) -> None:
        # A command is being answered (flow.BUSY): only the line loop stops; the
        # transport too once input comes meanwhile (dataReceived, pacer.arrived).
        self.paused = True

    def _read_resumed(self) -> None:
        if not self._gone and not flow.closing(self.transport):
            imap4.IMAP4Server.resumeProducing(self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._gone = True
        if self._counted_as is not None:
            self.factory.connections.closed(self._counted_as)
            self._counted_as = None
        self.setTimeout(None)
        for deadline in (self.login_deadline, self._literal_deadline):
            deadline.cancel()
        for call in (self._delayed, self._idle_poll):
            if call is not None and call.active():
                call.cancel()
        self.pacer.stopProducing()
        self._drop_literal()
        if self.view is not None:
            self.view.close()
            self.view = None
        if self.account is not None:
            _log.info("imap {user} from {client} disconnected", user=self.address,
                      client=self.client_host())

    def _login_expired(self) -> None:
        _log.info("imap login timeout for {client}", client=self.client_host())
        self.sendLine(b"* BYE Autologout; no login within %d seconds"
                      % self.settings.login_timeout)
        flow.lose(self.transport)

    def _literal_expired(self) -> None:
        _log.info("imap literal timeout for {client} user={user}", client=self.client_host(),
                  user=self.address or "-")
        self.sendLine(b"* BYE Literal not received within %d seconds"
                      % self.settings.literal_timeout)
        self.transport.abortConnection()  # mid-literal: nothing more will be read

    def timeoutConnection(self) -> None:
        _log.info("imap idle timeout for {client} user={user}", client=self.client_host(),
                  user=self.address or "-")
        self.sendLine(b"* BYE Autologout; idle for too long")
        flow.lose(self.transport)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.sendLine(b"* BYE Command line too long")
        flow.lose(self.transport)

    # -- input: lines, literals ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if data and not self.pacer.open:
            self.pacer.arrived()
        if self._inflater is None:
            return imap4.IMAP4Server.dataReceived(self, data)
        if not data:  # resumed (LineReceiver.resumeProducing): lines held back go first
            imap4.IMAP4Server.dataReceived(self, b"")
        try:
            self._inflater.feed(data)
        except zlib.error as e:
            _log.info("imap bad compressed input from {client} user={user}: {error}",
                      client=self.client_host(), user=self.address or "-", error=str(e))
            self.transport.abortConnection()

    def setLineMode(self, extra: bytes = b"") -> None:
        # LineReceiver's would hand extra (input already decompressed, the rest after a
        # literal) to dataReceived, which decompresses: give it to the line reader.
        self.line_mode = 1
        if extra:
            imap4.IMAP4Server.dataReceived(self, extra)

    def _inflated(self, data: bytes) -> None:
        imap4.IMAP4Server.dataReceived(self, data)

    def _wants_input(self) -> bool:
        """Hand on more decompressed input only while it would be read now (RFC 4978
        under the same bounds as plaintext: paused means held, not buffered)."""
        return not self.paused and not self._gone and not flow.closing(self.transport)

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        self.pacer.spend(self.factory.reactor)
        if self._gone or getattr(self.transport, "disconnecting", False):
            return
        if self._idle_tag is not None:
            return self.idle_line(line)
        if self.auth_pending is not None:
            return self.auth_line(line)
        m = LITERAL_AT_END.search(line)
        text = line if m is None else line[:m.start()]
        if self._refused is not None:  # rest of a command whose LITERAL+ was refused
            if m is not None and m.group(3):
                self._begin_discard(int(m.group(2)))
            elif m is None:
                self._refused = None
            return
        self._pieces.append(text)
        if m is None:
            pieces, self._pieces = self._pieces, []
            return self.execute(pieces)
        self._literal_start(int(m.group(2)), bool(m.group(3)), bool(m.group(1)))

    def _literal_start(self, size: int, plus: bool, binary: bool = False) -> None:
        head = b"".join(p for p in self._pieces if isinstance(p, bytes)).split(None, 3)
        tag = head[0] if head else b"*"
        command = head[1].upper() if len(head) > 1 else b""
        # APPEND's message is the literal after the folder name (itself maybe a literal).
        is_append = command == b"APPEND" and self.account is not None and (
            len(head) > 2 or len(self._pieces) > 1)
        limit = self.settings.max_message_size if is_append else self.settings.max_literal_size
        # All literals of one command together, fewer before login (a name, a password).
        total = (self.settings.max_command_literals if self.account is not None
                 else self.settings.max_unauthenticated_literals)
        held = sum(len(p) for p in self._pieces[1::2] if isinstance(p, bytes))
        problem = None
        if size > limit:
            problem = b"NO [TOOBIG] Literal of %d octets is over the limit of %d" % (size, limit)
        elif not is_append and held + size > total:
            problem = b"NO [TOOBIG] Literals of this command over the limit of %d octets" % total
        elif len(self._pieces) > 2 * MAX_LITERALS:
            problem = b"BAD Too many literals in one command"
        elif binary and not is_append:  # RFC 3516 4.4: literal8 is APPEND's message only
            problem = b"BAD A literal8 (~{n}) is only for APPEND's message"
        if problem is not None:
            self._pieces = []
            self.sendLine(tag + b" " + problem)
            if plus:  # the client sends it anyway: skip it unread, then the rest
                self._refused = tag
                self._begin_discard(size)
            return
        if is_append:
            path = self._upload_path = self.account.upload_path()
            self._uploads[str(path)] = None
            # A message up to append_in_memory octets waits in memory: no file is made
            # before the "+" and none written here; Account.stage does it in the pool.
            self._sink = bytearray() if size <= self.settings.append_in_memory else \
                open(path, "wb")  # noqa: SIM115  closed in _literal_end
        else:
            self._sink = bytearray()
        self._sink_binary, self._sink_nul = binary, False
        self._left = size
        if not plus:
            self.sendContinuationRequest(b"Ready for literal data")
        if size == 0:
            self._literal_end(b"")
        else:
            self._literal_deadline.start(self.settings.literal_timeout, self._literal_expired)
            self.setRawMode()

    def _begin_discard(self, size: int) -> None:
        self._discard = size
        if size:
            self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self._discard:
            n = min(self._discard, len(data))
            self._discard -= n
            if not self._discard:
                self.setLineMode(data[n:])
            return
        chunk, rest = data[:self._left], data[self._left:]
        # RFC 3501 4.3 / RFC 9051 4.3: a literal is CHAR8, NUL excluded; only a literal8
        # (RFC 3516) may hold one. Read on to the literal's end, then refuse the command.
        if not self._sink_binary and b"\0" in chunk:
            self._sink_nul = True
        self._sink.write(chunk) if not isinstance(self._sink, bytearray) else \
            self._sink.extend(chunk)
        self._left -= len(chunk)
        if not self._left:
            self._literal_end(rest)

    def _literal_end(self, rest: bytes) -> None:
        if not rest:  # the rest of the command line is still to come: ask for it now
            connection.quick_ack(self.transport)
        self._literal_deadline.cancel()
        sink, self._sink = self._sink, None
        path, self._upload_path = self._upload_path, None
        if path is None:
            self._pieces.append(bytes(sink))
        else:
            if isinstance(sink, bytearray):
                data, size = sink, len(sink)
            else:
                data, size = None, sink.tell()
                sink.close()
            upload = Upload(path, size, self._sink_binary)
            if not self._sink_nul and size:
                # Written and synced now, while the command's end is on its way (a
                # literal8 is rewritten first, binary.py: it is synced afterwards).
                self._uploads[str(path)] = self.stage_upload(upload, data)
            self._pieces.append(upload)
        if self._sink_nul:  # as Dovecot: BAD, and the rest of the command is skipped
            pieces, self._pieces, self._sink_nul = self._pieces, [], False
            self._release_uploads(pieces)
            head = pieces[0].split(None, 1) if pieces and isinstance(pieces[0], bytes) else []
            self._refused = head[0] if head else b"*"
            self.bad(self._refused, "NUL octet in a literal: only a literal8 (~{n}) may hold "
                     "one (RFC 3516)")
        self.setLineMode(rest)

    def _drop_literal(self) -> None:
        """A client gone mid-APPEND leaves nothing behind (no partial message)."""
        if self._sink is not None and not isinstance(self._sink, bytearray):
            self._sink.close()
        self._sink = self._upload_path = None
        for path in list(self._uploads):
            self._remove_upload(path)

    # -- dispatch -------------------------------------------------------------------

    def execute(self, pieces: list) -> None:
        # The tag, even when the rest does not parse (RFC 3501 7.1.5: BAD with its tag).
        first = pieces[0].split(b" ", 1)[0] if pieces and pieces[0] else b""
        tag = first if re.fullmatch(rb"[!#$&'-*,-Z^-z|~]+", first) and b"+" not in first \
            else b"*"
        try:
            tokens = wire.tokenize(pieces, self.settings.max_nesting)
            if not tokens or not isinstance(tokens[0], Atom) or tokens[0] == b"*" \
                    or b"+" in tokens[0]:
                raise Bad("missing or bad tag")
            tag = bytes(tokens[0])
            if len(tokens) < 2 or not isinstance(tokens[1], Atom):
                raise Bad("missing command")
            command, args, uid = bytes(tokens[1]).upper(), tokens[2:], False
            if command == b"UID":
                if not args or not isinstance(args[0], Atom) or args[0].upper() not in \
                        UID_COMMANDS:
                    raise Bad("UID takes FETCH, STORE, SEARCH, SORT, THREAD, COPY, MOVE or EXPUNGE")
                command, args, uid = bytes(args[0]).upper(), args[1:], True
            states = COMMANDS.get(command)
            if states is None:
                raise Bad("unknown command")
            if self.state not in states:
                raise Bad("command not valid in this state")
        except Bad as e:
            self._release_uploads(pieces)
            return self.bad(tag, str(e))
        if self.view is not None and self.view.gone:
            self._release_uploads(pieces)
            return self.folder_lost()
        try:
            result = getattr(self, "do_" + command.decode())(tag, args, uid)
        except Exception:
            result = defer.fail(Failure())
        self.answer(result, tag, command, uid, pieces)

    def answer(self, result: Any, tag: bytes, command: bytes, uid: bool = False,
               pieces: list | None = None) -> None:
        """Answer a command now, or when its Deferred fires (input waits till then)."""
        if isinstance(result, defer.Deferred):
            self._busy = True
            self.pacer.hold(flow.BUSY)  # later commands wait in the transport
            result.addBoth(self._finish, tag, command, uid, pieces or [])
        else:
            self._finish(result, tag, command, uid, pieces or [])

    def _finish(self, result: Any, tag: bytes, command: bytes, uid: bool, pieces: list) -> None:
        self._release_uploads(pieces)
        if not self._gone:
            self._reply(result, tag, command, uid)
        compressing = deflate.drained(self.transport)
        if compressing is not None and not self._gone:
            # COMPRESS: a big answer is still being compressed in the pool. The next
            # command waits for it, as it waits for a client that does not read:
            # else a pipeline of commands with big answers would queue them unbounded.
            if not self._busy:
                self._busy = True
                self.pacer.hold(flow.BUSY)
            compressing.addCallback(lambda _: self._answered())
            return
        self._answered()

    def _answered(self) -> None:
        if self._busy:  # answered: now the next pipelined command may run
            self._busy = False
            if not self._gone:
                self.pacer.release(flow.BUSY)

    def _reply(self, result: Any, tag: bytes, command: bytes, uid: bool) -> None:
        if isinstance(result, Failure):
            if result.check(Bad):
                return self.bad(tag, str(result.value))
            if result.check(No):
                self.flush_updates(command not in _NO_EXPUNGE_DURING or uid)
                return self.sendNegativeResponse(tag, str(result.value).encode())
            _log.failure("imap internal error, client {client} user {user}", result,
                         client=self.client_host(), user=self.address or "-")
            return self.sendNegativeResponse(tag, b"[SERVERBUG] Internal server error")
        if result is None:  # the command answers later (IDLE, AUTHENTICATE) or has answered
            return
        self.flush_updates(command not in _NO_EXPUNGE_DURING or uid)
        self.sendPositiveResponse(tag, result)

    def _release_uploads(self, pieces: list) -> None:
        for p in pieces:
            if isinstance(p, Upload):
                if p.adopted:
                    self._uploads.pop(str(p.path), None)
                else:
                    self._remove_upload(str(p.path))

    def _remove_upload(self, path: str) -> None:
        """Remove an APPEND message's file (gone already if adopted into a folder); one
        still being staged in the pool is removed once that is done, never before."""
        staged = self._uploads.pop(path, None)
        if staged is not None and not staged.called:
            staged.addBoth(lambda _: _unlink(path))  # last in its chain: nothing after
        else:
            _unlink(path)

    def bad(self, tag: bytes, text: str) -> None:
        self._bad += 1
        if self._bad >= self.settings.max_bad_commands:
            self.sendLine(b"* BYE Too many invalid commands")
            flow.lose(self.transport)
            return
        self.sendBadResponse(tag, text.encode("utf-8", "replace"))

    def run_blocking(self, f, *args) -> defer.Deferred:
        return self.factory.run_blocking(f, *args)

    def flush_updates(self, allow_expunge: bool = True) -> None:
        """Tell the client what other sessions and programs changed (RFC 3501 7)."""
        if self.view is not None and self.view.pending() and not self._gone:
            if self.view.gone:
                return self.folder_lost()
            lines = self.view.take_updates(allow_expunge)
            if lines:
                self.transport.writeSequence([line + b"\r\n" for line in lines])

    def folder_lost(self) -> None:
        """The selected folder was deleted or replaced (by another session or program):
        its messages are no more, so say so and close, as Dovecot does; a new SELECT
        in a new session sees the folder as it is now (RFC 3501 2.3.1.1, 7.1.5)."""
        if self.view is not None:
            self.view.close()
            self.view, self.state = None, "logout"
        if not flow.closing(self.transport):
            self.sendLine(b"* BYE Selected folder was deleted or replaced, have to disconnect")
            flow.lose(self.transport)

    # -- any state ------------------------------------------------------------------

    def do_CAPABILITY(self, tag: bytes, args: list, uid: bool) -> bytes:
        wire.arity(args, 0)
        self.sendUntaggedResponse(b"CAPABILITY " + b" ".join(self.listCapabilities()))
        return b"CAPABILITY completed"

    def do_NOOP(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 0)
        if self.view is None:
            return b"NOOP completed"
        # Look for changes by other programs (other sessions' changes are known already):
        # where the directories say none, at once; else in the pool.
        if self.view.folder.looks_unchanged():
            return b"NOOP completed"
        return self.run_blocking(self.view.folder.sync).addCallback(
            lambda _: b"NOOP completed")

    def do_LOGOUT(self, tag: bytes, args: list, uid: bool) -> None:
        wire.arity(args, 0)
        self.sendUntaggedResponse(b"BYE Logging out")
        self.sendPositiveResponse(tag, b"LOGOUT completed")
        self.state = "logout"
        flow.lose(self.transport)

    def do_COMPRESS(self, tag: bytes, args: list, uid: bool) -> None:
        """RFC 4978: after this OK both directions are raw DEFLATE, a layer under the
        session (gateway/deflate.py), inside TLS when TLS is on."""
        wire.arity(args, 1)
        if not self.settings.compress_level:  # [imap] compress_level = 0: not offered
            raise Bad("COMPRESS is not offered here")
        if wire.atom(args[0], "mechanism").upper() != b"DEFLATE":
            raise Bad("COMPRESS knows DEFLATE only")
        if self._inflater is not None:
            raise No("[COMPRESSIONACTIVE] DEFLATE is active already")
        self.sendPositiveResponse(tag, b"DEFLATE active")  # the last uncompressed octets
        # What the client sent after the command line is compressed already.
        early, self._buffer = self._buffer, b""
        self.transport = DeflateTransport(self.transport, self.settings.compress_level,
                                          self.run_blocking, self.factory.reactor)
        self._inflater = Inflater(self._inflated, self._wants_input)
        _log.info("imap {user} from {client} compress deflate", user=self.address,
                  client=self.client_host())
        if early:
            self._inflater.feed_later(early)
            self.factory.reactor.callLater(0, self.dataReceived, b"")
        return None

    def do_ID(self, tag: bytes, args: list, uid: bool) -> bytes:
        # RFC 2971: the client's identity (logged) for ours.
        wire.arity(args, 1)
        if isinstance(args[0], list):
            fields = [bytes(a) for a in args[0] if isinstance(a, bytes)][:60]
            _log.info("imap client {client} id {id}", client=self.client_host(),
                      id=b" ".join(fields).decode("utf-8", "replace")[:300])
        elif args[0].upper() != b"NIL":
            raise Bad("ID takes a list or NIL")
        self.sendUntaggedResponse(b'ID ("name" "mailgateway")')
        return b"ID completed"


class IMAPFactory(ServerFactory):
    """Builds IMAPServer sessions; holds what every session shares."""

    protocol = IMAPServer
    # Set True on a listener where every client spoke TLS to something in front of it.
    implicit_tls = False

    def __init__(self, *, hostname: str, users: IUserDirectory, store: IMailStore,
                 tls_options: Any, plaintext_from_loopback: bool, settings: ImapSettings,
                 reactor: Any, run_blocking: Any, shared: ISharedFolders | None = None,
                 run_search: Any = None, call_from_thread: Any = None) -> None:
        self.hostname = hostname
        self.users = users
        self.store = store
        self.tls_options = tls_options
        self.plaintext_from_loopback = plaintext_from_loopback
        self.settings = settings  # the [imap] limits
        self.reactor = reactor
        self.run_blocking = run_blocking  # f, *args -> Deferred, in a thread in the gateway
        # SEARCH in threads of its own ([threads] search): many heavy searches wait for
        # each other, not in front of other sessions' logins and FETCHes.
        self.run_search = run_search or run_blocking
        # f, *args: f(*args) in the reactor's thread, asked from a pool thread.
        self.call_from_thread = call_from_thread or reactor.callFromThread
        self.connections = ConnectionCounter(settings.max_connections_per_client)
        self.shared = shared  # the list archives each user may read (shared.py)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # adopted into a folder by APPEND, or never written
