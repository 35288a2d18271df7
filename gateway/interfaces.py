"""The contracts between stages. Kernel module: stages import this, never each other.

service.py is the one place that plugs concrete classes into these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from zope.interface import Attribute, Interface

from gateway.errors import MailError


@dataclass(frozen=True)
class MessageFile:
    """A message to write without holding it whole: head (trace headers made for this
    copy), then the contents of the file at path (a spool entry), copied in pieces
    by gateway/durable.py. A 34 MB message costs a delivery a 1 MiB buffer (issue 11)."""

    head: bytes
    path: str

    def __len__(self) -> int:
        """Its size in bytes, as for bytes (a quota check, store/quota.py): one stat."""
        return len(self.head) + os.stat(self.path).st_size


@dataclass(frozen=True)
class Route:
    """Where one recipient goes, decided by resolve/, acted on by the target of its kind.

    kind: "local" (a mailbox; folder for user+folder@), "remote" (a domain),
    "program" (command, from the aliases file only), "file" (an mbox path, same),
    "list" (a mailing list's address), or "error" (an alias target that cannot
    be delivered: error holds "550 5.1.1 text"). address is the recipient the
    route was found for (the alias, for program and file routes); original is
    the address given at RCPT TO (RFC 3461 ORCPT). sender, when not None,
    replaces the envelope sender for this route (owner-NAME, VERP).
    """

    kind: str
    address: str
    mailbox: str = ""
    domain: str = ""
    folder: str = ""
    command: str = ""
    path: str = ""
    # Alias options of a program route: "shell" (run by /bin/sh -c), "reply"
    # (standard output goes back to the sender).
    options: tuple[str, ...] = ()
    extension: str = ""
    original: str = ""
    sender: str | None = None
    error: str = ""

    def describe(self) -> str:
        """The route in a line, for the log and `mailgateway alias show`."""
        via = f" (owner sender <{self.sender}>)" if self.sender is not None else ""
        if self.kind == "program":
            options = f" [{', '.join(self.options)}]" if self.options else ""
            return f"program \"|{self.command}\"{options}{via}"
        if self.kind == "file":
            return f"file {self.path}{via}"
        if self.kind == "error":
            return f"error: {self.error}"
        folder = f" (folder {self.folder} if it exists)" if self.folder else ""
        return f"{self.kind} <{self.mailbox or self.address}>{folder}{via}"

    def to_json(self) -> dict:
        """The fields that differ from the defaults (stored in a queue entry's envelope)."""
        d = {"kind": self.kind, "address": self.address}
        for name in _ROUTE_OPTIONAL:
            value = getattr(self, name)
            if value not in ("", (), None):
                d[name] = list(value) if name == "options" else value
        return d

    @classmethod
    def from_json(cls, d: dict) -> Route:
        kw = {k: d[k] for k in _ROUTE_OPTIONAL if k in d}
        if "options" in kw:
            kw["options"] = tuple(kw["options"])
        return cls(kind=str(d["kind"]), address=str(d["address"]), **kw)


_ROUTE_OPTIONAL = ("mailbox", "domain", "folder", "command", "path", "options", "extension",
                   "original", "sender", "error")


class IUserDirectory(Interface):
    """The mailbox owners and their password hashes."""

    def exists(address: str) -> bool:
        """True when address (domain lower-cased) names a local mailbox."""

    def authenticate(address: str, password: str, client: str = "") -> Any:
        """Deferred firing with the canonical address, or failing with UnauthorizedLogin
        (or errors.AuthThrottled after too many failures from client, its IP address)."""


class IRouter(Interface):
    """Pure decisions: one recipient address -> one Route (resolve/)."""

    def is_local_domain(domain: str) -> bool:
        """True when mail for domain is ours to deliver."""

    def route(address: str) -> Route:
        """Whether address is deliverable here, for RCPT TO and VRFY: its first route
        (kind "alias" for an alias); raises MailError 550 5.1.1 for an unknown local user."""

    def expand(address: str) -> list[Route]:
        """Every final route of address: aliases expanded recursively (aliases(5)),
        subaddresses split. Raises MailError for an unknown user or an alias loop."""


class ISpool(Interface):
    """The durable queue on disk (queue/spool.py)."""

    def store(envelope: Any, message: bytes) -> Any:
        """Deferred firing with the queue ID once message and envelope are fsync'd."""

    def receive(queue_id: str, buffer_size: int) -> IIncomingMessage:
        """A message written to the spool as it arrives (SMTP DATA), at most
        buffer_size bytes of it waiting in memory at a time."""

    def load(queue_id: str) -> Any:
        """The Envelope of queue_id (blocking; callers run it off the reactor)."""

    def message_path(queue_id: str) -> str:
        """The path of queue_id's message file."""

    def update(envelope: Any) -> None:
        """Atomically replace the stored envelope (blocking)."""

    def update_steps(envelope: Any) -> Any:
        """update() as a call in steps, for a group-commit trip (gateway/durable.py)."""

    def record_steps(queue_id: str, generation: int, records: list[Any]) -> Any:
        """Append (index, Recipient.to_json) records beside the envelope, in steps."""

    def has(queue_id: str) -> bool:
        """True when queue_id is a complete entry (blocking)."""

    def remove(queue_id: str) -> None:
        """Remove a finished entry (blocking)."""

    def remove_durably(queue_id: str) -> None:
        """Remove a finished entry, the removal durable (blocking; in a trip, at its end)."""

    def queue_ids() -> list[str]:
        """Every complete entry, oldest first (blocking)."""


class IIncomingMessage(Interface):
    """One message being written to the spool as it arrives (queue/incoming.py)."""

    queue_id = Attribute("The queue ID the message will have.")
    size = Attribute("Bytes written so far.")
    full = Attribute("True while the buffer is full: stop reading until room() fires.")

    def write(data: bytes) -> None:
        """Append data (never blocks: it is written to disk in the background)."""

    def room() -> Any:
        """Deferred firing once the buffer is no longer full (at once if it is not)."""

    def reader(start: int = 0) -> Any:
        """Deferred function, to call in a pool thread, that gives the message's bytes
        from start on (after the last write, before commit: the sender checks)."""

    def commit(envelope: Any, head: bytes | None = None, skip: int = 0) -> Any:
        """Deferred firing with the queue ID once message and envelope are durable
        (SpoolError on failure, the file then removed). head: it replaces the
        message's first skip bytes (a header block changed by the sender checks)."""

    def abort() -> None:
        """Forget the message: its file is removed; later writes are ignored."""


class ISubmit(Interface):
    """Puts a new message made here (an auto-reply, a list post) into the queue."""

    def submit(sender: str, recipients: list[Any], message: bytes, queue_id: str = "") -> Any:
        """Deferred firing with the queue ID once the entry is durable and scheduled.

        recipients are addresses, Route objects (delivered exactly so) or
        envelope Recipients (an address with its own sender: VERP). A queue_id
        makes the call idempotent: an entry already there is not made again
        (a list's explosion repeated after a crash).
        """


class IQueueListener(Interface):
    """Told about each entry the moment it is safely spooled (queue/runner.py)."""

    def enqueued(queue_id: str, envelope: Any = None) -> None:
        """A new entry is on disk and may be delivered now.

        envelope, when given, is the Envelope just stored, handed over so the
        first attempt needs no read-back; the caller must not use it afterwards.
        """


class IDeliveryTarget(Interface):
    """Acts on routes of one kind (deliver/). Decisions are made before, in resolve/.

    A target may have an int attribute `parallel`: how many routes of one
    message the runner hands it at once. Without it, one after another.
    """

    kind = Attribute("The Route.kind this target delivers.")

    def deliver(envelope: Any, route: Route, message_path: str, recovering: bool) -> Any:
        """Deferred firing when the route is done; fails with MailError (temporary or not).

        It may fire with a str: what the delivery's log line says of the success
        (Postfix's "delivered to command: ..."), in place of "delivered".

        recovering is True when an earlier run may already have delivered this
        route (an entry found on disk at start); the target must then avoid a
        duplicate where it can.
        """


# --- outbound relay: batches, next hops, bounces (queue/runner.py <-> deliver/relay.py) ---


@dataclass(frozen=True)
class RecipientResult:
    """One route's outcome in a batch: error None means delivered (2xx)."""

    error: MailError | None = None
    # Who gave the answer, for the DSN's Remote-MTA (RFC 3464 2.3.5): a host name.
    remote_mta: str = ""
    # A success's words for the log line, when the target has more to say than "delivered".
    detail: str = ""


class IBatchDeliveryTarget(IDeliveryTarget):
    """A target that delivers several routes at once (all recipients of a domain
    in one SMTP transaction; an alias's local copies in one group commit). The
    runner groups a message's routes by batch_key, splits groups to max_batch,
    and records each recipient's result durably as soon as its batch completes
    (but for kinds whose target recognises a repeat after a crash: "local").
    """

    max_batch = Attribute("Most routes one deliver_batch call takes.")

    def batch_key(route: Route) -> str:
        """Routes with the same key may share one deliver_batch call."""

    def deliver_batch(envelope: Any, routes: list[Route], message_path: str,
                      recovering: bool) -> Any:
        """Deferred firing with one RecipientResult per route, in order.

        Never fails: a trouble that concerns every route (DNS, connection)
        becomes the same RecipientResult for each.
        """


@dataclass(frozen=True)
class NextHop:
    """Where mail for a domain goes (resolve/transport.py decides, deliver/relay.py acts).

    mx True: look up host's MX records (RFC 5321 5.1); False: connect to host's
    own addresses (a smarthost or a bracketed transport route).
    """

    host: str
    port: int
    mx: bool
    tls: str
    auth: bool = False


class ITransportMap(Interface):
    """Pure decision: a recipient domain -> its NextHop."""

    def next_hop(domain: str) -> NextHop:
        """The next hop for mail to domain."""


class IBouncer(Interface):
    """Turns failed or delayed recipients into a DSN queued to the sender (queue/bounce.py)."""

    def bounce(envelope: Any, recipients: list[Any], message_path: str, action: str) -> Any:
        """Deferred firing with the queue ID of the spooled DSN, or None when none is due
        (null sender). action is "failed" or "delayed" (RFC 3464 2.3.3)."""


class IMailStore(Interface):
    """The one owner of mailbox files (store/)."""

    def deliver(mailbox: str, message: bytes | MessageFile, unique: str, recovering: bool,
                folder: str = "") -> bool:
        """Write a message to mailbox's INBOX (or its existing folder) durably (blocking).

        unique names this delivery; returns False if a message with that name
        is already there (a repeat after a crash), True when written.
        """

    def deliver_steps(mailbox: str, message: bytes | MessageFile, unique: str,
                      recovering: bool, folder: str = "", make_folder: bool = False) -> Any:
        """deliver() as a call in steps, for a group-commit trip (gateway/durable.py).
        make_folder: create folder when missing (a name the gateway chose, never one
        from the network)."""

    def open_maildrop(mailbox: str) -> Any:
        """The mailbox's INBOX as a Maildrop for POP3."""

    def open_folders(mailbox: str) -> Any:
        """The mailbox's Maildir++ folders for IMAP (blocking): a store/folders.py FolderSet.

        Its Folders keep UIDs, UIDVALIDITY and keywords in an index beside each
        Maildir, flags in the file names. Sessions attach to a Folder to be told
        of changes; a change made in another thread (a delivery) reaches them
        through the store's `announce` hook (reactor.callFromThread in the
        gateway), so IDLE sees SMTP deliveries at once.
        """

    def open_folder(mailbox: str) -> Any:
        """The mailbox's own Maildir as one store/folder.py Folder, for readers of a
        shared folder (a list's archive) (blocking): made empty when missing, no
        sub-folders or defaults. UIDs come from the same index as open_folders'."""


class IQuotaCheck(Interface):
    """Is a local mailbox full (RFC 9208)? Asked by accept/ at RCPT; store/ answers."""

    def over_quota(mailbox: str) -> bool:
        """True when mailbox is known to be at or over its quota. Cheap enough for the
        reactor thread: never lists the mailbox (unknown counts as not over; the
        delivery then decides)."""


@dataclass(frozen=True)
class SharedFolder:
    """A folder one user may read but does not own: a mailing list's archive.

    name is its place under the shared namespace ("dev" shows as "Lists.dev");
    the messages are the INBOX of mailbox in store (an IMailStore).
    """

    name: str
    mailbox: str
    store: Any


class ISharedFolders(Interface):
    """Which shared folders a user may read (lists/ answers, access/imap asks)."""

    def readable(user: str) -> list[SharedFolder]:
        """The shared folders user may read now, by name (blocking: a pool thread)."""
