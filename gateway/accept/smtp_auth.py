"""SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, for accept/smtp.py's server.

A mixin of SMTPServer: the exchange of 334 challenges and base64 responses,
offered only once the connection is TLS (or from loopback when
[auth] plaintext_from_loopback allows it), checked through IUserDirectory.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.cred import error as cred_error
from twisted.logger import Logger

from gateway import connection, logs, sasl
from gateway.errors import AuthThrottled, MailError

log = Logger()


class SMTPAuth:
    factory: Any
    session: Any
    mode: str
    startedTLS: bool
    _helo_name: str
    _esmtp: bool
    _sender: str | None

    def _auth_allowed(self) -> bool:
        return self.startedTLS or (self.factory.plaintext_from_loopback
                                   and connection.is_loopback(self.session.client_address))

    def ext_AUTH(self, rest: bytes):
        if not self._helo_name or not self._esmtp:
            raise MailError(503, "5.5.1", "Send EHLO first")
        if self.session.authenticated:
            raise MailError(503, "5.5.1", "Already authenticated")
        if self._sender is not None:
            raise MailError(503, "5.5.1", "AUTH not permitted during a mail transaction")
        if not self._auth_allowed():
            raise MailError(538, "5.7.11", "Encryption required for requested authentication "
                            "mechanism (use STARTTLS)")
        mech, _, initial = rest.partition(b" ")
        mech = mech.upper()
        if mech not in (b"PLAIN", b"LOGIN"):
            raise MailError(504, "5.5.4", "Unrecognized authentication type")
        self._auth_mech = mech
        self._auth_parts = []
        self.mode = "AUTH"
        if initial:
            return self._auth_response(initial.strip())
        self.sendCode(334, b"" if mech == b"PLAIN" else base64.b64encode(b"Username:"))

    def _auth_response(self, line: bytes):
        if line == b"*":
            self.mode = "COMMAND"
            raise MailError(501, "5.7.0", "Authentication aborted")
        try:
            decoded = sasl.decode_response(line)
            self._auth_parts.append(decoded)
            if self._auth_mech == b"LOGIN" and len(self._auth_parts) == 1:
                self.sendCode(334, base64.b64encode(b"Password:"))
                return None
            self.mode = "COMMAND"
            if self._auth_mech == b"PLAIN":
                user, password = sasl.parse_plain(decoded)
            else:
                user, password = self._auth_parts
        except sasl.SASLError as e:
            self.mode = "COMMAND"
            raise MailError(501, "5.5.2", f"Cannot decode response: {e}") from None
        self._auth_user = user.decode("utf-8", "replace")
        d = self.factory.users.authenticate(self._auth_user, password.decode("utf-8", "replace"),
                                            client=self.session.client_address)
        d.addCallbacks(self._auth_ok, self._auth_failed)
        return d

    def _auth_ok(self, address: str) -> None:
        self.session.authenticated = address
        logs.auth(True, self.service(), self.session.client_address, self._auth_mech.decode(),
                  address, self.is_tls())
        self.reply(235, "2.7.0", "Authentication successful")

    def _auth_failed(self, failure) -> None:
        if failure.check(AuthThrottled):
            # RFC 4954 6: 454 4.7.0 Temporary authentication failure.
            return self.reply(454, "4.7.0", "Temporary authentication failure: too many "
                              "failed logins, try again later")
        failure.trap(cred_error.UnauthorizedLogin)
        logs.auth(False, self.service(), self.session.client_address, self._auth_mech.decode(),
                  self._auth_user, self.is_tls())
        self._bad(535, "5.7.8", "Authentication credentials invalid")
