"""The not-authenticated state of an IMAP session: STARTTLS, LOGIN, AUTHENTICATE PLAIN.

A mixin of server.IMAPServer. RFC 3501 6.2, RFC 4959 (SASL-IR), RFC 4616
(PLAIN, parsed by gateway/sasl.py like SMTP and POP3 do), RFC 5530 response
codes. Credentials are accepted only over TLS, or in plaintext from loopback
when [auth] plaintext_from_loopback is set (otherwise LOGINDISABLED, RFC 3501
6.2.3). After STARTTLS whatever the client pipelined in plaintext is dropped
(CVE-2011-0411 class: Twisted's STARTTLS would answer it inside TLS).
"""

from __future__ import annotations

from typing import Any

from twisted.cred.error import LoginFailed
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import flow, logs, sasl
from gateway.access.imap import wire
from gateway.access.imap.account import Account
from gateway.access.imap.shared import SharedNamespace
from gateway.access.imap.wire import Bad, No
from gateway.errors import AuthThrottled

_log = Logger()


class LoginCommands:
    auth_pending: bytes | None = None  # tag of an AUTHENTICATE waiting for its response

    def do_STARTTLS(self, tag: bytes, args: list, uid: bool) -> None:
        wire.arity(args, 0)
        if self.is_tls():
            raise Bad("TLS is already active")
        if not self.can_starttls():
            raise No("[UNAVAILABLE] TLS not available")
        self.sendPositiveResponse(tag, b"Begin TLS negotiation now")
        self.clearLineBuffer()  # pipelined plaintext must not be answered inside TLS
        self._pieces = []
        self.transport.startTLS(self.factory.tls_options)
        self._tls_started = True
        return None

    def _refuse_plaintext(self) -> None:
        if not self.login_allowed():
            raise No("[PRIVACYREQUIRED] Use STARTTLS (or TLS) before logging in")

    def do_LOGIN(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 2)
        user, password = wire.astring(args[0], "user"), wire.astring(args[1], "password")
        self._refuse_plaintext()
        return self._login(tag, user, password, "LOGIN")

    def do_AUTHENTICATE(self, tag: bytes, args: list, uid: bool) -> Any:
        wire.arity(args, 1, 2)
        mechanism = wire.atom(args[0], "mechanism").upper()
        if mechanism != b"PLAIN":
            raise No("Unsupported authentication mechanism")
        self._refuse_plaintext()
        if len(args) == 2:  # SASL-IR (RFC 4959)
            return self._plain(tag, wire.astring(args[1], "initial response"))
        self.sendLine(b"+ ")
        self.auth_pending = tag
        return None

    def auth_line(self, line: bytes) -> None:
        tag, self.auth_pending = self.auth_pending, None
        if line == b"*":
            return self.bad(tag, "Authentication cancelled")
        try:
            result = self._plain(tag, line)
        except (Bad, No) as e:
            result = defer.fail(e)
        self.answer(result, tag, b"AUTHENTICATE")

    def _plain(self, tag: bytes, response: bytes) -> Any:
        try:
            user, password = sasl.parse_plain(sasl.decode_response(response))
        except sasl.SASLError as e:
            raise Bad(str(e)) from e
        return self._login(tag, user, password, "PLAIN")

    def _login(self, tag: bytes, user: bytes, password: bytes, mechanism: str) -> defer.Deferred:
        address = user.decode("utf-8", "replace")
        try:
            d = defer.maybeDeferred(self.factory.users.authenticate, address,
                                    password.decode("utf-8"), client=self.client_host())
        except UnicodeDecodeError:
            d = defer.fail(LoginFailed("password is not UTF-8"))
        d.addCallback(self._authenticated, mechanism)
        d.addErrback(self._login_failed, tag, address, mechanism)
        return d

    def _authenticated(self, address: str, mechanism: str) -> defer.Deferred:
        d = self.run_blocking(self.factory.store.open_folders, address)

        def opened(folders: Any) -> bytes:
            shared = SharedNamespace(self.factory.shared, address)
            self.account, self.address = Account(address, folders, shared, self.settings), address
            self.state = "auth"
            self.login_deadline.cancel()
            self.setTimeout(self.settings.idle_timeout)
            logs.auth(True, "imap", self.client_host(), mechanism, address, self.is_tls())
            return b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in"

        return d.addCallback(opened)

    def _login_failed(self, failure: Failure, tag: bytes, address: str,
                      mechanism: str) -> Any:
        if failure.check(Bad, No):
            return failure
        if failure.check(AuthThrottled):  # too many failures: logged by access/authguard.py
            self._auth_failures += 1
            raise No("[UNAVAILABLE] Too many failed logins, try again later")
        if not failure.check(LoginFailed):  # UnauthorizedLogin is a LoginFailed
            _log.failure("imap login error for {user}", failure, user=address)
            raise No("[UNAVAILABLE] Authentication temporarily unavailable")
        self._auth_failures += 1
        logs.auth(False, "imap", self.client_host(), mechanism, address, self.is_tls())
        # The delay slows password guessing; later commands wait behind it.
        d: defer.Deferred = defer.Deferred()
        self._delayed = self.factory.reactor.callLater(self.settings.auth_failure_delay,
                                                       d.callback, None)

        def answer(_: object) -> None:
            if self._auth_failures >= self.settings.max_auth_failures:
                self.sendNegativeResponse(tag, b"[AUTHENTICATIONFAILED] Authentication failed")
                self.sendLine(b"* BYE Too many failed logins")
                flow.lose(self.transport)
                return None
            raise No("[AUTHENTICATIONFAILED] Authentication failed")

        return d.addCallback(answer)
