"""A remote SMTP server with scripted replies, on a loopback address, for relay tests.

Standard library only (socketserver threads, ssl for STARTTLS): independent
of the gateway's own SMTP code. It records each message it accepted (a 2xx to
the final dot) with the recipients it accepted, and every command line.
"""

from __future__ import annotations

import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # restarts on the same port within one test
    daemon_threads = True


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    helo: str


@dataclass
class SinkScript:
    rcpt: dict[str, str] = field(default_factory=dict)  # address -> reply (default 250)
    # Replies to the final dot, consumed in order across connections; the last repeats.
    final: list[str] = field(default_factory=lambda: ["250 2.0.0 Ok: queued"])
    # Drop this many connections in the middle of the message text.
    drop_in_data: int = 0
    # Seconds to wait before answering the final dot (to make a run last).
    final_delay: float = 0.0
    tls: ssl.SSLContext | None = None
    pipelining: bool = True


class SMTPSink:
    def __init__(self, address: str, port: int, script: SinkScript | None = None):
        self.address = address
        self.port = port
        self.script = script or SinkScript()
        self.messages: list[Received] = []
        self.commands: list[str] = []
        self.connections = 0
        self.lock = threading.Lock()
        self._finals = 0
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> SMTPSink:
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                wrapped = [self.request]
                try:
                    sink._session(self.request, wrapped)
                finally:
                    for sock in wrapped[1:]:  # the SSLSocket; socketserver closes the first
                        sock.close()

        self._server = _Server((self.address, self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def _next_final(self) -> str:
        with self.lock:
            finals = self.script.final
            reply = finals[min(self._finals, len(finals) - 1)]
            self._finals += 1
            return reply

    def _session(self, sock, wrapped: list) -> None:
        with self.lock:
            self.connections += 1
        sock.settimeout(30)
        rfile = sock.makefile("rb")
        tls, helo, sender, rcpts = False, "", "", []

        def send(line: str) -> None:
            sock.sendall(line.encode() + b"\r\n")

        send(f"220 {self.address} ESMTP sink")
        while True:
            raw = rfile.readline(4096)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self.lock:
                self.commands.append(line)
            verb = line.split(" ", 1)[0].upper()
            if verb == "EHLO":
                helo = line[5:]
                ext = ["SIZE 50000000", "8BITMIME"]
                if self.script.pipelining:
                    ext.append("PIPELINING")
                if self.script.tls is not None and not tls:
                    ext.append("STARTTLS")
                lines = [f"{self.address} hello", *ext]
                send("\r\n".join(f"250-{x}" for x in lines[:-1]) + f"\r\n250 {lines[-1]}")
            elif verb == "STARTTLS" and self.script.tls is not None and not tls:
                send("220 2.0.0 Ready to start TLS")
                try:
                    sock = self.script.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # the client refused our certificate
                wrapped.append(sock)
                rfile = sock.makefile("rb")
                tls = True
            elif verb == "MAIL":
                sender, rcpts = line[10:].split(">")[0].lstrip("<"), []
                send("250 2.1.0 Ok")
            elif verb == "RCPT":
                address = line[8:].split(">")[0].lstrip("<")
                reply = self.script.rcpt.get(address, "250 2.1.5 Ok")
                if reply.startswith("2"):
                    rcpts.append(address)
                send(reply)
            elif verb == "DATA":
                if not rcpts:
                    send("554 5.5.1 Error: no valid recipients")
                    continue
                send("354 End data with <CR><LF>.<CR><LF>")
                data = self._read_data(rfile)
                if data is None:
                    sock.close()
                    return
                if self.script.final_delay:
                    time.sleep(self.script.final_delay)
                reply = self._next_final()
                if reply.startswith("2"):
                    with self.lock:
                        self.messages.append(Received(sender, rcpts, data, tls, helo))
                send(reply)
            elif verb == "RSET":
                rcpts = []
                send("250 2.0.0 Ok")
            elif verb == "QUIT":
                send("221 2.0.0 Bye")
                return
            else:
                send("502 5.5.2 Error: command not recognized")

    def _read_data(self, rfile) -> bytes | None:
        lines = []
        while True:
            line = rfile.readline(65536)
            if not line:
                return None
            if line == b".\r\n":
                return b"".join(lines)
            if self.script.drop_in_data > 0 and len(lines) == 1:
                with self.lock:
                    self.script.drop_in_data -= 1
                return None
            lines.append(line[1:] if line.startswith(b".") else line)

    def received_for(self, address: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if address in m.recipients]
