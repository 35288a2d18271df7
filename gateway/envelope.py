"""The envelope: who a message is from, whom it is for, and each recipient's state.

Kernel module. The spool (queue/spool.py) stores it as JSON beside the message;
the runner updates each recipient's state after every attempt, so a restart
never repeats a delivery already recorded as done.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, fields
from enum import StrEnum

from gateway.errors import MailError

# RFC 5321 4.5.3.1: local part at most 64 octets, domain 255, path 256.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_ADDRESS_RE = re.compile(rf"^(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN})$")
_QUEUE_ID_RE = re.compile(r"^[0-9A-Z]{12,32}$")


class RecipientState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


def parse_address(text: str) -> tuple[str, str]:
    """Split an RFC 5321 Mailbox into (local part, lower-cased domain), or raise 501/553."""
    if len(text) > MAX_LOCAL_PART + 1 + MAX_DOMAIN:
        raise MailError(501, "5.1.3", "Address too long")
    m = _ADDRESS_RE.match(text)
    if not m:
        raise MailError(553, "5.1.3", f"Bad address syntax: {text!r}")
    local, domain = m.group("local"), m.group("domain")
    if len(local) > MAX_LOCAL_PART:
        raise MailError(553, "5.1.3", "Local part too long")
    return local, domain.lower()


def normalize_address(text: str) -> str:
    """An address with its domain lower-cased, for comparisons and lookups."""
    local, domain = parse_address(text)
    return f"{local}@{domain}"


def new_queue_id(now: float | None = None) -> str:
    """A queue ID that sorts by arrival: 10 base-32 digits of microseconds + 6 random."""
    micros = int((time.time() if now is None else now) * 1_000_000)
    digits = "0123456789ABCDEFGHJKLMNPQRSTVWXZ"
    head = ""
    for _ in range(11):
        micros, r = divmod(micros, 32)
        head = digits[r] + head
    tail = "".join(digits[b % 32] for b in os.urandom(5))
    return head + tail


def count_received(message: bytes) -> int:
    """Received headers in the header section of message (RFC 5321 6.3: loop detection)."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    header = message if end < 0 else message[:end]
    return sum(1 for line in header.split(b"\n") if line[:9].lower() == b"received:")


def valid_queue_id(text: str) -> bool:
    """True when text may name a spool file (it comes from users and the network)."""
    return bool(_QUEUE_ID_RE.match(text))


@dataclass
class Recipient:
    address: str
    state: RecipientState = RecipientState.PENDING
    attempts: int = 0
    last_error: str = ""
    next_attempt: float = 0.0
    # The remote MTA that gave last_error (RFC 3464 Remote-MTA), if any.
    remote_mta: str = ""
    # The DSN already sent for this recipient: "" none, "delayed", "failed"
    # (recorded durably so a restart neither repeats nor loses a bounce).
    dsn: str = ""
    # An alias expansion's result (queue/runner.py): the route as Route.to_json,
    # the address given at RCPT TO, and the envelope sender for this recipient
    # when it is not the message's (owner-NAME, VERP); None: the message's.
    route: dict | None = None
    original: str = ""
    sender: str | None = None

    def to_json(self) -> dict:
        d = {name: getattr(self, name) for name in _RECIPIENT_FIELDS}
        d["state"] = self.state.value
        return d

    @classmethod
    def from_json(cls, d: dict) -> Recipient:
        return cls(
            address=str(d["address"]),
            state=RecipientState(d.get("state", "pending")),
            attempts=int(d.get("attempts", 0)),
            last_error=str(d.get("last_error", "")),
            next_attempt=float(d.get("next_attempt", 0.0)),
            remote_mta=str(d.get("remote_mta", "")),
            dsn=str(d.get("dsn", "")),
            route=d.get("route"),
            original=str(d.get("original", "")),
            sender=d.get("sender"),
        )


@dataclass
class Envelope:
    """One accepted message's transport facts. sender is "" for the null path <>."""

    sender: str
    recipients: list[Recipient]
    queue_id: str = ""
    arrived: float = field(default_factory=time.time)
    client_address: str = ""
    client_name: str = ""
    helo: str = ""
    authenticated: str = ""
    tls: str = ""
    protocol: str = "ESMTP"
    body: str = "7BIT"
    size: int = 0
    # `mailgateway queue hold`: not attempted, not expired, until released.
    held: bool = False
    # Received headers in the message, counted by whoever spooled it; -1: not counted.
    hops: int = -1
    # Bumped at each rewrite of the stored envelope; the outcome records appended
    # beside it (queue/spool.py, record_steps) count only for their own generation.
    generation: int = 0
    # A folder every local copy goes to, made when missing (DMARC quarantine: the
    # recipient's Junk, gateway/verify/checker.py); "": INBOX or the route's own.
    folder: str = ""

    def pending(self) -> list[Recipient]:
        return [r for r in self.recipients if r.state is RecipientState.PENDING]

    def finished(self) -> bool:
        return not self.pending()

    def to_json(self) -> dict:
        # Not dataclasses.asdict: its deep copy was a tenth of the CPU per message.
        d = {name: getattr(self, name) for name in _ENVELOPE_FIELDS}
        d["recipients"] = [r.to_json() for r in self.recipients]
        d["version"] = 1
        return d

    @classmethod
    def from_json(cls, d: dict) -> Envelope:
        if d.get("version") != 1:
            raise ValueError(f"unknown envelope version {d.get('version')!r}")
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "recipients"}
        recipients = [Recipient.from_json(r) for r in d["recipients"]]
        if not recipients:
            raise ValueError("envelope without recipients")
        return cls(recipients=recipients, **fields)


_RECIPIENT_FIELDS = tuple(f.name for f in fields(Recipient))
_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope))
