"""The kernel's errors: one MailError becomes one protocol reply.

Stages raise MailError; protocol classes (accept/smtp.py, access/pop3.py) only
translate it to the wire. ConfigError names the file, the key and the fault.
"""

from __future__ import annotations


class MailError(Exception):
    """A refusal with an SMTP reply code and an RFC 3463 enhanced status code."""

    def __init__(self, code: int, enhanced: str, text: str, temporary: bool | None = None):
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text
        self.temporary = (400 <= code < 500) if temporary is None else temporary

    def reply(self) -> str:
        return f"{self.enhanced} {self.text}"


class OverQuota(MailError):
    """A mailbox full (RFC 3463 4.2.2): 452 at RCPT, a deferral at delivery,
    NO [OVERQUOTA] in IMAP (RFC 9208 4.3)."""

    def __init__(self, mailbox: str):
        super().__init__(452, "4.2.2", f"<{mailbox}>: Mailbox full")
        self.mailbox = mailbox


class ConfigError(Exception):
    """Every fault found in a configuration, each as (file, key, reason)."""

    def __init__(self, problems: list[tuple[str, str, str]]):
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One "file: key: reason" line per fault ("file: reason" for the whole file)."""
        return [f"{f}: {k}: {r}" if k else f"{f}: {r}" for f, k, r in self.problems]


class AuthThrottled(Exception):
    """A login refused unchecked: too many recent failures from that client or for that
    account (access/authguard.py). Temporary: SMTP 454 4.7.0, POP3 [SYS/TEMP], IMAP
    [UNAVAILABLE]."""


class SpoolError(Exception):
    """The spool could not store or update an entry (disk full, I/O error)."""


class StartupError(Exception):
    """A fault that stops the gateway at start (a port in use, a state_dir it cannot
    write, a broken key), said in one line naming the setting or file: tap.py prints
    it without a traceback and twistd exits non-zero."""
