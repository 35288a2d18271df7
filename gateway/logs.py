"""Log lines an administrator (and fail2ban) can grep, in the spirit of Postfix's maillog.

Where it sits: beside the kernel; the protocol classes (accept/smtp.py,
access/pop3.py, access/imap/login.py) and the queue runner call these
helpers so that one kind of event always reads the same way, whichever
service saw it:

  connect from unknown[192.0.2.1] service=smtp
  disconnect from unknown[192.0.2.1] service=smtp queued=1 errors=0 seconds=0.2
  reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 Relay access denied; from=<a@b> to=<c@d> helo=<x>
  auth failed: client=unknown[192.0.2.1] service=imap mechanism=LOGIN user=<bob@x> tls=yes
  auth ok: client=unknown[192.0.2.1] service=smtp mechanism=PLAIN user=<alice@x> tls=yes
  QID: from=<a@b>, size=312, nrcpt=1, message-id=<1@b>, client=unknown[192.0.2.1] queued
  QID: to=<c@d>, relay=mx.d[192.0.2.9], delay=1.2, delays=1.0/0.2, dsn=2.0.0, status=sent (250 ok)

"unknown" is Postfix's word for a client whose name was not looked up (the
gateway does no reverse DNS); the address is always the real client's, also
behind the TLS front. Every event also carries its fields by name (event,
client, user, ...), which `json_lines` writes as one JSON object per line for
log shippers: `twistd --logger gateway.logs.json_lines`.
"""

from __future__ import annotations

import json
import re
import sys
from typing import IO, Any

from twisted.logger import ILogObserver, Logger

from gateway import logwriter
from gateway.logformat import event_text, stamp
from gateway.metrics import REGISTRY

log = Logger(namespace="mailgateway")

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<[^>\r\n]{1,500}>)", re.IGNORECASE | re.MULTILINE)


def client_name(address: str) -> str:
    return f"unknown[{address}]"


def connect(service: str, client: str) -> None:
    REGISTRY.inc("mailgateway_connections_total", service=service)
    log.info("connect from {client_name} service={service}", event="connect",
             client=client, client_name=client_name(client), service=service)


def disconnect(service: str, client: str, **counts: Any) -> None:
    """counts: the session's figures (queued=1, errors=0, seconds=0.2), in that order."""
    text = " ".join(f"{k}={{{k}}}" for k in counts)
    log.info("disconnect from {client_name} service={service} " + text, event="disconnect",
             client=client, client_name=client_name(client), service=service, **counts)


def reject(command: str, client: str, code: int, enhanced: str, text: str, *,
           sender: str | None = None, recipient: str | None = None, helo: str = "",
           service: str = "smtp") -> None:
    """A refused command, with the envelope known so far (Postfix's "reject:" line)."""
    REGISTRY.inc("mailgateway_rejects_total", command=command, code=str(code))
    REGISTRY.error(f"reject {command} from {client}: {code} {enhanced} {text}")
    parts = []
    if sender is not None:
        parts.append("from=<{sender}>")
    if recipient is not None:
        parts.append("to=<{recipient}>")
    parts.append("helo=<{helo}>")
    log.info("reject: {command} from {client_name}: {code} {enhanced} {text}; "
             + " ".join(parts), event="reject", command=command, client=client,
             client_name=client_name(client), code=code, enhanced=enhanced, text=text,
             sender=sender, recipient=recipient, helo=helo, service=service)


def auth(ok: bool, service: str, client: str, mechanism: str, user: str,
         tls: bool = False) -> None:
    """A login (SMTP AUTH, POP3 USER/PASS or AUTH, IMAP LOGIN or AUTHENTICATE).

    The failure line is what etc/fail2ban/filter.d/mailgateway.conf matches.
    """
    REGISTRY.inc("mailgateway_auth_total", service=service, outcome="ok" if ok else "failed")
    if not ok:
        REGISTRY.error(f"auth failed: {service} {mechanism} <{_printable(user)}> from {client}")
    log.info("auth {outcome}: client={client_name} service={service} mechanism={mechanism} "
             "user=<{user}> tls={tls}", event="auth", outcome="ok" if ok else "failed",
             client=client, client_name=client_name(client), service=service,
             mechanism=mechanism, user=_printable(user), tls="yes" if tls else "no")


