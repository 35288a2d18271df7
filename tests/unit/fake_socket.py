"""A tcp.Server on a fake socket: what the reactor's transport does with send(),
without a real socket in a unit test."""

from __future__ import annotations

import errno

from twisted.internet import abstract, tcp
from twisted.internet.testing import MemoryReactorClock


class FakeSocket:
    """What a non-blocking socket's send does: takes up to `room` bytes, or refuses."""

    def __init__(self, room: int = 1 << 20, error: int | None = None) -> None:
        self.room = room
        self.error = error
        self.sent: list[bytes] = []

    def send(self, data) -> int:
        if self.error is not None:
            raise OSError(self.error, "refused")
        if self.room == 0:
            raise BlockingIOError(errno.EAGAIN, "would block")
        taken = bytes(data[:self.room])
        self.room -= len(taken)
        self.sent.append(taken)
        return len(taken)


def tcp_transport(sock: FakeSocket) -> tuple[tcp.Server, MemoryReactorClock]:
    """A tcp.Server as the reactor made it, on a fake socket (no real socket in a unit test)."""
    reactor = MemoryReactorClock()
    transport = tcp.Server.__new__(tcp.Server)
    abstract.FileDescriptor.__init__(transport, reactor=reactor)
    transport.socket = sock
    transport.connected = 1
    return transport, reactor
