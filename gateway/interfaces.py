"""The contracts between stages. Kernel module: stages import this, never each other.

service.py is the one place that plugs concrete classes into these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zope.interface import Attribute, Interface


@dataclass(frozen=True)
class Route:
    """Where one recipient goes. kind: "local" (a mailbox) or "remote" (a domain)."""

    kind: str
    address: str
    mailbox: str = ""
    domain: str = ""


class IUserDirectory(Interface):
    """The mailbox owners and their password hashes."""

    def exists(address: str) -> bool:
        """True when address (domain lower-cased) names a local mailbox."""

    def authenticate(address: str, password: str) -> Any:
        """Deferred firing with the canonical address, or failing with UnauthorizedLogin."""


class IRouter(Interface):
    """Pure decisions: one recipient address -> one Route (resolve/)."""

    def is_local_domain(domain: str) -> bool:
        """True when mail for domain is ours to deliver."""

    def route(address: str) -> Route:
        """The recipient's route; raises MailError 550 5.1.1 for an unknown local user."""


class ISpool(Interface):
    """The durable queue on disk (queue/spool.py)."""

    def store(envelope: Any, message: bytes) -> Any:
        """Deferred firing with the queue ID once message and envelope are fsync'd."""

    def load(queue_id: str) -> Any:
        """The Envelope of queue_id (blocking; callers run it off the reactor)."""

    def message_path(queue_id: str) -> str:
        """The path of queue_id's message file."""

    def update(envelope: Any) -> None:
        """Atomically replace the stored envelope (blocking)."""

    def remove(queue_id: str) -> None:
        """Remove a finished entry (blocking)."""

    def queue_ids() -> list[str]:
        """Every complete entry, oldest first (blocking)."""


class IQueueListener(Interface):
    """Told about each entry the moment it is safely spooled (queue/runner.py)."""

    def enqueued(queue_id: str) -> None:
        """A new entry is on disk and may be delivered now."""


class IDeliveryTarget(Interface):
    """Acts on routes of one kind (deliver/). Decisions are made before, in resolve/."""

    kind = Attribute("The Route.kind this target delivers.")

    def deliver(envelope: Any, route: Route, message_path: str, recovering: bool) -> Any:
        """Deferred firing when the route is done; fails with MailError (temporary or not).

        recovering is True when an earlier run may already have delivered this
        route (an entry found on disk at start); the target must then avoid a
        duplicate where it can.
        """


class IMailStore(Interface):
    """The one owner of mailbox files (store/)."""

    def deliver(mailbox: str, message: bytes, unique: str) -> bool:
        """Write a message to mailbox's INBOX durably (blocking).

        unique names this delivery; returns False if a message with that name
        is already there (a repeat after a crash), True when written.
        """

    def open_maildrop(mailbox: str) -> Any:
        """The mailbox's INBOX as a Maildrop for POP3."""
