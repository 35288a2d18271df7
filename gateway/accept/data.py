"""Reading the DATA body (RFC 5321 4.1.1.4, 4.5.2): end marker, dot-unstuffing, limits.

Used by accept/smtp.py between the 354 and the final reply. Works on whole
CRLF-ended lines in bulk (bytes methods, not a Python loop per line), which
keeps a 10 MB message cheap. Only CRLF.CRLF ends the body: a bare-LF "\\n.\\n"
never does (SMTP smuggling), and an overlong line is skipped to its CRLF and
never read as commands. Faults are remembered and reported at the end, so
the client's body is always consumed whole.

The body is not kept: each run of lines goes to write (the spool file,
queue/incoming.py) as it comes. Only its first HEAD bytes stay, for what the
gateway reads at accept time (the Received count for loop detection, the
Message-ID for the log).
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.config import SmtpSettings
from gateway.errors import MailError

# Bytes of the start of a body kept in memory for header checks. Each hop puts
# its Received field on top (RFC 5321 4.4), so a loop's 50 are in the first 20 KB.
HEAD = 65536


class BodyReader:
    def __init__(self, settings: SmtpSettings, write: Callable[[bytes], None]):
        self.settings = settings
        self.write = write
        self.head = b""
        self.size = 0
        self.fault: MailError | None = None
        self._mid_line = False

    def consume(self, buf: bytes) -> tuple[bytes, bool]:
        """Take what buf holds of the body; returns (unread input, body finished)."""
        while True:
            if self._mid_line:  # finishing a line already refused as too long
                nl = buf.find(b"\r\n")
                if nl < 0:
                    return buf[-1:], False
                buf, self._mid_line = buf[nl + 2:], False
            if buf.startswith(b".\r\n"):
                return buf[3:], True
            end = buf.find(b"\r\n.\r\n")
            if end >= 0:
                self._take(buf[:end + 2])
                return buf[end + 5:], True
            last = buf.rfind(b"\r\n")
            if last >= 0:
                self._take(buf[:last + 2])
                buf = buf[last + 2:]
            if len(buf) <= self.settings.max_line_length:
                return buf, False
            self._refuse_long_line()
            self._mid_line = True

    def _take(self, lines: bytes) -> None:
        """Complete CRLF-ended lines: unstuff, check, keep."""
        if not lines or self.fault is not None:
            return
        if lines[:1] == b".":
            lines = lines[1:]
        lines = lines.replace(b"\r\n.", b"\r\n")
        crlf = lines.count(b"\r\n")
        if self.settings.bare_linefeeds == "reject" and (
                lines.count(b"\n") != crlf or lines.count(b"\r") != crlf):
            self._fail(MailError(554, "5.6.0", "Message contains bare CR or LF "
                                 "(RFC 5321 2.3.8); use CRLF line endings"))
            return
        limit = self.settings.max_line_length - 2
        if len(lines) > limit and max(map(len, lines.split(b"\r\n"))) > limit:
            self._refuse_long_line()
            return
        self.size += len(lines)
        if self.size > self.settings.max_message_size:
            self._fail(MailError(552, "5.3.4", "Message size exceeds fixed maximum message "
                                 f"size ({self.settings.max_message_size})"))
            return
        if len(self.head) < HEAD:
            self.head += lines[:HEAD - len(self.head)]
        self.write(lines)

    def _refuse_long_line(self) -> None:
        self._fail(MailError(500, "5.5.2", f"Line too long (limit "
                             f"{self.settings.max_line_length} octets with CRLF, "
                             "RFC 5321 4.5.3.1.6)"))

    def _fail(self, fault: MailError) -> None:
        if self.fault is None:
            self.fault = fault
