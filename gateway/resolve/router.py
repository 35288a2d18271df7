"""The router: recipient address -> Route. Implements IRouter.

Sits between accept (which asks it at RCPT time, so unknown users are refused
with 550 5.1.1 before DATA, RFC 5321 3.3) and the queue runner (which asks it
again at delivery time, since users and aliases may change meanwhile).
Later parts add aliases, lists and programs here; delivering stays in deliver/.
"""

from __future__ import annotations

from collections.abc import Iterable

from zope.interface import implementer

from gateway.envelope import parse_address
from gateway.errors import MailError
from gateway.interfaces import IRouter, IUserDirectory, Route

# RFC 5321 4.5.1: postmaster must be accepted for every local domain.
POSTMASTER = "postmaster"


@implementer(IRouter)
class Router:
    def __init__(self, domains: Iterable[str], users: IUserDirectory):
        self.domains = frozenset(d.lower() for d in domains)
        self.users = users

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower().rstrip(".") in self.domains

    def route(self, address: str) -> Route:
        local, domain = parse_address(address)
        if not self.is_local_domain(domain):
            return Route(kind="remote", address=f"{local}@{domain}", domain=domain)
        mailbox = f"{local.lower()}@{domain}"
        if self.users.exists(mailbox):
            return Route(kind="local", address=mailbox, mailbox=mailbox)
        if local.lower() == POSTMASTER:
            # Without an explicit postmaster mailbox, the first user of the
            # domain would be a guess; refuse clearly instead.
            raise MailError(550, "5.1.1", f"<{mailbox}>: postmaster has no mailbox here yet")
        raise MailError(550, "5.1.1", f"<{mailbox}>: Recipient address rejected: "
                        "User unknown in local recipient table")
