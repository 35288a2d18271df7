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
from gateway.errors import MailError, OverQuota
from gateway.interfaces import IQuotaCheck, IRouter, Route


@dataclass
class Session:
    """What the policy needs to know about one SMTP connection."""

    client_address: str
    authenticated: str = ""
    tls: str = ""


class RelayPolicy:
    def __init__(self, router: IRouter, trusted_networks: Sequence, submission: bool = False,
                 sender_login: bool = True, quota: IQuotaCheck | None = None):
        self.router = router
        # A local mailbox known to be full gets 452 4.2.2 at RCPT (RFC 9208 5.1,
        # RFC 3463): the sending MTA keeps the message, nothing bounces from here.
        self.quota = quota
        self.trusted_networks = tuple(trusted_networks)
        self.submission = submission
        # Postfix's reject_sender_login_mismatch: a logged-in user sends only as
        # an address of theirs ([smtp] sender_login_match).
        self.sender_login = sender_login

    def trusted(self, session: Session) -> bool:
        try:
            ip = ipaddress.ip_address(session.client_address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted_networks)

    def checks_sender(self, session: Session) -> bool:
        """SPF, DKIM and DMARC (gateway/verify/) apply: mail from outside on port 25, not
        submission, an authenticated client or trusted_networks."""
        return not self.submission and not session.authenticated and not self.trusted(session)

    def may_relay(self, session: Session) -> bool:
        return bool(session.authenticated) or self.trusted(session)

    def check_sender(self, session: Session, sender: str) -> None:
        """MAIL FROM: submission needs AUTH first (RFC 6409 4.3, RFC 4954 530)."""
        if self.submission and not session.authenticated:
            raise MailError(530, "5.7.0", "Authentication required")
        if sender:
            parse_address(sender)
            if (session.authenticated and self.sender_login
                    and not self.owns(session.authenticated, sender)):
                raise MailError(553, "5.7.1", f"<{sender}>: Sender address rejected: not "
                                f"owned by user {session.authenticated}")

    def owns(self, user: str, sender: str) -> bool:
        """True when sender is the user's address, a subaddress of it (RFC 5233), or
        an alias whose expansion reaches the user's mailbox."""
        user = user.lower()
        local, domain = parse_address(sender)
        if f"{local.lower()}@{domain}" == user:
            return True
        if not self.router.is_local_domain(domain):
            return False
        try:
            routes = self.router.expand(sender)
        except MailError:
            return False
        return any(r.kind == "local" and r.mailbox == user for r in routes)

    def check_recipient(self, session: Session, address: str) -> Route:
        """RCPT TO: local recipients must exist, remote ones need relay permission."""
        _, domain = parse_address(address)
        if not self.router.is_local_domain(domain) and not self.may_relay(session):
            raise MailError(554, "5.7.1", f"<{address}>: Relay access denied")
        route = self.router.route(address)
        if route.kind == "local" and self.quota is not None and \
                self.quota.over_quota(route.mailbox):
            raise OverQuota(address)
        return route
