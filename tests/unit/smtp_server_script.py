"""A scripted SMTP server on a StringTransport, for the outbound client's unit tests (no sockets).

It answers each line the client writes, as a remote MTA would, and records
what arrived: every write (to see PIPELINING), every command, every message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import error
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure


@dataclass
class Script:
    """What the server says. Replies are full lines without CRLF."""

    greeting: str = "220 mx.remote.test ESMTP"
    extensions: tuple[str, ...] = ("PIPELINING", "SIZE 10000000", "8BITMIME")
    mail: str = "250 2.1.0 Ok"
    rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply (default 250)
    data: str = "354 End data with <CR><LF>.<CR><LF>"
    # Replies to the final dot, one per message (the last one repeats).
    final: list[str] = field(default_factory=lambda: ["250 2.0.0 Ok: queued as X"])
    # "data": drop the connection when message text arrives; "mail": at MAIL FROM.
    drop_at: str = ""
    # True: swallow the final dot and never answer (to test timeouts).
    silent_after_data: bool = False
    # Offer STARTTLS (the "handshake" is recorded, the bytes stay clear) and answer AUTH.
    starttls: bool = False
    auth: str = "235 2.7.0 Authentication successful"


class ScriptedServer(StringTransport):
    def __init__(self, script: Script | None = None):
        super().__init__()
        self.script = script or Script()
        self.writes: list[bytes] = []
        self.commands: list[str] = []
        self.messages: list[tuple[str, list[str], bytes]] = []
        self._pending = b""
        self._in_data = False
        self._body = b""
        self._sender = ""
        self._rcpts: list[str] = []
        self._finals = 0
        self.protocol = None
        self.closed = False
        self.tls_options: list = []

    def connect(self, protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self)
        self._reply(self.script.greeting)

    # --- the transport side --------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        super().write(data)
        self.writes.append(data)
        self._pending += data
        while not self.closed:
            if self._in_data:
                if self.script.drop_at == "data":
                    self.drop()
                    return
                # The CRLF before the final dot belongs to the text (RFC 5321 4.1.1.4).
                probe = b"\r\n" + self._body + self._pending
                end = probe.find(b"\r\n.\r\n")
                if end < 0:
                    self._body += self._pending
                    self._pending = b""
                    return
                self._body = probe[2:end + 2]
                self._pending = probe[end + 5:]
                self._in_data = False
                self._end_of_data()
                continue
            line, sep, rest = self._pending.partition(b"\r\n")
            if not sep:
                return
            self._pending = rest
            self._command(line.decode())

    def startTLS(self, options) -> None:
        self.tls_options.append(options)

    def loseConnection(self) -> None:
        self.drop(error.ConnectionDone())

    def abortConnection(self) -> None:
        self.drop(error.ConnectionAborted())

    def drop(self, reason: Exception | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.protocol.connectionLost(Failure(reason or error.ConnectionLost()))

    # --- the server side ---------------------------------------------------------------

    def _reply(self, line: str) -> None:
        self.protocol.dataReceived(line.encode() + b"\r\n")

    def _command(self, line: str) -> None:
        self.commands.append(line)
        verb = line.split(" ", 1)[0].upper()
        if verb == "EHLO":
            offer = ("STARTTLS",) if self.script.starttls and not self.tls_options else ()
            lines = ["mx.remote.test", *self.script.extensions, *offer]
            text = "".join(f"250-{x}\r\n" for x in lines[:-1]) + f"250 {lines[-1]}"
            self._reply(text)
        elif verb == "MAIL":
            if self.script.drop_at == "mail":
                self.drop()
                return
            self._sender = line[len("MAIL FROM:<"):].split(">")[0]
            self._rcpts = []
            self._reply(self.script.mail)
        elif verb == "RCPT":
            address = line[len("RCPT TO:<"):].split(">")[0]
            reply = self.script.rcpt.get(address, "250 2.1.5 Ok")
            if reply.startswith("2"):
                self._rcpts.append(address)
            self._reply(reply)
        elif verb == "DATA":
            if not self._rcpts:
                self._reply("554 5.5.1 Error: no valid recipients")
                return
            self._in_data = True
            self._body = b""
            self._reply(self.script.data)
        elif verb == "STARTTLS" and self.script.starttls:
            self._reply("220 2.0.0 Ready to start TLS")
        elif verb == "AUTH":
            self._reply(self.script.auth)
        elif verb == "RSET":
            self._rcpts = []
            self._reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            self._reply("221 2.0.0 Bye")
            self.drop(error.ConnectionDone())
        else:
            self._reply("502 5.5.2 Error: command not recognized")

    def _end_of_data(self) -> None:
        if self.script.silent_after_data:
            return
        finals = self.script.final
        reply = finals[min(self._finals, len(finals) - 1)]
        self._finals += 1
        if reply.startswith("2"):
            self.messages.append((self._sender, list(self._rcpts), self._body))
        self._reply(reply)
