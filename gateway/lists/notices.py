"""Mail the list sends by itself: replies to commands, confirmation requests,
moderation notices, bounce reports. Each is an Outgoing the gateway queues.

Used by requests.py and bounces.py. Every such message is an automatic
response (RFC 3834): Auto-Submitted: auto-replied, so no well-behaved
responder answers it; its envelope sender is dev-bounces@, so a bounce of it
comes back to bounce processing instead of to a person or to -request.
The caller never makes one for the null sender or for auto-submitted mail.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.generator import BytesGenerator
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, make_msgid

from gateway.lists.addresses import bounces_address, role_address
from gateway.lists.store import MailingList


@dataclass(frozen=True)
class Outgoing:
    """One message to queue: envelope sender, envelope recipients, the bytes."""

    sender: str
    recipients: tuple[str, ...]
    message: bytes


def notice(mlist: MailingList, recipients: tuple[str, ...], subject: str, text: str, *,
           now: float, from_role: str = "request", attach: bytes | None = None,
           in_reply_to: str = "") -> Outgoing:
    """A plain-text notice from dev-<from_role>@, optionally with a message attached
    (message/rfc822, as bounce DSNs carry theirs)."""
    body = MIMEText(text, "plain", "utf-8")
    if attach is None:
        msg = body
    else:
        msg = MIMEMultipart("mixed")
        msg.attach(body)
        msg.attach(MIMEMessage(message_from_bytes(attach, policy=policy.compat32)))
    msg["From"] = formataddr((f"{mlist.name} list", role_address(mlist.address, from_role)))
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Message-ID"] = make_msgid("list", domain=mlist.domain)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg["Auto-Submitted"] = "auto-replied"
    # An auto-responder that ignores Auto-Submitted but copies headers is still
    # caught: requests.py and posting.decide refuse mail with the list's X-Loop.
    msg["X-Loop"] = mlist.address
    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=policy.SMTP).flatten(msg)
    return Outgoing(bounces_address(mlist.address), tuple(recipients), out.getvalue())


def moderators_of(mlist: MailingList) -> tuple[str, ...]:
    """Who hears about held posts: the moderators, else the owners."""
    return mlist.moderators or mlist.owners
