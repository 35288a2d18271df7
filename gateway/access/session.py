"""What the POP3 and IMAP servers share about a client: who it is, TLS, may it log in.

A mixin for access/pop3.py and access/imap/server.py. Login needs TLS (RFC
8314; STLS, STARTTLS or the TLS front), or a loopback client when
[auth] plaintext_from_loopback allows it.
"""

from __future__ import annotations

from typing import Any

from gateway import connection


class AccessSession:
    transport: Any
    factory: Any  # has implicit_tls and plaintext_from_loopback
    _tls_started: bool = False  # set by STLS / STARTTLS

    def client_host(self) -> str:
        return connection.client_host(self.transport)

    def is_tls(self) -> bool:
        return (self._tls_started or self.factory.implicit_tls
                or connection.transport_is_tls(self.transport))

    def login_allowed(self) -> bool:
        return self.is_tls() or (self.factory.plaintext_from_loopback
                                 and connection.is_loopback(self.client_host()))
