"""Reading a client only as fast as it is served: one gate per session, shared by all servers.

Used by accept/smtp.py, access/pop3.py and access/imap/server.py (DESIGN.md,
"Sharing one process fairly"). A session stops reading its client while
anything holds the gate:

- "busy": a command is being answered (a password check, a spool write, a
  folder search); input pipelined behind it stays in the kernel's socket
  buffer, and once that is full, in the client's (TCP flow control). This
  hold is lazy: the session stops taking commands at once, but its transport
  stops reading only when input comes meanwhile (the session calls
  ReadGate.arrived()): most clients wait for each answer, and stopping and
  starting the reading is two epoll_ctl calls and a dispatch per command. At
  most one read more is held;
- "disk": the message being received waits for the disk (SMTP DATA streams
  to the spool, queue/incoming.py): a client faster than the disk is read
  at the disk's pace instead of being buffered;
- "output": the client does not read its replies. The gate is the
  transport's streaming producer (IPushProducer), so the transport pauses it
  when its write buffer is full and resumes it once drained, exactly as the
  TLS front relays (tlsfront/relay.py). Without it a client sending
  `HELP` without reading the answers grows the process without bound.

Memory per session is then one read (64 KiB) of input, two when input came
while a busy hold was lazy, and one write buffer of output, whatever the
client sends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.protocols.tls import TLSMemoryBIOProtocol
from zope.interface import implementer

BUSY = "busy"
DISK = "disk"
OUTPUT = "output"
TURN = "turn"
# Commands one session may run in one turn of the reactor before the others get
# theirs: 64 KiB of pipelined NOOPs is 11,000 commands, and run in one go they
# would hold every other client for a tenth of a second per read.
COMMANDS_PER_TURN = 64


@implementer(IPushProducer)
class ReadGate:
    """Holds of a session's reading, by reason; reading resumes when the last one lifts.

    pause() and resume() act on the session: pause stops the transport reading,
    resume starts it again and goes on with input already buffered.
    """

    def __init__(self, pause: Callable[[], Any], resume: Callable[[], Any],
                 hold_lazily: Callable[[], Any] | None = None) -> None:
        self._pause = pause
        self._resume = resume
        # BUSY's hold: what stops the session taking commands without pausing the
        # transport (None: the session looks at `open` itself, nothing to do).
        self._hold_lazily = hold_lazily
        self._holds: set[str] = set()
        self._lazy = False  # held by BUSY alone, the transport still reading
        self.stopped = False
        self._spent = 0

    @property
    def open(self) -> bool:
        return not self._holds and not self.stopped

    def hold(self, reason: str) -> None:
        was_open = not self._holds
        self._holds.add(reason)
        if self.stopped:
            return
        if was_open and reason == BUSY:
            self._lazy = True
            if self._hold_lazily is not None:
                self._hold_lazily()
        elif was_open or self._lazy:
            self._lazy = False
            self._pause()

    def arrived(self) -> None:
        """Input came while held: a lazy hold pauses the transport now."""
        if self._lazy and not self.stopped:
            self._lazy = False
            self._pause()

    def release(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if not self._holds and not self.stopped:
            self._lazy = False
            self._resume()  # resuming a transport that reads on costs no system call

    def held(self, reason: str) -> bool:
        return reason in self._holds

    def spend(self, clock: Any) -> None:
        """Count one command; past COMMANDS_PER_TURN, pause until the reactor's next turn
        so that one client's pipelined flood is served in slices between the others."""
        self._spent += 1
        if self._spent >= COMMANDS_PER_TURN and not self.held(TURN):
            self._spent = 0
            self.hold(TURN)
            clock.callLater(0, self.release, TURN)

    # -- IPushProducer: the transport's write side tells us when its buffer is full --

    def pauseProducing(self) -> None:
        self.hold(OUTPUT)

    def resumeProducing(self) -> None:
        self.release(OUTPUT)

    def stopProducing(self) -> None:
        self.stopped = True


