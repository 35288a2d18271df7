"""Bounces: a DSN (RFC 3464) for failed or delayed recipients, queued to the sender.

Implements IBouncer. The queue runner (queue/runner.py) calls it when a
recipient fails for good (5xx, a loop, or max_age reached) and, with
queue.delay_warning set, when one is still waiting. The report is built with
the email package as RFC 3462/6522 multipart/report; report-type=delivery-status:
  1. a text/plain explanation for people,
  2. message/delivery-status: per-message and per-recipient fields (RFC 3464 2.2, 2.3),
  3. the original message (message/rfc822) up to queue.bounce_size_limit,
     above that its headers only (text/rfc822-headers), as Postfix's
     bounce_size_limit; never more than that limit is read (issue 11), so a
     header section longer than the limit comes back cut at a line end.
It is spooled as a new entry with the null sender <> (RFC 5321 4.5.5, so it
can never bounce back) to the original sender, and goes through the same queue
as any message: a local sender gets it in the Maildir, a remote one by relay.
No DSN is ever made for a message whose sender is <>.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from email import message_from_bytes, policy
from email.generator import BytesGenerator
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formatdate, make_msgid

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from gateway.envelope import Envelope, Recipient, new_queue_id
from gateway.interfaces import IBouncer, ISpool

log = Logger()

_REPLY = re.compile(r"^(\d{3}) ([245])\.(\d{1,3})\.(\d{1,3})\b")


def status_of(rcpt: Recipient, action: str) -> str:
    """The RFC 3463 status for the DSN: from the last reply, 5.x.x when failed."""
    m = _REPLY.match(rcpt.last_error)
    if not m:
        return "5.0.0" if action == "failed" else "4.0.0"
    klass, subject, detail = m.group(2), m.group(3), m.group(4)
    if action == "failed" and klass == "4":
        # Gave up on a temporary trouble: "delivery time expired" (RFC 3463 X.4.7).
        return "5.4.7"
    if action == "delayed":
        klass = "4"
    return f"{klass}.{subject}.{detail}"


def _headers_of(message: bytes) -> bytes:
    """The header section; for a start of a message whose headers go on past it (the
    read stopped at the size limit), its complete lines."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = message.find(sep)
        if end >= 0:
            return message[:end + len(sep)]
    return message[:message.rfind(b"\n") + 1]


def read_original(message_path: str, size_limit: int) -> bytes:
    """What a DSN may attach, read without reading more (issue 11): the whole message
    when it is at most size_limit bytes, otherwise its first size_limit + 1 bytes,
    of which build_dsn returns the headers only (blocking)."""
    with open(message_path, "rb") as f:
        return f.read(size_limit + 1)


def build_dsn(envelope: Envelope, recipients: list[Recipient], original: bytes, *,
              action: str, hostname: str, now: float, size_limit: int,
              retry_until: float | None = None, dsn_id: str = "") -> bytes:
    """The whole DSN message as bytes (CRLF line ends)."""
    report = MIMEMultipart("report", report_type="delivery-status")
    failed = action == "failed"
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = f"<{envelope.sender}>"
    report["Subject"] = ("Undelivered Mail Returned to Sender" if failed
                         else "Delayed Mail (still being retried)")
    report["Date"] = formatdate(now, localtime=False, usegmt=True)
    report["Message-ID"] = (f"<{dsn_id}.dsn@{hostname}>" if dsn_id
                            else make_msgid("dsn", domain=hostname))
    # RFC 3834 5: automatic responders must not answer this.
    report["Auto-Submitted"] = "auto-replied"

    lines = [f"This is the mail system at host {hostname}.", ""]
    if failed:
        lines += ["Your message could not be delivered to one or more recipients.",
                  "It is attached below.", ""]
    else:
        lines += ["Your message has not been delivered yet to the recipients below.",
                  "The mail system will keep trying"
                  + (f" until {formatdate(retry_until, usegmt=True)}." if retry_until else "."),
                  "You do not need to send it again.", ""]
    for r in recipients:
        via = f" (host {r.remote_mta} said)" if r.remote_mta else ""
        expanded = f" (expanded from <{r.original}>)" if r.original else ""
        lines.append(f"<{r.address}>{expanded}{via}: {r.last_error or 'no reason recorded'}")
    report.attach(MIMEText("\n".join(lines) + "\n", "plain", "us-ascii"))

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Mailgateway-Queue-ID"] = envelope.queue_id
    per_message["Arrival-Date"] = formatdate(envelope.arrived, localtime=False, usegmt=True)
    blocks = [per_message]
    for r in recipients:
        block = Message()
        if r.original:
            block["Original-Recipient"] = f"rfc822; {r.original}"
        block["Final-Recipient"] = f"rfc822; {r.address}"
        block["Action"] = action
        block["Status"] = status_of(r, action)
        if r.remote_mta:
            block["Remote-MTA"] = f"dns; {r.remote_mta}"
        if r.last_error:
            block["Diagnostic-Code"] = f"smtp; {r.last_error}"
        block["Last-Attempt-Date"] = formatdate(now, localtime=False, usegmt=True)
        if not failed and retry_until:
            block["Will-Retry-Until"] = formatdate(retry_until, localtime=False, usegmt=True)
        blocks.append(block)
    status = MIMEBase("message", "delivery-status")
    status.set_payload(blocks)
    report.attach(status)

    if len(original) <= size_limit:
        report.attach(MIMEMessage(message_from_bytes(original, policy=policy.compat32)))
    else:
        headers = MIMEBase("text", "rfc822-headers")
        # surrogateescape keeps 8-bit header bytes byte-exact through the generator.
        headers.set_payload(_headers_of(original).decode("ascii", "surrogateescape"))
        report.attach(headers)

    out = io.BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=policy.SMTP).flatten(report)
    return out.getvalue()


@implementer(IBouncer)
class Bouncer:
    def __init__(self, *, spool: ISpool, hostname: str, clock, size_limit: int,
                 max_age: float, run_blocking: Callable[..., defer.Deferred]):
        self.spool = spool
        self.hostname = hostname
        self.clock = clock
        self.size_limit = size_limit
        self.max_age = max_age
        self.run_blocking = run_blocking

    def bounce(self, envelope: Envelope, recipients: list[Recipient], message_path: str,
               action: str) -> defer.Deferred:
        if not envelope.sender:
            log.warn("{queue_id}: no DSN for the null sender", queue_id=envelope.queue_id)
            return defer.succeed(None)
        now = self.clock.seconds()
        dsn_id = new_queue_id(now)
        d = self.run_blocking(self._build, envelope, recipients, message_path, action, now,
                              dsn_id)
        d.addCallback(self._store, envelope.sender, now, dsn_id)
        return d

    def _build(self, envelope: Envelope, recipients: list[Recipient], message_path: str,
               action: str, now: float, dsn_id: str) -> bytes:
        original = read_original(message_path, self.size_limit)
        return build_dsn(envelope, recipients, original, action=action, hostname=self.hostname,
                         now=now, size_limit=self.size_limit,
                         retry_until=envelope.arrived + self.max_age, dsn_id=dsn_id)

    def _store(self, message: bytes, sender: str, now: float, dsn_id: str) -> defer.Deferred:
        eight_bit = not message.isascii()
        dsn = Envelope(sender="", recipients=[Recipient(sender)],
                       queue_id=dsn_id, arrived=now, client_address="",
                       helo=self.hostname, protocol="local",
                       body="8BITMIME" if eight_bit else "7BIT", size=len(message))
        return self.spool.store(dsn, message)
