"""Automatic replies (RFC 3834): when one may be sent, and the reply itself.

Used by deliver/program.py for "reply" aliases (a mail-driven service's
output goes back to the sender). The rules of RFC 3834 2 and 3: never to the
null sender nor to mail that is itself automatic (Auto-Submitted other than
"no", Precedence bulk/junk/list, a list's List-Id), never to MAILER-DAEMON or
owner-/-request addresses; the reply says Auto-Submitted: auto-replied and
goes out with the null envelope sender so it can never bounce back.
"""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

_AUTOMATIC_SENDERS = ("mailer-daemon", "postmaster", "listserv", "majordomo")


def _headers(head: bytes) -> EmailMessage:
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    return message_from_bytes(head if end < 0 else head[:end + 2], policy=policy.default)


def may_auto_reply(sender: str, head: bytes) -> bool:
    """True when an automatic reply to sender is allowed by RFC 3834 2."""
    if not sender:
        return False
    local = sender.rpartition("@")[0].lower()
    if (local in _AUTOMATIC_SENDERS or local.startswith("owner-")
            or local.endswith(("-request", "-owner", "-bounces")) or "-bounces+" in local):
        return False
    try:
        msg = _headers(head)
        auto = str(msg.get("Auto-Submitted", "no")).strip().lower()
        precedence = str(msg.get("Precedence", "")).strip().lower()
        listed = msg.get("List-Id") is not None
    except Exception:
        return False  # headers too broken to tell: do not answer
    return auto.split(";")[0].strip() == "no" and precedence not in (
        "bulk", "junk", "list") and not listed


def auto_reply(head: bytes, *, replier: str, to: str, body: bytes, hostname: str,
               now: float) -> bytes:
    """The reply to the message whose header section is head (CRLF line ends)."""
    try:
        original = _headers(head)
        subject = str(original.get("Subject", "")).strip()
        message_id = str(original.get("Message-ID", "")).strip()
        references = str(original.get("References", "")).strip()
    except Exception:
        subject = message_id = references = ""
    reply = EmailMessage(policy=policy.SMTP)
    reply["From"] = replier
    reply["To"] = to
    reply["Subject"] = subject if subject.lower().startswith("re:") else f"Re: {subject}".strip()
    reply["Date"] = formatdate(now, usegmt=True)
    reply["Message-ID"] = make_msgid("reply", domain=hostname)
    if message_id:
        reply["In-Reply-To"] = message_id
        reply["References"] = f"{references} {message_id}".strip()
    reply["Auto-Submitted"] = "auto-replied"
    reply.set_content(body.decode("utf-8", "replace"), charset="utf-8")
    return reply.as_bytes()