def closing(transport: Any) -> bool:
    """True once the session asked to close: reading is over, pausing is moot."""
    return not getattr(transport, "connected", True) or getattr(transport, "disconnecting",
                                                                 False)


def transport_gate(transport: Any, go_on: Callable[[], Any]) -> ReadGate:
    """A gate that pauses and resumes transport's reading, then calls go_on (the
    session's loop over input it already holds)."""
    def pause() -> None:
        if not closing(transport):
            transport.pauseProducing()

    def resume() -> None:
        if not closing(transport):
            transport.resumeProducing()
            go_on()

    return ReadGate(pause, resume)


def write_now(transport: Any, data: bytes) -> None:
    """transport.write(data), but sent at once when nothing waits before it.

    A Twisted TCP transport only queues a write: it asks epoll for writability
    (epoll_ctl), sends on the reactor's next turn (a dispatch through its log
    context wrappers), then stops asking (epoll_ctl again). SMTP answers each
    command with one short reply that the client waits for, so that cycle ran
    six or seven times per message: about a tenth of the listening process's
    CPU per accepted message (bench/RESULTS.md, 2026-11-27). Sending at once
    when the transport's buffer is empty (what asyncio's transports do) keeps
    the order and the back-pressure: whatever the socket does not take, and
    any write while something is still queued, goes through transport.write
    as before, and so does every other transport (TLS, PROXY wrappers, tests),
    and a closing or aborted one (whose later writes Twisted drops).
    """
    if isinstance(transport, tcp.Server) and _idle(transport):
        try:
            sent = transport.socket.send(data)
        except OSError:  # EAGAIN, or a broken connection: Twisted's own path finds out
            sent = 0
        if sent >= len(data):
            return
        data = data[sent:]
    transport.write(data)


def _idle(transport: tcp.Server) -> bool:
    """Nothing queued in Twisted's write buffers, open for writing, no TLS. Read from
    tcp.Server's own attributes; where a Twisted release names them otherwise, False:
    transport.write then does it all, as before."""
    try:
        return (not transport.TLS and transport.connected and not transport.disconnecting
                and not transport._writeDisconnected
                and not getattr(transport, "_aborting", False)
                and not transport._tempDataBuffer
                and len(transport.dataBuffer) == transport.offset
                # A connection that sent a file (filesend.SendfileServer) keeps its own
                # queue while files wait; without one it is a plain tcp.Server again.
                and not getattr(transport, "sending_files", False))
    except AttributeError:
        return False


def lose(transport: Any) -> None:
    """Close after the replies already written: the gate stops being the producer first,
    for a TLS transport (twisted.protocols.tls) does not close while one is registered."""
    if getattr(transport, "producer", None) is not None:
        transport.unregisterProducer()
    transport.loseConnection()
    if getattr(transport, "closing_later", False):
        return  # it closes the one below with lose() once its queue is out (deflate.py)
    # After STARTTLS, twisted.protocols.tls sends its close_notify and then waits for
    # the client's before closing TCP; mbsync and others wait for the server's close
    # instead, so both waited for ever. RFC 8446 6.1 lets the closing side go once its
    # close_notify is sent: close TCP now, when nothing is left in the TLS layer.
    tls = getattr(transport, "protocol", None)
    if (isinstance(tls, TLSMemoryBIOProtocol) and tls.transport is not None
            and not getattr(tls, "_appSendBuffer", None)):
        tls.transport.loseConnection()


class Deadline:
    """A total time for one phase of a session (logging in, one DATA, one literal).

    The idle timer (TimeoutMixin) restarts on every byte, so a client sending
    one byte every few seconds would never meet it; a deadline does not restart.
    """

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._call: Any = None

    def start(self, seconds: float, expired: Callable[[], Any]) -> None:
        self.cancel()
        self._call = self.clock.callLater(seconds, expired)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