def message_id(message: bytes) -> str:
    """The Message-ID of a message's header section, or "" (looks at its first 64 KiB)."""
    head = message[:65536]
    end = head.find(b"\r\n\r\n")
    match = _MESSAGE_ID.search(head if end < 0 else head[:end])
    return match.group(1).decode("ascii", "replace") if match else ""


def queued(queue_id: str, sender: str, size: int, nrcpt: int, msgid: str, client: str) -> None:
    REGISTRY.inc("mailgateway_messages_accepted_total")
    log.info("{queue_id}: from=<{sender}>, size={size}, nrcpt={nrcpt}, message-id={msgid}, "
             "client={client_name} queued", event="queued", queue_id=queue_id, sender=sender,
             size=size, nrcpt=nrcpt, msgid=msgid or "<>", client=client,
             client_name=client_name(client))


def delivery(queue_id: str, recipient: str, relay: str, arrived: float, started: float,
             finished: float, dsn: str, status: str, reply: str) -> None:
    """One recipient's attempt: status sent, deferred, bounced or expired (Postfix's
    "status=" line). delays= is waiting in the queue / this attempt, in seconds."""
    REGISTRY.inc("mailgateway_deliveries_total", status=status)
    if status != "deferred":
        REGISTRY.observe("mailgateway_delivery_delay_seconds", max(0.0, finished - arrived))
    if status in ("bounced", "expired"):
        REGISTRY.error(f"{queue_id}: to=<{recipient}> {status}: {reply}")
    level = log.info if status in ("sent", "deferred") else log.warn
    relay = relay or "none"
    delay, waited = max(0.0, finished - arrived), max(0.0, started - arrived)
    attempt = max(0.0, finished - started)
    # The line made here (an f-string), not by the log format's parser in each
    # observer: one per recipient, it was a tenth of the runner's CPU per message.
    level(LINE, log_line=f"{queue_id}: to=<{recipient}>, relay={relay}, delay={delay:.1f}, "
          f"delays={waited:.1f}/{attempt:.1f}, dsn={dsn}, status={status} ({reply})",
          event="delivery", queue_id=queue_id, recipient=recipient, relay=relay,
          delay=delay, waited=waited, attempt=attempt, dsn=dsn, status=status, reply=reply)


# The format of an event whose text was made by the caller (its log_line field): the
# observers' formatting is then a lookup (gateway/runnerproc/channel.py skips even that).
LINE = "{log_line}"


def _printable(text: str) -> str:
    # A user name comes from the client: no line breaks or control bytes in our log.
    return "".join(c if c.isprintable() else "?" for c in text)[:256]


# --- JSON lines for log shippers ------------------------------------------------------


def json_lines(out: IO[str] | None = None) -> ILogObserver:
    """A twistd log observer (`twistd --logger gateway.logs.json_lines`): one JSON object
    per event on stdout: time, level, namespace, text, and the event's own fields.
    Written by a thread of its own (gateway/logwriter.py), like the text log."""
    return logwriter.LineWriter(out if out is not None else sys.stdout).observer(json_line)


def json_line(event: dict) -> str:
    """One event as a JSON object on one line (newline included)."""
    record: dict[str, Any] = {
        "time": stamp(event.get("log_time")),  # RFC 3339, to the second, local offset
        "level": getattr(event.get("log_level"), "name", ""),
        "namespace": event.get("log_namespace", ""),
        "text": event_text(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in record and \
                isinstance(value, str | int | float | bool | type(None)):
            record[key] = value
    if event.get("log_failure") is not None:
        record["traceback"] = event["log_failure"].getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"
