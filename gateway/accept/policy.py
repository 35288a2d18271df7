"""Who may send what through us: the relay rules, decided once, outside the protocol.

accept/smtp.py asks this at MAIL and RCPT. Never an open relay: mail for a
remote domain needs an authenticated client or one from trusted_networks;
loopback is not trusted unless configured (a local proxy would otherwise relay
for anyone). The submission port (RFC 6409) requires AUTH for every message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.envelope import parse_address
from gateway.errors import MailError
from gateway.interfaces import IRouter, Route


@dataclass
class Session:
    """What the policy needs to know about one SMTP connection."""

    client_address: str
    authenticated: str = ""
    tls: str = ""


class RelayPolicy:
    def __init__(self, router: IRouter, trusted_networks: Sequence, submission: bool = False):
        self.router = router
        self.trusted_networks = tuple(trusted_networks)
        self.submission = submission

    def trusted(self, session: Session) -> bool:
        try:
            ip = ipaddress.ip_address(session.client_address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_networks)

    def may_relay(self, session: Session) -> bool:
        return bool(session.authenticated) or self.trusted(session)

    def check_sender(self, session: Session, sender: str) -> None:
        """MAIL FROM: submission needs AUTH first (RFC 6409 4.3, RFC 4954 530)."""
        if self.submission and not session.authenticated:
            raise MailError(530, "5.7.0", "Authentication required")
        if sender:
            parse_address(sender)

    def check_recipient(self, session: Session, address: str) -> Route:
        """RCPT TO: local recipients must exist, remote ones need relay permission."""
        _, domain = parse_address(address)
        if not self.router.is_local_domain(domain) and not self.may_relay(session):
            raise MailError(554, "5.7.1", f"<{address}>: Relay access denied")
        return self.router.route(address)
